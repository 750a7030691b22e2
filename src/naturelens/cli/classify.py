"""The classify command: run any method on a workspace."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
import yaml
from rich.table import Table

from naturelens.cli.app import app, console, fail
from naturelens.cli.progress import photo_progress
from naturelens.cli.workspace import open_workspace
from naturelens.methods import METHODS, make_method, run_method


def parse_params(pairs: list[str]) -> dict:
    """``["k=v", ...]`` -> dict, values read as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--param {pair!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@app.command()
def classify(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    method: str = typer.Option(..., "--method", "-m", help=f"One of: {', '.join(METHODS)}."),
    model: str = typer.Option(None, help="Model card name, hub id or local folder."),
    prompt: str = typer.Option(None, help="Prompt style for VLMs: simple, extended or icl."),
    mode: str = typer.Option(
        None, help="For prompt: generate (text answer) or score (likelihoods)."
    ),
    base_url: str = typer.Option(
        None, help="OpenAI-compatible server: selects the remote back-end."
    ),
    shots: int = typer.Option(
        None, help="Labelled photos per class to train on (k-shot protocol)."
    ),
    seeds: int = typer.Option(1, help="With --shots: how many random draws to average over."),
    param: list[str] = typer.Option([], "--param", "-p", help="Extra method parameter KEY=VALUE."),
    fresh: bool = typer.Option(
        False, help="Start a new run even if an identical one was interrupted."
    ),
) -> None:
    """Classify the workspace's photos with a method.

    Methods that learn train on the gold-labelled photos and predict the others. With
    --shots K they train on K labelled photos per class, test on the remaining labelled
    photos and report accuracy (mean ± sd over --seeds draws).
    """
    options = {"model": model, "prompt": prompt, "mode": mode, "base_url": base_url}
    params = {k: v for k, v in options.items() if v is not None} | parse_params(param)
    with open_workspace(workspace) as ws:
        try:
            probe = make_method(method, **params)
        except (ValueError, ImportError) as exc:
            fail(exc)
        gold = ws.labels()
        if shots is not None:
            _kshot(ws, method, params, shots, seeds, fresh)
            return
        train = sorted(gold) if probe.needs_labels else []
        targets = ws.photo_ids(labelled=False) if probe.needs_labels else ws.photo_ids()
        if not targets:
            fail(
                "no photos to classify"
                + (" (every photo is labelled)" if probe.needs_labels else "")
            )
        run_id = _run(ws, probe, targets, train, {}, fresh)
        summary = ws.run(run_id)["summary"]
        print_class_counts(ws, run_id)
        console.print(
            f"{summary.get('photos', 0)} photos in {summary.get('wall_seconds', 0):.1f} s"
            + (f", cost ${summary['cost']:.4f}" if summary.get("cost") else "")
        )


def _kshot(ws, method: str, params: dict, shots: int, seeds: int, fresh: bool) -> None:
    """The k-shot protocol of `compare`, for one method: a run and an accuracy per seed."""
    from naturelens.evaluation.compare import MethodSpec, compare

    if seeds < 1:
        fail("--seeds must be at least 1")

    def stop(spec, seed, exc: Exception) -> None:
        fail(f"seed {seed}: {exc}")

    result = compare(
        ws,
        [MethodSpec(method, params)],
        shots=shots,
        seeds=seeds,
        progress=photo_progress,
        on_error=stop,
        fresh=fresh,
    )
    (row,) = result.rows
    table = Table("seed", "run", "train", "test", "accuracy", title=f"{method}, {shots} shots")
    for r in row.runs:
        table.add_row(str(r.seed), r.run_id, str(r.labels_used), str(r.photos), f"{r.accuracy:.2%}")
    console.print(table)
    accuracies = [r.accuracy for r in row.runs]
    sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    console.print(
        f"[bold]{method}[/] {shots}-shot accuracy: "
        f"{statistics.mean(accuracies):.2%} ± {sd:.2%} over {len(accuracies)} seed(s)"
    )


def print_class_counts(ws, run_id: str) -> None:
    """Print a table of a run's photos per class (failed and rejected photos by status)."""
    counts: dict[str, int] = {}
    for p in ws.predictions(run_id):
        key = p.class_id if p.status == "ok" else f"({p.status})"
        counts[key] = counts.get(key, 0) + 1
    table = Table("class", "photos", title=f"run {run_id}")
    for cls, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(cls, str(n))
    console.print(table)


def _run(ws, method, targets, train, extra, fresh) -> str:
    try:
        with photo_progress(method.name, len(targets)) as advance:
            return run_method(
                ws, method, targets, train, extra_params=extra, progress=advance, resume=not fresh
            )
    except ValueError as exc:
        fail(exc)
        raise
