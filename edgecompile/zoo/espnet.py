"""ESPNet: efficient spatial pyramids of dilated convolutions for semantic segmentation.

Mehta, Rastegari, Caspi, Shapiro & Hajishirzi, "ESPNet: Efficient Spatial Pyramid of Dilated
Convolutions for Semantic Segmentation", ECCV 2018 (arXiv:1803.06815). The network is the paper's
full ESPNet (the ESPNet-C encoder plus its light-weight decoder); layer details follow the
authors' code (github.com/sacmehta/ESPNet, ``train/Model.py``: ``ESPNet``, ``ESPNet_Encoder``,
``DilatedParllelResidualBlockB``, ``DownSamplerB``, ``InputProjectionA``), whose parameters this
module reproduces one for one and in the same order.

Depth: the paper's ESPNet (0.364M parameters, the model it compares with others) is the code's
``p=2, q=8``: its training README trains with those values, and ``p=2, q=3`` gives 0.20M. The
builder takes ``p`` and ``q``, so the authors' other released depths (q = 3 and 5) are one keyword
away.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgecompile.zoo.layers import BnPReLU, ConvBnAct, prelu
from edgecompile.zoo.registry import register_model

__all__ = ["ESP_DILATIONS", "ESPModule", "ESPNet", "espnet"]

ESP_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 16)
"""Dilation rates of an ESP module's K = 5 parallel 3×3 branches (2⁰ … 2⁴)."""

# The reference code builds every BatchNorm with eps=1e-3 (PyTorch's default is 1e-5).
_BN_EPS = 1e-3
_bn_prelu = partial(BnPReLU, bn_eps=_BN_EPS)


