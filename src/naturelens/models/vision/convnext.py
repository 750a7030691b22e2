"""ConvNeXt (Liu et al. 2022), through transformers' ``ConvNextModel``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from naturelens.models.cards import ModelCard
from naturelens.models.vision import VisionFamily, register_family

if TYPE_CHECKING:
    import torch
    from torch import nn


@register_family
class ConvNext(VisionFamily):
    name = "convnext"
    model_types = ("convnext",)
    poolings = ("mean",)
    convolutional = True

    def load(self, card: ModelCard, attention: str) -> nn.Module:
        from transformers import ConvNextModel

        return ConvNextModel.from_pretrained(card.source)  # no attention to choose

    def features(
        self, module: nn.Module, pixel_values: torch.Tensor, pooling: str, prefix: int
    ) -> torch.Tensor:
        # The layer-normed global average of the last stage, as ConvNeXt's classifier sees it.
        return module(pixel_values=pixel_values).pooler_output

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        return module.config.hidden_sizes[-1]

    def blocks(self, module: nn.Module) -> nn.ModuleList:
        return module.encoder.stages

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        return [module.layernorm]

    def lora_targets(self, module: nn.Module) -> list[str]:
        # A ConvNeXt block's pointwise convolutions are linear layers.
        return ["pwconv1", "pwconv2"]
