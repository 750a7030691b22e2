"""probe: a light classifier on frozen backbone embeddings.

Embeddings come from the workspace's cache (computed once per backbone by the embedding
engine), so probing is cheap enough to repeat over many seeds and shot counts. Three
classifiers: multinomial logistic regression (the linear probe), k nearest neighbours
(cosine) and nearest class mean (a prototype per class).

The runner saves a fitted probe as a model folder (see :mod:`naturelens.methods.saving`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.methods.saving import model_info, read_model_info, write_model_dir
from naturelens.workspace.core import Prediction, Workspace

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


# Candidate regularisation strengths for cross-validation, and the fixed one used when a
# class has a single labelled photo (nothing to cross-validate). On unit-length embeddings
# logits are small, so a weaker penalty than scikit-learn's C=1 suits them.
C_GRID = tuple(float(c) for c in np.logspace(-1, 4, 11))
FEW_SHOT_C = 10.0


@cache
def _current_logreg_cv_options() -> dict[str, Any]:
    """The L2 penalty and the fitted attributes of scikit-learn from 1.8 on, said
    explicitly where it has these options: left to their defaults, every fit warns that
    they will change (and ``C_`` is read the same way either way)."""
    names = LogisticRegressionCV().get_params()
    options: dict[str, Any] = {}
    if "l1_ratios" in names:
        options["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in names:
        options["use_legacy_attributes"] = False
    return options


def make_classifier(
    kind: str,
    C: float | str = "auto",
    k: int = 10,
    normalize: bool = True,
    n_train: int = 0,
    min_class_photos: int = 0,
    class_weight: str | None = "balanced",
) -> Pipeline:
    """The probe's classifier as a scikit-learn pipeline.

    Parameters
    ----------
    kind
        ``logreg``, ``knn`` or ``ncm``.
    C
        Inverse regularisation strength of the logistic regression, or ``"auto"``:
        chosen by stratified cross-validation (log loss) over :data:`C_GRID` when every
        class has at least 2 labelled photos, :data:`FEW_SHOT_C` otherwise.
    k
        Neighbours for ``knn`` (at most the number of training photos).
    normalize
        Scale every embedding to unit length first (cosine geometry). No per-feature
        standardisation: fitted on a handful of photos it amplifies noise dimensions.
    n_train
        Training photos (caps ``k``).
    min_class_photos
        Labelled photos of the smallest class (sets the cross-validation folds).
    class_weight
        ``"balanced"`` weighs classes equally whatever their number of labels; None.
    """
    if kind not in CLASSIFIERS:
        raise MethodError(f"classifier must be one of {CLASSIFIERS}, not {kind!r}")
    steps: list[Any] = [Normalizer()] if normalize else []
    if kind == "logreg":
        if C == "auto" and min_class_photos >= 2:
            steps.append(
                LogisticRegressionCV(
                    Cs=list(C_GRID),
                    cv=StratifiedKFold(min(5, min_class_photos), shuffle=True, random_state=0),
                    scoring="neg_log_loss",
                    class_weight=class_weight,
                    max_iter=5000,
                    **_current_logreg_cv_options(),
                )
            )
        else:
            fixed = FEW_SHOT_C if C == "auto" else float(C)
            steps.append(LogisticRegression(C=fixed, class_weight=class_weight, max_iter=5000))
    elif kind == "knn":
        neighbours = max(1, min(int(k), n_train or int(k)))
        steps.append(
            KNeighborsClassifier(n_neighbors=neighbours, weights="distance", metric="cosine")
        )
    else:
        steps.append(NearestClassMean())
    return make_pipeline(*steps)


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
        Inverse regularisation of the logistic regression; ``"auto"`` chooses it by
        cross-validation when every class has 2 labelled photos or more.
    k
        Neighbours for ``knn``.
    normalize
        Scale embeddings to unit length before classifying.
    class_weight
        ``"balanced"`` (every class weighs the same in the logistic regression) or None.
    batch_size, device, precision
        For computing embeddings that are not cached yet.
    save_as
        Folder name under ``<workspace>/models/`` (default: derived from the parameters
        and the training photos).
    """

    name = "probe"
    saves_model = True

    def __init__(
        self,
        model: str = "dinov2-small",
        classifier: str = "logreg",
        C: float | str = "auto",
        k: int = 10,
        normalize: bool = True,
        class_weight: str | None = "balanced",
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
        self.class_weight = class_weight
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
    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Probe:
        from naturelens.models.embedding import load_embeddings

        self.bind(context, photos)
        if labels is None:
            raise MethodError("probe needs labelled photos")
        self.check_params(self.get_params())  # values set as attributes, as --param's are
        if self.classifier not in CLASSIFIERS:
            raise MethodError(f"classifier must be one of {CLASSIFIERS}, not {self.classifier!r}")
        ws = photos.workspace
        self._ensure_embedded(ws, photos.ids)
        ids, X = load_embeddings(ws, self.model, photos.ids)
        label_of = dict(zip(photos.ids, labels, strict=True))
        y = [label_of[i] for i in ids]
        self.skipped_ = len(set(photos.ids)) - len(ids)
        if len(set(y)) < 2:
            raise MethodError(
                f"probe needs labelled photos of at least two classes; got {sorted(set(y))} "
                f"({self.skipped_} training photos could not be embedded)"
            )
        counts = np.unique(y, return_counts=True)[1]
        self.classifier_ = make_classifier(
            self.classifier,
            self.C,
            self.k,
            self.normalize,
            len(y),
            min_class_photos=int(counts.min()),
            class_weight=self.class_weight,
        )
        self.classifier_.fit(X, y)
        last = self.classifier_[-1]
        if hasattr(last, "C_"):
            self.C_ = float(np.atleast_1d(last.C_)[0])
        elif hasattr(last, "C"):
            self.C_ = float(last.C)
        self.classes_ = [str(c) for c in self.classifier_.classes_]
        self.n_train_ = len(y)
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
    def load(cls, folder: str | Path, workspace: Path | None = None) -> Probe:
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
