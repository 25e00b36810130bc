"""ESPNet v2: EESP units (grouped point-wise and depth-wise dilated convolutions).

Mehta, Rastegari, Shapiro & Hajishirzi, "ESPNetv2: A Light-weight, Power Efficient, and General
Purpose Convolutional Neural Network", CVPR 2019 (arXiv:1811.11431).

Classification follows the authors' ImageNet model (github.com/sacmehta/EdgeNets,
``model/classification/espnetv2.py``, ``espnetv2_config.py`` and ``nn_layers/eesp.py``; the same
network as github.com/sacmehta/ESPNetv2 ``imagenet/Model.py``), parameter for parameter and in the
same order, so the counts equal the official model's (1,241,332 at s=0.5, 1,670,072 at s=1).
Two of those parameter sets are never used by the official forward pass and are kept only so
that the counts (and a key-by-key checkpoint conversion) match: the PReLU built by every strided
EESP unit (its down-sampler applies its own), and the input-reinforcement branch built by the
level-5 down-sampler (the reference feeds the image to levels 2–4 only).

Segmentation is EdgeNets' ``model/segmentation/espnetv2.py`` (``ESPNetv2Segmentation`` with
``nn_layers/efficient_pyramid_pool.py`` and ``nn_layers/efficient_pt.py``) at s=2.0, the only
scale EdgeNets publishes Cityscapes models for (0.79M parameters and 2.7 GFLOPs at 1024×512 in its
model-zoo README; 66.2 test mIOU).

Export note: the decoder's pyramid pooling resamples each level to sizes that depend on that
level's resolution (``ceil(scale · size)``, at least 5). The reference reads them from the tensor
at run time; here they are Python ints computed at construction from ``image_size``, so the ONNX
graph has constant sizes only. A segmentation model therefore runs at the ``image_size`` it was
built for (build another with ``espnet_v2_seg(image_size=...)``). Pools whose ratio is not an
integer (scales 1.5 and 0.1) export as gathers with constant indices. Every other resampling
(input-reinforcement pools, the decoder's 2× up-sampling) has a fixed kernel or scale and works at
any size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.zoo.layers import BnPReLU, ChannelShuffle, ConvBnAct, init_he_normal, prelu
from edgecompile.zoo.registry import register_model

__all__ = [
    "EESP",
    "LEVELS",
    "PYRAMID_SCALES",
    "WIDTHS",
    "EESPDownSampler",
    "ESPNetV2",
    "ESPNetV2Backbone",
    "ESPNetV2Segmentation",
    "ESPNetV2Widths",
    "EfficientPointwiseConv",
    "EfficientPyramidPool",
    "LevelSpec",
    "eesp_dilations",
    "espnet_v2",
    "espnet_v2_seg",
]


class ESPNetV2Widths(NamedTuple):
    """Output channels of each level at one width scale ``s`` (EdgeNets ``sc_ch_dict``)."""

    level1: int
    level2: int
    level3: int
    level4: int
    level5: int
    head: int


WIDTHS: Mapping[float, ESPNetV2Widths] = MappingProxyType(
    {
        0.5: ESPNetV2Widths(16, 32, 64, 128, 256, 1024),
        1.0: ESPNetV2Widths(32, 64, 128, 256, 512, 1024),
        1.25: ESPNetV2Widths(32, 80, 160, 320, 640, 1024),
        1.5: ESPNetV2Widths(32, 96, 192, 384, 768, 1024),
        2.0: ESPNetV2Widths(32, 128, 256, 512, 1024, 1280),
    }
)
"""ESPNet v2 widths by ``s`` (level 1 is capped at 32 channels; the head widens to 1280 at s=2)."""


class LevelSpec(NamedTuple):
    """One down-sampling level: a strided EESP down-sampler, then ``repeats`` EESP units.

    ``receptive_limit`` caps the effective kernel size of the EESP branches (the reference's
    ``r_lim``); deeper levels have smaller maps, so they get smaller limits.
    """

    name: str
    repeats: int
    down_receptive_limit: int
    receptive_limit: int
    input_reinforcement: bool


LEVELS: tuple[LevelSpec, ...] = (
    LevelSpec("level2", 0, 13, 11, True),
    LevelSpec("level3", 3, 11, 9, True),
    LevelSpec("level4", 7, 9, 7, True),
    LevelSpec("level5", 3, 7, 5, False),
)
"""Levels 2–5 (output strides 4–32) of the reference, with its repeats ``[0, 3, 7, 3]``."""

BRANCHES = 4
"""Parallel branches ``K`` of every EESP unit (the reference uses 4 throughout)."""

PYRAMID_SCALES: tuple[float, ...] = (2.0, 1.5, 1.0, 0.5, 0.1)
"""Resampling scales of the decoder's efficient pyramid pooling (EdgeNets, largest first)."""


