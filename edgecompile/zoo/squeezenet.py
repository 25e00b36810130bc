"""SqueezeNet 1.0 and 1.1.

Iandola, Han, Moskewicz, Ashraf, Dally and Keutzer, "SqueezeNet: AlexNet-level accuracy with 50x
fewer parameters and <0.5MB model size", arXiv:1602.07360 (2016). Version 1.1 is the authors'
follow-up from the reference repository (forresti/SqueezeNet): a 3×3/64 stem and earlier pooling,
about 2.4× cheaper at the same accuracy. Layer for layer this matches torchvision's SqueezeNet, so
its checkpoints load with identical parameter counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgecompile.zoo.registry import register_model, variant_config

__all__ = ["Fire", "FireSpec", "SqueezeNet", "SqueezeNetConfig", "squeezenet"]


@dataclass(frozen=True)
class FireSpec:
    """One Fire module: a 1×1 squeeze, then parallel 1×1 and 3×3 expands that are concatenated."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def out_channels(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class SqueezeNetConfig:
    """A SqueezeNet version: the stem conv, the Fire modules, and where the max-pools sit."""

    stem_channels: int
    stem_kernel: int
    fires: tuple[FireSpec, ...]
    # Indices into ``fires`` after which a 3×3/2 max-pool follows; delaying the pools ("late
    # downsampling", paper §3.1) keeps large activation maps for accuracy, 1.1 pulls them earlier.
    pool_after: tuple[int, ...]


_FIRE_2_3 = FireSpec(16, 64, 64)
_FIRE_4_5 = FireSpec(32, 128, 128)
_FIRE_6_7 = FireSpec(48, 192, 192)
_FIRE_8_9 = FireSpec(64, 256, 256)

# Paper Table 1 (v1.0) and the reference repository's v1.1 prototxt: same eight Fire modules.
SQUEEZENET_CONFIGS: dict[str, SqueezeNetConfig] = {
    "1_0": SqueezeNetConfig(
        stem_channels=96,
        stem_kernel=7,
        fires=(
            _FIRE_2_3,
            _FIRE_2_3,
            _FIRE_4_5,
            _FIRE_4_5,
            _FIRE_6_7,
            _FIRE_6_7,
            _FIRE_8_9,
            _FIRE_8_9,
        ),
        pool_after=(2, 6),
    ),
    "1_1": SqueezeNetConfig(
        stem_channels=64,
        stem_kernel=3,
        fires=(
            _FIRE_2_3,
            _FIRE_2_3,
            _FIRE_4_5,
            _FIRE_4_5,
            _FIRE_6_7,
            _FIRE_6_7,
            _FIRE_8_9,
            _FIRE_8_9,
        ),
        pool_after=(1, 3),
    ),
}


class Fire(nn.Module):
    """Fire module (paper §3.2): squeeze to few channels so the 3×3 expand sees a thin input."""

    def __init__(self, in_channels: int, spec: FireSpec) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = spec.out_channels
        # SqueezeNet predates BatchNorm's adoption: plain biased convs, as in the Caffe original.
        self.squeeze = nn.Conv2d(in_channels, spec.squeeze, 1)
        self.squeeze_act = nn.ReLU()
        self.expand1x1 = nn.Conv2d(spec.squeeze, spec.expand1x1, 1)
        self.expand1x1_act = nn.ReLU()
        self.expand3x3 = nn.Conv2d(spec.squeeze, spec.expand3x3, 3, padding=1)
        self.expand3x3_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], 1
        )


def _max_pool() -> nn.MaxPool2d:
    # Caffe rounds pooled sizes up; ceil_mode keeps the 13×13 final map of the original.
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """SqueezeNet: a conv stem, eight Fire modules, and a 1×1-conv classifier with global pooling.

    The classifier is convolutional (paper §3.3, after Network-in-Network): no fully connected
    layer, which is where most of AlexNet's parameters lived.
    """

    def __init__(self, config: SqueezeNetConfig, *, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, config.stem_channels, config.stem_kernel, stride=2),
            nn.ReLU(),
            _max_pool(),
        ]
        channels = config.stem_channels
        for index, spec in enumerate(config.fires):
            layers.append(Fire(channels, spec))
            channels = spec.out_channels
            if index in config.pool_after:
                layers.append(_max_pool())
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        final_conv = nn.Conv2d(channels, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            final_conv,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self._init_weights(final_conv)

    def _init_weights(self, final_conv: nn.Conv2d) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # The classifier conv starts small so the initial logits are near uniform.
                if module is final_conv:
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet(*, version: str = "1_1", num_classes: int = 1000) -> SqueezeNet:
    """SqueezeNet ``version`` ``"1_0"`` (paper Table 1) or ``"1_1"`` (the reference repo's v1.1)."""
    config = variant_config(SQUEEZENET_CONFIGS, version, "SqueezeNet version")
    return SqueezeNet(config, num_classes=num_classes)


register_model(
    "squeezenet1_0",
    squeezenet,
    family="squeezenet",
    input_size=(224, 224),
    description="SqueezeNet 1.0 (Iandola et al. 2016): Fire modules, 7×7/96 stem, 1.25M params",
    version="1_0",
)
register_model(
    "squeezenet1_1",
    squeezenet,
    family="squeezenet",
    input_size=(224, 224),
    description="SqueezeNet 1.1: 3×3/64 stem and earlier pooling, 2.4× fewer FLOPs than 1.0",
    version="1_1",
)
