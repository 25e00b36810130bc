"""Blocks shared by the zoo's families.

Everything here exports to ONNX with static shapes: channel counts are Python ints fixed at
construction, never read from a tensor at run time (``x.shape``-driven reshapes export to
Shape/Gather chains, which TVM imports as dynamic shapes that do not build).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ActivationFactory = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below 90% of it."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm → optional activation, 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: ActivationFactory | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool → reduce (1×1 conv) → act → expand → gate → scale."""

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        *,
        act: ActivationFactory = nn.ReLU,
        gate: ActivationFactory = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


def channel_shuffle(x: torch.Tensor, groups: int, channels: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle with static shapes: ``channels`` is the known channel count.

    The batch dim is ``-1`` and the rest are Python ints, so the exported Reshapes carry constant
    shapes only.
    """
    height, width = int(x.shape[2]), int(x.shape[3])
    x = x.reshape(-1, groups, channels // groups, height, width)
    x = x.transpose(1, 2)
    return x.reshape(-1, channels, height, width)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`, so it shows up as a layer in ``inspect``."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.groups = groups
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups, self.channels)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, channels={self.channels}"


HardSwish = nn.Hardswish
HardSigmoid = nn.Hardsigmoid
