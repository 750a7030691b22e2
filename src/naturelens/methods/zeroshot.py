"""zeroshot: CLIP / SigLIP text prompts built from the taxonomy, no labels needed.

Each class becomes a set of texts: every template of a template set (a data file in
``naturelens/templates/zeroshot/``) filled with the class name and each of its visual
phrases, plus the class name with its definition. The texts are embedded by the model's
text tower, L2-normalised, averaged per class and normalised again (open_clip's
``build_zero_shot_classifier``). The resulting classifier is cached in the workspace once
per model, taxonomy and template set.

A photo's probabilities are a softmax over the model's scaled cosine similarities (CLIP),
or an independent sigmoid per class with the model's scale and bias (SigLIP, as it was
trained). Open set: when the taxonomy has a "not relevant" class, its texts join the
classifier and a photo it wins is rejected; ``threshold`` also rejects photos whose top
probability is below it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.models.cards import ModelCard, resolve
from naturelens.shipped import read_shipped_or_file, shipped_names
from naturelens.sources.images import PhotoDecodeError
from naturelens.taxonomy import Taxonomy
from naturelens.workspace.core import Prediction, Workspace

# Stored vectors read per chunk: bounds memory however many photos a run has.
STORE_CHUNK_ROWS = 1024
# (photos with vectors, their L2-normalised vectors, failures by photo, seconds taken)
Chunk = tuple[list[str], np.ndarray, dict[str, str], float]


@dataclass(frozen=True)
class TemplateSet:
    """Prompt templates for zero-shot classification; ``{}`` stands for a class phrase."""

    name: str
    version: str
    templates: tuple[str, ...]

    @property
    def version_tag(self) -> str:
        return f"{self.name}@{self.version}"


def builtin_template_sets() -> list[str]:
    return shipped_names("templates/zeroshot")


def load_template_set(name_or_path: str | Path) -> TemplateSet:
    """A shipped template set (``ces``, ``imagenet``, ``simple``) or a YAML file of one.

    Raises
    ------
    ValueError
        When there is no such set or it is malformed.
    """
    name = str(name_or_path)
    found = read_shipped_or_file("templates/zeroshot", name)
    if found is None:
        raise MethodError(
            f"unknown template set {name!r}: not a file, and not one of "
            f"{', '.join(builtin_template_sets())}"
        )
    text, source = found
    data = yaml.safe_load(text)
    templates = data.get("templates") if isinstance(data, dict) else None
    if not isinstance(templates, list) or not templates:
        raise MethodError(f"template set {source}: 'templates' must be a non-empty list")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise MethodError(f"template set {source}: each template needs exactly one '{{}}': {bad}")
    return TemplateSet(
        name=str(data.get("name") or Path(name).stem),
        version=str(data.get("version") or "0"),
        templates=tuple(templates),
    )


def class_texts(
    taxonomy: Taxonomy, templates: TemplateSet, phrases: bool = True, definitions: bool = True
) -> dict[str, list[str]]:
    """The texts that stand for each class (open-set class included), by class id."""
    out: dict[str, list[str]] = {}
    for c in taxonomy.all_classes:
        names = [c.name, *(c.prompts if phrases else ())]
        texts = [t.format(n) for n in names for t in templates.templates]
        if definitions:
            texts.append(f"a photo of {c.name}: {c.definition}")
        out[c.id] = list(dict.fromkeys(texts))  # drop repeats, keep order
    return out


class ZeroShot(Method):
    """Zero-shot classification with CLIP or SigLIP.

    Parameters
    ----------
    model
        A ``clip`` or ``siglip`` card name (``clip-vit-b32``, ``siglip-base``...) or a
        local model folder.
    templates
        A template set name (``ces``, ``imagenet``, ``simple``) or YAML file.
    threshold
        Photos whose top probability is below this are rejected (None: never).
    phrases, definitions
        Use the taxonomy's visual phrases and definitions besides the class names.
    batch_size
        Photos per forward pass.
    device
        ``cuda``, ``cpu``... (default: a GPU when there is one).
    embeddings
        ``store``: image embeddings come from the workspace's embedding store (computed
        once, shared with probe and cluster, resumable); ``direct``: computed here and
        not kept.
    """

    name = "zeroshot"
    needs_labels = False

    def __init__(
        self,
        model: str = "clip-vit-b32",
        templates: str = "ces",
        threshold: float | None = None,
        phrases: bool = True,
        definitions: bool = True,
        batch_size: int = 32,
        device: str | None = None,
        embeddings: str = "store",
    ):
        self.model = model
        self.templates = templates
        self.threshold = threshold
        self.phrases = phrases
        self.definitions = definitions
        self.batch_size = batch_size
        self.device = device
        self.embeddings = embeddings

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> ZeroShot:
        self.bind(context, photos)
        """Build (or load from the workspace cache) the text classifier; labels are ignored."""
        ws = photos.workspace
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise MethodError(f"threshold must be between 0 and 1, not {self.threshold}")
        self.card_: ModelCard = resolve(self.model, workspace=ws.root)
        if self.card_.kind not in ("clip", "siglip"):
            raise MethodError(
                f"zeroshot needs a CLIP or SigLIP model; {self.model!r} is a "
                f"{self.card_.kind} model"
            )
        if self.embeddings not in ("store", "direct"):
            raise MethodError(f"embeddings must be store or direct, not {self.embeddings!r}")
        self.template_set_ = load_template_set(self.templates)
        self.classes_ = ws.taxonomy.all_ids
        self._load()
        self.classifier_ = self._classifier(ws)
        return self

    def _load(self) -> None:
        from naturelens.models.backbones import load_model

        # The same loaded weights the embedding engine uses for this card and device, so
        # a process that embeds photos and builds the text classifier loads them once.
        self.bundle_ = load_model(self.card_, self.device)
        self.backbone_ = self.bundle_.backbone()
        self.processor_ = self.bundle_.processor
        self.model_ = self.bundle_.module
        self.device_ = str(self.bundle_.device)
        config = self.model_.config
        self.sigmoid_ = getattr(config, "model_type", "") in ("siglip", "siglip2")
        self.logit_scale_ = float(self.model_.logit_scale.detach().exp())
        bias = getattr(self.model_, "logit_bias", None)
        self.logit_bias_ = float(bias.detach()) if bias is not None else 0.0

    def cache_key(self, ws: Workspace) -> str:
        """The classifier's cache key: model, taxonomy, templates and options."""
        parts = {
            "model": self.card_.name,
            "source": self.card_.source,
            "taxonomy": ws.taxonomy.label,
            "taxonomy_digest": ws.taxonomy.digest,
            "templates": list(self.template_set_.templates),
            "template_set": self.template_set_.version_tag,
            "phrases": bool(self.phrases),
            "definitions": bool(self.definitions),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _classifier(self, ws: Workspace) -> np.ndarray:
        path = ws.path("cache", "zeroshot", f"{self.cache_key(ws)}.npz")
        if path.exists():
            stored = np.load(path)
            if list(stored["classes"]) == self.classes_:
                self.classifier_cached_ = True
                return stored["weights"]
        texts = class_texts(ws.taxonomy, self.template_set_, self.phrases, self.definitions)
        weights = np.stack([self._class_embedding(texts[c]) for c in self.classes_])
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, weights=weights, classes=np.array(self.classes_))
        tmp.replace(path)  # whole or not at all
        self.classifier_cached_ = False
        return weights

    def _class_embedding(self, texts: list[str]) -> np.ndarray:
        import torch

        max_length = int(self.card_.get("text_max_length", 0) or 0) or min(
            int(self.processor_.tokenizer.model_max_length), 77
        )
        feats = []
        for start in range(0, len(texts), 64):
            chunk = texts[start : start + 64]
            # SigLIP was trained on texts padded to the full length: pad the same way.
            padding = "max_length" if self.sigmoid_ else True
            tok = self.processor_.tokenizer(
                chunk, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out = self.bundle_.text_features(tok)
            feats.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu())
        mean = torch.cat(feats).mean(0)
        return torch.nn.functional.normalize(mean, dim=0).numpy()

    # ------------------------------------------------------------------ predict
    def image_embeddings(self, images: list[Any]) -> np.ndarray:
        """L2-normalised image embeddings of ``images`` (PIL), one row each."""
        import torch

        inputs = self.processor_(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.backbone_.device, self.backbone_.dtype)
        with torch.inference_mode():
            out = self.backbone_.features(pixels)
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy()

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-class probabilities for L2-normalised image embeddings (rows x classes)."""
        logits = self.logit_scale_ * embeddings @ self.classifier_.T + self.logit_bias_
        if self.sigmoid_:
            return 1.0 / (1.0 + np.exp(-logits))
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def _direct(self, ws: Workspace, ids: Sequence[str]):
        """Embed ``ids`` here: (ids embedded, L2-normalised matrix, failures by id)."""
        side = int(self.card_.get("input_size", 224) or 224)
        images, ready, failed = [], [], {}
        for pid in ids:
            try:
                images.append(ws.open_image(pid, max_side=side))
                ready.append(pid)
            except PhotoDecodeError as exc:
                failed[pid] = f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
        vectors = self.image_embeddings(images) if images else np.zeros((0, 1))
        return ready, vectors, failed

    def _direct_chunks(self, ws: Workspace, photo_ids: Sequence[str]) -> Iterator[Chunk]:
        """Photos embedded here, ``batch_size`` at a time."""
        for start in range(0, len(photo_ids), self.batch_size):
            started = time.perf_counter()
            ready, vectors, failed = self._direct(ws, photo_ids[start : start + self.batch_size])
            yield ready, vectors, failed, time.perf_counter() - started

    def _stored_chunks(self, ws: Workspace, photo_ids: Sequence[str]) -> Iterator[Chunk]:
        """Vectors read from the embedding store in one streaming pass over its parts
        (only the wanted rows, a chunk at a time), then the photos it has none for."""
        from naturelens.models.embedding import embedding_set

        store = embedding_set(ws, self.model)
        seen: set[str] = set()
        started = time.perf_counter()
        for ready, vectors in store.iter_vectors(photo_ids, batch_rows=STORE_CHUNK_ROWS):
            seen.update(ready)
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            yield ready, vectors, {}, time.perf_counter() - started
            started = time.perf_counter()
        missing = [pid for pid in photo_ids if pid not in seen]
        if missing:
            reasons = store.failures(missing)
            failed = {pid: reasons.get(pid, "no image embedding") for pid in missing}
            yield [], np.zeros((0, 1)), failed, 0.0

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        ws = photos.workspace
        open_id = ws.taxonomy.open_set.id if ws.taxonomy.open_set else None
        photo_ids = list(dict.fromkeys(photos.ids))  # one prediction per photo
        if self.embeddings == "store":
            from naturelens.models.embedding import embed_photos

            # Embeds only photos the store lacks, streaming to disk; then reads them back.
            embed_photos(ws, self.model, photo_ids, batch_size=self.batch_size, device=self.device)
            chunks = self._stored_chunks(ws, photo_ids)
        else:
            chunks = self._direct_chunks(ws, photo_ids)
        for ready, vectors, failed, seconds in chunks:
            share = seconds / max(1, len(ready) + len(failed))
            if ready:
                for pid, row in zip(ready, self.probabilities(vectors), strict=True):
                    yield self._prediction(pid, row, open_id, share)
            for pid, reason in failed.items():
                yield Prediction(
                    class_id=None, status="failed", detail=reason, **self._base(pid, share)
                )

    def _base(self, pid: str, seconds: float) -> dict[str, Any]:
        return dict(
            photo_id=pid,
            model=self.card_.name,
            prompt_version=self.template_set_.version_tag,
            seconds=seconds,
        )

    def _prediction(
        self, pid: str, row: np.ndarray, open_id: str | None, seconds: float
    ) -> Prediction:
        """A photo's prediction from its class probabilities: rejected when the open-set
        class ``open_id`` wins or the top probability is below the threshold."""
        base = self._base(pid, seconds)
        scores = {c: float(p) for c, p in zip(self.classes_, row, strict=True)}
        best = self.classes_[int(np.argmax(row))]
        top = scores[best]
        if best == open_id:
            return Prediction(
                class_id=open_id,
                confidence=top,
                scores=scores,
                status="rejected",
                detail="the open-set class scored highest",
                **base,
            )
        if self.threshold is not None and top < float(self.threshold):
            return Prediction(
                class_id=open_id,
                confidence=top,
                scores=scores,
                status="rejected",
                detail=f"top probability {top:.3f} ({best}) below {self.threshold}",
                **base,
            )
        return Prediction(class_id=best, confidence=top, scores=scores, **base)
