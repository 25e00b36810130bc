"""MobileNet v3 Large and Small: searched inverted residuals with hard-swish and squeeze-excite.

Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le and Adam, "Searching for
MobileNetV3", ICCV 2019, arXiv:1905.02244. The block tables are paper Tables 1 (Large) and 2
(Small). Layer for layer this follows torchvision's ``mobilenet_v3_large``/``_small`` (BatchNorm eps
0.001; squeeze-excite to ``make_divisible(C // 4, 8)`` with a hard-sigmoid gate; a 1280/1024-wide
hidden Linear with hard-swish and dropout before the classifier), so the parameter counts match
torchvision's 5,483,032 (Large) and 2,542,856 (Small).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import nn

from edgecompile.zoo.layers import (
    ActivationFactory,
    ConvBnAct,
    HardSigmoid,
    HardSwish,
    InvertedResidual,
    PooledClassifierNet,
    init_he_normal,
    make_divisible,
)
from edgecompile.zoo.registry import register_model, variant_config, width_suffix

__all__ = [
    "MOBILENET_V3_CONFIGS",
    "BottleneckSpec",
    "MobileNetV3",
    "MobileNetV3Config",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]

RE: ActivationFactory = nn.ReLU
HS: ActivationFactory = HardSwish

# BatchNorm as in the TF reference (decay 0.99, epsilon 0.001), which torchvision copies.
_BN = {"bn_eps": 1e-3, "bn_momentum": 0.01}


class BottleneckSpec(NamedTuple):
    """One row of paper Tables 1/2 ("bneck"); expansion sizes are absolute, as the search found."""

    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: ActivationFactory
    stride: int


class MobileNetV3Config(NamedTuple):
    """A MobileNet v3 size: its bottlenecks and the width of the hidden classifier layer."""

    blocks: tuple[BottleneckSpec, ...]
    head_channels: int


STEM_CHANNELS = 16

MOBILENET_V3_CONFIGS: dict[str, MobileNetV3Config] = {
    # Paper Table 1.
    "large": MobileNetV3Config(
        blocks=(
            BottleneckSpec(3, 16, 16, False, RE, 1),
            BottleneckSpec(3, 64, 24, False, RE, 2),
            BottleneckSpec(3, 72, 24, False, RE, 1),
            BottleneckSpec(5, 72, 40, True, RE, 2),
            BottleneckSpec(5, 120, 40, True, RE, 1),
            BottleneckSpec(5, 120, 40, True, RE, 1),
            BottleneckSpec(3, 240, 80, False, HS, 2),
            BottleneckSpec(3, 200, 80, False, HS, 1),
            BottleneckSpec(3, 184, 80, False, HS, 1),
            BottleneckSpec(3, 184, 80, False, HS, 1),
            BottleneckSpec(3, 480, 112, True, HS, 1),
            BottleneckSpec(3, 672, 112, True, HS, 1),
            BottleneckSpec(5, 672, 160, True, HS, 2),
            BottleneckSpec(5, 960, 160, True, HS, 1),
            BottleneckSpec(5, 960, 160, True, HS, 1),
        ),
        head_channels=1280,
    ),
    # Paper Table 2.
    "small": MobileNetV3Config(
        blocks=(
            BottleneckSpec(3, 16, 16, True, RE, 2),
            BottleneckSpec(3, 72, 24, False, RE, 2),
            BottleneckSpec(3, 88, 24, False, RE, 1),
            BottleneckSpec(5, 96, 40, True, HS, 2),
            BottleneckSpec(5, 240, 40, True, HS, 1),
            BottleneckSpec(5, 240, 40, True, HS, 1),
            BottleneckSpec(5, 120, 48, True, HS, 1),
            BottleneckSpec(5, 144, 48, True, HS, 1),
            BottleneckSpec(5, 288, 96, True, HS, 2),
            BottleneckSpec(5, 576, 96, True, HS, 1),
            BottleneckSpec(5, 576, 96, True, HS, 1),
        ),
        head_channels=1024,
    ),
}


class MobileNetV3(PooledClassifierNet):
    """MobileNet v3: hard-swish stem, bottlenecks, 1×1 to 6× the last width, pooled 2-layer head.

    The hidden head layer runs after pooling (paper §5.1, "efficient last stage"), so its cost is a
    1×1 on a single pixel; it is a Linear here, as in torchvision, which is the same computation.
    """

    def __init__(
        self,
        config: MobileNetV3Config,
        *,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        self.width = width

        def scaled(channels: int) -> int:
            return make_divisible(channels * width, 8)

        channels = scaled(STEM_CHANNELS)
        layers: list[nn.Module] = [ConvBnAct(3, channels, 3, stride=2, act=HS, **_BN)]
        for spec in config.blocks:
            expanded = scaled(spec.expanded_channels)
            out_channels = scaled(spec.out_channels)
            layers.append(
                InvertedResidual(
                    channels,
                    out_channels,
                    expanded_channels=expanded,
                    kernel_size=spec.kernel,
                    stride=spec.stride,
                    act=spec.activation,
                    # Paper §5.3: SE bottleneck fixed at 1/4 of the expansion layer.
                    se_channels=make_divisible(expanded // 4, 8) if spec.use_se else None,
                    se_gate=HardSigmoid,
                    **_BN,
                )
            )
            channels = out_channels
        last_conv_channels = 6 * channels
        layers.append(ConvBnAct(channels, last_conv_channels, 1, act=HS, **_BN))
        self.features = nn.Sequential(*layers)
        self.add_classifier_head(
            last_conv_channels,
            num_classes,
            dropout=dropout,
            hidden_features=scaled(config.head_channels),
            hidden_act=HS,
        )
        init_he_normal(self, mode="fan_in", linear_std=0.01)


def mobilenet_v3(
    *,
    size: Literal["large", "small"] = "large",
    width: float = 1.0,
    num_classes: int = 1000,
    dropout: float = 0.2,
) -> MobileNetV3:
    """MobileNet v3 ``size`` ("large", paper Table 1, or "small", Table 2) at ``width``."""
    config = variant_config(MOBILENET_V3_CONFIGS, size, "MobileNet v3 size")
    return MobileNetV3(config, width=width, num_classes=num_classes, dropout=dropout)


def mobilenet_v3_large(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
) -> MobileNetV3:
    """MobileNet v3 Large (paper Table 1) at width multiplier ``width``."""
    return mobilenet_v3(size="large", width=width, num_classes=num_classes, dropout=dropout)


def mobilenet_v3_small(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
) -> MobileNetV3:
    """MobileNet v3 Small (paper Table 2) at width multiplier ``width``."""
    return mobilenet_v3(size="small", width=width, num_classes=num_classes, dropout=dropout)


def _register_variants() -> None:
    builders = {"large": mobilenet_v3_large, "small": mobilenet_v3_small}
    # Paper Table 3 reports both sizes at multipliers 1.0 and 0.75. At 1.0 these are
    # torchvision's mobilenet_v3_large/_small and timm's mobilenetv3_large_100/_small_100. At
    # 0.75 they are torchvision's width_mult=0.75, whose head (1280, 1024 wide at 1.0) thins
    # with the rest; timm's mobilenetv3_*_075 keep the head at full width (3.99M and 2.04M
    # parameters against 3.38M and 1.65M here), so they are not aliases. timm's tf_* ports pad
    # as TensorFlow does ("same"), also a different network.
    for size, builder in builders.items():
        for width in (1.0, 0.75):
            aliases = (f"mobilenet_v3_{size}_x1_0", f"mobilenetv3_{size}_100")
            register_model(
                f"mobilenet_v3_{size}{width_suffix(width)}",
                builder,
                family="mobilenet_v3",
                input_size=(224, 224),
                description=(
                    f"MobileNet v3 {size.capitalize()} (Howard et al. 2019), width {width:g}: "
                    "hard-swish, squeeze-excite"
                ),
                aliases=aliases if width == 1.0 else (),
                width=width,
            )


_register_variants()
