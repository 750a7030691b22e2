"""The contract of text classifiers: learn from labelled texts (or none), then classify texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from naturelens.taxonomy import Taxonomy
from naturelens.workspace.core import Prediction


def text_prediction(
    class_id: str | None,
    confidence: float | None = None,
    scores: dict[str, float] | None = None,
    status: str = "ok",
    detail: str = "",
    tokens_in: int = 0,
    tokens_out: int = 0,
    seconds: float = 0.0,
    cost: float = 0.0,
) -> Prediction:
    """One text's class, as a :class:`Prediction` whose photo the caller fills in.

    ``status`` is ``ok``, ``unparsed`` (the model named no class; ``detail`` keeps its
    answer) or ``failed`` (``detail`` says why).
    """
    return Prediction(
        photo_id="",
        class_id=class_id if status == "ok" else None,
        confidence=confidence,
        scores=scores,
        status=status,
        detail=detail,
        seconds=seconds,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost=cost,
    )


class TextClassifier:
    """Base class. ``fit(taxonomy, texts, labels)`` returns self; ``predict(texts)`` gives
    one :class:`~naturelens.workspace.Prediction` per text, in order, with no photo id (the
    method that owns the photos fills it in)."""

    needs_labels: ClassVar[bool] = False

    def fit(self, taxonomy: Taxonomy, texts: Sequence[str] = (), labels: Sequence[str] = ()):
        self.taxonomy_ = taxonomy
        return self

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        raise NotImplementedError

    @property
    def model_name(self) -> str:
        """The ``text_model`` parameter, for classifiers that have one."""
        return getattr(self, "text_model", "")


def check_training(texts: Sequence[str], labels: Sequence[str], what: str) -> list[str]:
    """The sorted classes of ``labels``; a clear error when training is impossible."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(
            f"{what} learns from labelled photos of at least 2 classes; got "
            f"{len(texts)} labelled photo(s) of {len(classes)} class(es). Label more photos, "
            "or use a zero-shot classifier (llm or embed-zeroshot)"
        )
    return classes


def from_probabilities(probs: np.ndarray, classes: Sequence[str]) -> list[Prediction]:
    """Predictions from a (texts x classes) probability matrix."""
    out = []
    for row in np.asarray(probs, dtype=np.float64):
        best = int(row.argmax())
        out.append(
            text_prediction(
                class_id=classes[best],
                confidence=float(row[best]),
                scores={c: round(float(p), 6) for c, p in zip(classes, row, strict=True)},
            )
        )
    return out


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


__all__ = ["TextClassifier", "text_prediction", "check_training", "from_probabilities", "softmax"]
