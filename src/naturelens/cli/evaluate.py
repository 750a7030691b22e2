"""Commands that judge and show results: evaluate, compare, report, export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.table import Table

from naturelens.cli.app import (
    DID_NOT_DO_ITS_JOB,
    app,
    console,
    err,
    fail,
    json_mode,
    print_json,
)
from naturelens.cli.progress import photo_progress
from naturelens.cli.workspace import open_workspace


def _agreement(workspace: Path, as_json: bool) -> None:
    from naturelens.evaluation.agreement import agreement_estimate, run_answers

    with open_workspace(workspace, read_only=True) as ws:
        runs = [
            r
            for r in ws.runs()
            if r["status"] == "done" and r["params"].get("purpose") != "evaluation"
        ]
        answers = {r["run_id"]: run_answers(ws.predictions(r["run_id"])) for r in runs}
        result = agreement_estimate(answers, ws.labels())
        methods = {r["run_id"]: r["method"] for r in runs}
    if as_json:
        print(json.dumps(result["runs"], indent=2))
        return
    table = Table(
        "run",
        "method",
        "photos",
        "estimated accuracy",
        "measured (labelled)",
        title="Accuracy from agreement between runs (Dawid-Skene)",
    )
    for run_id, row in result["runs"].items():
        measured = row.get("measured_accuracy")
        table.add_row(
            run_id,
            methods[run_id],
            str(row["photos"]),
            f"{row['estimated_accuracy']:.1%}",
            f"{measured:.1%} on {row['labelled_photos']}" if measured is not None else "-",
        )
    console.print(table)


@app.command()
def evaluate(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    run: str = typer.Option(
        None, "--run", "-r", help="Run id or tag (default: the latest finished run)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    resamples: int = typer.Option(1000, min=0, help="Bootstrap resamples for the 95 % intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    agreement: bool = typer.Option(
        False,
        "--agreement",
        help="Estimate every run's accuracy without labels, from how the runs agree "
        "(Dawid-Skene), beside the accuracy measured on labelled photos.",
    ),
) -> None:
    """Score a run: its stored accuracy estimate, and the labelled photos it predicted.

    A run of `classify` carries an accuracy estimate from held-out labelled photos
    (cross-validation or k-shot draws), with calibration error and prediction-set coverage;
    labelled photos the run predicted without training on them are scored here too, with
    accuracy, F1, kappa, intervals and a confusion matrix. Failed and unparsed predictions
    count as wrong; their number is printed.

    Examples:

        naturelens evaluate parks

        naturelens evaluate parks --run final --json

        naturelens evaluate parks --agreement
    """
    from naturelens.cli.classify import print_estimate
    from naturelens.evaluation.metrics import NO_CLASS, EvaluationError, evaluate_run

    if agreement:
        _agreement(workspace, as_json)
        return
    with open_workspace(workspace, read_only=True) as ws:
        record = ws.run(run)
        estimate = record["summary"].get("estimate")
        try:
            result = evaluate_run(ws, record["run_id"], n_resamples=resamples, seed=seed)
        except EvaluationError as exc:
            if not estimate:
                fail(exc)
            result = {
                "run_id": record["run_id"],
                "method": record["method"],
                "photos": 0,
                "note": str(exc),
            }
    result["estimate"] = estimate
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if estimate:
        console.print(f"{record['run_id']} ({record['method']})")
        print_estimate(record["method"], record["params"].get("shots"), estimate)
        if reliability := (estimate.get("calibration") or {}).get("reliability_calibrated"):
            bins = ", ".join(
                f"{b['confidence']:.2f}->{b['accuracy']:.2f} (n={b['photos']})" for b in reliability
            )
            console.print(f"reliability (confidence -> accuracy): {bins}", soft_wrap=True)
    if not result.get("photos"):
        console.print(
            "No labelled photo was predicted by this run without being trained on; the "
            "estimate above is measured on held-out labelled photos."
        )
        return
    console.print(
        f"{result['run_id']} ({result['method']}): {result['photos']} labelled photos "
        f"scored, {result['unlabelled_photos']} predicted photos without a gold label"
    )
    table = Table("score", "value", "95 % interval", title="Scores")
    for key, label in [
        ("accuracy", "accuracy"),
        ("majority_baseline", "majority-class baseline"),
        ("balanced_accuracy", "balanced accuracy"),
        ("macro_f1", "macro F1"),
        ("weighted_f1", "weighted F1"),
        ("kappa", "Cohen's kappa"),
    ]:
        lo_hi = result["intervals"].get(key)
        value = result[key]
        table.add_row(
            label,
            "-" if value is None else f"{value:.3f}",
            f"{lo_hi[0]:.3f} – {lo_hi[1]:.3f}" if lo_hi else "-",
        )
    console.print(table)
    per_class = Table("class", "precision", "recall", "F1", "gold", "predicted", title="Per class")
    for row in result["per_class"]:
        per_class.add_row(
            row["name"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
            str(row["support"]), str(row["predicted"]),
        )  # fmt: skip
    console.print(per_class)
    cm = result["confusion"]
    # Numbered columns keep the matrix readable in a narrow terminal.
    heads = [str(i + 1) for i in range(len(cm["rows"]))] + ["none"]
    matrix = Table("gold \\ predicted", *heads, title="Confusion matrix")
    for i, (name, row) in enumerate(zip(cm["rows"], cm["matrix"], strict=True)):
        matrix.add_row(f"{i + 1} {name}", *(str(v) if v else "·" for v in row))
    console.print(matrix)
    if result["clusters"]:
        c = result["clusters"]
        console.print(
            f"Clusters: Hungarian-matched accuracy {c['accuracy']:.3f}, NMI {c['nmi']:.3f}, "
            f"ARI {c['ari']:.3f}, purity {c['purity']:.3f} ({c['clusters']} clusters)"
        )
    if result["open_set"]:
        o = result["open_set"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        console.print(
            f"Open set ({o['open_class']}): rejection precision {fmt(o['rejection_precision'])}, "
            f"recall {fmt(o['rejection_recall'])} ({o['rejected']} rejected, "
            f"{o['gold_open']} gold)"
        )
    s = result["statuses"]
    counts = ", ".join(f"{n} {k}" for k, n in s.items() if n or k in ("ok", "failed"))
    if result["accuracy"] is None and result["clusters"]:
        console.print(f"Statuses: {counts}. {result['note']}.")
        return
    console.print(
        f"Statuses: {counts}. {result['counted_wrong']} photo(s) named no class and count "
        f"as wrong (column 'none', {NO_CLASS!r} in JSON)."
    )
    if result.get("collapsed"):
        console.print(
            f"warning: {result['top_class_share']:.0%} of the photos got the same "
            f"class (majority-class baseline {result['majority_baseline']:.1%}): the "
            "accuracy says little; read macro-F1 and balanced accuracy"
        )


@app.command()
def compare(
    workspace: Path = typer.Argument(..., help="Workspace folder with gold labels."),
    methods: str = typer.Option(
        ...,
        "--methods",
        "-m",
        help="Comma-separated NAME[:KEY=VALUE...] specs, e.g. "
        "'probe,zeroshot:model=clip-vit-b32,prompt:prompt=extended'.",
    ),
    shots: int = typer.Option(
        None, help="Labelled photos per class to learn from (default: a stratified holdout)."
    ),
    seeds: int = typer.Option(1, help="Number of splits to average over (mean ± sd)."),
    test_fraction: float = typer.Option(0.3, help="Without --shots: share of photos to test on."),
    fresh: bool = typer.Option(False, help="Recompute runs even when identical ones exist."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Run or reuse methods on the same splits and print the comparison table.

    Every method is tested on the same photos; learning methods train on the same
    labelled photos. A finished run with identical parameters is reused. The table is
    saved in the workspace (comparisons/ and the catalog) for the report.
    """
    from naturelens.evaluation.compare import (
        CompareError,
        format_accuracy,
        format_energy,
        parse_method_specs,
        save_comparison,
    )
    from naturelens.evaluation.compare import compare as run_compare

    try:
        specs = parse_method_specs(methods)
    except CompareError as exc:
        fail(exc)
    with open_workspace(workspace) as ws:

        def report_error(spec, seed, exc):
            err.print(f"{spec.label} (seed {seed}) failed: {exc}", highlight=False)

        try:
            result = run_compare(
                ws, specs, shots=shots, seeds=seeds, test_fraction=test_fraction,
                progress=photo_progress, on_error=report_error, fresh=fresh,
            )  # fmt: skip
        except CompareError as exc:
            fail(exc)
        path = save_comparison(ws, result)
    failed = [row["method"] for row in result.table() if not row.get("seeds")]
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        _stop_if_all_failed(failed, len(result.table()))
        return
    p = result.protocol
    if p["shots"] is not None:
        title = f"{p['shots']} labelled photos per class, {p['seeds']} seed(s)"
    elif p["test_fraction"] is not None:
        title = f"stratified holdout of {p['test_fraction']:.0%}, {p['seeds']} seed(s)"
    else:
        title = "no method learns: every labelled photo is a test photo"
    title += f", {p['test_photos'][0]} test photos"
    quality = ("labels used", "accuracy", "macro-F1", "balanced acc.", "majority baseline")
    cost = ("photos/s", "wall time (s)", "tokens", "cost / 1,000 photos", "energy")
    num = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
    rows = []
    for row in result.table():
        if not row.get("seeds"):
            rows.append((_short(row["method"]), [str(row["error"])] + [""] * 9))
            continue
        rows.append((_short(row["method"]), [
            str(row["labels_used"]),
            format_accuracy(row) if row["accuracy"] is not None or not row["cluster_accuracy"]
            else f"{format_accuracy(row, 'cluster_accuracy')} (clusters)",
            format_accuracy(row, "macro_f1"), format_accuracy(row, "balanced_accuracy"),
            format_accuracy(row, "majority_baseline"), num(row["photos_per_second"]),
            num(row["wall_seconds"]), num(row["tokens"], 0),
            "-" if row["cost_per_1000"] is None else f"${row['cost_per_1000']:.4f}",
            format_energy(row),
        ]))  # fmt: skip
    # Eleven columns fit a wide terminal; a narrow one gets quality, then speed and cost.
    if console.width >= 160:
        parts = [(title, quality + cost, slice(0, 10))]
    else:
        parts = [(title, quality, slice(0, 5)), ("speed and cost", cost, slice(5, 10))]
    for part_title, heads, columns in parts:
        table = Table(title=part_title)
        table.add_column("method", overflow="fold")
        for head in heads:
            table.add_column(head, justify="right")
        for method, values in rows:
            table.add_row(method, *values[columns])
        console.print(table)
    for row in result.table():
        if row.get("note"):
            console.print(f"{row['method']}: {row['note']}", highlight=False)
        if row.get("collapsed"):
            console.print(
                f"warning: {row['method']} answered (nearly) one class for "
                f"every test photo in {row['collapsed']} of {row['seeds']} seed(s): its "
                "accuracy says little; compare macro-F1 and balanced accuracy",
                soft_wrap=True,
            )
    sources = sorted({r["energy_source"] for r in result.table() if r.get("energy_source")})
    for source in sources:
        console.print(f"energy: {source}", highlight=False)
    console.print("Failed and unparsed predictions count as wrong.")
    reused = sum(r.get("reused", 0) for r in result.table())
    if reused:
        console.print(f"{reused} run(s) reused from earlier identical runs.")
    console.print(f"Saved to {path}")
    _stop_if_all_failed(failed, len(result.table()))


