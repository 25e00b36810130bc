"""ShuffleNet v1: pointwise group convolutions with channel shuffle.

Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018 (arXiv:1707.01083). The 1× networks are the paper's Table 1; the
layer details the paper leaves open follow Megvii's official PyTorch code
(github.com/megvii-model/ShuffleNet-Series, ``ShuffleNetV1/network.py`` and ``blocks.py``):

* every convolution is bias-free and followed by BatchNorm;
* the depthwise 3×3 and the second pointwise convolution have no ReLU (the paper's Fig. 2);
* in a stride-2 unit only the residual branch goes through the final ReLU, because the average
  pooled shortcut is already non-negative (its input left a ReLU or a max-pool of one);
* the stem keeps 24 channels at 1.5× and is doubled only at 2× (see :func:`stem_channels`).

One detail follows OpenMMLab's mmpretrain ``ShuffleNetV1`` (the same blocks under a
``LinearClsHead``) instead: the classifier ``Linear`` has a bias. Megvii's has none, which gives
1,864,728 parameters at 1×, g = 3; with the bias it is 1,865,728, the count this zoo pins.

Where the paper and the reference differ, the paper wins: the channel shuffle sits between the
first pointwise group convolution and the depthwise convolution (Fig. 2b), and it is the shuffle
of :func:`~edgecompile.zoo.layers.channel_shuffle`; Megvii applies the inverse permutation after
the depthwise convolution. Both mix every group into every group, and a depthwise convolution
commutes with any channel permutation, so parameter and multiply-add counts are identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from edgecompile.zoo.layers import (
    ChannelShuffle,
    ConvBnAct,
    StageSpec,
    make_divisible,
    shufflenet_stages,
)
from edgecompile.zoo.registry import register_model

__all__ = [
    "GROUPS",
    "WIDTHS",
    "ShuffleNetV1",
    "ShuffleUnit",
    "shufflenet_v1",
    "stage_specs",
    "stem_channels",
]


TABLE_1: Mapping[int, tuple[StageSpec, ...]] = MappingProxyType(
    {
        1: shufflenet_stages(144, 288, 576),
        2: shufflenet_stages(200, 400, 800),
        3: shufflenet_stages(240, 480, 960),
        4: shufflenet_stages(272, 544, 1088),
        8: shufflenet_stages(384, 768, 1536),
    }
)
"""Stages 2–4 of ShuffleNet 1× for each group count ``g`` (paper Table 1)."""

GROUPS: tuple[int, ...] = tuple(TABLE_1)
WIDTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
"""The width multipliers ``s`` of the paper's Table 2 ("ShuffleNet s×")."""

STEM_CHANNELS = 24
BOTTLENECK_RATIO = 4


def stage_specs(groups: int, width: float = 1.0) -> tuple[StageSpec, ...]:
    """Table 1 for ``groups``, with every stage's channels scaled by ``width``.

    A scaled width is rounded to the nearest multiple of ``4 * groups`` (ties up, never below
    90%): the bottleneck is a quarter of the output and must itself split into ``groups``. Every
    width the reference publishes (g = 3 and 8 at 0.5×, 1×, 1.5×, 2×) is already such a multiple,
    so the rounding only moves the other group counts, e.g. g = 2 at 0.5× has 104/200/400.
    """
    if groups not in TABLE_1:
        raise ValueError(f"ShuffleNet v1 has no group count {groups}; choose one of {GROUPS}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(
        spec._replace(out_channels=make_divisible(spec.out_channels * width, 4 * groups))
        for spec in TABLE_1[groups]
    )


def stem_channels(groups: int, width: float = 1.0) -> int:
    """Output channels of the 3×3 stem convolution at ``width``.

    Megvii's reference uses 12, 24, 24 and 48 channels at 0.5×, 1×, 1.5× and 2×, i.e. 24 times the
    largest power of two not above ``width``; for g = 8 at 0.5× it widens 12 to 16 so that the
    first stride-2 unit's residual branch (stage width minus stem width) splits into 8 groups.
    Rounding up to a multiple of ``groups`` generalises that to every combination.
    """
    base = STEM_CHANNELS * 2.0 ** math.floor(math.log2(width))
    return max(groups, math.ceil(base / groups) * groups)


