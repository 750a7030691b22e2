"""Evaluation protocols: k labelled photos per class repeated over seeds, a stratified
holdout, or stratified cross-validation when labels are plenty."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def kshot_split(labels: dict[str, str], shots: int, seed: int) -> tuple[list[str], list[str]]:
    """Draw ``shots`` labelled photos per class for training; the rest are for testing.

    The draw depends only on the photo ids, their labels and ``seed``, so every method
    compared under the same seed sees the same split.

    Raises
    ------
    ValueError
        When a class has no more than ``shots`` labelled photos (nothing would be left
        to test on).
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for pid, cls in sorted(labels.items()):
        by_class[cls].append(pid)
    short = {c: len(v) for c, v in by_class.items() if len(v) <= shots}
    if short:
        raise ValueError(
            f"--shots {shots} needs more than {shots} labelled photos in every class; "
            f"these have too few: {short}"
        )
    rng = np.random.default_rng(seed)
    train: list[str] = []
    for cls in sorted(by_class):
        ids = by_class[cls]
        train.extend(ids[i] for i in rng.choice(len(ids), size=shots, replace=False))
    chosen = set(train)
    test = [pid for pid in sorted(labels) if pid not in chosen]
    return sorted(train), test


def holdout_split(
    labels: dict[str, str], test_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A stratified split of the labelled photos into train and test."""
    from sklearn.model_selection import train_test_split

    ids = sorted(labels)
    train, test = train_test_split(
        ids, test_size=test_fraction, random_state=seed, stratify=[labels[i] for i in ids]
    )
    return sorted(train), sorted(test)


def cv_splits(
    labels: dict[str, str], folds: int, seed: int = 0
) -> list[tuple[list[str], list[str]]]:
    """``folds``-fold cross-validation: every labelled photo is tested once.

    Folds are stratified by class when every class has ``folds`` labelled photos or more;
    otherwise they are plain shuffled folds, and a class with a single labelled photo is
    missing from the training side when that photo is tested (the estimate is then on the
    pessimistic side, never flattering).

    Raises
    ------
    ValueError
        With fewer than 2 folds or fewer labelled photos than folds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    ids = sorted(labels)
    y = [labels[i] for i in ids]
    if folds < 2 or len(ids) < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {max(folds, 2)} labelled photos; "
            f"there are {len(ids)}"
        )
    smallest = min(y.count(c) for c in set(y))
    if smallest >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(ids, y)
    else:
        parts = KFold(n_splits=folds, shuffle=True, random_state=seed).split(ids)
    return [(sorted(ids[i] for i in tr), sorted(ids[i] for i in te)) for tr, te in parts]


def default_folds(labels: dict[str, str], most: int = 5) -> int:
    """Folds for cross-validation: ``most``, fewer when a class (or the whole set) has fewer
    photos, never under 2; 0 when there are too few labelled photos (under 4) to estimate."""
    if len(labels) < 4 or len(set(labels.values())) < 2:
        return 0
    values = list(labels.values())
    smallest = min(values.count(c) for c in set(values))
    return max(2, min(most, smallest)) if smallest >= 2 else min(most, len(labels))
