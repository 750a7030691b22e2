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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from naturelens.models.cards import CardError, ModelCard
from naturelens.models.device import PRECISIONS, DeviceError, pick_device, pick_dtype
from naturelens.models.precision import DTYPES as PRECISION_DTYPES
from naturelens.models.precision import PrecisionChoice, choose_precision, measure
from naturelens.models.specs import (
    BackboneError,
    Preprocessing,
    card_pooling,
    card_preprocessing,
    family_of,
    model_spec,
    not_loadable,
    resolve_card,
)
from naturelens.models.vision import VisionFamily
from naturelens.models.vision.efficientnet import load_efficientnet_lite0

__all__ = [
    "PRECISIONS",
    "Backbone",
    "BackboneError",
    "DeviceError",
    "ModelBundle",
    "Preprocessing",
    "backbone_spec",
    "card_preprocessing",
    "clear_loaded_models",
    "load_backbone",
    "load_efficientnet_lite0",
    "load_model",
    "model_spec",
    "pick_device",
    "pick_dtype",
    "resolve_card",
]


class Backbone(nn.Module):
    """A vision model with its preprocessing and pooling; its family does the
    architecture-specific work.

    Attributes
    ----------
    card
        The model card it was built from.
    module
        The underlying model (transformers model or EfficientNet).
    family
        The :class:`~naturelens.models.vision.VisionFamily` that knows the architecture.
    arch
        The family's name (``dinov2``, ``clip``, ``siglip``, ``efficientnet``...).
    preprocessing
        How photos become its input.
    pooling, dim
        The embedding it returns.
    """

    def __init__(
        self,
        card: ModelCard,
        module: nn.Module,
        family: VisionFamily,
        preprocessing: Preprocessing,
        pooling: str,
        dim: int,
    ):
        super().__init__()
        self.card = card
        self.module = module
        self.family = family
        self.arch = family.name
        self.preprocessing = preprocessing
        self.pooling = pooling
        self.dim = dim
        self.prefix_tokens = family.prefix_tokens(module)
        # The type inference runs in; fine-tuning keeps fp32 weights and autocasts to it.
        self.compute_dtype = torch.float32
        self.precision = PrecisionChoice("fp32", "forced")

    @property
    def channels_last(self) -> bool:
        """Whether the weights were put in the channels-last layout (inputs follow)."""
        return self.precision.channels_last

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
        return self.family.features(self.module, pixel_values, self.pooling, self.prefix_tokens)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)

    def imagenet_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (B, 1000); only for models that ship that classifier."""
        logits = getattr(self.family, "imagenet_logits", None)
        if logits is None:
            raise BackboneError(f"{self.card.name} has no ImageNet classifier")
        return logits(self.module, pixel_values)

    def pixels_to_input(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) pixels -> normalised model input on the backbone's device."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        pixels = pixels.to(self.device, non_blocking=True)
        x = self.preprocessing.normalise(pixels, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

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
    def embed(
        self,
        pixels: torch.Tensor | np.ndarray,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        step: int | None = None,
    ) -> np.ndarray:
        """float32 embeddings (B, dim) of uint8 pixels (B, H, W, 3), ``step`` photos per
        ``forward`` pass (default: :meth:`features` in passes of :attr:`chunk_size`; the
        compiled model runs through here too)."""
        forward = forward or self.features
        step = step or self.chunk_size or len(pixels)
        out = []
        with self.autocast():
            for start in range(0, len(pixels), max(1, step)):
                x = self.pixels_to_input(pixels[start : start + step])
                out.append(forward(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    # --------------------------------------------------------------- for fine-tuning
    def blocks(self) -> nn.ModuleList:
        """The backbone's stack of blocks, input side first (for last-N fine-tuning)."""
        return self.family.blocks(self.module)

    def tail_modules(self) -> list[nn.Module]:
        """Modules after the blocks that the embedding passes through (norms, projections)."""
        return self.family.tail_modules(self.module)

    def lora_targets(self) -> list[str]:
        """Names of the linear layers LoRA adapts (the card's ``lora_targets`` win)."""
        if self.card.get("lora_targets"):
            return list(self.card["lora_targets"])
        return self.family.lora_targets(self.module)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        # Batch statistics from a few photos would wreck the pretrained ones: keep them fixed.
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


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
    """The attention models load with on CPUs: eager-style (sdpa measured slower for these
    ViTs in bf16 on a CPU with bf16 units); ``precision=auto`` times sdpa against it."""
    try:
        from transformers import AttentionInterface
    except ImportError:  # older transformers
        return "eager"
    AttentionInterface.register("naturelens_cpu", _plain_attention)
    try:
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import eager_mask
    except ImportError:  # older transformers build eager-style masks for any attention
        return "naturelens_cpu"
    # Additive masks, as eager attention takes: text towers need their causal and padding
    # masks, which transformers only builds for attention it knows the mask format of.
    AttentionMaskInterface.register("naturelens_cpu", eager_mask)
    return "naturelens_cpu"


