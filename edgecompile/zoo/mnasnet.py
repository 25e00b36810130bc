"""MNASNet A1 and B1: platform-aware searched networks of inverted residuals.

Tan, Chen, Pang, Vasudevan, Sandler, Howard and Le, "MnasNet: Platform-Aware Neural Architecture
Search for Mobile", CVPR 2019, arXiv:1807.11626.

* **A1** is the paper's searched model (Fig. 7): mixed 3×3/5×5 kernels and squeeze-excite in three
  stages. Its block table is the reference TF implementation's ``mnasnet_a1``, as transcribed in
  timm's ``_gen_mnasnet_a1``; the squeeze-excite reduces to 1/4 of the *block input* channels, as
  the TF code does, and the 1280-wide head conv is not thinned with the width.
* **B1** is the earlier searched model without squeeze-excite, the one torchvision ships as
  ``mnasnet1_0``/``mnasnet0_5``; layer for layer it matches torchvision (including the stem that
  scales with width), so the parameter counts are torchvision's 4,383,312 and 2,218,512.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from edgecompile.zoo.layers import (
    ConvBnAct,
    InvertedResidualSpec,
    PooledClassifierNet,
    init_he_normal,
    inverted_residual_stages,
    make_divisible,
)
from edgecompile.zoo.registry import register_model, variant_config, width_suffix

__all__ = ["MNASNET_STAGES", "MNASNet", "mnasnet_a1", "mnasnet_b1"]

Variant = Literal["a1", "b1"]

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# The TF reference's BatchNorm decay 0.9997, in PyTorch's momentum convention (as torchvision).
_BN = {"bn_eps": 1e-5, "bn_momentum": 1 - 0.9997}

_Row = InvertedResidualSpec

MNASNET_STAGES: dict[Variant, tuple[InvertedResidualSpec, ...]] = {
    # Paper Fig. 7. The first row is the depthwise-separable "SepConv" (no expansion).
    "a1": (
        _Row(expand_ratio=1, out_channels=16, repeats=1, stride=1, kernel=3),
        _Row(expand_ratio=6, out_channels=24, repeats=2, stride=2, kernel=3),
        _Row(expand_ratio=3, out_channels=40, repeats=3, stride=2, kernel=5, use_se=True),
        _Row(expand_ratio=6, out_channels=80, repeats=4, stride=2, kernel=3),
        _Row(expand_ratio=6, out_channels=112, repeats=2, stride=1, kernel=3, use_se=True),
        _Row(expand_ratio=6, out_channels=160, repeats=3, stride=2, kernel=5, use_se=True),
        _Row(expand_ratio=6, out_channels=320, repeats=1, stride=1, kernel=3),
    ),
    # torchvision's MNASNet (the reference TF code's ``mnasnet_b1``).
    "b1": (
        _Row(expand_ratio=1, out_channels=16, repeats=1, stride=1, kernel=3),
        _Row(expand_ratio=3, out_channels=24, repeats=3, stride=2, kernel=3),
        _Row(expand_ratio=3, out_channels=40, repeats=3, stride=2, kernel=5),
        _Row(expand_ratio=6, out_channels=80, repeats=3, stride=2, kernel=5),
        _Row(expand_ratio=6, out_channels=96, repeats=2, stride=1, kernel=3),
        _Row(expand_ratio=6, out_channels=192, repeats=4, stride=2, kernel=5),
        _Row(expand_ratio=6, out_channels=320, repeats=1, stride=1, kernel=3),
    ),
}


class MNASNet(PooledClassifierNet):
    """MNASNet: 3×3 stem, inverted-residual stages from a searched table, 1×1 head to 1280."""

    def __init__(
        self,
        stages: tuple[InvertedResidualSpec, ...],
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
        stem = ConvBnAct(3, channels, 3, stride=2, **_BN)
        # Squeeze-excite (A1's rows ask for it) reduces to 1/4 of each block's input channels.
        blocks, channels = inverted_residual_stages(
            channels, stages, width=width, act=nn.ReLU, **_BN
        )
        head = ConvBnAct(channels, HEAD_CHANNELS, 1, **_BN)
        self.features = nn.Sequential(stem, *blocks, head)
        self.add_classifier_head(HEAD_CHANNELS, num_classes, dropout=dropout)
        init_he_normal(self, mode="fan_in", linear_std=0.01)


def mnasnet(
    *, variant: Variant = "a1", width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
) -> MNASNet:
    """MNASNet ``variant`` ("a1" with squeeze-excite, "b1" without) at width ``width``."""
    stages = variant_config(MNASNET_STAGES, variant, "MNASNet variant")
    return MNASNet(stages, width=width, num_classes=num_classes, dropout=dropout)


def mnasnet_a1(*, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> MNASNet:
    """MNASNet-A1 (paper Fig. 7), with squeeze-excite, at depth multiplier ``width``."""
    return mnasnet(variant="a1", width=width, num_classes=num_classes, dropout=dropout)


def mnasnet_b1(*, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> MNASNet:
    """MNASNet-B1, without squeeze-excite (torchvision's ``mnasnet1_0``), at width ``width``."""
    return mnasnet(variant="b1", width=width, num_classes=num_classes, dropout=dropout)


# The names torchvision and timm give the same networks. torchvision's mnasnetX_Y and timm's
# mnasnet_NNN are B1 (both scale the stem with the width and keep the 1280 head, as here);
# timm's semnasnet_NNN is A1. Their other widths (0.75, 1.3/1.4) are not in this zoo.
_OTHER_NAMES = {
    ("b1", 1.0): ("mnasnet1_0", "mnasnet_100"),
    ("b1", 0.5): ("mnasnet0_5", "mnasnet_050"),
    ("a1", 1.0): ("semnasnet_100",),
    ("a1", 0.5): ("semnasnet_050",),
}


def _register_variants() -> None:
    builders = {"a1": mnasnet_a1, "b1": mnasnet_b1}
    notes = {"a1": "the paper's searched model, squeeze-excite", "b1": "no squeeze-excite"}
    # 1.0 and 0.5: the depth multipliers torchvision ships ImageNet weights for (B1).
    for variant, builder in builders.items():
        for width in (1.0, 0.5):
            register_model(
                f"mnasnet_{variant}{width_suffix(width)}",
                builder,
                family="mnasnet",
                input_size=(224, 224),
                description=(
                    f"MNASNet-{variant.upper()} (Tan et al. 2019), width {width:g}: "
                    f"{notes[variant]}"
                ),
                aliases=(
                    *((f"mnasnet_{variant}_x1_0",) if width == 1.0 else ()),
                    *_OTHER_NAMES.get((variant, width), ()),
                ),
                width=width,
            )


_register_variants()