def _short(spec: str) -> str:
    """A method spec as the table shows it: a model folder by its name, not its whole path
    (the CSV and --json keep the spec as given)."""

    def shorter(match: re.Match) -> str:
        value = match.group(1)
        if value.startswith(("/", ".", "~")) or value.rstrip("/").count("/") > 1:
            return "=…/" + value.rstrip("/").rsplit("/", 1)[-1]
        return match.group(0)  # a hub id (org/model) is short and says more whole

    return re.sub(r"=([^:=]*/[^:=]*)(?=:[A-Za-z_][\w-]*=|$)", shorter, spec)


def _stop_if_all_failed(failed: list[str], methods: int) -> None:
    if methods and len(failed) == methods:
        fail(
            f"every method failed ({', '.join(failed)}): nothing was compared",
            code=DID_NOT_DO_ITS_JOB,
        )


@app.command()
def report(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    run: str = typer.Option(
        None, "--run", "-r", help="Run to show (default: the latest finished)."
    ),
    cell_km: float = typer.Option(1.0, help="Grid cell size for photo-user-days, in km."),
    title: str = typer.Option("naturelens report", help="Title of the page."),
    gallery_limit: int = typer.Option(
        2000, min=0, help="Most photos per class in the galleries (0: all)."
    ),
    page_size: int = typer.Option(48, help="Photos per gallery page."),
    thumb_size: int = typer.Option(160, help="Thumbnail size in pixels."),
    embed_thumbs: bool = typer.Option(
        False, help="Put thumbnails inside the HTML file (one file to share)."
    ),
) -> None:
    """Write an HTML report: distribution, galleries, disagreements, scores, map."""
    from naturelens.report.html import ReportError, ReportOptions, build_report
    from naturelens.workspace.core import WorkspaceError

    options = ReportOptions(
        run_id=run, title=title, cell_km=cell_km, gallery_limit=gallery_limit,
        page_size=page_size, thumb_size=thumb_size, embed_thumbs=embed_thumbs,
    )  # fmt: skip
    with open_workspace(workspace, read_only=True) as ws:
        try:
            path = build_report(ws, output, options, progress=photo_progress)
        except (ReportError, WorkspaceError) as exc:
            fail(exc)
    console.print(f"Report written to {path}")


