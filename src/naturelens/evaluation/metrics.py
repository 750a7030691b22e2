"""How good a run is: predictions scored against the gold labels.

Every photo that has both a gold label and a prediction in the run is scored. A
prediction that names no class (status ``failed`` or ``unparsed``) counts as wrong: it
lands in a "(no class)" column of the confusion matrix, lowers accuracy and recall, and
the number of such photos is reported beside the scores. A ``rejected`` prediction (open
set) counts as a prediction of the taxonomy's open-set class.

Scores: accuracy, balanced accuracy, macro and weighted F1, per-class precision, recall
and F1, the confusion matrix and Cohen's kappa, each headline score with a 95 %
percentile bootstrap interval (seeded, resamples computed together as a stack of
confusion matrices). Cluster runs also get Hungarian-matched accuracy, NMI and ARI, and
open-set runs rejection precision and recall.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from naturelens.evaluation.clusters import cluster_scores
from naturelens.taxonomy import Taxonomy
from naturelens.workspace.core import (
    PREDICTION_STATUSES,
    Prediction,
    Workspace,
    WorkspaceError,
)

NO_CLASS = "(no class)"
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "kappa")
COUNTING_NOTE = (
    "{n} photo(s) failed, unparsed, unnamed or noise: they count as wrong (column "
    "'(no class)'); "
    "rejected photos count as the open-set class"
)

# A run whose most frequent answer covers this share of the test photos is flagged as
# collapsed: on imbalanced photos it scores the majority baseline while naming no class.
COLLAPSE_SHARE = 0.9

# Resample in chunks so that (resamples x photos) indices stay below this many numbers.
_CHUNK_CELLS = 4_000_000


class EvaluationError(WorkspaceError):
    """A run cannot be evaluated (no gold labels among its photos, unknown run...)."""


# ---------------------------------------------------------------------------- mapping
def predicted_class(pred: Prediction, taxonomy: Taxonomy) -> str:
    """The class a prediction stands for when scored: its class, the open-set class
    for a rejection, or :data:`NO_CLASS` when it names none."""
    if pred.status == "ok":
        return pred.class_id  # type: ignore[return-value]
    if pred.status == "rejected" and taxonomy.open_set is not None:
        return taxonomy.open_set.id
    return NO_CLASS


def class_order(taxonomy: Taxonomy, *seen: Iterable[str]) -> list[str]:
    """Classes that occur in ``seen``, in taxonomy order (unknown ids last, sorted)."""
    present = set().union(*map(set, seen)) - {NO_CLASS}
    known = [c for c in taxonomy.all_ids if c in present]
    return known + sorted(present - set(known))


# ---------------------------------------------------------------------------- metrics
def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Counts of (gold, predicted) pairs: rows ``labels``, columns ``labels`` + (no class).

    Predictions outside ``labels`` fall in the last column.
    """
    codes_true, codes_pred = _encode(y_true, y_pred, labels)
    m = len(labels) + 1
    return np.bincount(codes_true * m + codes_pred, minlength=m * m).reshape(m, m)[: len(labels)]


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Headline and per-class scores from one confusion matrix or a stack of them.

    ``cm`` has shape ``(..., K, K + 1)``: rows are gold classes, columns the same classes
    plus a last "(no class)" column. Undefined ratios (a class never predicted, never
    present) are 0, as scikit-learn's ``zero_division=0``; averages run over the classes
    that occur (macro F1: in gold or predictions; balanced accuracy: in gold), as
    scikit-learn does with its default labels.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[-2]
    n = cm.sum(axis=(-2, -1))
    diag = np.diagonal(cm[..., :k], axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm[..., :k].sum(axis=-2)
    no_class = cm[..., k].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, diag / support, 0.0)
        precision = np.where(predicted > 0, diag / predicted, 0.0)
        both = support + predicted
        f1 = np.where(both > 0, 2 * diag / both, 0.0)
        present = both > 0
        in_gold = support > 0
        macro_f1 = (f1 * present).sum(-1) / present.sum(-1)
        weighted_f1 = (f1 * support).sum(-1) / support.sum(-1)
        balanced = (recall * in_gold).sum(-1) / in_gold.sum(-1)
        accuracy = diag.sum(-1) / n
        # Kappa's chance agreement: gold marginals times predicted marginals, where the
        # "(no class)" column has no gold counterpart and so adds nothing.
        expected = (support * predicted).sum(-1) / n**2
        kappa = np.where(expected < 1, (accuracy - expected) / (1 - expected), np.nan)
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "kappa": kappa,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": predicted,
        "no_class": no_class,
    }


