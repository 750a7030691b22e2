"""The user's job: classify a whole collection, with an honest estimate of how well.

:func:`classify_collection` does what ``naturelens classify`` promises:

1. **Every photo gets a prediction.** A method that learns trains on every gold-labelled
   photo (or on ``shots`` per class, the draw of seed 0) and predicts every other photo of
   the workspace; a method that does not learn predicts every photo. That is the
   *collection run*, the one that exports, reports and the review app read.
2. **An accuracy estimate from the labelled photos**, by the research protocol: k-shot
   draws over seeds with ``shots``, otherwise stratified cross-validation (up to 5 folds).
   Those *evaluation runs* predict held-out labelled photos only and are stored as such,
   never mistaken for the collection's predictions. A method that does not learn is scored
   on the labelled photos its collection run predicted; no second run is made.
3. **Calibrated confidence** (temperature scaling) and, with ``coverage``, **prediction
   sets** (split conformal), fitted on the held-out predictions and applied to the
   collection run. ECE before and after, and the empirical coverage and mean set size, are
   measured by two-fold cross-fitting on the held-out photos and stored with the run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from naturelens.evaluation.calibration import (
    MIN_CALIBRATION_PHOTOS,
    CalibrationError,
    PredictionSets,
    check_coverage,
    fit_temperature,
    set_report,
)
from naturelens.evaluation.metrics import evaluate_predictions
from naturelens.evaluation.protocol import default_folds, kshot_split
from naturelens.methods import make_method, run_method
from naturelens.methods.base import MethodError
from naturelens.workspace import Prediction, Workspace

DEFAULT_SEEDS = 5


@dataclass
class Classification:
    """What :func:`classify_collection` made: the collection run and its estimate."""

    run_id: str
    estimate: dict[str, Any] | None
    evaluation_runs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def classify_collection(
    ws: Workspace,
    method_name: str,
    params: dict[str, Any] | None = None,
    shots: int | None = None,
    seeds: int | None = None,
    coverage: float | None = None,
    calibrate: bool = True,
    estimate: bool = True,
    fresh: bool = False,
    progress: Callable | None = None,
    on_split: Callable | None = None,
    ray: Any = None,
) -> Classification:
    """Classify every photo of ``ws`` with a method and estimate its accuracy.

    Parameters
    ----------
    method_name, params
        The method and its parameters (see ``naturelens methods show NAME``).
    shots
        Train on this many labelled photos per class (k-shot); the estimate then comes
        from ``seeds`` k-shot draws. None trains on every labelled photo and estimates by
        cross-validation.
    seeds
        k-shot draws for the estimate (default 5).
    coverage
        Give each photo a conformal prediction set holding its true class with this
        probability (e.g. 0.9).
    calibrate
        Calibrate confidences on held-out labelled predictions where there are enough.
    estimate
        Estimate accuracy from the labelled photos (False skips the evaluation runs, and
        so calibration and prediction sets for methods that learn).
    fresh
        Start new runs even when identical interrupted ones exist.
    progress
        ``progress(description, total)`` -> context manager yielding ``advance(n)``.
    on_split
        Called with each evaluation split's result (a
        :class:`naturelens.evaluation.compare.RunResult`) as soon as it is scored.
    ray
        A :class:`~naturelens.scale.RayOptions`: the method's per-photo model work runs
        on that Ray cluster first (:func:`naturelens.scale.prepare_on_ray`): every
        photo's embedding or description before the estimate, or the prompt method's
        questions, answered into the collection run's ledger before the run continues
        here. None: everything on this machine.
    """
    params = dict(params or {})
    if coverage is not None:
        coverage = check_coverage(coverage)
    if seeds is not None and seeds < 1:
        raise MethodError("--seeds must be at least 1")
    if shots is not None and shots < 1:
        raise MethodError("--shots must be at least 1 (leave it out to learn from every label)")
    method = make_method(method_name, **params)
    stores = False
    if ray is not None:
        from naturelens.scale.methods import STORES, check_on_ray

        check_on_ray(method)  # before any work, in one line
        stores = method_name in STORES
        if stores:  # every run below, evaluation runs included, reads them
            _on_ray(ws, method, ws.photo_ids(), [], ray, None, True, progress)
    gold = ws.labels()
    learns = method.needs_labels
    notes: list[str] = []
    if learns and not gold:
        raise MethodError(
            f"method {method_name!r} needs labelled photos and this workspace has none",
            "label some (folder names, a manifest 'label' column, or `naturelens serve`), "
            "or choose a zero-shot method",
        )
    if learns:
        unlabelled = _classes_without_labels(ws, gold)
        if unlabelled:
            notes.append(
                f"no labelled photo of {', '.join(unlabelled)}: {method_name} learns only the "
                "classes it is shown and will never predict these; label a few of each"
            )

    # 1. The estimate's evaluation runs (methods that learn).
    held_out: list[Prediction] = []
    want_estimate = estimate or coverage is not None
    found: dict[str, Any] | None = None
    evaluation_runs: list[str] = []
    if learns and want_estimate:
        found, held_out, evaluation_runs = _estimate_by_protocol(
            ws, method_name, params, gold, shots, seeds, fresh, progress, notes, on_split
        )

    # 2. The collection run.
    if learns:
        train = kshot_split(gold, shots, 0)[0] if shots else sorted(gold)
    else:
        train = []
    chosen = set(train)
    targets = [p for p in ws.photo_ids() if p not in chosen]
    if not targets:
        notes.append(
            "every photo was used for training, so the run predicts none; its model is "
            "saved for `naturelens predict` and the estimate is stored with it"
        )
    extra = {"purpose": "collection", **({"shots": shots} if shots else {})}
    if ray is not None and not stores:
        # The answers go into the collection run's ledger; the run then goes on here,
        # resumed whatever ``fresh`` says (it is the run just started).
        _on_ray(ws, method, targets, train, ray, extra, not fresh, progress)
        fresh = False
    run_id = _run(ws, method, targets, train, extra, fresh, progress)
    predictions = ws.predictions(run_id)
    if not learns and gold and want_estimate:
        held_out = [p for p in predictions if p.photo_id in gold]
        if held_out:
            found = _score(ws, held_out, gold, "labelled photos the run predicted")
            found["evaluation_runs"] = []

    # 3. Calibration and prediction sets from the held-out predictions.
    if found is not None and not method.calibrated and coverage is not None:
        raise CalibrationError(
            f"{method_name} gives no class probabilities, so it has no prediction sets",
            "leave out --coverage for this method",
        )
    if found is not None and method.calibrated and (calibrate or coverage is not None):
        extra_estimate = _calibrate(
            ws, run_id, predictions, held_out, gold, calibrate, coverage, notes
        )
        found.update(extra_estimate)
    if found is not None:
        ws.update_run_summary(run_id, {"estimate": found})
    failed = sum(p.status == "failed" for p in ws.predictions(run_id))
    if failed:
        notes.append(f"{failed} photo(s) failed; see `naturelens runs show {run_id}`")
    return Classification(run_id, found, evaluation_runs, notes)


# ---------------------------------------------------------------------------- estimate
def _classes_without_labels(ws: Workspace, gold: dict[str, str]) -> list[str]:
    labelled = set(gold.values())
    return [c for c in ws.taxonomy.class_ids if c not in labelled]


def _estimate_by_protocol(
    ws, method_name, params, gold, shots, seeds, fresh, progress, notes, on_split=None
):
    from naturelens.evaluation.compare import MethodSpec, compare

    def stop(spec, seed, exc: Exception) -> None:
        raise exc

    spec = MethodSpec(method_name, params)
    if shots:
        comparison = compare(
            ws,
            [spec],
            shots=shots,
            seeds=seeds or DEFAULT_SEEDS,
            progress=progress,
            on_error=stop,
            fresh=fresh,
            on_result=(lambda spec, result: on_split(result)) if on_split else None,
        )
        protocol = f"{shots}-shot, {seeds or DEFAULT_SEEDS} seed(s)"
    else:
        folds = default_folds(gold)
        if folds < 2:
            notes.append(
                "no accuracy estimate: it needs at least 4 labelled photos of 2 classes or more"
            )
            return None, [], []
        comparison = compare(
            ws,
            [spec],
            folds=folds,
            progress=progress,
            on_error=stop,
            fresh=fresh,
            on_result=(lambda spec, result: on_split(result)) if on_split else None,
        )
        protocol = f"{folds}-fold cross-validation"
    (row,) = comparison.rows
    runs = [r.run_id for r in row.runs]
    # Held-out predictions for calibration: the out-of-fold predictions of
    # cross-validation, or the test photos of the seed-0 draw, whose model is exactly the
    # collection run's (it trains on the same draw).
    chosen = runs if not shots else runs[:1]
    held_out = [p for run_id in chosen for p in ws.predictions(run_id) if p.photo_id in gold]
    per_split = [
        _score(ws, [p for p in ws.predictions(r) if p.photo_id in gold], gold, "") for r in runs
    ]
    estimate = _summarise(per_split, protocol)
    estimate["evaluation_runs"] = runs
    return estimate, held_out, runs


def _score(ws: Workspace, preds: list[Prediction], gold: dict[str, str], protocol: str):
    result = evaluate_predictions(preds, gold, ws.taxonomy, n_resamples=0)
    out = {
        "protocol": protocol,
        "test_photos": len(preds),
        **{
            k: result[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "majority_baseline")
        },
        "top_class_share": result["top_class_share"],
        "collapsed": result["collapsed"],
    }
    if protocol:
        return _summarise([out], protocol)
    return out


def _summarise(per_split: list[dict], protocol: str) -> dict[str, Any]:
    def mean_sd(key):
        xs = [s[key] for s in per_split if s.get(key) is not None]
        if not xs:
            return None, None
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    out: dict[str, Any] = {"protocol": protocol, "splits": len(per_split)}
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "majority_baseline"):
        out[key], out[f"{key}_sd"] = mean_sd(key)
    out["test_photos"] = sum(s["test_photos"] for s in per_split)
    # A run that answers (nearly) one class for everything scores the majority baseline
    # on imbalanced photos: flag it rather than let accuracy flatter it.
    out["collapsed"] = any(s["collapsed"] for s in per_split if s["test_photos"])
    return out


# ---------------------------------------------------------------------------- calibration
def _matrix(preds: list[Prediction], classes: list[str]) -> np.ndarray:
    return np.array(
        [[(p.raw_scores or p.scores or {}).get(c, 0.0) for c in classes] for p in preds]
    )


def _calibrate(ws, run_id, predictions, held_out, gold, calibrate, coverage, notes) -> dict:
    classes = [c for c in ws.taxonomy.all_ids]
    usable = [p for p in held_out if p.status == "ok" and p.scores]
    out: dict[str, Any] = {}
    if len(usable) < MIN_CALIBRATION_PHOTOS:
        message = (
            f"confidence not calibrated: {len(usable)} held-out labelled predictions with "
            f"scores, {MIN_CALIBRATION_PHOTOS} needed"
        )
        if coverage is not None:
            raise CalibrationError(
                message.replace("confidence not calibrated: ", ""),
                "label more photos, or leave out --coverage",
            )
        notes.append(message)
        return out
    scored = [c for c in classes if any(c in (p.scores or {}) for p in usable)]
    X = _matrix(usable, scored)
    y = [gold[p.photo_id] for p in usable]
    if set(y) - set(scored):
        notes.append("confidence not calibrated: some labelled classes have no scores")
        return out
    temperature = fit_temperature(X, y, scored) if calibrate else None
    halves = _cross_fit(X, y, scored, coverage)
    if halves is not None:
        out.update(halves)
    elif coverage is not None:
        notes.append("coverage not measured: too few held-out photos to cross-fit")
    sets = PredictionSets(coverage).fit(X, y, scored) if coverage is not None else None
    targets = [p for p in predictions if p.status == "ok" and (p.raw_scores or p.scores)]
    if targets:
        M = _matrix(targets, scored)
        calibrated = temperature.apply(M) if temperature else None
        predicted_sets = sets.predict(calibrated if calibrated is not None else M) if sets else None
        rows = []
        for i, p in enumerate(targets):
            scores = (
                {c: float(v) for c, v in zip(scored, calibrated[i], strict=True)}
                if calibrated is not None
                else None
            )
            rows.append(
                (p.photo_id, scores, predicted_sets[i] if predicted_sets is not None else None)
            )
        ws.set_calibrated(run_id, rows)
    if temperature is not None:
        out["temperature"] = temperature.temperature
    if coverage is not None:
        out["coverage_target"] = coverage
    return out


def _cross_fit(X, y, classes, coverage) -> dict | None:
    """ECE before/after and set coverage, each half scored by a fit on the other half."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    try:
        halves = list(StratifiedKFold(2, shuffle=True, random_state=0).split(X, y))
    except ValueError:
        return None
    raw_conf, cal_conf, raw_hit, cal_hit, sets, truth = [], [], [], [], [], []
    names = np.asarray(classes)
    for fit_idx, test_idx in halves:
        try:
            t = fit_temperature(X[fit_idx], y[fit_idx], classes)
            s = PredictionSets(coverage).fit(X[fit_idx], y[fit_idx], classes) if coverage else None
        except CalibrationError:
            return None
        raw = X[test_idx] / np.maximum(X[test_idx].sum(axis=1, keepdims=True), 1e-12)
        cal = t.apply(X[test_idx])
        raw_conf += list(raw.max(axis=1))
        cal_conf += list(cal.max(axis=1))
        raw_hit += list(names[raw.argmax(axis=1)] == y[test_idx])
        cal_hit += list(names[cal.argmax(axis=1)] == y[test_idx])
        if s is not None:
            sets += s.predict(cal)
            truth += list(y[test_idx])
    from naturelens.evaluation.calibration import expected_calibration_error, reliability

    out = {
        "calibration": {
            "photos": len(raw_conf),
            "ece_raw": expected_calibration_error(raw_conf, raw_hit),
            "ece_calibrated": expected_calibration_error(cal_conf, cal_hit),
            "reliability_raw": reliability(raw_conf, raw_hit),
            "reliability_calibrated": reliability(cal_conf, cal_hit),
        }
    }
    if sets:
        out["prediction_sets"] = set_report(sets, truth)
    return out