class ShuffleUnit(nn.Module):
    """The ShuffleNet unit of Fig. 2(b) (stride 1) and Fig. 2(c) (stride 2).

    1×1 group conv → BN → ReLU → channel shuffle → 3×3 depthwise conv (stride) → BN → 1×1 group
    conv → BN; stride 1 adds the input, stride 2 concatenates a 3×3 average-pooled input in front.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        groups: int,
        stride: int,
        group_first_conv: bool = True,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit adds its input, so it needs in == out channels")
        self.stride = stride
        # The bottleneck is a quarter of the unit's output, concat shortcut included (paper, 3.3).
        mid_channels = out_channels // BOTTLENECK_RATIO
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if group_first_conv else 1
        self.compress = ConvBnAct(in_channels, mid_channels, 1, groups=first_groups)
        # After a dense 1×1 conv a shuffle would only permute its filters, so it is left out.
        self.shuffle: nn.Module = (
            ChannelShuffle(groups, mid_channels) if first_groups > 1 else nn.Identity()
        )
        self.depthwise = ConvBnAct(
            mid_channels, mid_channels, 3, stride=stride, groups=mid_channels, act=None
        )
        self.expand = ConvBnAct(mid_channels, branch_channels, 1, groups=groups, act=None)
        self.shortcut: nn.Module = (
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1) if stride == 2 else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return self.act(x + branch)
        return torch.cat((self.shortcut(x), self.act(branch)), dim=1)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 (Zhang et al. 2018): stem, max-pool, three stages of shuffle units, head."""

    def __init__(
        self,
        stages: Sequence[StageSpec],
        *,
        groups: int,
        stem_channels: int = STEM_CHANNELS,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.stem = ConvBnAct(3, stem_channels, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        stage_modules: list[nn.Sequential] = []
        for index, spec in enumerate(stages):
            units: list[ShuffleUnit] = []
            for repeat in range(spec.repeats):
                units.append(
                    ShuffleUnit(
                        in_channels,
                        spec.out_channels,
                        groups=groups,
                        stride=spec.stride if repeat == 0 else 1,
                        # Stage 2's first unit sees only the narrow stem (paper, Sec. 3.3).
                        group_first_conv=not (index == 0 and repeat == 0),
                    )
                )
                in_channels = spec.out_channels
            stage_modules.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stage_modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.maxpool(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))


def shufflenet_v1(*, groups: int = 3, width: float = 1.0, num_classes: int = 1000) -> ShuffleNetV1:
    """ShuffleNet ``width``× with ``groups`` groups (Zhang et al. 2018, Tables 1 and 2).

    ``groups`` is one of 1, 2, 3, 4, 8; ``width`` scales every layer's filters ("ShuffleNet s×"),
    rounded as :func:`stage_specs` and :func:`stem_channels` describe.
    """
    stages = stage_specs(groups, width)
    return ShuffleNetV1(
        stages,
        groups=groups,
        stem_channels=stem_channels(groups, width),
        num_classes=num_classes,
    )


def _grid_name(groups: int, width: float) -> str:
    return f"shufflenet_v1_g{groups}_x{str(width).replace('.', '_')}"


# The paper's default (g=3, 1×) is plain "shufflenet_v1", and answers to its grid name too.
# Neither torchvision nor timm ships ShuffleNet v1, so there are no other names to accept.
for _groups in GROUPS:
    for _width in WIDTHS:
        _default = (_groups, _width) == (3, 1.0)
        register_model(
            "shufflenet_v1" if _default else _grid_name(_groups, _width),
            shufflenet_v1,
            family="shufflenet_v1",
            input_size=(224, 224),
            description=f"ShuffleNet v1 {_width}x, g={_groups} (Zhang et al. 2017)",
            aliases=(_grid_name(_groups, _width),) if _default else (),
            groups=_groups,
            width=_width,
        )
del _groups, _width, _default
