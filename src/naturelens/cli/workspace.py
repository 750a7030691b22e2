"""Commands that make, fill and describe workspaces and taxonomies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from naturelens.cli.app import app, console, err, fail, json_mode, print_json, taxonomy_app
from naturelens.cli.progress import photo_progress
from naturelens.taxonomy import TaxonomyError, builtin_taxonomies, load_taxonomy

if TYPE_CHECKING:
    from naturelens.workspace.core import Workspace


def open_workspace(path: Path, read_only: bool = False) -> Workspace:
    # The catalog's libraries load when a command opens a workspace, not for --help.
    from naturelens.workspace.core import Workspace, WorkspaceError

    try:
        return Workspace.open(path, read_only=read_only)
    except (WorkspaceError, TaxonomyError) as exc:
        fail(exc)
        raise  # unreachable; keeps type checkers content


@app.command()
def init(
    workspace: Path = typer.Argument(..., help="Folder to create the workspace in."),
    taxonomy: str = typer.Option("flips", help="Built-in taxonomy name or a taxonomy YAML file."),
) -> None:
    """Make a new workspace for a taxonomy."""
    from naturelens.workspace.core import Workspace, WorkspaceError

    try:
        ws = Workspace.create(workspace, taxonomy)
    except (WorkspaceError, TaxonomyError) as exc:
        fail(exc)
    console.print(f"Workspace {workspace} ready, taxonomy {ws.taxonomy.label}.")
    ws.close()


@app.command()
def ingest(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    sources: list[str] = typer.Argument(
        ...,
        help="Folders, photo files, globs (photos/*.jpg), manifests (.csv, .tsv, .parquet), "
        "URL lists (.txt) or URLs.",
    ),
    labels_from_folders: bool = typer.Option(
        True, help="Use a photo's sub-folder name as its gold label."
    ),
    duplicates: str = typer.Option(
        "first",
        help="When a manifest id repeats or a photo gets two labels: keep the first, "
        "the last, or stop with an error. The others are reported.",
    ),
    allow_private_urls: bool = typer.Option(
        False,
        "--allow-private-urls",
        help="Fetch URLs on private, loopback and link-local addresses (your own network).",
    ),
    memory_budget: str = typer.Option(
        None,
        help="Memory that the photos being decoded at once may hold, e.g. 2GB or 512MiB "
        "(default: a quarter of the available memory, at least 1 GiB). A larger photo is "
        "decoded alone.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Add photos to a workspace; running it again adds only what is new."""
    json_mode(as_json)
    from naturelens.sources.budget import MemoryBudgetError
    from naturelens.sources.refs import SourceError

    with open_workspace(workspace) as ws:
        try:
            with photo_progress("ingest", None) as advance:
                report = ws.ingest(
                    sources,
                    labels_from_folders=labels_from_folders,
                    progress=advance,
                    duplicates=duplicates,
                    allow_private_urls=allow_private_urls,
                    memory_budget=memory_budget,
                )
        except (SourceError, MemoryBudgetError) as exc:
            fail(exc)
        if as_json:
            print_json(
                {
                    "added": report.added,
                    "duplicates": report.duplicates,
                    "skipped": report.skipped,
                    "updated": report.updated,
                    "moved": report.moved,
                    "relocated": report.relocated,
                    "failed": report.failed,
                    "labelled": report.labelled,
                    "label_problems": report.label_problems,
                }
            )
        console.print(
            f"{report.added} new photos, {report.duplicates} duplicates, "
            f"{report.skipped} already ingested"
            + (f" ({report.updated} with new metadata or labels)" if report.updated else "")
            + f", {report.failed} failures, "
            f"{report.labelled} labels."
            + (f" {report.duplicate_ids} rows repeat an id." if report.duplicate_ids else "")
        )
        if report.relocated:
            console.print(
                f"{report.relocated} photos whose files were gone were found at a new path "
                "and will be read from there."
            )
        if report.moved:
            console.print(
                f"{report.moved} rows name another file now and were read again; a photo "
                "that no row names any more left the workspace (its label withdrawn)."
            )
        for problem in report.label_problems[:20]:
            err.print(f"label: {problem}", highlight=False)
        if len(report.label_problems) > 20:
            err.print(f"... and {len(report.label_problems) - 20} more label problems")
        if report.failed:
            console.print(f"See the failures with `naturelens status {workspace} --failures`.")


@app.command()
def status(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    failures: bool = typer.Option(False, "--failures", help="List every failure with its reason."),
) -> None:
    """Summarise photos, failures, labels, embeddings and runs."""
    with open_workspace(workspace) as ws:
        summary = ws.status()
        if failures:
            summary["failure_list"] = ws.failures()
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    console.print(f"{summary['workspace']} — taxonomy {summary['taxonomy']}")
    console.print(
        f"{summary['photos']} photos from {summary['references']} references, "
        f"{summary['failures']} failures, {summary['labelled']} labelled"
    )
    if summary["failures_by_reason"]:
        table = Table("failure", "count", title="Failures")
        for reason, n in summary["failures_by_reason"].items():
            table.add_row(reason, str(n))
        console.print(table)
    table = Table("class", "labelled photos", title="Gold labels")
    for cls, n in summary["labelled_per_class"].items():
        table.add_row(cls, str(n))
    console.print(table)
    if summary["embeddings"]:
        console.print("Embeddings: " + ", ".join(e["model"] for e in summary["embeddings"]))
    if summary["runs"]:
        table = Table("run", "method", "status", "photos predicted", title="Runs")
        for r in summary["runs"]:
            table.add_row(r["run_id"], r["method"], r["status"], str(r["predicted"]))
        console.print(table)
    for f in summary.get("failure_list", []):
        console.print(f"{f['ref']}: {f['reason']} ({f['detail']})", highlight=False)


@taxonomy_app.command("list")
def taxonomy_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in taxonomies."""
    rows = []
    for name in builtin_taxonomies():
        tax = load_taxonomy(name)
        rows.append(
            {
                "name": name,
                "version": tax.version,
                "classes": len(tax.classes),
                "open_set": tax.open_set.id if tax.open_set else None,
                "description": tax.description,
            }
        )
    if as_json:
        print_json(rows)
        return
    for r in rows:
        extra = f" + {r['open_set']}" if r["open_set"] else ""
        console.print(
            f"{r['name']} {r['version']}: {r['classes']} classes{extra} — {r['description']}"
        )


@taxonomy_app.command("show")
def taxonomy_show(
    name: str = typer.Argument(..., help="Built-in name or YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a taxonomy's classes and definitions; for a file, list every problem in it."""
    try:
        tax = load_taxonomy(name)
    except TaxonomyError as exc:
        # Every problem on its own line, each with file and line, so all get fixed at once.
        for problem in exc.problems:
            err.print(f"error: {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        print_json(
            {
                "name": tax.name,
                "version": tax.version,
                "source": tax.source,
                "classes": [
                    {"id": c.id, "name": c.name, "definition": c.definition}
                    for c in tax.all_classes
                ],
            }
        )
        return
    table = Table("id", "name", "definition", title=f"{tax.label} ({tax.source})")
    for c in tax.all_classes:
        table.add_row(c.id, c.name, c.definition)
    console.print(table)


@app.command()
def demo(
    workspace: Path = typer.Argument(Path("demo-workspace"), help="Folder for the demo workspace."),
) -> None:
    """Build a workspace from sample photos that installed packages ship, and run the pipeline."""
    from naturelens.demo import run_demo

    run_demo(workspace, console).close()