def eesp_dilations(branches: int, receptive_limit: int) -> tuple[int, ...]:
    """Dilation of each EESP branch, ascending: kernel sizes 3, 5, 7, … as dilated 3×3 convs.

    A branch whose effective kernel would exceed ``receptive_limit`` falls back to a plain 3×3;
    sorting puts those first, where hierarchical fusion has no gridding to undo.
    """
    sizes = sorted(k if k <= receptive_limit else 3 for k in range(3, 3 + 2 * branches, 2))
    return tuple((k - 1) // 2 for k in sizes)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid (EESP) unit.

    A grouped 1×1 convolution (``K`` groups) reduces the input to ``N / K`` channels; ``K``
    depth-wise dilated 3×3 convolutions transform it; hierarchical feature fusion adds each branch
    to the running sum of the branches before it; BatchNorm + PReLU follow the concatenation; a
    grouped 1×1 convolution (``K`` groups) + BatchNorm mixes the branches back to ``N`` channels.
    Stride 1 adds the input when the shapes agree, then applies PReLU. Stride 2 returns the
    pre-activation output, which :class:`EESPDownSampler` fuses with its other branches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        branches: int = BRANCHES,
        receptive_limit: int = 7,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % branches or in_channels % branches:
            raise ValueError(
                f"EESP needs in ({in_channels}) and out ({out_channels}) channels divisible by "
                f"its {branches} branches"
            )
        width = out_channels // branches
        self.stride = stride
        self.residual = stride == 1 and in_channels == out_channels
        self.dilations = eesp_dilations(branches, receptive_limit)
        self.reduce = ConvBnAct(in_channels, width, 1, groups=branches, act=prelu(width))
        self.branches = nn.ModuleList(
            nn.Conv2d(
                width,
                width,
                3,
                stride=stride,
                padding=dilation,
                dilation=dilation,
                groups=width,
                bias=False,
            )
            for dilation in self.dilations
        )
        # Registered in the reference's order (expand before the concat's BN), so state dicts
        # line up position by position with the official checkpoints.
        self.expand = ConvBnAct(out_channels, out_channels, 1, groups=branches, act=None)
        self.bn_act = BnPReLU(out_channels)
        self.act = nn.PReLU(out_channels)  # unused at stride 2, as in the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        outputs = [self.branches[0](reduced)]
        for branch in self.branches[1:]:
            outputs.append(branch(reduced) + outputs[-1])
        out = self.expand(self.bn_act(torch.cat(outputs, dim=1)))
        if self.stride == 2:
            return out
        if self.residual:
            out = out + x
        return self.act(out)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, dilations={self.dilations}, residual={self.residual}"


class EESPDownSampler(nn.Module):
    """Strided EESP with input reinforcement: the down-sampling unit.

    A 3×3/2 average pool of the input (``in_channels``) is concatenated with a strided EESP unit
    (``out - in`` channels); the image, average-pooled to the same resolution, goes through a
    3×3 and a 1×1 convolution and is added (the long-range shortcut); PReLU finishes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        branches: int = BRANCHES,
        receptive_limit: int = 9,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.eesp = EESP(
            in_channels,
            out_channels - in_channels,
            stride=2,
            branches=branches,
            receptive_limit=receptive_limit,
        )
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.reinforce = nn.Sequential(
            ConvBnAct(image_channels, image_channels, 3, act=prelu(image_channels)),
            ConvBnAct(image_channels, out_channels, 1, act=None),
        )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.cat((self.pool(x), self.eesp(x)), dim=1)
        if image is not None:
            out = out + self.reinforce(image)
        return self.act(out)


class _Level(nn.Module):
    """A down-sampler and its stride-1 EESP units."""

    def __init__(self, in_channels: int, out_channels: int, spec: LevelSpec) -> None:
        super().__init__()
        self.down = EESPDownSampler(
            in_channels, out_channels, receptive_limit=spec.down_receptive_limit
        )
        self.units = nn.Sequential(
            *(
                EESP(out_channels, out_channels, receptive_limit=spec.receptive_limit)
                for _ in range(spec.repeats)
            )
        )
        self.input_reinforcement = spec.input_reinforcement

    def forward(self, x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return self.units(self.down(x, image if self.input_reinforcement else None))


class ESPNetV2Backbone(nn.Module):
    """The ESPNet v2 encoder: a strided 3×3 conv, then one :class:`_Level` per ``levels`` row.

    ``forward`` returns every level's output, finest (stride 2) first.
    """

    def __init__(self, widths: ESPNetV2Widths, *, levels: Sequence[LevelSpec] = LEVELS) -> None:
        super().__init__()
        level_widths = (widths.level2, widths.level3, widths.level4, widths.level5)
        if len(levels) > len(level_widths):
            raise ValueError(f"at most {len(level_widths)} levels, got {len(levels)}")
        self.stem = ConvBnAct(3, widths.level1, 3, stride=2, act=prelu(widths.level1))
        # 3×3/2 like the stem and the down-samplers, so each pooled image has exactly the size of
        # the level that takes it, whatever the input size.
        self.image_pool = nn.AvgPool2d(3, stride=2, padding=1)
        stages: list[_Level] = []
        in_channels = widths.level1
        for spec, out_channels in zip(levels, level_widths, strict=False):
            stages.append(_Level(in_channels, out_channels, spec))
            in_channels = out_channels
        self.levels = nn.ModuleList(stages)
        self.out_channels = (widths.level1, *level_widths[: len(levels)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        image = self.image_pool(x)
        for level in self.levels:
            # The reference pools the full image down to each level; pooling the previous
            # level's pooled image is the same computation without the repeats.
            image = self.image_pool(image)
            features.append(level(features[-1], image))
        return features


def _init_weights(model: nn.Module) -> None:
    # The reference's init_params: kaiming_normal_ at its default (leaky ReLU of slope 0, the
    # ReLU gain) over fan-out, and N(0, 0.001²) Linear weights.
    init_he_normal(model, mode="fan_out", linear_std=0.001)


class ESPNetV2(nn.Module):
    """ESPNet v2 for ImageNet classification (Mehta et al. 2019).

    Encoder levels 1–5, then a depth-wise 3×3 conv and a grouped 1×1 conv (``K`` groups) widen
    level 5 to ``widths.head`` channels before global average pooling and the classifier.
    """

    def __init__(
        self, widths: ESPNetV2Widths, *, num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.backbone = ESPNetV2Backbone(widths, levels=LEVELS)
        self.head = nn.Sequential(
            ConvBnAct(
                widths.level5, widths.level5, 3, groups=widths.level5, act=prelu(widths.level5)
            ),
            ConvBnAct(widths.level5, widths.head, 1, groups=BRANCHES, act=prelu(widths.head)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths.head, num_classes)
        self.num_features = widths.head
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.backbone(x)[-1])
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


class EfficientPointwiseConv(nn.Module):
    """EdgeNets' ``EfficientPWConv``: a grouped 3×3 projection gated by a global-context vector.

    The projection uses ``gcd(in, out)`` groups; the gate is global average pooling → 1×1 conv →
    sigmoid, one weight per output channel.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        groups = math.gcd(in_channels, out_channels)
        self.project = ConvBnAct(
            in_channels, out_channels, 3, groups=groups, act=prelu(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) * self.gate(x)


def _pyramid_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    # The reference's rule, float arithmetic included: ceil(scale * side), never below 5.
    return (max(5, math.ceil(size[0] * scale)), max(5, math.ceil(size[1] * scale)))


class EfficientPyramidPool(nn.Module):
    """EdgeNets' efficient pyramid pooling: depth-wise 3×3 convs on resampled copies of the input.

    A 1×1 conv projects the input to ``proj_channels``; for each scale the projection is resized
    (bilinear up-sampling for scales above 1, adaptive average pooling below 1), filtered by a
    depth-wise 3×3 conv and resized back; the copies are concatenated, normalised, shuffled so
    each group of the following grouped 3×3 conv sees one channel from every scale, and a 1×1 conv
    gives ``out_channels``.

    ``size`` is the (fixed) input resolution, from which the resampling sizes are computed.
    """

    def __init__(
        self,
        in_channels: int,
        proj_channels: int,
        out_channels: int,
        *,
        size: tuple[int, int],
        scales: Sequence[float] = PYRAMID_SCALES,
        final_bn_act: bool = True,
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.scales = tuple(sorted(scales, reverse=True))
        self.branch_sizes = tuple(_pyramid_size(self.size, s) for s in self.scales)
        n = len(self.scales)
        self.project = ConvBnAct(in_channels, proj_channels, 1, act=prelu(proj_channels))
        self.branches = nn.ModuleList(
            nn.Conv2d(proj_channels, proj_channels, 3, padding=1, groups=proj_channels, bias=False)
            for _ in self.scales
        )
        self.merge = nn.Sequential(
            BnPReLU(proj_channels * n),
            ChannelShuffle(n, proj_channels * n),
            ConvBnAct(
                proj_channels * n, proj_channels, 3, groups=proj_channels, act=prelu(proj_channels)
            ),
            nn.Conv2d(proj_channels, out_channels, 1, bias=not final_bn_act),
        )
        self.bn_act = BnPReLU(out_channels) if final_bn_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        outputs = []
        for branch, scale, size in zip(self.branches, self.scales, self.branch_sizes, strict=True):
            if scale < 1.0:
                y = F.adaptive_avg_pool2d(x, size)
                y = F.interpolate(branch(y), size=self.size, mode="bilinear", align_corners=True)
            elif scale > 1.0:
                y = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
                y = F.adaptive_avg_pool2d(branch(y), self.size)
            else:
                y = branch(x)
            outputs.append(y)
        return self.bn_act(self.merge(torch.cat(outputs, dim=1)))

    def extra_repr(self) -> str:
        return f"size={self.size}, scales={self.scales}"


class ESPNetV2Segmentation(nn.Module):
    """ESPNet v2 for semantic segmentation (EdgeNets ``ESPNetv2Segmentation``).

    The classification encoder up to level 4 (output stride 16), then a bottom-up decoder: an
    :class:`EfficientPyramidPool` at 1/16, and at 1/8, 1/4 and 1/2 a 2× bilinear up-sampling
    added to a gated projection (:class:`EfficientPointwiseConv`) of the encoder level, BatchNorm
    + PReLU and another pyramid pool; the last one gives ``num_classes`` logits, up-sampled 2× to
    the input resolution.
    """

    def __init__(
        self,
        widths: ESPNetV2Widths,
        *,
        num_classes: int = 19,
        image_size: tuple[int, int] = (512, 1024),
        decoder_width: int = 16,
    ) -> None:
        super().__init__()
        height, width = int(image_size[0]), int(image_size[1])
        if height % 16 or width % 16:
            raise ValueError(f"image_size must be multiples of 16, got {image_size}")
        self.image_size = (height, width)
        # EdgeNets' Cityscapes/PASCAL decoder widths (16; COCO uses 32).
        b = decoder_width
        decoder_channels = (4 * b, 3 * b, 2 * b, num_classes)
        proj = min(num_classes // 2, b)
        self.backbone = ESPNetV2Backbone(widths, levels=LEVELS[:3])
        sizes = [(height // s, width // s) for s in (16, 8, 4, 2)]
        in_channels = (widths.level4, *decoder_channels[:3])
        self.pyramids = nn.ModuleList(
            EfficientPyramidPool(c_in, proj, c_out, size=size, final_bn_act=i < 3)
            for i, (c_in, c_out, size) in enumerate(
                zip(in_channels, decoder_channels, sizes, strict=True)
            )
        )
        skip_channels = (widths.level3, widths.level2, widths.level1)
        self.skips = nn.ModuleList(
            EfficientPointwiseConv(c_in, c_out)
            for c_in, c_out in zip(skip_channels, decoder_channels[:3], strict=True)
        )
        self.skip_bn_acts = nn.ModuleList(BnPReLU(c) for c in decoder_channels[:3])
        # A fixed 2× scale: the same as the reference's resize to the skip's (or input's) size,
        # which is exactly twice as large, without reading that size from a tensor.
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.num_classes = num_classes
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this model was built for {self.image_size} inputs, got {tuple(x.shape[-2:])}; "
                "build one with espnet_v2_seg(image_size=...)"
            )
        level1, level2, level3, level4 = self.backbone(x)
        out = self.pyramids[0](level4)
        for skip, bn_act, pyramid, feature in zip(
            self.skips, self.skip_bn_acts, self.pyramids[1:], (level3, level2, level1), strict=True
        ):
            out = pyramid(bn_act(skip(feature) + self.upsample(out)))
        return self.upsample(out)


def _widths(width: float) -> ESPNetV2Widths:
    try:
        return WIDTHS[width]
    except KeyError:
        known = ", ".join(f"{s:g}" for s in WIDTHS)
        raise ValueError(f"unsupported ESPNet v2 width s={width!r}; known: {known}") from None


def espnet_v2(*, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> ESPNetV2:
    """ESPNet v2 ImageNet classifier at width scale ``width`` (the paper's ``s``)."""
    return ESPNetV2(_widths(width), num_classes=num_classes, dropout=dropout)


def espnet_v2_seg(
    *,
    width: float = 2.0,
    num_classes: int = 19,
    image_size: tuple[int, int] = (512, 1024),
) -> ESPNetV2Segmentation:
    """ESPNet v2 segmentation network (EdgeNets' decoder) for ``image_size`` (H, W) inputs."""
    return ESPNetV2Segmentation(_widths(width), num_classes=num_classes, image_size=image_size)


def _register_variants() -> None:
    # The paper's ImageNet results cover s = 0.5, 1.0, 1.5 and 2.0.
    for width in (0.5, 1.0, 1.5, 2.0):
        suffix = "" if width == 1.0 else "_x" + f"{width:.1f}".replace(".", "_")
        register_model(
            f"espnet_v2{suffix}",
            espnet_v2,
            family="espnet_v2",
            input_size=(224, 224),
            description=(
                f"ESPNet v2 (Mehta et al. 2019), s={width:g}: EESP units of grouped 1×1 and "
                "depth-wise dilated 3×3 convs with input reinforcement"
            ),
            aliases=("espnet_v2_x1_0",) if width == 1.0 else (),
            width=width,
        )
    register_model(
        "espnet_v2_seg",
        espnet_v2_seg,
        family="espnet_v2",
        task="segmentation",
        input_size=(512, 1024),
        description=(
            "ESPNet v2 segmentation (Mehta et al. 2019; EdgeNets decoder), s=2: EESP encoder, "
            "efficient pyramid pooling decoder, Cityscapes 19 classes"
        ),
        width=2.0,
        image_size=(512, 1024),
    )


_register_variants()
