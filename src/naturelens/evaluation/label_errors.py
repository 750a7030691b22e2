"""Gold labels that look wrong: where out-of-sample predictions disagree with them.

The probe is trained by cross-validation on the labelled embeddings, so each photo's
class probabilities come from a model that never saw its label; cleanlab's confident
learning then flags the labels that those probabilities contradict, ranked by how
little the label is believed. The list is for a second look, not for automatic change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from naturelens.errors import NaturelensError
from naturelens.methods.probe import make_classifier


class LabelErrorsError(NaturelensError, ValueError):
    """Too few labels to look for label errors."""


def find_label_errors(
    photo_ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str], folds: int = 5
) -> list[dict[str, Any]]:
    """Photos whose gold label out-of-sample predictions contradict, most doubtful first.

    Parameters
    ----------
    photo_ids, vectors, labels
        Labelled photos, their embeddings and their gold class ids. Classes with fewer
        than two labels are left out (they cannot be cross-validated).
    folds
        Cross-validation folds (fewer when a class has fewer labels).

    Returns
    -------
    list of dict
        ``photo_id``, ``label`` (given), ``suggested`` (the most likely class out of
        sample), ``quality`` (cleanlab's self-confidence of the given label, 0 to 1).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    keep_classes = classes[counts >= 2]
    if len(keep_classes) < 2:
        raise LabelErrorsError(
            "label errors need at least two classes with two labels each",
            "label more photos first",
        )
    keep = np.isin(y, keep_classes)
    ids = [pid for pid, k in zip(photo_ids, keep, strict=True) if k]
    x, y = vectors[keep], y[keep]
    index = {c: i for i, c in enumerate(keep_classes)}
    y_int = np.array([index[c] for c in y])
    n_folds = int(min(folds, counts[counts >= 2].min()))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=0)
    probs = cross_val_predict(make_classifier("logreg"), x, y, cv=cv, method="predict_proba")
    issues = find_label_issues(y_int, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(y_int, probs)
    return [
        {
            "photo_id": ids[i],
            "label": str(y[i]),
            "suggested": str(keep_classes[int(probs[i].argmax())]),
            "quality": float(quality[i]),
        }
        for i in issues
    ]
