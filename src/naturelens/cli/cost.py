"""The cost command: what model calls cost so far, and what a run would cost."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from naturelens.cli.app import app, console, fail, json_mode, print_json
from naturelens.cli.workspace import open_workspace
from naturelens.evaluation.cost import estimate_cost, spend_summary


@app.command()
def cost(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    method: str = typer.Option(
        None, help="Estimate a run of this method first: prompt or describe."
    ),
    model: str = typer.Option(None, help="Model card for the estimate (e.g. gpt-4o-mini)."),
    prompt: str = typer.Option(
        None, help="Prompt for the estimate: simple, extended, icl or a file."
    ),
    base_url: str = typer.Option(None, help="OpenAI-compatible server the model runs on."),
    detail: str = typer.Option("low", help="Image detail for the estimate: low or high."),
    shots: int = typer.Option(1, min=0, help="For icl: example photos per class in every request."),
    max_tokens: int = typer.Option(96, min=1, help="The longest answer allowed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Summarise what model calls cost so far; with --model, estimate a run over all photos."""
    json_mode(as_json)
    # Usage errors first, before any table is printed.
    if method not in (None, "prompt", "describe"):
        fail(
            "cost estimates are for methods that call a model per photo "
            f"(prompt, describe), not {method!r}"
        )
    if method is not None and model is None:
        fail("--model is needed for an estimate (e.g. --model gpt-4o-mini)")
    report: dict = {}
    est = None
    with open_workspace(workspace) as ws:
        report["spent"] = spend_summary(ws)
        if model is not None:
            chosen = prompt or ("describe" if method == "describe" else "simple")
            try:
                est = estimate_cost(
                    ws,
                    model,
                    chosen,
                    base_url=base_url,
                    detail=detail,
                    shots=shots,
                    max_tokens=max_tokens,
                    answer_tokens=120 if chosen == "describe" else None,
                )
            except ValueError as exc:
                fail(exc)
    if est is not None:
        report["estimate"] = {
            "model": est.model,
            "prompt_version": est.prompt_version,
            "detail": detail,
            "photos": est.photos,
            "tokens_in": est.tokens_in,
            "tokens_out": est.tokens_out,
            "cost": est.cost,
            "batch_cost": est.batch_cost,
            "basis": est.basis,
        }
    if as_json:
        print_json(report)
    _print_spent(report["spent"])
    if est is None:
        return
    table = Table(
        "photos",
        "tokens in",
        "tokens out",
        "cost $",
        "batch API $",
        "basis",
        title=f"estimate: {est.model}, prompt {est.prompt_version}, detail {detail}",
    )
    table.add_row(
        f"{est.photos:,}",
        f"{est.tokens_in:,}",
        f"{est.tokens_out:,}",
        f"{est.cost:.4f}",
        f"{est.batch_cost:.4f}" if est.batch_cost is not None else "-",
        est.basis,
    )
    console.print(table)


def _print_spent(rows: list[dict]) -> None:
    if not rows:
        console.print("No model calls recorded yet.")
        return
    table = Table(
        "run", "model", "calls", "errors", "tokens in", "tokens out", "seconds", "cost $",
        title="spent so far",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["run_id"],
            r["model"],
            str(r["calls"]),
            str(r["errors"]),
            f"{int(r['tokens_in'] or 0):,}",
            f"{int(r['tokens_out'] or 0):,}",
            f"{float(r['seconds'] or 0):.1f}",
            f"{float(r['cost'] or 0):.4f}",
        )
    console.print(table)
    total = sum(float(r["cost"] or 0) for r in rows)
    calls = sum(int(r["calls"]) for r in rows)
    console.print(f"total: {calls} calls, ${total:.4f}")
