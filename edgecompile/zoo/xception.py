"""Xception.

Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017
(arXiv:1610.02357). The layout follows the Keras reference port that Cadene's ``pretrainedmodels``
and timm's ``legacy_xception`` carry (22.86M parameters at 1000 classes): unpadded stem convs,
3×3/2 max-pools padded by 1, and no non-linearity between a separable conv's depthwise and
pointwise halves (paper §4.7 found that one hurts).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from edgecompile.zoo.layers import ConvBnAct, init_he_normal
from edgecompile.zoo.registry import register_model

__all__ = ["SeparableConv2d", "Xception", "XceptionBlock", "XceptionBlockSpec", "xception"]


@dataclass(frozen=True)
class XceptionBlockSpec:
    """One residual block of separable convs (paper Fig. 5)."""

    out_channels: int
    reps: int  # separable convs in the block
    stride: int  # a strided block ends in a 3×3 max-pool
    start_with_relu: bool  # False only right after the stem, whose output is already ReLU'd
    grow_first: bool  # widen in the first separable conv (True) or the last (exit flow)


_ENTRY_FLOW = (
    XceptionBlockSpec(128, reps=2, stride=2, start_with_relu=False, grow_first=True),
    XceptionBlockSpec(256, reps=2, stride=2, start_with_relu=True, grow_first=True),
    XceptionBlockSpec(728, reps=2, stride=2, start_with_relu=True, grow_first=True),
)
_MIDDLE_FLOW = tuple(
    XceptionBlockSpec(728, reps=3, stride=1, start_with_relu=True, grow_first=True)
    for _ in range(8)
)
_EXIT_FLOW = (XceptionBlockSpec(1024, reps=2, stride=2, start_with_relu=True, grow_first=False),)
XCEPTION_BLOCKS: tuple[XceptionBlockSpec, ...] = _ENTRY_FLOW + _MIDDLE_FLOW + _EXIT_FLOW


class SeparableConv2d(nn.Module):
    """Depthwise k×k conv followed by a pointwise 1×1 conv, no bias, no norm in between."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """ReLU → SeparableConv → BN, ``reps`` times, plus a shortcut (1×1 strided conv if reshaped).

    The ReLU comes *before* each separable conv, so the block's sum is left un-activated and the
    next block's leading ReLU acts on it.
    """

    def __init__(self, in_channels: int, spec: XceptionBlockSpec) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = spec.out_channels
        widths = [in_channels]
        if spec.grow_first:
            widths += [spec.out_channels] * spec.reps
        else:
            widths += [in_channels] * (spec.reps - 1) + [spec.out_channels]
        layers: list[nn.Module] = []
        for index, (cin, cout) in enumerate(pairwise(widths)):
            if index > 0 or spec.start_with_relu:
                # Not in place: the block input is still needed by the shortcut.
                layers.append(nn.ReLU())
            layers += [SeparableConv2d(cin, cout, 3), nn.BatchNorm2d(cout)]
        if spec.stride != 1:
            layers.append(nn.MaxPool2d(3, stride=spec.stride, padding=1))
        self.rep = nn.Sequential(*layers)
        self.skip: nn.Module
        if spec.out_channels != in_channels or spec.stride != 1:
            self.skip = ConvBnAct(in_channels, spec.out_channels, 1, stride=spec.stride, act=None)
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep(x) + self.skip(x)


class Xception(nn.Module):
    """Xception: entry flow (stem + 3 strided blocks), middle flow (8 blocks), exit flow."""

    def __init__(
        self,
        blocks: tuple[XceptionBlockSpec, ...] = XCEPTION_BLOCKS,
        *,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        # Unpadded stem convs (Keras 'valid'): 299 → 149 → 147, so the blocks see 74, 37, 19, 10.
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        channels = 64
        stages: list[nn.Module] = []
        for spec in blocks:
            stages.append(XceptionBlock(channels, spec))
            channels = spec.out_channels
        self.blocks = nn.Sequential(*stages)
        self.head = nn.Sequential(
            SeparableConv2d(channels, 1536, 3),
            nn.BatchNorm2d(1536),
            nn.ReLU(),
            SeparableConv2d(1536, 2048, 3),
            nn.BatchNorm2d(2048),
            nn.ReLU(),
        )
        self.num_features = 2048
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        # As the reference port: He-normal over fan-out, the classifier left at PyTorch's default.
        init_he_normal(self, mode="fan_out", linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def xception(*, num_classes: int = 1000) -> Xception:
    """Xception at its ImageNet configuration (36 conv layers in 14 modules, paper Fig. 5)."""
    return Xception(XCEPTION_BLOCKS, num_classes=num_classes)


# timm calls this network legacy_xception (it was timm's "xception" before 0.9); timm's
# xception41/65/71 are the "aligned" Xception of DeepLab v3+, a different network.
register_model(
    "xception",
    xception,
    family="xception",
    input_size=(299, 299),
    description="Xception (Chollet 2017): depthwise-separable residual blocks, 22.9M params",
    aliases=("legacy_xception",),
)
