"""`naturelens runs`: list, show, tag and remove the runs of a workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from rich.table import Table

from naturelens.cli.app import ReportingGroup, app, console, fail
from naturelens.cli.workspace import open_workspace

runs_app = typer.Typer(
    help="List, show, tag and remove runs.", no_args_is_help=True, cls=ReportingGroup
)
app.add_typer(runs_app, name="runs")


def _accuracy(run: dict) -> str:
    est = run["summary"].get("estimate") or {}
    value = est.get("accuracy", run["summary"].get("accuracy"))
    if value is None:
        return ""
    sd = est.get("accuracy_sd")
    return f"{value:.1%}" + (f" ± {sd:.1%}" if sd else "")


def _row(run: dict, tags: list[str]) -> dict:
    summary = run["summary"]
    params = run["params"]
    return {
        "run_id": run["run_id"],
        "tags": tags,
        "started": str(run["started_at"])[:19],
        "method": run["method"],
        "model": str(params.get("method", {}).get("model") or ""),
        "purpose": params.get("purpose", "evaluation" if _is_evaluation(params) else ""),
        "photos": summary.get("photos", 0),
        "status": run["status"],
        "accuracy": _accuracy(run),
        "cost": summary.get("cost", 0.0),
    }


def _is_evaluation(params: dict) -> bool:
    return params.get("purpose") == "evaluation" or any(
        k in params for k in ("seed", "fold", "holdout", "test")
    )


@runs_app.command("list")
def list_runs(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    everything: bool = typer.Option(
        False, "--all", help="Include evaluation runs (k-shot draws, cross-validation folds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List runs, newest last.

    Examples:

        naturelens runs list parks

        naturelens runs list parks --all --json
    """
    with open_workspace(workspace, read_only=True) as ws:
        tags = ws.run_tags()
        rows = [
            _row(r, tags.get(r["run_id"], []))
            for r in ws.runs()
            if everything or not _is_evaluation(r["params"])
        ]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(
        "run", "tags", "started", "method", "model", "photos", "status", "accuracy", "cost"
    )
    for r in rows:
        table.add_row(
            r["run_id"],
            ", ".join(r["tags"]),
            r["started"],
            r["method"],
            Path(r["model"]).name if "/" in r["model"] else r["model"],
            str(r["photos"]),
            r["status"],
            r["accuracy"],
            f"${r['cost']:.4f}" if r["cost"] else "",
        )
    console.print(table)


@runs_app.command("show")
def show_run(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    run: str = typer.Argument(..., help="Run id or tag."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show one run: parameters, summary, accuracy estimate, failures by reason.

    Example:

        naturelens runs show parks best
    """
    with open_workspace(workspace, read_only=True) as ws:
        record = ws.run(run)
        failures = ws.prediction_failures(record["run_id"])
        tags = ws.run_tags().get(record["run_id"], [])
    out = {**record, "tags": tags, "failures_by_reason": failures}
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    console.print(f"{record['run_id']} {', '.join(tags)}")
    for key in ("method", "status", "started_at", "ended_at", "taxonomy", "code_version"):
        console.print(f"  {key}: {str(record.get(key))}")
    console.print("  parameters: " + json.dumps(record["params"].get("method", {})))
    summary = {k: v for k, v in record["summary"].items() if k != "estimate"}
    console.print("  summary: " + json.dumps(summary, default=str))
    est = record["summary"].get("estimate")
    if est:
        from naturelens.cli.classify import print_estimate

        print_estimate(record["method"], record["params"].get("shots"), est)
    for reason, n in failures.items():
        console.print(f"  failed: {n} x {reason}")


@runs_app.command("tag")
def tag_run(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    run: str = typer.Argument(..., help="Run id or tag."),
    tag: str = typer.Argument(..., help="Tag (moves from any run that had it)."),
) -> None:
    """Give a run a tag that `--run` accepts anywhere (a tag names one run at a time).

    Example:

        naturelens runs tag parks probe-20261202-101500-ab12cd final
    """
    with open_workspace(workspace) as ws:
        run_id = ws.run(run)["run_id"]
        ws.tag_run(run_id, tag)
    console.print(f"{tag} -> {run_id}")


@runs_app.command("rename")
def rename_run(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    run: str = typer.Argument(..., help="Run id or tag."),
    name: str = typer.Argument(..., help="The run's new name (its only tag)."),
) -> None:
    """Name a run: its tags are replaced by this one name.

    Example:

        naturelens runs rename parks latest-probe probe-10-shot
    """
    with open_workspace(workspace) as ws:
        run_id = ws.run(run)["run_id"]
        ws.tag_run(run_id, name, replace=True)
    console.print(f"{run_id} is now {name}")


@runs_app.command("rm")
def remove_run(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    runs: list[str] = typer.Argument(..., help="Run ids or tags."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove runs with their predictions, tags and saved model folders.

    Example:

        naturelens runs rm parks probe-20261202-101500-ab12cd --yes
    """
    with open_workspace(workspace) as ws:
        records = [ws.run(r) for r in runs]
        if not yes and not typer.confirm(
            f"remove {len(records)} run(s) and their predictions?", default=False
        ):
            fail("nothing removed", code=1)
        for record in records:
            removed = ws.delete_run(record["run_id"])
            folder = record["summary"].get("model_dir")
            if folder and not ws.runs_using_model(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed["model_dir"] = folder
            console.print(
                f"removed {record['run_id']}: {removed['predictions']} predictions"
                + (f", model folder {str(folder)}" if "model_dir" in removed else "")
            )
