"""CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023): image and text towers.

The embedding is the projected image embedding (``get_image_features``), the space the
text prompts of zero-shot classification live in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from naturelens.models.vision import VisionFamily, register_family

if TYPE_CHECKING:
    import torch
    from torch import nn


def _projected(out: Any) -> torch.Tensor:
    """A tensor, or (transformers 5) the model output whose pooler output is the projection."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_family
class Clip(VisionFamily):
    name = "clip"
    model_types = ("clip",)
    poolings = ("image_embeds",)
    has_text_tower = True

    def image_only(self, module: nn.Module) -> None:
        module.text_model = None

    def features(
        self, module: nn.Module, pixel_values: torch.Tensor, pooling: str, prefix: int
    ) -> torch.Tensor:
        return _projected(module.get_image_features(pixel_values=pixel_values))

    def text_features(self, module: nn.Module, tokens: dict[str, Any]) -> torch.Tensor:
        return _projected(module.get_text_features(**tokens))

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        return module.config.projection_dim

    def blocks(self, module: nn.Module) -> nn.ModuleList:
        return module.vision_model.encoder.layers

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        return [module.vision_model.post_layernorm, module.visual_projection]


@register_family
class Siglip(Clip):
    name = "siglip"
    model_types = ("siglip",)

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        return module.config.vision_config.hidden_size

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        return [module.vision_model.post_layernorm, module.vision_model.head]