def _load_weights(card: ModelCard, family: VisionFamily, device: torch.device) -> nn.Module:
    attention = _cpu_attention() if device.type == "cpu" else "sdpa"
    try:
        return family.load(card, attention)
    except OSError as exc:
        raise not_loadable(card, exc) from exc


def _attentions(module: nn.Module) -> tuple[str, ...]:
    """The attention implementations worth timing for ``module``, the loaded one first.

    The plain (eager-style) attention and torch's sdpa each win on some CPUs and
    precisions, so ``precision=auto`` times both; models without attention, or whose
    attention transformers cannot switch after loading, have none to choose.
    """
    config = getattr(module, "config", None)
    try:
        switchable = config is not None and type(module)._can_set_attn_implementation()
    except (AttributeError, TypeError, OSError):
        switchable = False
    if not switchable or config._attn_implementation == "sdpa":
        return ()
    return (config._attn_implementation, "sdpa")


def _set_attention(module: nn.Module, attention: str) -> None:
    """Run ``module`` (a model or a :class:`Backbone`) with ``attention``."""
    model = module.module if isinstance(module, Backbone) else module
    if attention and model.config._attn_implementation != attention:
        model.set_attn_implementation(attention)


# --------------------------------------------------------------------------- precision

_DTYPE_NAMES = {dtype: name for name, dtype in PRECISION_DTYPES.items()}


def resolve_precision(
    card: ModelCard,
    device: torch.device,
    precision: str,
    fp32_weights: Callable[[], nn.Module],
) -> PrecisionChoice:
    """Which precision ``card`` runs in on ``device``, and why.

    ``auto`` on a CPU is decided by measurement (:mod:`naturelens.models.precision`),
    once per card and machine; ``fp32_weights`` loads the model for that and is called
    only when no decision is cached. Elsewhere the device policy decides.
    """
    dtype = pick_dtype(precision, device, card)  # also rejects an unknown precision
    if precision not in (None, "auto"):
        return PrecisionChoice(_DTYPE_NAMES[dtype], "forced")
    if device.type != "cpu":
        return PrecisionChoice(_DTYPE_NAMES[dtype], "policy")

    def measure_now() -> PrecisionChoice:
        family = family_of(card)
        backbone = _backbone(card, fp32_weights(), family, card_preprocessing(card), None)
        backbone.to(device).eval()
        return measure(
            backbone,
            lambda m, x: m.features(x),
            backbone.preprocessing.input_size,
            device,
            layouts=family.convolutional,
            attentions=() if family.convolutional else _attentions(backbone.module),
            set_attention=_set_attention,
        )

    return choose_precision(f"{card.name}|{card.source}", device, measure_now)


# --------------------------------------------------------------------------- the factory


