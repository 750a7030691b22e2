"""probe: a light classifier on frozen backbone embeddings.

Embeddings come from the workspace's cache (computed once per backbone by the embedding
engine), so probing is cheap enough to repeat over many seeds and shot counts. Three
classifiers: multinomial logistic regression (the linear probe), k nearest neighbours
(cosine) and nearest class mean (a prototype per class).

This module also holds what every trained method shares: saving a fitted method as a
model folder, and :class:`SavedModel`, which applies a saved folder to new photos.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from naturelens._version import __version__
from naturelens.methods.base import Method, PhotoSet
from naturelens.workspace.core import Prediction, Workspace, now

CLASSIFIERS = ("logreg", "knn", "ncm")
METHOD_FILE = "method.json"


# --------------------------------------------------------------------------- classifiers


class NearestClassMean(ClassifierMixin, BaseEstimator):
    """Nearest class mean on unit vectors: one prototype per class, cosine similarity.

    Parameters
    ----------
    temperature
        Softmax temperature turning cosine similarities into probabilities.
    """

    def __init__(self, temperature: float = 0.05):
        self.temperature = temperature

    def fit(self, X: np.ndarray, y: Sequence[str]) -> NearestClassMean:
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        means = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        self.centroids_ = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        sims = X @ self.centroids_.T / self.temperature
        sims -= sims.max(axis=1, keepdims=True)
        p = np.exp(sims)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def make_classifier(
    kind: str, C: float = 1.0, k: int = 10, normalize: bool = True, n_train: int = 0
) -> Pipeline:
    """The probe's classifier as a scikit-learn pipeline.

    Parameters
    ----------
    kind
        ``logreg``, ``knn`` or ``ncm``.
    C
        Inverse regularisation strength of the logistic regression.
    k
        Neighbours for ``knn`` (at most the number of training photos).
    normalize
        Scale every embedding to unit length first (cosine geometry).
    """
    if kind not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, not {kind!r}")
    steps: list[Any] = [Normalizer()] if normalize else []
    if kind == "logreg":
        steps += [StandardScaler(), LogisticRegression(C=C, max_iter=5000)]
    elif kind == "knn":
        neighbours = max(1, min(int(k), n_train or int(k)))
        steps.append(
            KNeighborsClassifier(n_neighbors=neighbours, weights="distance", metric="cosine")
        )
    else:
        steps.append(NearestClassMean())
    return make_pipeline(*steps)


# --------------------------------------------------------------------------- model folders


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.+-]+", "-", Path(text).name if os.sep in text else text).strip("-")


def fit_fingerprint(ws: Workspace, method: Method, train_ids: Sequence[str]) -> str:
    """A digest of the method, its parameters, the taxonomy and the training photos."""
    params = json.dumps(method.get_params(), sort_keys=True, default=str)
    text = f"{method.name}|{params}|{ws.taxonomy.digest}|{','.join(sorted(set(train_ids)))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_dir_for(
    ws: Workspace, method: Method, train_ids: Sequence[str], save_as: str | None = None
) -> Path:
    """Where a fitted method is saved: ``<workspace>/models/<save_as>``, or a folder named
    after the method, its backbone and :func:`fit_fingerprint`."""
    if save_as:
        if "/" in save_as or "\\" in save_as or save_as.startswith("."):
            raise ValueError(f"save_as {save_as!r}: give a plain folder name")
        return ws.root / "models" / save_as
    model = str(method.get_params().get("model", ""))
    digest = fit_fingerprint(ws, method, train_ids)[:10]
    return ws.root / "models" / f"{method.name}-{_slug(model)}-{digest}"


def is_saved_fit(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a model saved by an identical fit (so it need not rerun)."""
    try:
        return read_model_info(folder).get("fingerprint") == fingerprint
    except (ValueError, OSError):
        return False