def bootstrap_intervals(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the headline scores.

    Photos are resampled with replacement ``n_resamples`` times (seeded, so the same
    inputs give the same intervals); each resample's confusion matrix is built with one
    ``bincount`` over a block of resamples, so the cost is a few array passes.

    Returns
    -------
    dict
        score name -> (low, high), for the names in :data:`HEADLINE`.
    """
    codes_true, codes_pred = _encode(y_true, y_pred, labels)
    n = len(codes_true)
    if n == 0 or n_resamples < 1:
        return {}
    k, m = len(labels), len(labels) + 1
    pair = codes_true * m + codes_pred
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    values: dict[str, list[np.ndarray]] = {name: [] for name in HEADLINE}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = pair[idx] + (np.arange(b) * m * m)[:, None]
        cms = np.bincount(flat.ravel(), minlength=b * m * m).reshape(b, m, m)[:, :k]
        scores = scores_from_confusion(cms)
        for name in HEADLINE:
            values[name].append(scores[name])
        done += b
    alpha = (1 - level) / 2 * 100
    out = {}
    for name in HEADLINE:
        v = np.concatenate(values[name])
        v = v[~np.isnan(v)]
        if len(v):
            lo, hi = np.percentile(v, [alpha, 100 - alpha])
            out[name] = (float(lo), float(hi))
    return out


def open_set_scores(
    gold: Sequence[str], rejected: Sequence[bool], open_class: str
) -> dict[str, Any]:
    """Rejection precision and recall: how well "not relevant" photos are set aside.

    Parameters
    ----------
    gold
        Gold class per photo.
    rejected
        Whether the run rejected each photo (status ``rejected``, or the open-set class).
    open_class
        The taxonomy's open-set class id.
    """
    gold_open = np.array([g == open_class for g in gold], dtype=bool)
    rej = np.asarray(rejected, dtype=bool)
    hits = int((gold_open & rej).sum())
    n_rej, n_open = int(rej.sum()), int(gold_open.sum())
    precision = hits / n_rej if n_rej else None
    recall = hits / n_open if n_open else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "open_class": open_class,
        "rejected": n_rej,
        "gold_open": n_open,
        "correctly_rejected": hits,
        "rejection_precision": precision,
        "rejection_recall": recall,
        "rejection_f1": f1,
    }


_CLUSTER = re.compile(r"\bcluster\s*[=:]\s*(-?\d+)")


def cluster_of(pred: Prediction) -> int | None:
    """The cluster a cluster run put the photo in, or None.

    Runs stored before predictions had a ``cluster`` field carried it in ``scores`` or as
    "cluster=N" in ``detail``; those are still read.
    """
    if pred.cluster is not None:
        return pred.cluster
    if pred.scores and "cluster" in pred.scores:
        try:
            return int(pred.scores["cluster"])
        except (TypeError, ValueError):
            pass
    match = _CLUSTER.search(pred.detail or "")
    return int(match.group(1)) if match else None


def baseline_scores(y_true: Sequence[str], y_pred: Sequence[str | None]) -> dict[str, Any]:
    """What always answering one class would score, and whether the run did just that.

    Returns
    -------
    dict
        ``majority_baseline`` (accuracy of always answering the most frequent gold class
        of these photos), ``top_class_share`` (share of photos given the run's most
        frequent answer; photos without a class count in the denominator) and
        ``collapsed`` (that share is at least :data:`COLLAPSE_SHARE` with two or more
        gold classes present).
    """
    n = len(y_true)
    if not n:
        return {"majority_baseline": None, "top_class_share": None, "collapsed": False}
    truth = Counter(y_true)
    named = Counter(c for c in y_pred if c not in (None, NO_CLASS))
    top = max(named.values()) / n if named else 0.0
    return {
        "majority_baseline": max(truth.values()) / n,
        "top_class_share": top,
        "collapsed": bool(len(truth) > 1 and top >= COLLAPSE_SHARE),
    }


# ---------------------------------------------------------------------------- reports
def evaluate_predictions(
    predictions: Iterable[Prediction],
    gold: Mapping[str, str],
    taxonomy: Taxonomy,
    photo_ids: Iterable[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score predictions against gold labels.

    Parameters
    ----------
    predictions
        Predictions of one run (any order).
    gold
        Gold labels, photo id -> class id.
    taxonomy
        The taxonomy (class order, open-set class).
    photo_ids
        Only score these photos (e.g. a protocol's test photos); default: every photo
        with both a prediction and a gold label.
    n_resamples
        Bootstrap resamples for the 95 % intervals (0 to skip them).
    seed
        Seed of the bootstrap.

    Returns
    -------
    dict
        JSON-ready: ``photos``, ``statuses``, the headline scores, ``intervals``,
        ``per_class``, ``confusion``, and ``clusters`` / ``open_set`` when they apply.

    Raises
    ------
    EvaluationError
        When no predicted photo has a gold label.
    """
    wanted = set(photo_ids) if photo_ids is not None else None
    # A photo some ensemble member trained on has no honest prediction: not scored.
    scored = [
        p
        for p in predictions
        if p.photo_id in gold
        and (wanted is None or p.photo_id in wanted)
        and p.status != "training"
    ]
    if not scored:
        raise EvaluationError(
            "no predicted photo has a gold label: label some photos (folder names or a "
            "manifest 'label' column) and predict them, e.g. `naturelens classify --shots K`"
        )
    scored.sort(key=lambda p: p.photo_id)
    y_true = [gold[p.photo_id] for p in scored]
    y_pred = [predicted_class(p, taxonomy) for p in scored]
    labels = class_order(taxonomy, y_true, y_pred)
    cm = confusion_matrix(y_true, y_pred, labels)
    s = scores_from_confusion(cm)
    statuses = Counter(p.status for p in scored)
    no_class = int(sum(n for k, n in statuses.items() if k not in ("ok", "rejected")))
    result: dict[str, Any] = {
        "photos": len(scored),
        # The four classic statuses always; cluster and ensemble statuses when present.
        "statuses": {
            k: int(statuses.get(k, 0))
            for k in PREDICTION_STATUSES
            if k in ("ok", "rejected", "unparsed", "failed") or statuses.get(k)
        },
        "counted_wrong": no_class,
        "note": COUNTING_NOTE.format(n=no_class),
        **{name: _num(s[name]) for name in HEADLINE},
        "intervals": {
            name: list(v)
            for name, v in bootstrap_intervals(
                y_true, y_pred, labels, n_resamples=n_resamples, seed=seed
            ).items()
        },
        "interval_level": 0.95,
        "resamples": n_resamples,
        "per_class": [
            {
                "class": c,
                "name": _name(taxonomy, c),
                "precision": float(s["precision"][i]),
                "recall": float(s["recall"][i]),
                "f1": float(s["f1"][i]),
                "support": int(s["support"][i]),
                "predicted": int(s["predicted"][i]),
            }
            for i, c in enumerate(labels)
        ],
        "confusion": {
            "rows": labels,
            "columns": [*labels, NO_CLASS],
            "matrix": cm.astype(int).tolist(),
        },
        "clusters": None,
        "open_set": None,
        **baseline_scores(y_true, y_pred),
    }
    clusters = [cluster_of(p) for p in scored]
    if any(c is not None for c in clusters):
        pairs = [(g, c) for g, c in zip(y_true, clusters, strict=True) if c is not None]
        result["clusters"] = {
            **cluster_scores([g for g, _ in pairs], [c for _, c in pairs]),
            "photos": len(pairs),
        }
        if not statuses.get("ok") and not statuses.get("rejected"):
            # A cluster run that named no cluster: its clusters are the result, and a
            # class accuracy of 0 would only say that naming was off.
            for name in HEADLINE:
                result[name] = None
            result["intervals"] = {}
            result["note"] = "no cluster was named: scores are those of the clusters"
    if taxonomy.open_set is not None:
        open_id = taxonomy.open_set.id
        rejected = [c == open_id for c in y_pred]
        if any(rejected) or open_id in y_true:
            result["open_set"] = open_set_scores(y_true, rejected, open_id)
    return result


def evaluate_run(
    ws: Workspace,
    run_id: str | None = None,
    photo_ids: Iterable[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a stored run (the latest finished when ``run_id`` is None) against the gold labels.

    See :func:`evaluate_predictions` for the result; it also carries ``run_id``,
    ``method``, the run's parameters and the number of the run's photos without a gold
    label (not scored).
    """
    run = ws.run(run_id)
    # Only labelled photos are scored, so only their predictions are read: memory follows
    # the number of gold labels, not the size of the run.
    preds = ws.predictions(run["run_id"], labelled=True)
    labels = ws.labels()
    gold = {p.photo_id: labels[p.photo_id] for p in preds}
    run_photos = ws.run_totals(run["run_id"])["photos"]
    try:
        result = evaluate_predictions(
            preds, gold, ws.taxonomy, photo_ids=photo_ids, n_resamples=n_resamples, seed=seed
        )
    except EvaluationError as exc:
        raise EvaluationError(f"run {run['run_id']}: {exc}") from None
    return {
        "run_id": run["run_id"],
        "method": run["method"],
        "params": run["params"].get("method", {}),
        "run_photos": int(run_photos),
        "unlabelled_photos": int(run_photos) - len(preds),
        **result,
    }


def _num(x: np.ndarray) -> float | None:
    v = float(x)
    return None if np.isnan(v) else v


def _name(taxonomy: Taxonomy, class_id: str) -> str:
    try:
        return taxonomy.get(class_id).name
    except KeyError:
        return class_id


def _encode(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    index = {c: i for i, c in enumerate(labels)}
    missing = sorted(set(y_true) - set(index))
    if missing:
        raise ValueError(f"gold classes {missing} are not in labels {list(labels)}")
    other = len(labels)
    codes_true = np.fromiter((index[c] for c in y_true), dtype=np.int64, count=len(y_true))
    codes_pred = np.fromiter(
        (index.get(c, other) for c in y_pred), dtype=np.int64, count=len(y_pred)
    )
    return codes_true, codes_pred
