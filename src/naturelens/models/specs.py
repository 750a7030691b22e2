"""What identifies a backbone's embeddings, read from its model card alone.

A card's preprocessing, pooling and family are known without loading weights, and without
importing torch: commands that only read stored embeddings (a probe on a filled store,
``export``, the review app) find the store's cache key from here and start fast. Loading
the model itself is :mod:`naturelens.models.backbones`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from naturelens.errors import NaturelensError
from naturelens.machine_cache import cache_dir, read_entries, write_entry
from naturelens.models.cards import CardError, ModelCard, resolve
from naturelens.models.vision import VisionFamily, family_for
from naturelens.sources.images import decode_photo

if TYPE_CHECKING:
    import torch

POOLINGS = ("cls", "mean", "cls+mean", "image_embeds")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Card fields that settle the preprocessing without the model's processor config.
PREPROCESSING_FIELDS = ("input_size", "resize", "mean", "std")
# transformers' resample codes (PIL's enum values) in preprocessor_config.json
_RESAMPLE_CODES = {2: "bilinear", 3: "bicubic"}


class BackboneError(NaturelensError, ValueError):
    """A backbone cannot be loaded or used as asked."""


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the model's input.

    Attributes
    ----------
    input_size
        Side of the square the model sees.
    resize
        Short side in pixels (aspect kept), or ``(height, width)`` to scale the whole photo.
    crop
        Centre-crop side after resizing, or None.
    """

    input_size: int
    resize: int | tuple[int, int]
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @property
    def draft_side(self) -> int:
        """The smallest side a JPEG may be decoded at without losing detail we need."""
        if isinstance(self.resize, tuple):
            return max(self.resize)
        return self.resize

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image; returns uint8 pixels of shape (size, size, 3)."""
        resample = _RESAMPLE[self.interpolation]
        w, h = image.size
        if isinstance(self.resize, tuple):
            rh, rw = self.resize
            box = (0.0, 0.0, float(w), float(h))
        else:
            # Short side to exactly `resize`, long side truncated, as transformers does.
            if w <= h:
                rw, rh = self.resize, max(1, int(self.resize * h / w))
            else:
                rw, rh = max(1, int(self.resize * w / h)), self.resize
            box = (0.0, 0.0, float(w), float(h))
        if self.crop:
            # Crop in source coordinates so one resize call does both steps.
            cw, ch = min(self.crop, rw), min(self.crop, rh)
            sx, sy = w / rw, h / rh
            left, top = (rw - cw) // 2 * sx, (rh - ch) // 2 * sy
            box = (left, top, left + cw * sx, top + ch * sy)
            rw, rh = cw, ch
        out = image.resize((rw, rh), resample, box=box)
        if out.size != (self.input_size, self.input_size):
            # A card whose resize is smaller than its input size: squash to fit.
            out = out.resize((self.input_size, self.input_size), resample)
        return np.array(out, dtype=np.uint8)

    def decode(self, data: bytes) -> np.ndarray:
        """Decode photo bytes straight to model-sized uint8 pixels.

        Raises
        ------
        naturelens.sources.images.PhotoDecodeError
            When the bytes are not a usable photo.
        """
        return self.prepare(decode_photo(data, max_side=self.draft_side))

    def normalise(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) pixels -> normalised (B, 3, H, W) in ``dtype`` (default
        float32), on their device."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
        x = pixels.permute(0, 3, 1, 2).float()
        # (x / 255 - mean) / std, folded into one multiply-add
        x = torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))
        return x.to(dtype or torch.float32).contiguous()

    def standardise(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Float (B, 3, H, W) pixels in [0, 1] -> normalised model input in ``dtype``
        (default float32)."""
        import torch

        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype or torch.float32).contiguous()


# --------------------------------------------------------------------------- cards


def resolve_card(model: str, workspace: Path | None = None) -> tuple[ModelCard, str | None]:
    """The card for ``model`` and the pooling asked for with ``name@pooling`` (else None).

    ``model`` is a card name, a local model folder or a hub id; ``@cls+mean`` (or any of
    :data:`POOLINGS`) after it overrides the card's pooling.
    """
    name, pooling = model, None
    head, sep, tail = model.rpartition("@")
    if sep and tail in POOLINGS:
        name, pooling = head, tail
    return resolve(name, kind="vision", workspace=workspace), pooling


def _preprocessor_config(source: str) -> dict[str, Any]:
    """The model's image processor settings as a dict ({} when it has none)."""
    if source.startswith("package:"):
        return {}
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    # Without torchvision transformers warns that it uses the PIL processor; we only read
    # the settings, so that does not matter.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoImageProcessor.from_pretrained(source).to_dict()
    except (OSError, ValueError, KeyError):
        return {}
    finally:
        hf_logging.set_verbosity(verbosity)


