"""Evaluation protocols: k labelled photos per class, repeated over seeds."""

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
