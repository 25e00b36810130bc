"""MobileNet v2: inverted residuals with linear bottlenecks.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv:1801.04381. The body is paper Table 2; widths and rounding follow torchvision's
``mobilenet_v2`` (every channel count a multiple of 8, the 1280-wide last conv never thinned below
1280), so the 1.0× model has torchvision's 3,504,872 parameters.

The inverted residual block lives in :mod:`edgecompile.zoo.layers`, shared with MobileNet v3 and
MNASNet.
"""

from __future__ import annotations

from torch import nn

from edgecompile.zoo.layers import (
    ConvBnAct,
    InvertedResidualSpec,
    PooledClassifierNet,
    init_he_normal,
    inverted_residual_stages,
    make_divisible,
)
from edgecompile.zoo.registry import register_model, width_suffix

__all__ = ["MOBILENET_V2_STAGES", "MobileNetV2", "mobilenet_v2"]


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


class MobileNetV2(PooledClassifierNet):
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
        stem = ConvBnAct(3, channels, 3, stride=2, act=nn.ReLU6)
        blocks, channels = inverted_residual_stages(channels, stages, width=width, act=nn.ReLU6)
        last = ConvBnAct(channels, last_channels, 1, act=nn.ReLU6)
        self.features = nn.Sequential(stem, *blocks, last)
        self.add_classifier_head(last_channels, num_classes, dropout=dropout)
        init_he_normal(self, mode="fan_in", linear_std=0.01)


def mobilenet_v2(
    *, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNet v2 with width multiplier ``width`` (paper Fig. 5 spans 0.35 to 1.4)."""
    return MobileNetV2(width=width, num_classes=num_classes, dropout=dropout)


# timm's names for the same networks (its mobilenetv2_NNN has this stem, ReLU6, and a head
# of max(1280, 1280·width), so the parameter counts agree: 1.68M, 1.97M, 2.64M, 3.50M, 6.11M).
# timm has no 1.3×; its 110d/120d are deeper, not just wider. torchvision's only name is
# "mobilenet_v2" (the 1× model), as here.
_TIMM_NAMES = {
    0.35: "mobilenetv2_035",
    0.5: "mobilenetv2_050",
    0.75: "mobilenetv2_075",
    1.0: "mobilenetv2_100",
    1.4: "mobilenetv2_140",
}


def _register_variants() -> None:
    # The widths of paper Fig. 5 and of the authors' released 224-px checkpoints.
    for width in (1.0, 0.35, 0.5, 0.75, 1.3, 1.4):
        aliases = [_TIMM_NAMES[width]] if width in _TIMM_NAMES else []
        register_model(
            f"mobilenet_v2{width_suffix(width)}",
            mobilenet_v2,
            family="mobilenet_v2",
            input_size=(224, 224),
            description=(
                f"MobileNet v2 (Sandler et al. 2018), width {width:g}: inverted residuals, "
                "linear bottlenecks"
            ),
            aliases=(["mobilenet_v2_x1_0"] if width == 1.0 else []) + aliases,
            width=width,
        )


_register_variants()
