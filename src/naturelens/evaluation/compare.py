"""Compare methods on a labelled workspace under one protocol, with their costs.

Every method sees the same splits: with ``shots`` the k-shot draws of
:func:`naturelens.evaluation.protocol.kshot_split` (``shots`` labelled photos per class to
learn from, the other labelled photos to test on), otherwise a stratified holdout
(:func:`naturelens.evaluation.protocol.holdout_split`); one split per seed. Methods that need no
labels are tested on the same test photos and learn from nothing. When no method in the
comparison learns and ``shots`` is not given, every labelled photo is a test photo.

A run is reused instead of recomputed when a finished run of the same method with the
same stored parameters (method options, training photos, protocol) already predicted
every test photo, so running ``compare`` again only adds what is new.

Method specs, as given on the command line: ``NAME[:KEY=VALUE[:KEY=VALUE...]]``, several
separated by commas, e.g. ``probe,zeroshot:model=clip-vit-b32,prompt:prompt=extended``.
Values are read as YAML scalars (numbers, booleans, ``[a, b]`` lists); a colon that is
not followed by ``KEY=`` belongs to the value, so ``base_url=http://host:8000/v1`` works.
An ``ensemble`` spec without ``runs`` votes over the runs of the other methods on the same
split.

Energy per run is measured or estimated by :mod:`naturelens.evaluation.energy`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from naturelens.errors import NaturelensError
from naturelens.evaluation.energy import Energy, energy_meter, estimate_energy
from naturelens.evaluation.metrics import evaluate_run
from naturelens.evaluation.protocol import cv_splits, holdout_split, kshot_split
from naturelens.methods import METHODS, make_method, method_class, run_method
from naturelens.methods.params import ParamError, parse_param
from naturelens.workspace.comparisons import latest_comparison_data, store_comparison
from naturelens.workspace.core import Workspace, WorkspaceError, now

ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


class CompareError(NaturelensError, ValueError):
    """A comparison cannot run as asked (bad method spec, too few labels...)."""


# ---------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class MethodSpec:
    """A method name with its options, as written on the command line."""

    name: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    text: str = ""

    @property
    def label(self) -> str:
        return self.text or self.name


_KEY_START = re.compile(r":(?=[A-Za-z_][A-Za-z0-9_-]*=)")


def parse_method_spec(text: str) -> MethodSpec:
    """Parse ``NAME[:KEY=VALUE...]`` (see the module docstring).

    Raises
    ------
    CompareError
        For an unknown method or an option without ``=``.
    """
    text = text.strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in METHODS:
        raise CompareError(f"unknown method {name!r} in {text!r}; choose from {sorted(METHODS)}")
    params: dict[str, Any] = {}
    if rest:
        first, *parts = _KEY_START.split(":" + rest)
        if first:  # text before the first KEY=
            parts = [rest]
        for part in parts:
            try:
                key, value = parse_param(part)
            except ParamError as exc:
                raise CompareError(
                    f"{text!r}: {exc.message}", hint="write NAME:KEY=VALUE[:KEY=VALUE...]"
                ) from exc
            params[key] = value
    return MethodSpec(name, params, text)


def parse_method_specs(text: str) -> list[MethodSpec]:
    """Parse a comma-separated list of method specs (commas inside ``[...]`` or quotes
    belong to a value)."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    specs = [parse_method_spec(p) for p in parts if p.strip()]
    if not specs:
        raise CompareError("no methods given; e.g. --methods probe,zeroshot")
    return specs


# ---------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Split:
    seed: int
    train: tuple[str, ...]
    test: tuple[str, ...]
    extra: dict[str, Any] = field(hash=False)


