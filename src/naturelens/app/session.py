"""What the review app holds while it runs: the open workspace, the active-learning
queue over cached embeddings, the 2-D map of those embeddings.

One lock serialises catalog access (one DuckDB connection serves every request thread).
The probe retrains in a background thread after every few labels, reading embeddings
from their Parquet store, so labelling never waits for it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import IncrementalPCA
from sklearn.preprocessing import normalize

from naturelens.errors import NaturelensError
from naturelens.methods.active import ActiveQueue
from naturelens.models.embedding import embedding_set
from naturelens.workspace.core import Workspace
from naturelens.workspace.embeddings import EMBEDDINGS, EmbeddingSet

MAP_POINTS = 20_000


class NoEmbeddingsError(NaturelensError, ValueError):
    """The workspace has no stored embeddings for the queue, the map or label errors."""


def stored_embeddings(ws: Workspace, model: str | None = None) -> EmbeddingSet | None:
    """The embedding set named by ``model``, else the stored set with the newest meta."""
    if model:
        emb = embedding_set(ws, model)
        return emb if emb.parts() else None
    root = ws.root / EMBEDDINGS
    metas = sorted(root.glob("*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        emb = EmbeddingSet(
            meta_path.parent,
            meta.get("model", ""),
            meta.get("pooling", ""),
            meta.get("dim"),
            meta=meta,
        )
        if emb.parts():
            return emb
    return None


@dataclass
class MapPoints:
    """A deterministic sample of photos placed in 2-D by PCA of their embeddings."""

    ids: list[str]
    xy: np.ndarray
    explained: list[float]


class ReviewSession:
    """The review app's state over one workspace.

    Parameters
    ----------
    ws
        The open workspace.
    model
        Embedding model whose stored vectors drive the queue, the map and label errors
        (default: the newest stored set).
    retrain_every
        Review labels between two retrainings of the probe.
    """

    def __init__(self, ws: Workspace, model: str | None = None, retrain_every: int = 5):
        self.ws = ws
        self.lock = threading.RLock()
        self.retrain_every = retrain_every
        self.embeddings = stored_embeddings(ws, model)
        self.model = model
        self.queue = ActiveQueue(self.embeddings, ws.taxonomy.all_ids) if self.embeddings else None
        self._since_retrain = 0
        self._train_lock = threading.Lock()
        self._trainer: threading.Thread | None = None
        self.retrain_seconds: float | None = None
        self._map: MapPoints | None = None

    def need_embeddings(self) -> EmbeddingSet:
        if self.embeddings is None:
            raise NoEmbeddingsError(
                f"{self.ws.root}: no stored embeddings",
                f"compute them first: naturelens embed {self.ws.root} --model efficientnet-lite0",
            )
        return self.embeddings

    # -------------------------------------------------------------- labels
    def label(
        self, labels: dict[str, str | None], user: str | None, source: str
    ) -> dict[str, str | None]:
        """Record review labels; returns each photo's previous label (for undo)."""
        with self.lock:
            current = self.ws.labels()
            previous = {pid: current.get(pid) for pid in labels}
            self.ws.set_labels(labels, origin="review", user=user or None, source=source)
        self._since_retrain += len(labels)
        if self.queue is not None and self._since_retrain >= self.retrain_every:
            self.retrain_in_background()
        return previous

    # -------------------------------------------------------------- active learning
    def retrain(self) -> None:
        """Retrain the probe on the current labels and re-predict every photo (blocking)."""
        queue = self.queue
        if queue is None:
            self.need_embeddings()
            return
        with self._train_lock:
            with self.lock:
                labels = self.ws.labels()
            self._since_retrain = 0
            start = time.perf_counter()
            queue.update(labels)
            self.retrain_seconds = time.perf_counter() - start

    def retrain_in_background(self) -> None:
        if self._trainer is not None and self._trainer.is_alive():
            return
        self._trainer = threading.Thread(target=self.retrain, name="retrain", daemon=True)
        self._trainer.start()

    def wait_for_training(self, timeout: float | None = None) -> None:
        if self._trainer is not None:
            self._trainer.join(timeout)

    def next_photos(self, n: int) -> dict[str, Any]:
        """The photos to label next and how they were chosen."""
        self.need_embeddings()
        assert self.queue is not None
        with self.lock:
            labelled = set(self.ws.labels())
        with self._train_lock:
            mode = "uncertain" if self.queue.classifier_ is not None else "representative"
            picks = self.queue.next(n, labelled)
        return {"photo_ids": picks, "mode": mode}

    def curve(self) -> list[dict[str, Any]]:
        if self.queue is None:
            return []
        return [{"labels": p.labels, "accuracy": p.accuracy} for p in self.queue.curve_]

    def active_prediction(self, photo_id: str) -> dict[str, Any] | None:
        if self.queue is None or self.queue.classifier_ is None:
            return None
        found = self.queue.prediction(photo_id)
        return {"class_id": found[0], "confidence": found[1]} if found else None

    # -------------------------------------------------------------- map
    def map_points(self) -> MapPoints:
        """PCA of the embeddings to 2-D, fitted and applied in streamed chunks."""
        emb = self.need_embeddings()
        if self._map is None:
            pca = IncrementalPCA(n_components=2)
            leftover = None
            for _, x in emb.iter_vectors():
                x = normalize(x)
                if leftover is not None:
                    x = np.concatenate([leftover, x])
                    leftover = None
                if len(x) < 2:  # a chunk must have more rows than components
                    leftover = x
                    continue
                pca.partial_fit(x)
            if not hasattr(pca, "components_"):
                raise NoEmbeddingsError("too few embeddings for a map", "embed more photos")
            ids: list[str] = []
            chunks = []
            for chunk_ids, x in emb.iter_vectors():
                ids.extend(chunk_ids)
                chunks.append(pca.transform(normalize(x)).astype(np.float32))
            xy = np.concatenate(chunks)
            if len(ids) > MAP_POINTS:
                keep = np.sort(np.random.default_rng(0).choice(len(ids), MAP_POINTS, replace=False))
                ids, xy = [ids[i] for i in keep], xy[keep]
            self._map = MapPoints(ids, xy, [float(v) for v in pca.explained_variance_ratio_])
        return self._map
