"""ShuffleNet v2: channel split, equal-width branches and a two-group channel shuffle.

Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018 (arXiv:1807.11164). The networks are the paper's Table 5; layer details the
paper leaves open (no ReLU after a depthwise conv, a biased classifier, BatchNorm after every
convolution) follow torchvision's ``ShuffleNetV2``, whose parameter counts these models match.

Export note: the channel split slices at a channel count fixed at construction. torchvision's
``x.chunk(2, dim=1)`` computes the split from the tensor's shape at run time; the TorchScript ONNX
exporter (``dynamo=False``) writes that as ``Shape → Gather → Div`` arithmetic, which TVM imports
as dynamic shapes. Constant slices export as plain ``Slice`` ops with either exporter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import nn

from edgecompile.zoo.layers import (
    ChannelShuffle,
    ConvBnAct,
    DepthwiseSeparable,
    StageSpec,
    shufflenet_stages,
)
from edgecompile.zoo.registry import register_model

__all__ = [
    "TABLE_5",
    "ShuffleNetV2",
    "ShuffleNetV2Spec",
    "ShuffleV2Unit",
    "shufflenet_v2",
]


class ShuffleNetV2Spec(NamedTuple):
    """One column of Table 5: stem (Conv1) width, stages 2–4, and the Conv5 width."""

    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int


def _spec(stage2: int, stage3: int, stage4: int, head: int) -> ShuffleNetV2Spec:
    return ShuffleNetV2Spec(24, shufflenet_stages(stage2, stage3, stage4), head)


TABLE_5: Mapping[float, ShuffleNetV2Spec] = MappingProxyType(
    {
        0.5: _spec(48, 96, 192, 1024),
        1.0: _spec(116, 232, 464, 1024),
        1.5: _spec(176, 352, 704, 1024),
        2.0: _spec(244, 488, 976, 2048),
    }
)
"""ShuffleNet v2 0.5×, 1×, 1.5× and 2× (paper Table 5), keyed by width."""


class ShuffleV2Unit(nn.Module):
    """The ShuffleNet v2 unit of Fig. 3(c) (stride 1) and Fig. 3(d) (stride 2).

    Stride 1 splits the input into two equal halves, passes the first through and runs the second
    through 1×1 conv → 3×3 depthwise conv → 1×1 conv; stride 2 feeds the whole input to both a
    depthwise-then-1×1 branch and that same three-conv branch. The two halves are concatenated
    and shuffled with two groups.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}")
        branch_channels = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit passes half its input through, so in == out")
        self.stride = stride
        # A Python int fixed here, so the split exports as constant slices (see module docstring).
        self.split_channels = branch_channels
        self.left: nn.Module
        if stride == 1:
            self.left = nn.Identity()
        else:
            self.left = DepthwiseSeparable(
                in_channels, branch_channels, stride=stride, depthwise_act=None
            )
        right_in = in_channels if stride == 2 else branch_channels
        self.right = nn.Sequential(
            ConvBnAct(right_in, branch_channels, 1),
            ConvBnAct(
                branch_channels, branch_channels, 3, stride=stride, groups=branch_channels, act=None
            ),
            ConvBnAct(branch_channels, branch_channels, 1),
        )
        self.shuffle = ChannelShuffle(2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left = x[:, : self.split_channels]
            right = x[:, self.split_channels :]
        else:
            left = right = x
        return self.shuffle(torch.cat((self.left(left), self.right(right)), dim=1))


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2 (Ma et al. 2018): stem, max-pool, three stages of units, Conv5, classifier."""

    def __init__(
        self,
        stages: Sequence[StageSpec],
        *,
        stem_channels: int = 24,
        head_channels: int = 1024,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, stem_channels, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        stage_modules: list[nn.Sequential] = []
        for spec in stages:
            units: list[ShuffleV2Unit] = []
            for repeat in range(spec.repeats):
                stride = spec.stride if repeat == 0 else 1
                units.append(ShuffleV2Unit(in_channels, spec.out_channels, stride=stride))
                in_channels = spec.out_channels
            stage_modules.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stage_modules)
        self.head = ConvBnAct(in_channels, head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.maxpool(self.stem(x))))
        return self.classifier(self.flatten(self.pool(x)))


def shufflenet_v2(*, width: float = 1.0, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNet v2 ``width``× (Ma et al. 2018, Table 5); ``width`` is 0.5, 1.0, 1.5 or 2.0.

    Only the paper's four widths exist: Table 5's channel counts are tuned per width to meet its
    FLOP budgets, so there is no rule to scale them to other widths.
    """
    try:
        spec = TABLE_5[width]
    except KeyError:
        raise ValueError(
            f"ShuffleNet v2 has no width {width}; choose one of {tuple(TABLE_5)}"
        ) from None
    return ShuffleNetV2(
        spec.stages,
        stem_channels=spec.stem_channels,
        head_channels=spec.head_channels,
        num_classes=num_classes,
    )


# torchvision's names are shufflenet_v2_x0_5 ... x2_0, the same architectures: the 1× model,
# plain "shufflenet_v2" here, answers to its "shufflenet_v2_x1_0" (timm has no ShuffleNet).
for _width in TABLE_5:
    register_model(
        "shufflenet_v2" if _width == 1.0 else f"shufflenet_v2_x{str(_width).replace('.', '_')}",
        shufflenet_v2,
        family="shufflenet_v2",
        input_size=(224, 224),
        description=f"ShuffleNet v2 {_width}x (Ma et al. 2018)",
        aliases=("shufflenet_v2_x1_0",) if _width == 1.0 else (),
        width=_width,
    )
del _width