def _run(ws, method, targets, train, extra, fresh, progress) -> str:
    if progress is None or not targets:  # no bar for a run that predicts nothing
        return run_method(ws, method, targets, train, extra_params=extra, resume=not fresh)
    with progress(method.name, len(targets)) as advance:
        return run_method(
            ws, method, targets, train, extra_params=extra, progress=advance, resume=not fresh
        )


def _on_ray(ws, method, targets, train, ray, extra, resume, progress) -> None:
    from naturelens.scale.methods import prepare_on_ray

    total = len(targets) + len(train)  # disjoint: the collection run predicts no training photo
    if progress is None:
        prepare_on_ray(ws, method, targets, train, ray, extra, resume)
        return
    with progress(f"{method.name} on Ray", total) as advance:
        prepare_on_ray(ws, method, targets, train, ray, extra, resume, advance)


def retry_failed(ws: Workspace, run_id: str, progress: Callable | None = None) -> str:
    """Send again only the photos that failed in ``run_id`` (after an outage, a bad key).

    The run's other predictions are kept and nothing else is asked again; the run is
    resumed under its own id with its own parameters.

    Returns
    -------
    str
        The run id (the same run).
    """
    record = ws.run(run_id)
    params = record["params"]
    predicted = sorted(ws.done_photo_ids(run_id))
    if len(predicted) != params.get("predict"):
        raise MethodError(
            f"run {run_id} did not finish ({len(predicted)} of {params.get('predict')} photos)",
            "run the same classify command again: it resumes where the run stopped",
        )
    if not ws.prediction_failures(run_id):
        raise MethodError(f"run {run_id} has no failed photos")
    # Hidden parameters (API keys) come from the environment again.
    stored = {k: (None if v == "<hidden>" else v) for k, v in params["method"].items()}
    method = make_method(record["method"], **stored)
    extra = {k: v for k, v in params.items() if k not in ("method", "train", "predict")}
    ws.forget_failed_predictions(run_id)
    return _run(ws, method, predicted, params["train"], extra, False, progress)


__all__ = ["Classification", "classify_collection", "retry_failed"]
