"""Blocks shared by the zoo's families.

A family module (one file per network family) builds its network from the blocks here and never
imports another family: a block that two families use lives here, written once.

Everything here exports to ONNX with static shapes: channel counts are Python ints fixed at
construction, never read from a tensor at run time (``x.shape``-driven reshapes export to
Shape/Gather chains, which TVM imports as dynamic shapes that do not build).

Seeded random weights depend on the order in which modules are created and on their names, so a
change to the order of the layers a block builds, or to their attribute names, changes every zoo
model's weights (and its checkpoint keys).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, NamedTuple

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


def init_he_normal(
    model: nn.Module, *, mode: Literal["fan_in", "fan_out"], linear_std: float | None
) -> None:
    """He-normal convs with zero biases, identity BatchNorms, and ``N(0, linear_std²)`` Linears.

    ``linear_std=None`` leaves Linear layers at PyTorch's default initialisation.

    The MobileNet-style models use ``mode="fan_in"`` rather than torchvision's fan-out: a depthwise
    conv's fan-out counts the output channels, which would shrink activations by ~sqrt(2/C) per
    layer, so a randomly initialised network (all the zoo ships) would output values near zero and
    make numeric comparisons between backends meaningless.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


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


def prelu(channels: int) -> ActivationFactory:
    """A per-channel PReLU as an activation factory, e.g. ``ConvBnAct(..., act=prelu(c))``."""
    return partial(nn.PReLU, channels)


class BnPReLU(nn.Sequential):
    """BatchNorm → per-channel PReLU: the ESPNets' activation after each merge and concat."""

    def __init__(self, channels: int, *, bn_eps: float = 1e-5) -> None:
        super().__init__(nn.BatchNorm2d(channels, eps=bn_eps), nn.PReLU(channels))


class DepthwiseSeparable(nn.Sequential):
    """Depthwise k×k conv → BN → (act) → pointwise 1×1 conv → BN → act (MobileNet v1, Fig. 3).

    ``depthwise_act=None`` leaves the depthwise half linear, as in ShuffleNet v2's units.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        depthwise_act: ActivationFactory | None = nn.ReLU,
        pointwise_act: ActivationFactory | None = nn.ReLU,
    ) -> None:
        super().__init__(
            ConvBnAct(
                in_channels,
                in_channels,
                kernel_size,
                stride=stride,
                groups=in_channels,
                act=depthwise_act,
            ),
            ConvBnAct(in_channels, out_channels, 1, act=pointwise_act),
        )
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


class InvertedResidual(nn.Module):
    """Expand 1×1 → depthwise k×k → (squeeze-excite) → linear 1×1 projection, plus identity skip.

    MobileNet v2's block (Sandler et al. 2018), which MobileNet v3 and MNASNet reuse with other
    kernels, activations and a squeeze-excite, so all three families export one op pattern. The
    projection has no activation: MobileNet v2 §3.2 shows a ReLU in the narrow bottleneck destroys
    information. The expansion conv is left out when it would not widen (expansion ratio 1), and
    the skip is used only where input and output shapes agree (stride 1, same channels).
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


class InvertedResidualSpec(NamedTuple):
    """One stage of inverted residuals: ``repeats`` blocks, the first at ``stride``.

    ``kernel`` and ``use_se`` default to MobileNet v2's 3×3 and no squeeze-excite; MNASNet rows set
    them.
    """

    expand_ratio: int
    out_channels: int
    repeats: int
    stride: int
    kernel: int = 3
    use_se: bool = False


def inverted_residual_stages(
    in_channels: int,
    stages: Sequence[InvertedResidualSpec],
    *,
    width: float,
    act: ActivationFactory,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> tuple[list[InvertedResidual], int]:
    """The blocks of ``stages`` at width multiplier ``width``, and the channels they end with.

    A stage's output width is ``make_divisible(out_channels * width, 8)``; its first block takes
    the stage's stride, the others stride 1. Squeeze-excite, where a row asks for it, reduces to a
    quarter of the block's *input* channels, as the reference TF MNASNet code does.
    """
    blocks: list[InvertedResidual] = []
    channels = in_channels
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
                    act=act,
                    se_channels=channels // 4 if stage.use_se else None,
                    bn_eps=bn_eps,
                    bn_momentum=bn_momentum,
                )
            )
            channels = out_channels
    return blocks, channels


class PooledClassifierNet(nn.Module):
    """Base of the nets laid out as ``features`` → global average pool → flatten → ``classifier``.

    A subclass builds ``self.features`` and then calls :meth:`add_classifier_head`, which registers
    ``pool`` and ``classifier`` after it, so the module order and the checkpoint keys
    (``classifier.weight``, ``classifier.1.weight``, ...) are the same for every such family.
    """

    features: nn.Module
    num_features: int

    def add_classifier_head(
        self,
        in_features: int,
        num_classes: int,
        *,
        dropout: float | None = None,
        hidden_features: int | None = None,
        hidden_act: ActivationFactory = nn.ReLU,
    ) -> None:
        """Global pool, then [Linear → ``hidden_act``] → [Dropout] → Linear to ``num_classes``.

        Without a hidden layer or dropout the classifier is a bare Linear (keys ``classifier.*``);
        otherwise a Sequential whose indices follow that order. ``num_features`` is the width the
        last Linear sees.
        """
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden_features is None and dropout is None:
            self.classifier: nn.Module = nn.Linear(in_features, num_classes)
            self.num_features = in_features
            return
        layers: list[nn.Module] = []
        if hidden_features is not None:
            layers += [nn.Linear(in_features, hidden_features), hidden_act()]
            in_features = hidden_features
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*layers)
        self.num_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


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


class StageSpec(NamedTuple):
    """One stage: ``repeats`` units of ``out_channels``, the first of which has ``stride``."""

    out_channels: int
    repeats: int
    stride: int


def shufflenet_stages(stage2: int, stage3: int, stage4: int) -> tuple[StageSpec, ...]:
    """Stages 2–4 of a ShuffleNet with the given widths.

    ShuffleNet v1 (Table 1) and v2 (Table 5) share the layout: 1 + 3, 1 + 7 and 1 + 3 units (the
    "Repeat" column), each stage opening with stride 2.
    """
    return (StageSpec(stage2, 4, 2), StageSpec(stage3, 8, 2), StageSpec(stage4, 4, 2))


HardSwish = nn.Hardswish
HardSigmoid = nn.Hardsigmoid