def make_splits(
    labels: dict[str, str],
    shots: int | None,
    seeds: int,
    test_fraction: float = 0.3,
    learning: bool = True,
    folds: int | None = None,
) -> list[Split]:
    """One split of the labelled photos per seed.

    With ``shots``: the k-shot draw of each seed. Otherwise, when some method learns
    (``learning``), a stratified holdout of ``test_fraction`` per seed; when none does,
    one split that tests on every labelled photo (there is nothing to hold out for).
    The extra parameters stored with each run name the protocol, so a run is only reused
    under the same protocol (they match those of ``naturelens classify --shots``).
    """
    if seeds < 1:
        raise CompareError("--seeds must be at least 1")
    if shots is not None and shots < 1:
        raise CompareError("--shots must be at least 1 (leave it out for a stratified holdout)")
    if shots is None and not 0 < test_fraction < 1:
        raise CompareError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    if len(labels) < 2:
        raise CompareError(
            "compare needs labelled photos: label some (folder names or a manifest 'label' column)"
        )
    if shots is None and not learning:
        return [
            Split(
                0,
                (),
                tuple(sorted(labels)),
                {"purpose": "evaluation", "test": "every labelled photo"},
            )
        ]
    if shots is None and folds:
        try:
            pairs = cv_splits(labels, folds)
        except ValueError as exc:
            raise CompareError(str(exc), "label more photos or use --shots") from exc
        return [
            Split(
                i, tuple(train), tuple(test), {"purpose": "evaluation", "folds": folds, "fold": i}
            )
            for i, (train, test) in enumerate(pairs)
        ]
    if shots is None and not 0 < test_fraction < 1:
        raise CompareError("--test-fraction must be between 0 and 1")
    out = []
    for seed in range(seeds):
        try:
            if shots is not None:
                train, test = kshot_split(labels, shots, seed)
                extra: dict[str, Any] = {"purpose": "evaluation", "shots": shots, "seed": seed}
            else:
                train, test = holdout_split(labels, test_fraction, seed)
                extra = {"purpose": "evaluation", "holdout": test_fraction, "seed": seed}
        except ValueError as exc:
            hint = (
                ""
                if shots is not None
                else " (a stratified holdout needs at least 2 labelled photos per class and "
                "a test share that leaves each class a photo on both sides; label more photos, "
                "change --test-fraction or use --shots)"
            )
            raise CompareError(f"{exc}{hint}") from exc
        out.append(Split(seed, tuple(train), tuple(test), extra))
    return out


# ---------------------------------------------------------------------------- compare
@dataclass
class RunResult:
    """One method on one split."""

    seed: int
    run_id: str
    reused: bool
    accuracy: float | None
    macro_f1: float | None
    labels_used: int
    photos: int
    wall_seconds: float | None
    predict_seconds: float | None
    tokens: int
    cost: float
    energy_wh: float
    energy_source: str
    energy_measured: bool
    counted_wrong: int
    cluster_accuracy: float | None = None
    balanced_accuracy: float | None = None
    majority_baseline: float | None = None
    collapsed: bool = False


@dataclass
class MethodRow:
    """A row of the comparison table: one method over all seeds."""

    method: str
    name: str
    runs: list[RunResult] = field(default_factory=list)
    error: str = ""
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """The row's figures (means over seeds; sd of accuracy and macro-F1)."""
        runs = self.runs
        if not runs:
            return {"method": self.method, "error": self.error, "note": self.note, "seeds": 0}

        def mean(xs):
            xs = [x for x in xs if x is not None]
            return statistics.fmean(xs) if xs else None

        def sd(xs):
            xs = [x for x in xs if x is not None]
            return statistics.stdev(xs) if len(xs) > 1 else 0.0 if xs else None

        photos = sum(r.photos for r in runs)
        predict = [r.predict_seconds for r in runs if r.predict_seconds]
        pps = sum(r.photos for r in runs if r.predict_seconds) / sum(predict) if predict else None
        return {
            "method": self.method,
            "seeds": len(runs),
            "labels_used": round(statistics.fmean(r.labels_used for r in runs)),
            "accuracy": mean(r.accuracy for r in runs),
            "accuracy_sd": sd(r.accuracy for r in runs),
            "macro_f1": mean(r.macro_f1 for r in runs),
            "macro_f1_sd": sd(r.macro_f1 for r in runs),
            "balanced_accuracy": mean(r.balanced_accuracy for r in runs),
            "balanced_accuracy_sd": sd(r.balanced_accuracy for r in runs),
            "majority_baseline": mean(r.majority_baseline for r in runs),
            # seeds whose run answered (nearly) one class for every test photo
            "collapsed": sum(r.collapsed for r in runs),
            "photos_per_second": pps,
            "wall_seconds": mean(r.wall_seconds for r in runs),
            "tokens": mean(r.tokens for r in runs),
            "cost_per_1000": 1000 * sum(r.cost for r in runs) / photos if photos else None,
            "energy_wh": mean(r.energy_wh for r in runs),
            "energy_measured": all(r.energy_measured for r in runs),
            "energy_source": "; ".join(sorted({r.energy_source for r in runs})),
            "counted_wrong": sum(r.counted_wrong for r in runs),
            "cluster_accuracy": mean(r.cluster_accuracy for r in runs),
            "reused": sum(r.reused for r in runs),
            "runs": [r.run_id for r in runs],
            "error": self.error,
            "note": self.note,
        }


@dataclass
class Comparison:
    """The result of :func:`compare`: the protocol and one row per method."""

    protocol: dict[str, Any]
    rows: list[MethodRow]
    comparison_id: str = ""
    created_at: str = ""

    def table(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "comparison_id": self.comparison_id,
            "created_at": self.created_at,
            "protocol": self.protocol,
            "table": self.table(),
            "details": [
                {"method": r.method, "runs": [asdict(x) for x in r.runs]} for r in self.rows
            ],
        }


