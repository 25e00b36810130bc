"""MobileNet v1: a 3×3 stem and thirteen depthwise-separable convolutions.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto and Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861 (2017). The body is
paper Table 1; the width multiplier α (§3.3) thins every layer and the resolution multiplier ρ
(§3.4) only changes the input size, so the sixteen α × ρ models of paper Figs. 4 and 5 are one
builder registered at four input sizes. BatchNorm follows every convolution (paper Fig. 3) and the
classifier is a biased 1024 → classes fully connected layer: 4,231,976 parameters at α = 1.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from edgecompile.zoo.layers import (
    ConvBnAct,
    DepthwiseSeparable,
    PooledClassifierNet,
    init_he_normal,
    make_divisible,
)
from edgecompile.zoo.registry import register_model, width_suffix

__all__ = [
    "MOBILENET_V1_LAYERS",
    "DepthwiseSeparableSpec",
    "MobileNetV1",
    "mobilenet_v1",
]


class DepthwiseSeparableSpec(NamedTuple):
    """One row of paper Table 1: a 3×3 depthwise conv at ``stride``, then a 1×1 to ``out``."""

    out_channels: int
    stride: int


STEM_CHANNELS = 32

# Paper Table 1 after the stem, one row per depthwise-separable layer (the 5× 512 row unrolled).
MOBILENET_V1_LAYERS: tuple[DepthwiseSeparableSpec, ...] = (
    DepthwiseSeparableSpec(64, 1),
    DepthwiseSeparableSpec(128, 2),
    DepthwiseSeparableSpec(128, 1),
    DepthwiseSeparableSpec(256, 2),
    DepthwiseSeparableSpec(256, 1),
    DepthwiseSeparableSpec(512, 2),
    *(DepthwiseSeparableSpec(512, 1) for _ in range(5)),
    DepthwiseSeparableSpec(1024, 2),
    # The paper's table prints stride 2 here, but the feature map stays 7×7 (its own size column,
    # and the reference TF-slim definition): stride 1.
    DepthwiseSeparableSpec(1024, 1),
)


class MobileNetV1(PooledClassifierNet):
    """MobileNet v1 at width multiplier ``width`` (α); any input size works (global pooling)."""

    def __init__(
        self,
        layers: tuple[DepthwiseSeparableSpec, ...] = MOBILENET_V1_LAYERS,
        *,
        width: float = 1.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        self.width = width
        # For the paper's α ∈ {1, 0.75, 0.5, 0.25} every α·M is already a multiple of 8, so this
        # rounding only matters for other widths, where it keeps channels SIMD-friendly.
        channels = make_divisible(STEM_CHANNELS * width, 8)
        blocks: list[nn.Module] = [ConvBnAct(3, channels, 3, stride=2)]
        for spec in layers:
            out_channels = make_divisible(spec.out_channels * width, 8)
            blocks.append(DepthwiseSeparable(channels, out_channels, stride=spec.stride))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        # No dropout: the paper's classifier is the bare biased Linear (key ``classifier.weight``).
        self.add_classifier_head(channels, num_classes)
        init_he_normal(self, mode="fan_in", linear_std=0.01)


def mobilenet_v1(*, width: float = 1.0, num_classes: int = 1000) -> MobileNetV1:
    """MobileNet v1 with width multiplier ``width`` (paper's α); resolution is the input size."""
    return MobileNetV1(width=width, num_classes=num_classes)


def _register_variants() -> None:
    # Paper Tables 6 (α at 224 px) and 7 (ρ at α = 1) span this grid; Figs. 4-5 plot all of it.
    # Each model also answers to its full grid name (mobilenet_v1_x1_0_r224). timm's
    # mobilenetv1_100 is not an alias: it uses ReLU6 where the paper (and this model) use ReLU.
    for width in (1.0, 0.75, 0.5, 0.25):
        for resolution in (224, 192, 160, 128):
            suffix = width_suffix(width)
            suffix += "" if resolution == 224 else f"_r{resolution}"
            name = f"mobilenet_v1{suffix}"
            full = f"mobilenet_v1{width_suffix(width) or '_x1_0'}_r{resolution}"
            spellings = {full, full.removesuffix("_r224"), full.replace("_x1_0", "")}
            register_model(
                name,
                mobilenet_v1,
                family="mobilenet_v1",
                input_size=(resolution, resolution),
                description=(
                    f"MobileNet v1 (Howard et al. 2017), width α={width:g} at "
                    f"{resolution}×{resolution}: depthwise-separable convs"
                ),
                aliases=sorted(spellings - {name}),
                width=width,
            )


_register_variants()
