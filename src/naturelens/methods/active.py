"""Active learning: which photos to label next so the probe learns most per label.

Cold start (no classifier yet): diverse representatives of the embedding space, the
medoids of k-means clusters (the photo nearest each centre, biggest clusters first).
Afterwards: uncertainty with diversity. The probe (the same logistic-regression
pipeline as :mod:`naturelens.methods.probe`) is retrained on the labelled embeddings and
re-predicts every photo; the least certain photos (smallest margin between the two most
likely classes) are grouped by k-means and the least certain photo of each group is
picked, so one batch does not ask the same question many times.

Embeddings are streamed in chunks from any source with ``iter_vectors()`` and
``load(ids)`` (an :class:`~naturelens.models.embedding.EmbeddingSet`, or
:class:`ArrayVectors` for vectors in memory); only the labelled vectors, a short list of
candidates and per-photo scores are held, so retraining over a large collection needs
memory for its scores, not for its vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import normalize

from naturelens.methods.probe import make_classifier


class VectorSource(Protocol):
    def iter_vectors(
        self, photo_ids: Sequence[str] | None = None, batch_rows: int = 4096
    ) -> Iterator[tuple[list[str], np.ndarray]]: ...

    def load(self, photo_ids: Sequence[str]) -> tuple[list[str], np.ndarray]: ...


@dataclass
class ArrayVectors:
    """Embeddings held in memory, with the streaming interface of a stored set."""

    ids: list[str]
    vectors: np.ndarray

    def iter_vectors(
        self, photo_ids: Sequence[str] | None = None, batch_rows: int = 4096
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        rows = range(len(self.ids))
        if photo_ids is not None:
            wanted = set(photo_ids)
            rows = [i for i in rows if self.ids[i] in wanted]
        rows = list(rows)
        for start in range(0, len(rows), batch_rows):
            take = rows[start : start + batch_rows]
            yield [self.ids[i] for i in take], self.vectors[take]

    def load(self, photo_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        index = {pid: i for i, pid in enumerate(self.ids)}
        found = [pid for pid in photo_ids if pid in index]
        return found, self.vectors[[index[p] for p in found]]


def medoids(source: VectorSource, n: int, seed: int = 0, batch_rows: int = 4096) -> list[str]:
    """Photos nearest the centres of ``n`` k-means clusters, biggest cluster first.

    Two streaming passes: mini-batch k-means on unit vectors, then the nearest photo
    to each centre.
    """
    km = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=1024)
    seen = 0
    pending: list[np.ndarray] = []
    for _, x in source.iter_vectors(batch_rows=batch_rows):
        # partial_fit needs at least n rows in its first call; gather small chunks.
        pending.append(normalize(x))
        seen += len(x)
        if sum(len(p) for p in pending) >= n:
            km.partial_fit(np.concatenate(pending))
            pending = []
    if seen < n:
        raise ValueError(f"{seen} photos have embeddings; cannot pick {n} representatives")
    if pending and hasattr(km, "cluster_centers_"):
        km.partial_fit(np.concatenate(pending))
    centres = km.cluster_centers_
    best = np.full(n, np.inf)
    best_id: list[str | None] = [None] * n
    sizes = np.zeros(n, dtype=np.int64)
    for ids, x in source.iter_vectors(batch_rows=batch_rows):
        d = ((normalize(x)[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        nearest = d.argmin(axis=1)
        sizes += np.bincount(nearest, minlength=n)
        rows = d.argmin(axis=0)
        for c in range(n):
            if d[rows[c], c] < best[c]:
                best[c], best_id[c] = d[rows[c], c], ids[rows[c]]
    order = np.argsort(-sizes, kind="stable")
    return [best_id[c] for c in order if best_id[c] is not None]


@dataclass
class CurvePoint:
    """One retraining: labels used and the cross-validated accuracy estimate on them."""

    labels: int
    accuracy: float | None


class ActiveQueue:
    """The "label next" queue over a set of embeddings.

    Parameters
    ----------
    source
        The photos' embeddings.
    classes
        Class ids in taxonomy order.
    candidates
        How many uncertain photos per wanted pick go into the diversity step.
    seed
        Seed for k-means.

    Attributes
    ----------
    classifier_
        The probe trained by the last :meth:`update` (None before two classes are labelled).
    ids_, predicted_, confidence_, margin_
        Every photo's predicted class id, its probability and the margin between the two
        most likely classes, from the last :meth:`update`.
    curve_
        One :class:`CurvePoint` per retraining.
    """

    def __init__(
        self, source: VectorSource, classes: Sequence[str], candidates: int = 10, seed: int = 0
    ):
        self.source = source
        self.classes = list(classes)
        self.candidates = candidates
        self.seed = seed
        self.classifier_ = None
        self.ids_: list[str] = []
        self.predicted_ = np.zeros(0, dtype=object)
        self.confidence_ = np.zeros(0, dtype=np.float32)
        self.margin_ = np.zeros(0, dtype=np.float32)
        self.curve_: list[CurvePoint] = []
        self._medoids: dict[int, list[str]] = {}
        self._count: int | None = None
        self._index: dict[str, int] = {}

    def update(self, labels: dict[str, str]) -> ActiveQueue:
        """Retrain the probe on the labelled photos and re-predict every photo."""
        ids, x = self.source.load(sorted(labels))
        y = np.array([labels[i] for i in ids])
        if len(set(y)) < 2:
            self.classifier_ = None
            return self
        clf = make_classifier("logreg", C=1.0).fit(x, y)
        self.classifier_ = clf
        self.curve_.append(CurvePoint(len(y), _cv_accuracy(x, y, self.seed)))
        all_ids: list[str] = []
        pred, conf, margin = [], [], []
        known = np.asarray(clf.classes_)
        for chunk_ids, chunk in self.source.iter_vectors():
            p = clf.predict_proba(chunk)
            top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[p * 0, p]
            all_ids.extend(chunk_ids)
            pred.append(known[p.argmax(axis=1)])
            conf.append(top2[:, 1])
            margin.append(top2[:, 1] - top2[:, 0])
        self.ids_ = all_ids
        self._index = {pid: i for i, pid in enumerate(all_ids)}
        self.predicted_ = np.concatenate(pred) if pred else np.zeros(0, dtype=object)
        self.confidence_ = np.concatenate(conf).astype(np.float32) if conf else self.confidence_
        self.margin_ = np.concatenate(margin).astype(np.float32) if margin else self.margin_
        return self

    def next(self, n: int, labelled: set[str] | Sequence[str]) -> list[str]:
        """Up to ``n`` unlabelled photos to label next, most useful first."""
        done = set(labelled)
        if self.classifier_ is None:
            return self._cold_start(n, done)
        open_rows = np.array([pid not in done for pid in self.ids_], dtype=bool)
        rows = np.flatnonzero(open_rows)
        if len(rows) == 0:
            return []
        want = min(len(rows), n * self.candidates)
        shortlist = rows[np.argpartition(self.margin_[rows], want - 1)[:want]]
        margin = {self.ids_[i]: float(self.margin_[i]) for i in shortlist}
        ids = sorted(margin, key=margin.__getitem__)
        if len(ids) <= n:
            return ids
        found, x = self.source.load(ids)
        groups = KMeans(n_clusters=n, random_state=self.seed, n_init=3).fit_predict(normalize(x))
        picks = []
        for g in range(n):
            members = [pid for pid, gg in zip(found, groups, strict=True) if gg == g]
            if members:
                picks.append(min(members, key=lambda pid: margin[pid]))
        return sorted(picks, key=lambda pid: margin[pid])

    def _cold_start(self, n: int, done: set[str]) -> list[str]:
        if self._count is None:
            self._count = sum(len(ids) for ids, _ in self.source.iter_vectors())
        k = min(n + len(done), self._count)
        if k < 1:
            return []
        if k not in self._medoids:
            self._medoids[k] = medoids(self.source, k, seed=self.seed)
        return [pid for pid in self._medoids[k] if pid not in done][:n]

    def prediction(self, photo_id: str) -> tuple[str, float] | None:
        """The last retraining's class and confidence for one photo."""
        i = self._index.get(photo_id)
        if i is None:
            return None
        return str(self.predicted_[i]), float(self.confidence_[i])


CV_LABELS = 2000


def _cv_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """Stratified cross-validated accuracy of the probe on the labels so far (on a random
    sample of at most ``CV_LABELS`` of them, so the estimate stays cheap)."""
    if len(y) > CV_LABELS:
        keep = np.random.default_rng(seed).choice(len(y), CV_LABELS, replace=False)
        x, y = x[keep], y[keep]
    _, counts = np.unique(y, return_counts=True)
    folds = int(min(5, counts.min()))
    if folds < 2:
        return None
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(make_classifier("logreg"), x, y, cv=cv).mean())