def compare(
    ws: Workspace,
    specs: list[MethodSpec],
    shots: int | None = None,
    seeds: int = 1,
    test_fraction: float = 0.3,
    progress: ProgressFactory | None = None,
    on_error: Callable[[MethodSpec, int, Exception], None] | None = None,
    fresh: bool = False,
    folds: int | None = None,
    on_result: Callable[[MethodSpec, RunResult], None] | None = None,
) -> Comparison:
    """Run (or reuse) every method on every split and collect the comparison table.

    Parameters
    ----------
    ws
        A workspace with gold labels.
    specs
        Methods with their options (see :func:`parse_method_specs`).
    shots
        Labelled photos per class to learn from (k-shot protocol); None for a stratified
        holdout of ``test_fraction`` of the labelled photos.
    seeds
        Number of splits (seeds 0 .. seeds-1); accuracy is reported as mean ± sd.
    progress
        ``progress(description, total)`` returns a context manager yielding
        ``advance(n)`` (the CLI passes its progress bar).
    on_error
        Called when a method fails on a split; the failure is recorded in its row and the
        comparison goes on with the next method.
    fresh
        Recompute runs even when a finished identical run exists.
    on_result
        Called with each method's result on each split as soon as it is scored (the CLI
        prints it, so a long comparison shows its seeds as they finish).
    """
    gold = ws.labels()
    try:
        learning = any(make_method(s.name, **s.params).needs_labels for s in specs)
    except ValueError as exc:
        raise CompareError(str(exc)) from exc
    splits = make_splits(gold, shots, seeds, test_fraction, learning, folds)
    protocol = {
        "protocol": (
            "k-shot"
            if shots is not None
            else f"{folds}-fold cross-validation"
            if folds and learning
            else "holdout"
            if learning
            else "every labelled photo"
        ),
        "shots": shots,
        "test_fraction": test_fraction if shots is None and learning and not folds else None,
        "seeds": len(splits),
        "labelled_photos": len(gold),
        "test_photos": [len(s.test) for s in splits],
        "methods": [s.label for s in specs],
        "note": (
            "failed and unparsed predictions count as wrong; energy: measured where the "
            "platform allows it (RAPL, NVML), otherwise estimated from device power x time"
        ),
    }
    rows = [MethodRow(s.label, s.name) for s in specs]
    for split in splits:
        split_runs: list[str] = []
        for spec, row in zip(specs, rows, strict=True):
            if row.error:
                continue
            params = dict(spec.params)
            combines = method_class(spec.name).combines_runs
            if combines and params.get("runs") is None:
                if not split_runs:
                    row.error = "no other method's runs to vote over"
                    continue
                params["runs"] = list(split_runs)
            if (
                spec.name == "cluster"
                and params.get("naming", "majority") == "majority"
                and params.get("naming_run") is None
                and split_runs
            ):
                # Name clusters by this split's first learning run, explicitly, so the
                # score does not depend on what ran last and the run records its source.
                params["naming_run"] = split_runs[0]
            row.note = row.note or make_method(spec.name, **params).comparison_note()
            try:
                result = _run_one(ws, spec, params, split, progress, fresh)
            except (ValueError, ImportError, RuntimeError, OSError, WorkspaceError) as exc:
                row.error = f"{type(exc).__name__}: {exc}"
                if on_error:
                    on_error(spec, split.seed, exc)
                continue
            row.runs.append(result)
            if on_result:
                on_result(spec, result)
            if not combines:
                split_runs.append(result.run_id)
    return Comparison(protocol, rows)


