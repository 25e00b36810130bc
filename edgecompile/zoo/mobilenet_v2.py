"""MobileNet v2: inverted residuals with linear bottlenecks.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv:1801.04381. The body is paper Table 2; widths and rounding follow torchvision's
``mobilenet_v2`` (every channel count a multiple of 8, the 1280-wide last conv never thinned below
1280), so the 1.0× model has torchvision's 3,504,872 parameters.

:class:`InvertedResidual` here is the generic block that MobileNet v3 and MNASNet import too: kernel
size, activation and an optional squeeze-excite are arguments, so all three families share one
exported op pattern.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from edgecompile.zoo.layers import ActivationFactory, ConvBnAct, SqueezeExcite, make_divisible
from edgecompile.zoo.mobilenet_v1 import init_weights
from edgecompile.zoo.registry import register_model

__all__ = [
    "MOBILENET_V2_STAGES",
    "InvertedResidual",
    "InvertedResidualSpec",
    "MobileNetV2",
    "mobilenet_v2",
]


class InvertedResidualSpec(NamedTuple):
    """One stage (a row of paper Table 2): ``repeats`` blocks, the first at ``stride``.

    ``kernel`` and ``use_se`` default to MobileNet v2's 3×3 and no squeeze-excite; MNASNet rows set
    them.
    """

    expand_ratio: int
    out_channels: int
    repeats: int
    stride: int
    kernel: int = 3
    use_se: bool = False


class InvertedResidual(nn.Module):
    """Expand 1×1 → depthwise k×k → (squeeze-excite) → linear 1×1 projection, plus identity skip.

    The projection has no activation: paper §3.2 shows a ReLU in the narrow bottleneck destroys
    information. The expansion conv is left out when it would not widen (expansion ratio 1), and the
    skip is used only where input and output shapes agree (stride 1, same channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expanded_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: ActivationFactory = nn.ReLU6,
        se_channels: int | None = None,
        se_gate: ActivationFactory = nn.Sigmoid,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvBnAct(in_channels, expanded_channels, 1, act=act, **norm))
        layers.append(
            ConvBnAct(
                expanded_channels,
                expanded_channels,
                kernel_size,
                stride=stride,
                groups=expanded_channels,
                act=act,
                **norm,
            )
        )
        if se_channels:
            layers.append(SqueezeExcite(expanded_channels, se_channels, act=nn.ReLU, gate=se_gate))
        layers.append(ConvBnAct(expanded_channels, out_channels, 1, act=None, **norm))
        self.block = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


STEM_CHANNELS = 32
LAST_CHANNELS = 1280

# Paper Table 2: t (expansion), c (output channels), n (repeats), s (first stride).
MOBILENET_V2_STAGES: tuple[InvertedResidualSpec, ...] = (
    InvertedResidualSpec(expand_ratio=1, out_channels=16, repeats=1, stride=1),
    InvertedResidualSpec(expand_ratio=6, out_channels=24, repeats=2, stride=2),
    InvertedResidualSpec(expand_ratio=6, out_channels=32, repeats=3, stride=2),
    InvertedResidualSpec(expand_ratio=6, out_channels=64, repeats=4, stride=2),
    InvertedResidualSpec(expand_ratio=6, out_channels=96, repeats=3, stride=1),
    InvertedResidualSpec(expand_ratio=6, out_channels=160, repeats=3, stride=2),
    InvertedResidualSpec(expand_ratio=6, out_channels=320, repeats=1, stride=1),
)


class MobileNetV2(nn.Module):
    """MobileNet v2 at width multiplier ``width``: stem, 17 inverted residuals, 1×1 to 1280."""

    def __init__(
        self,
        stages: tuple[InvertedResidualSpec, ...] = MOBILENET_V2_STAGES,
        *,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        self.width = width
        channels = make_divisible(STEM_CHANNELS * width, 8)
        # Paper §6.1: the last layer is not thinned for widths below 1, which helps small models.
        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width), 8)
        blocks: list[nn.Module] = [ConvBnAct(3, channels, 3, stride=2, act=nn.ReLU6)]
        for stage in stages:
            out_channels = make_divisible(stage.out_channels * width, 8)
            for index in range(stage.repeats):
                blocks.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        expanded_channels=channels * stage.expand_ratio,
                        kernel_size=stage.kernel,
                        stride=stage.stride if index == 0 else 1,
                        act=nn.ReLU6,
                    )
                )
                channels = out_channels
        blocks.append(ConvBnAct(channels, last_channels, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*blocks)
        self.num_features = last_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNet v2 with width multiplier ``width`` (paper Fig. 5 spans 0.35 to 1.4)."""
    return MobileNetV2(width=width, num_classes=num_classes, dropout=dropout)


def _register_variants() -> None:
    # The widths of paper Fig. 5 and of the authors' released 224-px checkpoints.
    for width in (1.0, 0.35, 0.5, 0.75, 1.3, 1.4):
        suffix = "" if width == 1.0 else "_x" + f"{width:g}".replace(".", "_")
        register_model(
            f"mobilenet_v2{suffix}",
            mobilenet_v2,
            family="mobilenet_v2",
            input_size=(224, 224),
            description=(
                f"MobileNet v2 (Sandler et al. 2018), width {width:g}: inverted residuals, "
                "linear bottlenecks"
            ),
            width=width,
        )


_register_variants()
