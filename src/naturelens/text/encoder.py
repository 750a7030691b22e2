"""A small encoder (DistilBERT, BERT, MiniLM) fine-tuned for sequence classification."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np

from naturelens.models.availability import ModelLoadError, load_failure
from naturelens.models.device import pick_device
from naturelens.models.weights import resolve
from naturelens.taxonomy import Taxonomy
from naturelens.text.base import (
    TextClassifier,
    check_training,
    from_probabilities,
    softmax,
)
from naturelens.workspace.core import Prediction

DEFAULT_ENCODER_MODEL = "distilbert-base-uncased"


class EncoderClassifier(TextClassifier):
    """Fine-tunes every weight of a small encoder with a fresh classification head.

    Parameters
    ----------
    text_model
        Encoder card, local folder or hub id (loaded with
        ``AutoModelForSequenceClassification``).
    epochs, lr, batch_size, weight_decay
        Training schedule (AdamW, linear decay after a 10 % warm-up).
    max_length
        Tokens of text kept.
    """

    needs_labels = True

    def __init__(
        self,
        text_model: str = DEFAULT_ENCODER_MODEL,
        epochs: int = 4,
        lr: float = 5e-5,
        batch_size: int = 16,
        weight_decay: float = 0.01,
        max_length: int = 256,
        seed: int = 0,
    ):
        self.text_model = text_model
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.max_length = max_length
        self.seed = seed

    def fit(self, taxonomy: Taxonomy, texts: Sequence[str] = (), labels: Sequence[str] = ()):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.classes_ = check_training(texts, labels, "encoder")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {self.epochs}")
        self.taxonomy_ = taxonomy
        torch.manual_seed(self.seed)
        card, source = resolve(self.text_model, kind="text")
        self.device_ = str(pick_device())
        try:
            self.tokenizer_ = AutoTokenizer.from_pretrained(source)
            self.model_ = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=len(self.classes_),
                id2label=dict(enumerate(self.classes_)),
                label2id={c: i for i, c in enumerate(self.classes_)},
            ).to(self.device_)
        except OSError as exc:
            raise ModelLoadError(load_failure(card.with_source(source), exc)) from exc
        index = {c: i for i, c in enumerate(self.classes_)}
        self.losses_ = self._train(list(texts), [index[label] for label in labels])
        self.model_.eval()
        return self

    def _batch(self, texts: Sequence[str]):
        enc = self.tokenizer_(
            [t or "" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device_) for k, v in enc.items()}

    def _train(self, texts: list[str], targets: list[int]) -> list[float]:
        import torch

        model = self.model_
        steps = self.epochs * ((len(texts) + self.batch_size - 1) // self.batch_size)
        warmup = max(1, steps // 10)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))),
        )
        rng = random.Random(self.seed)
        model.train()
        losses = []
        for _ in range(self.epochs):
            order = list(range(len(texts)))
            rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._batch([texts[i] for i in rows])
                labels = torch.tensor([targets[i] for i in rows], device=self.device_)
                out = model(**batch, labels=labels)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimiser.step()
                schedule.step()
                optimiser.zero_grad()
                total += float(out.loss.detach()) * len(rows)
            losses.append(round(total / len(texts), 5))
        return losses

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        import torch

        started = time.perf_counter()
        logits = []
        for start in range(0, len(texts), self.batch_size * 2):
            with torch.inference_mode():
                out = self.model_(**self._batch(texts[start : start + self.batch_size * 2]))
            logits.append(out.logits.float().cpu().numpy())
        probs = softmax(np.concatenate(logits)) if logits else np.zeros((0, len(self.classes_)))
        preds = from_probabilities(probs, self.classes_)
        each = (time.perf_counter() - started) / max(1, len(texts))
        for p in preds:
            p.seconds = each
        return preds


__all__ = ["EncoderClassifier"]