@app.command()
def export(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    run: str = typer.Option(
        None, "--run", "-r", help="Run to export (default: the latest finished)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="File to write: .csv, .parquet or .geojson."
    ),
    pud: bool = typer.Option(
        False, "--pud", help="Write photo-user-days per grid cell and class (GeoJSON) instead."
    ),
    cell_km: float = typer.Option(1.0, help="With --pud: grid cell size in km."),
    by: str = typer.Option(None, help="With --pud: split by month (of the year) or season."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Export a run's predictions, one row per photo with your ids (CSV, Parquet, GeoJSON).

    Rows carry your manifest id and path, the class, the confidence, one score column per
    class and the photo's metadata. With --pud, photo-user-days on a grid, ready for QGIS
    or R (sf).
    """
    from naturelens.report.export import ExportError, export_photo_user_days, export_run
    from naturelens.workspace.core import WorkspaceError

    json_mode(as_json)
    with open_workspace(workspace, read_only=True) as ws:
        try:
            if pud:
                n = export_photo_user_days(ws, run, output, cell_km=cell_km, by=by)
            else:
                if by is not None:
                    fail("--by goes with --pud")
                n = export_run(ws, run, output)
            run_id = ws.run(run)["run_id"]
        except (ExportError, WorkspaceError) as exc:
            fail(exc)
    what = "grid cells" if pud else "predictions"
    if as_json:
        print_json({"run_id": run_id, "output": str(output), what.replace(" ", "_"): n})
    console.print(f"{n} {what} written to {output}")