def card_preprocessing(card: ModelCard) -> Preprocessing:
    """The card's preprocessing, with fields it lacks read from the model's processor config."""
    settled = all(k in card.fields for k in PREPROCESSING_FIELDS)
    pc = {} if settled else _preprocessor_config(card.source)

    def size_of(value: Any) -> int | tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        return int(value["height"]), int(value["width"])

    crop = card.get("crop", "missing")
    pc_resize = size_of(pc.get("size"))
    if pc.get("crop_pct") and isinstance(pc_resize, int) and pc_resize < 384:
        # ConvNeXt's processor: short side to size / crop_pct, then a centre crop of size.
        pc["crop_size"], pc["do_center_crop"] = pc_resize, True
        pc_resize = int(pc_resize / pc["crop_pct"])
    if crop == "missing":
        crop = size_of(pc.get("crop_size")) if pc.get("do_center_crop", "crop_size" in pc) else None
        crop = crop[0] if isinstance(crop, tuple) else crop
    resize = card.get("resize") or pc_resize
    if isinstance(resize, list | tuple):
        resize = (int(resize[0]), int(resize[1]))
    input_size = (
        card.get("input_size") or crop or (resize[0] if isinstance(resize, tuple) else resize)
    )
    mean = card.get("mean") or pc.get("image_mean")
    std = card.get("std") or pc.get("image_std")
    if not (resize and input_size and mean and std):
        raise CardError(
            f"model card {card.name!r}: give input_size, resize, crop, mean and std "
            "(the model has no preprocessor_config.json to read them from)"
        )
    interpolation = card.get("interpolation") or _RESAMPLE_CODES.get(pc.get("resample"), "bicubic")
    if interpolation not in _RESAMPLE:
        raise CardError(f"model card {card.name!r}: interpolation must be one of {list(_RESAMPLE)}")
    return Preprocessing(
        input_size=int(input_size),
        resize=resize,
        crop=int(crop) if crop else None,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=interpolation,
    )


def family_of(card: ModelCard) -> VisionFamily:
    """The architecture family of ``card``, from its package name or its model config.

    Raises
    ------
    BackboneError
        When the model's config cannot be read (offline and not downloaded).
    FamilyError
        When no family loads this architecture.
    """
    if card.source.startswith("package:"):
        return family_for(package=str(card.get("architecture", "")))
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(card.source).model_type
    except OSError as exc:
        raise not_loadable(card, exc) from exc
    return family_for(model_type=model_type)


def not_loadable(card: ModelCard, exc: OSError) -> BackboneError:
    from naturelens.models.availability import load_failure

    return BackboneError(load_failure(card, exc))


def card_pooling(
    card: ModelCard, override: str | None = None, family: VisionFamily | None = None
) -> str:
    """The pooling ``override`` or the card's; else the family's default.

    The family is only looked up (reading the model's config) when the card does not
    settle the question, so that specs of downloaded-later models stay cheap.
    """
    pooling = override or card.get("pooling")
    if family is None and (pooling is None or override is not None):
        try:
            family = family_of(card)
        except BackboneError:
            family = None  # unreadable config: loading reports it
    if pooling is None:
        default = "image_embeds" if card.kind in ("clip", "siglip") else "cls"
        pooling = family.poolings[0] if family else default
    if pooling not in POOLINGS:
        raise CardError(f"model {card.name!r}: pooling must be one of {POOLINGS}, not {pooling!r}")
    if family is not None and pooling not in family.poolings:
        raise CardError(
            f"model {card.name!r}: {family.name} models give pooling "
            f"{' or '.join(family.poolings)}, not {pooling!r}"
        )
    return pooling


# Specs of models whose card leaves pooling or preprocessing to the model's own config
# files, remembered per machine: reading those files goes through transformers (and torch),
# seconds of start-up that a command reading stored embeddings should not pay.
SPECS_FILE = "model_specs.json"
_KEEP_SPECS = 256


def model_spec(model: str, workspace: Path | None = None) -> dict[str, Any]:
    """What identifies the embeddings of ``model`` (source, preprocessing, pooling), from
    its card alone, without loading weights."""
    card, pooling_override = resolve_card(model, workspace)
    stamp = _config_stamp(card, pooling_override)
    if stamp is not None:
        found = read_entries(cache_dir() / SPECS_FILE).get(stamp)
        if isinstance(found, dict):
            return found
    spec = {
        "model": card.name + (f"@{pooling_override}" if pooling_override else ""),
        "source": card.source,
        "pooling": card_pooling(card, pooling_override),
        **card_preprocessing(card).as_dict(),
    }
    if stamp is not None:
        write_entry(cache_dir() / SPECS_FILE, stamp, spec, keep=_KEEP_SPECS)
    return spec


def _config_stamp(card: ModelCard, override: str | None) -> str | None:
    """What the spec of ``card`` depends on when its config files are read: the card and
    those files' identity (path, size, change time; a hub download's path names its
    commit). None when the card alone settles the spec, or the files are not at hand."""
    if card.source.startswith("package:") or (
        all(k in card.fields for k in PREPROCESSING_FIELDS) and card.get("pooling") and not override
    ):
        return None
    files = []
    for name in ("config.json", "preprocessor_config.json"):
        path = _config_file(card.source, name)
        if path is None:
            if name == "config.json":
                return None  # not downloaded: reading it will say so
            files.append([name, None])
            continue
        info = path.stat()
        files.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
    card_id = [card.name, card.kind, card.source, override, repr(card.fields)]
    return hashlib.sha256(json.dumps([card_id, files]).encode()).hexdigest()


def _config_file(source: str, name: str) -> Path | None:
    """A model's config file on this machine (a local folder's, or the hub cache's)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, name)
    except (ValueError, OSError):  # not a hub id
        return None
    return Path(found) if isinstance(found, str) else None
