"""The classify command: run any method on a workspace."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from naturelens.cli.app import (
    MAX_FAILED_HELP,
    app,
    check_failed,
    console,
    err,
    fail,
    json_mode,
    print_json,
)
from naturelens.cli.progress import photo_progress
from naturelens.cli.scale import RAY, RAY_GPUS, RAY_WINDOW, RAY_WORKERS, ray_options
from naturelens.cli.workspace import open_workspace
from naturelens.methods import METHODS, make_method
from naturelens.methods.params import ParamError, parse_params


def method_params(pairs: list[str]) -> dict:
    """``["k=v", ...]`` -> dict, values read as YAML scalars (numbers, booleans, lists)."""
    try:
        return parse_params(pairs)
    except ParamError as exc:
        fail(f"--param {exc.message}")
        raise  # unreachable: fail exits


@app.command()
def classify(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    method: str = typer.Option(None, "--method", "-m", help=f"One of: {', '.join(METHODS)}."),
    model: str = typer.Option(None, help="Model card name, hub id or local folder."),
    prompt: str = typer.Option(None, help="Prompt style for VLMs: simple, extended or icl."),
    mode: str = typer.Option(
        None, help="For prompt: generate (text answer) or score (likelihoods)."
    ),
    base_url: str = typer.Option(
        None, help="OpenAI-compatible server: selects the remote back-end."
    ),
    shots: int = typer.Option(
        None, help="Train on this many labelled photos per class (k-shot protocol)."
    ),
    seeds: int = typer.Option(
        None, help="With --shots: k-shot draws the accuracy estimate averages over (5)."
    ),
    coverage: float = typer.Option(
        None,
        help="Give each photo the smallest set of classes holding its true class with this "
        "probability (conformal prediction), e.g. 0.9.",
    ),
    estimate: bool = typer.Option(
        True, help="Estimate accuracy on the labelled photos (cross-validation or k-shot)."
    ),
    calibrate: bool = typer.Option(
        True, help="Calibrate confidences on held-out labelled photos where there are enough."
    ),
    param: list[str] = typer.Option([], "--param", "-p", help="Extra method parameter KEY=VALUE."),
    fresh: bool = typer.Option(
        False, help="Start a new run even if an identical one was interrupted or finished."
    ),
    retry_failed: str = typer.Option(
        None,
        "--retry-failed",
        metavar="RUN",
        help="Send again only the photos that failed in run RUN (after an outage).",
    ),
    max_failed: float = typer.Option(0.5, min=0.0, max=1.0, help=MAX_FAILED_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary for scripts."),
    ray: str = RAY,
    ray_workers: int = RAY_WORKERS,
    ray_gpus: float = RAY_GPUS,
    ray_window: int = RAY_WINDOW,
) -> None:
    """Classify every photo of the workspace with a method, and estimate how well.

    Methods that learn train on the gold-labelled photos (or --shots per class) and predict
    every other photo; the accuracy estimate comes from the labelled photos (k-shot draws
    over --seeds, otherwise cross-validation) and is stored with the run. Methods that do not
    learn predict every photo and are scored on the labelled ones. With --ray, the per-photo
    model work runs on Ray first: the embeddings or descriptions of probe, zeroshot and
    hybrid, or the questions of prompt (answers kept in the run's ledger).

    Examples:

        naturelens classify parks --method probe --model dinov2-small

        naturelens classify parks --method probe --shots 10 --coverage 0.9

        naturelens classify parks --method zeroshot --model clip-vit-b16
    """
    from naturelens.classify import classify_collection
    from naturelens.classify import retry_failed as retry

    if retry_failed:
        with open_workspace(workspace) as ws:
            before = sum(ws.prediction_failures(retry_failed).values())
            run_id = retry(ws, retry_failed, progress=photo_progress)
            after = sum(ws.prediction_failures(run_id).values())
            console.print(f"{run_id}: {before} failed photos sent again, {after} still failed")
        return
    if not method:
        fail("--method is required (or --retry-failed RUN)")
    options = {"model": model, "prompt": prompt, "mode": mode, "base_url": base_url}
    params = {k: v for k, v in options.items() if v is not None} | method_params(param)
    json_mode(as_json)
    cluster = ray_options(ray, ray_workers, ray_gpus, window=ray_window)
    with open_workspace(workspace) as ws:
        # Refused before anything starts (a hosted API without a key...), in one line.
        make_method(method, **params).check_ready(ws)
        result = classify_collection(
            ws,
            method,
            params,
            shots=shots,
            seeds=seeds,
            coverage=coverage,
            calibrate=calibrate,
            estimate=estimate,
            fresh=fresh,
            progress=photo_progress,
            on_split=lambda r: print_split(ws, r),
            ray=cluster,
        )
        summary = ws.run(result.run_id)["summary"]
        if summary.get("precision"):
            console.print(f"precision: {summary['precision']}", highlight=False)
        counts = print_class_counts(ws, result.run_id)
        if counts:  # else a note says why the run predicts no photo
            console.print(
                f"{summary.get('photos', 0)} photos in {summary.get('wall_seconds', 0):.1f} s"
                + (f", cost ${summary['cost']:.4f}" if summary.get("cost") else "")
            )
        if result.estimate:
            print_estimate(method, shots, result.estimate)
        for note in result.notes:
            err.print(f"note: {note}", highlight=False)
    if as_json:
        print_json(
            {
                "run_id": result.run_id,
                "method": method,
                "classes": counts,
                "estimate": result.estimate,
                "notes": result.notes,
                **summary,
            }
        )
    photos = int(summary.get("photos") or 0)
    # Only failures count: an unnamed cluster or a rejected photo is an answer.
    check_failed(counts.get("(failed)", 0), photos, max_failed)


def print_split(ws, result) -> None:
    """One evaluation split's scores, printed as soon as it is done."""
    facts = ws.run(result.run_id)["summary"]
    val = facts.get("validation_photos")
    trained = f"{facts.get('train_photos', result.labels_used)} train" + (
        f" + {val} validation" if val else ""
    )
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    console.print(
        f"split {result.seed}: accuracy {pct(result.accuracy)}, macro-F1 "
        f"{pct(result.macro_f1)}, balanced accuracy {pct(result.balanced_accuracy)} "
        f"(majority baseline {pct(result.majority_baseline)}) on {result.photos} test photos; "
        f"{trained} photos" + (" collapsed to one class" if result.collapsed else ""),
        soft_wrap=True,
    )


def print_estimate(method: str, shots: int | None, est: dict) -> None:
    """The accuracy estimate in one readable block."""

    def pct(key: str) -> str:
        value, sd = est.get(key), est.get(f"{key}_sd")
        if value is None:
            return "n/a"
        return f"{value:.2%}" + (f" ± {sd:.2%}" if sd else "")

    label = f"{shots}-shot accuracy" if shots else "accuracy"
    console.print(
        f"{method} {label}: {pct('accuracy')} over {est['splits']} "
        f"{'seed(s)' if shots else 'split(s)'} ({est['protocol']}, {est['test_photos']} "
        f"held-out predictions); macro-F1 {pct('macro_f1')}, balanced accuracy "
        f"{pct('balanced_accuracy')}, majority-class baseline {pct('majority_baseline')}",
        soft_wrap=True,
    )
    if est.get("collapsed"):
        console.print(
            "warning: the method answers (nearly) one class for every photo of "
            "a split: its accuracy says little"
        )
    cal = est.get("calibration")
    if cal:
        console.print(
            f"calibration (temperature {est.get('temperature', 1.0):.2f}): expected "
            f"calibration error {cal['ece_raw']:.3f} raw -> {cal['ece_calibrated']:.3f} "
            f"calibrated, on {cal['photos']} held-out photos",
            soft_wrap=True,
        )
    sets = est.get("prediction_sets")
    if sets:
        console.print(
            f"prediction sets: coverage {sets['coverage']:.1%} (target "
            f"{est.get('coverage_target', 0):.0%}), mean size {sets['mean_size']:.2f}, "
            f"{sets['single']:.0%} single-class",
            soft_wrap=True,
        )


def print_class_counts(ws, run_id: str) -> dict[str, int]:
    """Print a table of a run's photos per class (failed and rejected photos by status);
    returns the counts."""
    counts: dict[str, int] = {}
    for p in ws.predictions(run_id):
        key = p.class_id if p.status == "ok" else f"({p.status})"
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return counts
    table = Table("class", "photos", title=f"run {run_id}")
    for cls, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(cls, str(n))
    console.print(table)
    return counts
