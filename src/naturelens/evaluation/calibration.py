"""Confidences that mean what they say: calibration and conformal prediction sets.

Both are fitted on *held-out* labelled predictions (photos the method did not train on:
the test photos of k-shot draws or the out-of-fold photos of cross-validation) and then
applied to the predictions of the whole collection.

- Temperature scaling (scikit-learn's ``CalibratedClassifierCV(method="temperature")``)
  rescales a method's scores so that, among photos predicted with confidence 0.8, about
  80 % are right. Expected calibration error (ECE) says how far from that a method is.
- Split conformal prediction (MAPIE's ``SplitConformalClassifier``) gives each photo the
  smallest set of classes that contains its true class with a chosen probability
  (``coverage``). A one-class set is a confident answer; a larger set is a photo a person
  should look at; an empty set, or one with every class, means "not sure".

The methods' scores are the input features of a frozen identity classifier, so the
libraries see an ordinary fitted scikit-learn classifier.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from naturelens.errors import NaturelensError

# Fewer held-out labelled predictions than this give a calibration that is mostly noise.
MIN_CALIBRATION_PHOTOS = 20


class CalibrationError(NaturelensError, ValueError):
    """Calibration or conformal prediction cannot be fitted as asked."""


def _scores_classifier(classes: Sequence[str]):
    """A fitted scikit-learn classifier whose input *is* the per-class score matrix."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class StoredScores(ClassifierMixin, BaseEstimator):
        def __init__(self, classes=None):
            self.classes = classes

        def fit(self, X, y=None):
            self.classes_ = np.asarray(self.classes)
            self.n_features_in_ = len(self.classes_)
            return self

        def predict_proba(self, X):
            return np.asarray(X, dtype=np.float64)

        def predict(self, X):
            return self.classes_[np.asarray(X).argmax(axis=1)]

    return StoredScores(list(classes)).fit(None)


def _check_held_out(scores: np.ndarray, gold: Sequence[str], classes: Sequence[str], what: str):
    if len(gold) < MIN_CALIBRATION_PHOTOS:
        raise CalibrationError(
            f"{what} needs at least {MIN_CALIBRATION_PHOTOS} held-out labelled photos; "
            f"there are {len(gold)}",
            "label more photos (or use --shots with fewer shots, so more are held out)",
        )
    missing = sorted(set(classes) - set(gold))
    if missing:
        raise CalibrationError(
            f"{what}: no held-out labelled photo of class(es) {', '.join(missing)}",
            "label a few photos of every class",
        )
    unknown = sorted(set(gold) - set(classes))
    if unknown:
        raise CalibrationError(f"{what}: labels {unknown} are not scored classes")
    assert scores.shape == (len(gold), len(classes)), scores.shape


def normalise_scores(scores: np.ndarray) -> np.ndarray:
    """Rows that sum to one (scores of methods that do not give probabilities)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = s.sum(axis=1, keepdims=True)
    uniform = np.full_like(s, 1.0 / max(s.shape[1], 1))
    return np.where(total > 0, s / np.where(total > 0, total, 1.0), uniform)


@dataclass
class Temperature:
    """A fitted temperature: scores become ``softmax(log(scores) / temperature)``."""

    temperature: float

    def apply(self, scores: np.ndarray) -> np.ndarray:
        logits = np.log(np.clip(normalise_scores(scores), 1e-12, None)) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def fit_temperature(scores: np.ndarray, gold: Sequence[str], classes: Sequence[str]) -> Temperature:
    """Temperature scaling fitted on held-out predictions (rows of ``scores`` per photo,
    columns ``classes``; ``gold`` the true class of each row)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import KFold

    scores = normalise_scores(scores)
    _check_held_out(scores, gold, classes, "calibration")
    # The classifier is frozen, so the folds only re-read the scores: plain folds keep
    # scikit-learn from refusing classes with fewer photos than stratified folds need.
    fitted = CalibratedClassifierCV(
        FrozenEstimator(_scores_classifier(classes)),
        method="temperature",
        ensemble=False,
        cv=KFold(2),
    ).fit(scores, np.asarray(gold))
    beta = float(fitted.calibrated_classifiers_[0].calibrators[0].beta_)
    return Temperature(1.0 / beta if beta > 0 else 1.0)


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """The share-weighted gap between confidence and accuracy over equal-width bins."""
    return sum(
        b["share"] * abs(b["accuracy"] - b["confidence"])
        for b in reliability(confidence, correct, bins)
    )