@dataclass(eq=False)
class ModelBundle:
    """A loaded model: its image tower as a :class:`Backbone`, its preprocessing, and its
    text tower with the processor (tokenizer) where the family has one.

    One bundle per card, device and weights type is kept for the process, so that
    embedding photos and building a zero-shot classifier share one copy of the weights.
    """

    card: ModelCard
    family: VisionFamily
    module: nn.Module
    preprocessing: Preprocessing
    device: torch.device
    dtype: torch.dtype
    processor: Any = None
    stamp: tuple = ()
    precision: PrecisionChoice | None = None  # which precision, and why

    def backbone(self, pooling: str | None = None) -> Backbone:
        """The image tower with ``pooling`` (default: the card's), sharing these weights."""
        backbone = _backbone(self.card, self.module, self.family, self.preprocessing, pooling)
        backbone.compute_dtype = self.dtype
        if self.precision is not None:
            backbone.precision = self.precision
        return backbone.eval()

    @property
    def has_text_tower(self) -> bool:
        return self.family.has_text_tower

    @property
    def tokenizer(self) -> Any:
        """The text tower's tokenizer (families with a text tower only)."""
        if self.processor is None:
            raise BackboneError(f"{self.card.name} has no text tower")
        return self.processor.tokenizer

    @torch.inference_mode()
    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected text embeddings of tokenizer output (on any device)."""
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self.family.text_features(self.module, tokens)


# (card identity, device, dtype) -> bundle; the most recent few only, so that a process
# going through several models does not keep them all.
_LOADED: OrderedDict[tuple, ModelBundle] = OrderedDict()
_KEEP_LOADED = 2


def _weights_stamp(source: str) -> tuple:
    """Changes when a local model folder is rewritten, so a stale copy is not reused."""
    path = Path(source)
    if not path.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


def load_model(
    card: ModelCard, device: str | torch.device | None = None, precision: str = "auto"
) -> ModelBundle:
    """Load the model of ``card`` once per process, device and weights type.

    Parameters
    ----------
    card
        A resolved card (see :func:`naturelens.models.cards.resolve`).
    device
        ``cpu``, ``cuda``, ``mps``...; the best available when None.
    precision
        ``auto``, ``fp32``, ``bf16`` or ``fp16``: the weights type of both towers
        (:func:`resolve_precision`: ``auto`` on a CPU is measured once per card and
        machine).

    Returns
    -------
    ModelBundle
        In eval mode, on ``device``, weights cast to the chosen type; shared: callers must
        not train or modify it (fine-tuning loads its own copy with ``load_backbone``).
    """
    dev = pick_device(device)
    family = family_of(card)
    measured: list[nn.Module] = []  # weights loaded to measure precision, reused below

    def fp32_weights() -> nn.Module:
        measured.append(_load_weights(card, family, dev))
        return measured[0]

    choice = resolve_precision(card, dev, precision, fp32_weights)
    dtype = PRECISION_DTYPES[choice.precision]
    key = (card.name, card.source, repr(sorted(card.fields.items())), str(dev), dtype)
    stamp = _weights_stamp(card.source)
    if key in _LOADED and _LOADED[key].stamp == stamp:
        _LOADED.move_to_end(key)
        _LOADED[key].precision = choice
        return _LOADED[key]
    preprocessing = card_preprocessing(card)
    module = measured[0] if measured else _load_weights(card, family, dev)
    processor = None
    if family.has_text_tower:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(card.source)
    module.requires_grad_(False)
    module.to(dev, dtype).eval()
    if choice.channels_last:
        module.to(memory_format=torch.channels_last)
    _set_attention(module, choice.attention)
    bundle = ModelBundle(card, family, module, preprocessing, dev, dtype, processor, stamp, choice)
    _LOADED[key] = bundle
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.popitem(last=False)
    return bundle


def clear_loaded_models() -> None:
    """Forget every model :func:`load_model` keeps (their memory is freed once unused)."""
    _LOADED.clear()


def load_backbone(
    model: str | ModelCard,
    device: str | torch.device | None = None,
    precision: str = "auto",
    workspace: Path | None = None,
    training: bool = False,
    pooling: str | None = None,
) -> Backbone:
    """Load a vision backbone from a card, card name, local folder or hub id.

    Parameters
    ----------
    model
        A resolved card, or a card name (``dinov2-small``), folder or hub id; ``@pooling``
        after a name overrides the card's pooling (``dinov2-small@cls+mean``).
    device
        ``cpu``, ``cuda``, ``mps``...; the best available when None.
    precision
        ``auto`` (the fastest precision that agrees with fp32, measured at the first use
        of the card on this machine and remembered: :mod:`naturelens.models.precision`),
        ``fp32``, ``bf16`` or ``fp16``. For inference the weights are cast to it
        (measured faster than autocast on CPU); with ``training`` they stay fp32 and
        callers autocast. ``backbone.precision`` says which ran and why.
    training
        Load a private copy with fp32 weights for fine-tuning (never the shared one).
    pooling
        Pooling to use with a resolved card.

    Returns
    -------
    Backbone
        In eval mode, on ``device``.
    """
    if isinstance(model, ModelCard):
        card = model
    else:
        card, pooling = resolve_card(model, workspace)
    if not training:
        return load_model(card, device, precision).backbone(pooling)
    dev = pick_device(device)
    family = family_of(card)
    measured: list[nn.Module] = []

    def fp32_weights() -> nn.Module:
        measured.append(_load_weights(card, family, dev))
        return measured[0]

    choice = resolve_precision(card, dev, precision, fp32_weights)
    preprocessing = card_preprocessing(card)
    module = measured[0] if measured else _load_weights(card, family, dev)
    family.image_only(module)  # fine-tuning adapts the image tower only
    module.requires_grad_(False)
    backbone = _backbone(card, module, family, preprocessing, pooling)
    backbone.to(dev)
    backbone.compute_dtype = PRECISION_DTYPES[choice.precision]
    backbone.precision = choice
    if choice.channels_last:
        backbone.module.to(memory_format=torch.channels_last)
    _set_attention(backbone.module, choice.attention)
    return backbone.eval()


def _backbone(
    card: ModelCard,
    module: nn.Module,
    family: VisionFamily,
    preprocessing: Preprocessing,
    override: str | None,
) -> Backbone:
    """Wrap loaded weights; the card's ``dim`` must be what the model gives."""
    pooling = card_pooling(card, override, family)
    dim = family.embedding_dim(module, pooling)
    if card.get("dim") and override is None and int(card["dim"]) != dim:
        raise CardError(
            f"model card {card.name!r} says dim {card['dim']} but the model gives {dim}"
        )
    return Backbone(card, module, family, preprocessing, pooling, dim)


def backbone_spec(backbone: Backbone) -> dict[str, Any]:
    """What identifies a backbone's embeddings: source, preprocessing, pooling."""
    name = backbone.card.name
    if backbone.pooling != card_pooling(backbone.card, family=backbone.family):
        name += f"@{backbone.pooling}"
    return {
        "model": name,
        "source": backbone.card.source,
        "pooling": backbone.pooling,
        "dim": backbone.dim,
        **backbone.preprocessing.as_dict(),
    }