def _run_one(ws, spec, params, split, progress, fresh) -> RunResult:
    method = make_method(spec.name, **params)
    train = list(split.train) if getattr(method, "needs_labels", True) else []
    test = list(split.test)
    reused = None if fresh else find_finished_run(ws, method, train, test, split.extra)
    if reused is not None:
        run_id = reused
    else:
        with energy_meter() as energy:
            if progress is not None:
                with progress(f"{spec.label} seed {split.seed}", len(test)) as advance:
                    run_id = run_method(
                        ws, method, test, train, extra_params=split.extra, progress=advance
                    )
            else:
                run_id = run_method(ws, method, test, train, extra_params=split.extra)
        ws.update_run_summary(
            run_id,
            {
                "energy_wh": energy.wh,
                "energy_source": energy.source,
                "energy_measured": energy.measured,
            },
        )
    run = ws.run(run_id)
    summary = run["summary"]
    result = evaluate_run(ws, run_id, photo_ids=test, n_resamples=0)
    ws.update_run_summary(
        run_id,
        {
            "accuracy": result["accuracy"],
            "macro_f1": result["macro_f1"],
            "balanced_accuracy": result["balanced_accuracy"],
            "majority_baseline": result["majority_baseline"],
            "collapsed": result["collapsed"],
            "test_photos": len(test),
        },
    )
    wall = summary.get("wall_seconds")
    fit = summary.get("fit_seconds") or 0.0
    if "energy_wh" in summary:
        energy = Energy(summary["energy_wh"], summary["energy_source"], summary["energy_measured"])
    else:  # a run made elsewhere (e.g. `classify --shots`): estimate from its wall time
        energy = estimate_energy(wall or 0.0)
    return RunResult(
        seed=split.seed,
        run_id=run_id,
        reused=reused is not None,
        accuracy=result["accuracy"],
        macro_f1=result["macro_f1"],
        labels_used=int(summary.get("labels_used") or len(train)),
        photos=len(test),
        wall_seconds=wall,
        predict_seconds=(wall - fit) if wall and wall > fit else wall,
        tokens=int(summary.get("tokens_in", 0)) + int(summary.get("tokens_out", 0)),
        cost=float(summary.get("cost", 0.0)),
        energy_wh=energy.wh,
        energy_source=energy.source,
        energy_measured=energy.measured,
        counted_wrong=result["counted_wrong"],
        cluster_accuracy=(result["clusters"] or {}).get("accuracy"),
        balanced_accuracy=result["balanced_accuracy"],
        majority_baseline=result["majority_baseline"],
        collapsed=result["collapsed"],
    )


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def find_finished_run(
    ws: Workspace, method, train: list[str], test: list[str], extra: dict[str, Any]
) -> str | None:
    """The latest finished run of ``method`` with exactly these parameters that predicted
    every test photo, or None."""
    wanted = _canonical(
        {"method": method.stored_params(), "train": sorted(train), "predict": len(test), **extra}
    )
    for run in reversed(ws.runs(method.name)):
        if run["status"] != "done" or run["taxonomy"] != ws.taxonomy.label:
            continue
        if _canonical(run["params"]) != wanted:
            continue
        if set(test) <= ws.done_photo_ids(run["run_id"]):
            return run["run_id"]
    return None


# ---------------------------------------------------------------------------- storage
def save_comparison(ws: Workspace, comparison: Comparison) -> Path:
    """Store the comparison in the catalog and as CSV + JSON under ``comparisons/``.

    Returns the CSV file's path.
    """
    stamp = now()
    digest = hashlib.sha256(_canonical(comparison.protocol).encode()).hexdigest()[:6]
    comparison.comparison_id = f"compare-{stamp:%Y%m%d-%H%M%S}-{digest}"
    comparison.created_at = stamp.isoformat(timespec="seconds")
    data = comparison.to_json()
    store_comparison(
        ws, comparison.comparison_id, stamp, _canonical(comparison.protocol), _canonical(data)
    )
    csv_path = ws.path("comparisons", f"{comparison.comparison_id}.csv")
    ws.path("comparisons", f"{comparison.comparison_id}.json").write_text(
        json.dumps(data, indent=2, default=str), encoding="utf-8"
    )
    table = comparison.table()
    columns = [
        "method", "seeds", "labels_used", "accuracy", "accuracy_sd", "macro_f1", "macro_f1_sd",
        "balanced_accuracy", "balanced_accuracy_sd", "majority_baseline", "collapsed",
        "photos_per_second", "wall_seconds", "tokens", "cost_per_1000", "energy_wh",
        "energy_source", "counted_wrong", "cluster_accuracy", "reused", "runs", "error", "note",
    ]  # fmt: skip
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow({**row, "runs": " ".join(row.get("runs", []))})
    return csv_path


def latest_comparison(ws: Workspace) -> dict[str, Any] | None:
    """The most recent stored comparison (as :meth:`Comparison.to_json`), or None."""
    data = latest_comparison_data(ws)
    return json.loads(data) if data is not None else None


def format_accuracy(row: dict[str, Any], key: str = "accuracy") -> str:
    """``"97.1 % ± 0.8"`` style text for a table cell."""
    value = row.get(key)
    if value is None:
        return "-"
    sd = row.get(f"{key}_sd")
    text = f"{100 * value:.1f} %"
    return text + (f" ± {100 * sd:.1f}" if sd is not None and row.get("seeds", 1) > 1 else "")


def format_energy(row: dict[str, Any]) -> str:
    """Energy per run with its basis: ``"0.42 Wh (measured)"`` or ``"(estimated)"``."""
    wh = row.get("energy_wh")
    if wh is None:
        return "-"
    return f"{wh:.3g} Wh ({'measured' if row.get('energy_measured') else 'estimated'})"