def write_model_dir(
    folder: Path, info: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Write a model folder atomically: files into a temporary folder, then renamed.

    ``info`` goes to ``method.json`` (with ``method`` naming the method class to load).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        write_files(tmp)
        meta = {**info, "naturelens": __version__, "saved_at": now().isoformat(timespec="seconds")}
        (tmp / METHOD_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_info(method: Method) -> dict[str, Any]:
    """What every fitted method's ``method.json`` records: its name, parameters,
    fingerprint, classes and number of training photos."""
    return {
        "method": method.name,
        "params": method.get_params(),
        "fingerprint": getattr(method, "fingerprint_", ""),
        "classes": method.classes_,
        "n_train": method.n_train_,
    }


def read_model_info(folder: str | Path) -> dict[str, Any]:
    """The ``method.json`` of a saved model folder."""
    path = Path(folder) / METHOD_FILE
    if not path.exists():
        raise ValueError(
            f"{folder}: not a saved model folder (no {METHOD_FILE}); models are saved under "
            "<workspace>/models/ by `naturelens classify --method probe|finetune|contrastive`"
        )
    return json.loads(path.read_text())


def load_model_dir(folder: str | Path) -> Method:
    """A fitted method loaded from a saved model folder."""
    from naturelens.methods import method_class

    info = read_model_info(folder)
    cls = method_class(info["method"])
    if not hasattr(cls, "load"):
        raise ValueError(f"{folder}: method {info['method']!r} cannot be loaded from a folder")
    return cls.load(folder)


class SavedModel(Method):
    """Applies a saved model folder (probe, finetune or contrastive) to photos.

    Parameters
    ----------
    model_dir
        The folder a trained method saved.
    """

    needs_labels = False

    def __init__(self, model_dir: str):
        self.model_dir = model_dir

    @property
    def name(self) -> str:  # the saved method's name, so runs group with their method
        return str(read_model_info(self.model_dir)["method"])

    def fit(self, photos: PhotoSet, labels: Sequence[str] | None = None) -> SavedModel:
        self.method_ = load_model_dir(self.model_dir)
        classes = list(getattr(self.method_, "classes_", []))
        unknown = sorted(set(classes) - set(photos.workspace.taxonomy.all_ids))
        if unknown:
            raise ValueError(
                f"{self.model_dir} predicts classes {unknown} that the workspace's taxonomy "
                f"({photos.workspace.taxonomy.label}) does not have"
            )
        self.classes_ = classes
        return self

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        return self.method_.predict_iter(photos)


# --------------------------------------------------------------------------- the probe


class Probe(Method):
    """Linear probe, kNN or nearest class mean on frozen embeddings.

    Parameters
    ----------
    model
        Backbone card name, folder or hub id (``@pooling`` allowed: ``dinov2-small@cls+mean``).
    classifier
        ``logreg`` (logistic regression), ``knn`` or ``ncm`` (nearest class mean).
    C
        Inverse regularisation of the logistic regression.
    k
        Neighbours for ``knn``.
    normalize
        Scale embeddings to unit length before classifying.
    batch_size, device, precision
        For computing embeddings that are not cached yet.
    save_as
        Folder name under ``<workspace>/models/`` (default: derived from the parameters
        and the training photos).
    """

    name = "probe"

    def __init__(
        self,
        model: str = "dinov2-small",
        classifier: str = "logreg",
        C: float = 1.0,
        k: int = 10,
        normalize: bool = True,
        batch_size: int = 32,
        device: str | None = None,
        precision: str = "auto",
        save_as: str | None = None,
    ):
        self.model = model
        self.classifier = classifier
        self.C = C
        self.k = k
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.save_as = save_as

    # -- embeddings
    def _ensure_embedded(self, ws: Workspace, photo_ids: Sequence[str]) -> None:
        from naturelens.models.embedding import embed_photos, missing_photo_ids

        if missing_photo_ids(ws, self.model, photo_ids):
            embed_photos(
                ws,
                self.model,
                photo_ids,
                batch_size=self.batch_size,
                device=self.device,
                precision=self.precision,
                backbone=self._backbone(ws),
            )

    def _backbone(self, ws: Workspace):
        from naturelens.models.backbones import load_backbone

        if getattr(self, "_loaded", None) is None:
            self._loaded = load_backbone(
                self.model, device=self.device, precision=self.precision, workspace=ws.root
            )
        return self._loaded

    # -- scikit-learn contract
    def fit(self, photos: PhotoSet, labels: Sequence[str] | None = None) -> Probe:
        from naturelens.models.embedding import load_embeddings

        if labels is None:
            raise ValueError("probe needs labelled photos")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, not {self.classifier!r}")
        ws = photos.workspace
        self._ensure_embedded(ws, photos.ids)
        ids, X = load_embeddings(ws, self.model, photos.ids)
        label_of = dict(zip(photos.ids, labels, strict=True))
        y = [label_of[i] for i in ids]
        self.skipped_ = len(set(photos.ids)) - len(ids)
        if len(set(y)) < 2:
            raise ValueError(
                f"probe needs labelled photos of at least two classes; got {sorted(set(y))} "
                f"({self.skipped_} training photos could not be embedded)"
            )
        self.classifier_ = make_classifier(self.classifier, self.C, self.k, self.normalize, len(y))
        self.classifier_.fit(X, y)
        self.classes_ = [str(c) for c in self.classifier_.classes_]
        self.n_train_ = len(y)
        self.fingerprint_ = fit_fingerprint(ws, self, photos.ids)
        self.model_dir_ = self.save(model_dir_for(ws, self, photos.ids, self.save_as))
        return self

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        from naturelens.models.embedding import embedding_set

        ws = photos.workspace
        self._ensure_embedded(ws, photos.ids)
        emb = embedding_set(ws, self.model)
        seen: set[str] = set()
        for ids, X in emb.iter_vectors(photos.ids, batch_rows=1024):
            start = time.perf_counter()
            proba = self.classifier_.predict_proba(X)
            each = (time.perf_counter() - start) / len(ids)
            for pid, p in zip(ids, proba, strict=True):
                best = int(p.argmax())
                yield Prediction(
                    photo_id=pid,
                    class_id=self.classes_[best],
                    confidence=float(p[best]),
                    scores={c: float(v) for c, v in zip(self.classes_, p, strict=True)},
                    model=self.model,
                    seconds=each,
                )
            seen.update(ids)
        missing = [pid for pid in dict.fromkeys(photos.ids) if pid not in seen]
        reasons = emb.failures(missing) if missing else {}
        for pid in missing:
            yield Prediction(
                photo_id=pid,
                class_id=None,
                status="failed",
                detail=reasons.get(pid, "no embedding"),
                model=self.model,
            )

    # -- persistence
    def save(self, folder: str | Path) -> Path:
        """Save the fitted probe (parameters, classes, classifier) as a model folder."""
        import joblib

        return write_model_dir(
            Path(folder),
            model_info(self),
            lambda tmp: joblib.dump(self.classifier_, tmp / "classifier.joblib"),
        )

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        """A fitted probe from a folder written by :meth:`save`."""
        import joblib

        info = read_model_info(folder)
        probe = cls(**info["params"])
        probe.classifier_ = joblib.load(Path(folder) / "classifier.joblib")
        probe.classes_ = list(info["classes"])
        probe.n_train_ = info.get("n_train", 0)
        probe.skipped_ = 0
        probe.model_dir_ = Path(folder)
        return probe
