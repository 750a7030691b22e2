"""Sentence embeddings (all-MiniLM-L6-v2 by default) and the two classifiers built on them.

- :class:`EmbedLogistic`: embeddings + logistic regression, trained on labelled texts.
- :class:`EmbedZeroShot`: no labels; each class is the average embedding of its name,
  definition and prompt phrases (as open_clip builds zero-shot classifiers), and a text
  goes to the class it is most similar to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from naturelens.models.availability import ModelLoadError, load_failure
from naturelens.models.cards import make_card
from naturelens.models.device import pick_device
from naturelens.models.weights import resolve
from naturelens.taxonomy import PhotoClass, Taxonomy
from naturelens.text.base import (
    TextClassifier,
    check_training,
    from_probabilities,
    softmax,
)

DEFAULT_ENCODER = "minilm"

_CACHE: dict[tuple[str, str], SentenceEncoder] = {}
_LOCK = threading.Lock()


class SentenceEncoder:
    """A transformers encoder with mean pooling and L2 normalisation.

    Build one with :func:`load_encoder`, which keeps one per model and device.
    """

    def __init__(self, name: str, source: str, max_length: int = 256, normalize: bool = True):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.source = source
        self.max_length = max_length
        self.normalize = normalize
        self.device = str(pick_device())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).to(self.device).eval()
        except OSError as exc:
            card = make_card(name, "text", source, origin="sentence encoder")
            raise ModelLoadError(load_failure(card, exc)) from exc
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts``, one row each (float32; unit length when normalising)."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding, and so wasted work, small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] or "" for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.float().cpu().numpy()
        return out


def load_encoder(name: str = DEFAULT_ENCODER) -> SentenceEncoder:
    """The sentence encoder ``name`` (a card, a local folder or a hub id), loaded once."""
    card, source = resolve(name, kind="text")
    key = (source, str(pick_device()))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentenceEncoder(
                card.name,
                source,
                max_length=int(card.get("max_length", 256)),
                normalize=bool(card.get("normalize", True)),
            )
        return _CACHE[key]


def class_phrases(cls: PhotoClass) -> list[str]:
    """The texts that stand for a class: its name, its definition and its prompt phrases."""
    return [cls.name, f"{cls.name}: {cls.definition}", *cls.prompts, *cls.synonyms]


def class_embeddings(encoder: SentenceEncoder, taxonomy: Taxonomy) -> np.ndarray:
    """One unit vector per class of ``taxonomy`` (open-set class last, if any)."""
    rows = []
    for cls in taxonomy.all_classes:
        emb = encoder.encode(class_phrases(cls))
        mean = emb.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(rows).astype(np.float32)


class EmbedLogistic(TextClassifier):
    """Sentence embeddings + logistic regression.

    Parameters
    ----------
    text_model
        Sentence encoder (card, folder or hub id).
    C
        Inverse regularisation strength of the logistic regression.
    """

    needs_labels = True

    def __init__(self, text_model: str = DEFAULT_ENCODER, C: float = 10.0, batch_size: int = 64):
        self.text_model = text_model
        self.C = C
        self.batch_size = batch_size

    def fit(self, taxonomy, texts=(), labels=()):
        from sklearn.linear_model import LogisticRegression

        self.taxonomy_ = taxonomy
        self.classes_ = check_training(texts, labels, "embed-lr")
        self.encoder_ = load_encoder(self.text_model)
        x = self.encoder_.encode(list(texts), self.batch_size)
        self.model_ = LogisticRegression(C=self.C, max_iter=2000).fit(x, list(labels))
        return self

    def predict(self, texts):
        started = time.perf_counter()
        x = self.encoder_.encode(list(texts), self.batch_size)
        preds = from_probabilities(
            self.model_.predict_proba(x), [str(c) for c in self.model_.classes_]
        )
        each = (time.perf_counter() - started) / max(1, len(preds))
        for p in preds:
            p.seconds = each
        return preds


class EmbedZeroShot(TextClassifier):
    """Zero-shot: cosine similarity between a text and each class's phrases.

    Parameters
    ----------
    text_model
        Sentence encoder (card, folder or hub id).
    temperature
        Softmax temperature over the cosine similarities (lower is more confident).
    """

    needs_labels = False

    def __init__(
        self, text_model: str = DEFAULT_ENCODER, temperature: float = 0.05, batch_size: int = 64
    ):
        self.text_model = text_model
        self.temperature = temperature
        self.batch_size = batch_size

    def fit(self, taxonomy, texts=(), labels=()):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        self.taxonomy_ = taxonomy
        self.classes_ = taxonomy.all_ids
        self.encoder_ = load_encoder(self.text_model)
        self.class_vectors_ = class_embeddings(self.encoder_, taxonomy)
        return self

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each text (rows) to each class (columns)."""
        return self.encoder_.encode(list(texts), self.batch_size) @ self.class_vectors_.T

    def predict(self, texts):
        started = time.perf_counter()
        sims = self.similarities(texts)
        preds = from_probabilities(softmax(sims / self.temperature), self.classes_)
        each = (time.perf_counter() - started) / max(1, len(preds))
        for p, row in zip(preds, sims, strict=True):
            p.seconds = each
            p.detail = f"cosine {row.max():.3f}"
        return preds


__all__ = [
    "DEFAULT_ENCODER",
    "EmbedLogistic",
    "EmbedZeroShot",
    "SentenceEncoder",
    "class_embeddings",
    "class_phrases",
    "load_encoder",
]