def reliability(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin: its range, share of photos, mean confidence and accuracy
    (the points of a reliability diagram); empty bins are left out."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if not len(conf):
        return []
    index = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "share": float(mask.mean()),
                    "photos": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(hit[mask].mean()),
                }
            )
    return out


def calibration_report(
    scores: np.ndarray, gold: Sequence[str], classes: Sequence[str], temperature: Temperature
) -> dict:
    """ECE and reliability bins before and after calibration, on these held-out photos."""
    raw = normalise_scores(scores)
    cal = temperature.apply(raw)
    truth = np.asarray(gold)
    names = np.asarray(classes)
    out = {"temperature": temperature.temperature, "photos": len(truth)}
    for key, p in (("raw", raw), ("calibrated", cal)):
        conf = p.max(axis=1)
        correct = names[p.argmax(axis=1)] == truth
        out[key] = {
            "ece": expected_calibration_error(conf, correct),
            "reliability": reliability(conf, correct),
        }
    return out


def check_coverage(coverage: float) -> float:
    """``coverage`` as a float in (0, 1), or a clear error."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise CalibrationError(
            f"coverage must be between 0 and 1 (exclusive), not {coverage!r}",
            "e.g. --coverage 0.9 for sets that hold the true class 9 times in 10",
        )
    return value


class PredictionSets:
    """Split conformal prediction sets (MAPIE), fitted on held-out labelled predictions."""

    def __init__(self, coverage: float = 0.9):
        self.coverage = coverage

    def fit(self, scores: np.ndarray, gold: Sequence[str], classes: Sequence[str]):
        from mapie.classification import SplitConformalClassifier

        self.coverage = check_coverage(self.coverage)
        scores = normalise_scores(scores)
        _check_held_out(scores, gold, classes, "conformal prediction")
        # With n calibration photos the finite-sample quantile exists only when
        # n >= 1 / (1 - coverage) - 1; below that every set would hold every class.
        needed = int(np.ceil(1.0 / (1.0 - self.coverage))) - 1
        if len(gold) < needed:
            raise CalibrationError(
                f"coverage {self.coverage} needs at least {needed} held-out labelled photos; "
                f"there are {len(gold)}",
                "label more photos or ask for a lower --coverage",
            )
        self.classes_ = list(classes)
        self.model_ = SplitConformalClassifier(
            estimator=_scores_classifier(classes),
            confidence_level=self.coverage,
            conformity_score="lac",
            prefit=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model_.conformalize(scores, np.asarray(gold))
        self.n_calibration_ = len(gold)
        return self

    def predict(self, scores: np.ndarray) -> list[list[str]]:
        """The set of classes for each row of ``scores``."""
        if not len(scores):
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, sets = self.model_.predict_set(normalise_scores(scores))
        names = np.asarray(self.classes_)
        return [list(names[row]) for row in sets[:, :, 0]]


def set_report(sets: Sequence[Sequence[str]], gold: Sequence[str]) -> dict[str, float]:
    """Empirical coverage and mean set size of prediction sets against true classes."""
    if not sets:
        return {"coverage": float("nan"), "mean_size": float("nan"), "photos": 0}
    hits = [g in s for s, g in zip(sets, gold, strict=True)]
    sizes = [len(s) for s in sets]
    return {
        "coverage": float(np.mean(hits)),
        "mean_size": float(np.mean(sizes)),
        "single": float(np.mean([n == 1 for n in sizes])),
        "photos": len(sets),
    }