class ESPModule(nn.Module):
    """The ESP module: reduce → split → transform → HFF → merge.

    A point-wise convolution reduces the input to ``N / K`` channels; ``K`` parallel 3×3
    convolutions with dilations 1, 2, 4, … transform it; hierarchical feature fusion (HFF) adds
    each branch's output to the running sum of the branches with smaller (non-unit) dilation; the
    concatenation has ``N`` channels, gets the input added back when ``residual`` is set, and goes
    through BatchNorm + PReLU.

    With ``stride=2`` the module is the reference's down-sampler: the reduction is a strided 3×3
    convolution and there is no residual connection (the shapes differ).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        residual: bool = True,
        dilations: tuple[int, ...] = ESP_DILATIONS,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual ESP module needs stride 1 and in_channels == out_channels")
        branches = len(dilations)
        width = out_channels // branches
        # The dilation-1 branch takes the remainder, so the concatenation is exactly out_channels.
        first_width = out_channels - (branches - 1) * width
        self.residual = residual
        self.dilations = tuple(dilations)
        reduce_kernel = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(
            in_channels,
            width,
            reduce_kernel,
            stride=stride,
            padding=reduce_kernel // 2,
            bias=False,
        )
        self.branches = nn.ModuleList(
            nn.Conv2d(
                width,
                first_width if i == 0 else width,
                3,
                padding=dilation,
                dilation=dilation,
                bias=False,
            )
            for i, dilation in enumerate(dilations)
        )
        self.bn_act = _bn_prelu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        outputs = [self.branches[0](reduced)]
        # HFF: the dilation-1 branch has no gridding to undo, so the running sum starts at the
        # second branch (as in the reference); each larger dilation adds onto the smaller ones.
        fused: torch.Tensor | None = None
        for branch in self.branches[1:]:
            out = branch(reduced)
            fused = out if fused is None else fused + out
            outputs.append(fused)
        merged = torch.cat(outputs, dim=1)
        if self.residual:
            merged = merged + x
        return self.bn_act(merged)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, residual={self.residual}"


class ESPNet(nn.Module):
    """ESPNet (Mehta et al. 2018): the ESPNet-C encoder with the paper's light-weight decoder.

    Encoder (output stride 8): a strided 3×3 conv, concatenated with the image average-pooled to
    1/2; a strided ESP module and ``p`` ESP modules at 1/4, concatenated with the stage's input
    and the image pooled to 1/4; a strided ESP module and ``q`` ESP modules at 1/8; a 1×1
    classifier. Decoder: the 1/8 logits are up-sampled with a 2×2 transposed convolution, fused
    with a 1×1 projection of the 1/4 features by an ESP module, up-sampled again, fused with the
    1/2 features by a 3×3 conv, and a last transposed convolution gives full-resolution logits.

    The input height and width must be multiples of 8.
    """

    def __init__(self, *, num_classes: int = 19, p: int = 2, q: int = 8) -> None:
        super().__init__()
        if p < 1 or q < 1:
            raise ValueError(f"p and q must be at least 1, got p={p}, q={q}")
        c = num_classes
        # Encoder (ESPNet-C); the channel counts are the reference's.
        self.stem = ConvBnAct(3, 16, 3, stride=2, act=prelu(16), bn_eps=_BN_EPS)
        # One 3×3/2 average pool, applied once for the 1/2 image and twice for the 1/4 image
        # (the reference's pyramid-style InputProjectionA).
        self.image_pool = nn.AvgPool2d(3, stride=2, padding=1)
        level1_channels = 16 + 3
        self.level1_bn_act = _bn_prelu(level1_channels)
        self.level2_down = ESPModule(level1_channels, 64, stride=2, residual=False)
        self.level2 = nn.Sequential(*(ESPModule(64, 64) for _ in range(p)))
        level2_channels = 64 + 64 + 3
        self.level2_bn_act = _bn_prelu(level2_channels)
        self.level3_down = ESPModule(level2_channels, 128, stride=2, residual=False)
        self.level3 = nn.Sequential(*(ESPModule(128, 128) for _ in range(q)))
        level3_channels = 128 + 128
        self.level3_bn_act = _bn_prelu(level3_channels)
        self.encoder_classifier = nn.Conv2d(level3_channels, c, 1, bias=False)
        # Decoder.
        self.level2_project = nn.Conv2d(level2_channels, c, 1, bias=False)
        self.level3_bn = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.level1_fuse = ConvBnAct(level1_channels + c, c, 3, act=prelu(c), bn_eps=_BN_EPS)
        self.up_level3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.level2_fuse = nn.Sequential(_bn_prelu(2 * c), ESPModule(2 * c, c, residual=False))
        self.up_level2 = nn.Sequential(
            nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), _bn_prelu(c)
        )
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image_half = self.image_pool(x)
        image_quarter = self.image_pool(image_half)

        level1 = self.level1_bn_act(torch.cat((self.stem(x), image_half), dim=1))
        level2_first = self.level2_down(level1)
        level2 = self.level2(level2_first)
        # The stage's first (down-sampled) output skips over the stage, as in the reference.
        level2 = self.level2_bn_act(torch.cat((level2, level2_first, image_quarter), dim=1))
        level3_first = self.level3_down(level2)
        level3 = self.level3(level3_first)
        level3 = self.level3_bn_act(torch.cat((level3_first, level3), dim=1))

        logits8 = self.up_level3(self.level3_bn(self.encoder_classifier(level3)))
        logits4 = torch.cat((self.level2_project(level2), logits8), dim=1)
        logits2 = self.up_level2(self.level2_fuse(logits4))
        fused = self.level1_fuse(torch.cat((logits2, level1), dim=1))
        return self.classifier(fused)


def espnet(*, num_classes: int = 19, p: int = 2, q: int = 8) -> ESPNet:
    """ESPNet with ``p`` ESP modules at 1/4 resolution and ``q`` at 1/8 (paper: α₂, α₃).

    The defaults are the paper's headline model (``p=2, q=8``, 0.364M parameters) on Cityscapes'
    19 evaluated classes.
    """
    return ESPNet(num_classes=num_classes, p=p, q=q)


register_model(
    "espnet",
    espnet,
    family="espnet",
    task="segmentation",
    input_size=(512, 1024),
    description=(
        "ESPNet (Mehta et al. 2018), p=2, q=8: ESP modules of dilated 3×3 branches with "
        "hierarchical feature fusion, transposed-conv decoder, Cityscapes 19 classes"
    ),
    p=2,
    q=8,
)
