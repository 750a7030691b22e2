"""Commands that say what naturelens offers: model cards and methods with their parameters."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from naturelens.cli.app import ReportingGroup, app, console, fail, json_mode, print_json

methods_app = typer.Typer(
    help="List the methods and show their parameters.", no_args_is_help=True, cls=ReportingGroup
)
app.add_typer(methods_app, name="methods")


@app.command()
def models(
    kind: str = typer.Option(
        None, help="Only cards of this kind: vision, clip, siglip, vlm, llm, text or tagger."
    ),
    workspace: Path = typer.Option(
        None, "--workspace", "-w", help="Also list the cards in this workspace's cards/ folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List every model card: kind, size, licence, whether it runs here, how to fetch it."""
    from naturelens.models.availability import availability
    from naturelens.models.cards import KINDS, all_cards

    if kind is not None and kind not in KINDS:
        fail(f"--kind must be one of {', '.join(sorted(KINDS))}, not {kind!r}")
    json_mode(as_json)
    rows = []
    for card in all_cards(workspace).values():
        if kind is not None and card.kind != kind:
            continue
        state = availability(card)
        rows.append(
            {
                "name": card.name,
                "kind": card.kind,
                "params": card.get("params"),
                "license": card.get("license"),
                "source": card.source,
                "weights": state.status,
                "fetch": state.fetch,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(title="Models")
    for head in ("card", "kind", "size", "licence", "weights", "to fetch them"):
        table.add_column(head, overflow="fold")
    for r in rows:
        colour = "red" if r["weights"] == "missing" else "green"
        table.add_row(
            r["name"], r["kind"], r["params"] or "-", r["license"] or "-",
            Text(r["weights"], style=colour), r["fetch"] or "-",
        )  # fmt: skip
    console.print(table)
    console.print(
        "Point a card at a local folder (a card in <workspace>/cards/ or $NATURELENS_CARDS) "
        "or pass the folder as --model to use weights copied from another machine.",
        highlight=False,
    )


@methods_app.command("list")
def methods_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the classification methods."""
    from naturelens.methods import METHODS
    from naturelens.methods.params import method_summary

    rows = [{"method": name, "summary": method_summary(name)} for name in METHODS]
    if as_json:
        print_json(rows)
        return
    table = Table("method", "what it does", title="Methods")
    for r in rows:
        table.add_row(r["method"], r["summary"])
    console.print(table)


@methods_app.command("show")
def methods_show(
    name: str = typer.Argument(..., help="A method: probe, zeroshot, prompt..."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a method's parameters (what --param KEY=VALUE takes): type, default, meaning."""
    from naturelens.methods.params import method_parameters, method_summary

    params = method_parameters(name)  # an unknown name is a MethodError: one line
    if as_json:
        print_json(
            {
                "method": name,
                "summary": method_summary(name),
                "parameters": [p.to_json() for p in params],
            }
        )
        return
    table = Table(
        "parameter", "type", "default", "meaning", title=f"{name}: {method_summary(name)}"
    )
    for p in params:
        table.add_row(p.name, p.type, repr(p.default), p.meaning)
    console.print(table)
    console.print(
        f"Set them with --param KEY=VALUE, e.g. naturelens classify WS --method {name} "
        f"--param {params[0].name}={params[0].default}"
        if params
        else "",
        highlight=False,
    )
