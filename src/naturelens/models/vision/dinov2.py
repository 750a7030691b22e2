"""DINOv2, with and without registers (Oquab et al. 2023; Darcet et al. 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from naturelens.models.vision import VisionFamily, register_family

if TYPE_CHECKING:
    import torch
    from torch import nn


@register_family
class DinoV2(VisionFamily):
    name = "dinov2"
    model_types = ("dinov2", "dinov2_with_registers")
    poolings = ("cls", "mean", "cls+mean")

    def prefix_tokens(self, module: nn.Module) -> int:
        # The class token, then the registers, which the patch mean skips.
        return 1 + int(getattr(module.config, "num_register_tokens", 0) or 0)

    def features(
        self, module: nn.Module, pixel_values: torch.Tensor, pooling: str, prefix: int
    ) -> torch.Tensor:
        import torch

        tokens = module(pixel_values=pixel_values).last_hidden_state
        cls = tokens[:, 0]
        if pooling == "cls":
            return cls
        patches = tokens[:, prefix:].mean(dim=1)
        return patches if pooling == "mean" else torch.cat([cls, patches], dim=1)

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        hidden = module.config.hidden_size
        return 2 * hidden if pooling == "cls+mean" else hidden

    def blocks(self, module: nn.Module) -> nn.ModuleList:
        return module.encoder.layer

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        return [module.layernorm]
