"""Family-specific checks for MobileNet v1/v2/v3 and MNASNet.

The registry-wide tests cover parameter counts, forward shapes and ONNX parity of every model; these
check what only these families promise: the paper's α × ρ cost table, channel alignment, where
hard-swish and squeeze-excite sit, and which blocks carry an identity skip.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgecompile.zoo import get_model, list_models, model_info
from edgecompile.zoo.layers import InvertedResidual, SqueezeExcite, make_divisible
from edgecompile.zoo.mnasnet import mnasnet_a1, mnasnet_b1
from edgecompile.zoo.mobilenet_v1 import mobilenet_v1
from edgecompile.zoo.mobilenet_v2 import mobilenet_v2
from edgecompile.zoo.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small


def multiply_adds(model: nn.Module, size: tuple[int, int]) -> int:
    """Conv2d and Linear multiply-adds at batch 1 (the zoo's counting convention)."""
    total = 0

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for handle in handles:
        handle.remove()
    return total


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# MobileNet v1 paper Table 6 (width α at 224 px) and Table 7 (resolution ρ at α = 1), in millions.
PAPER_V1_MADDS = [
    ("mobilenet_v1", 569),
    ("mobilenet_v1_x0_75", 325),
    ("mobilenet_v1_x0_5", 149),
    ("mobilenet_v1_x0_25", 41),
    ("mobilenet_v1_r192", 418),
    ("mobilenet_v1_r160", 290),
    ("mobilenet_v1_r128", 186),
]


@pytest.mark.parametrize(("name", "paper_millions"), PAPER_V1_MADDS)
def test_mobilenet_v1_cost_matches_paper_tables(name: str, paper_millions: int) -> None:
    info = model_info(name)
    measured = multiply_adds(get_model(name), info.input_size) / 1e6
    assert measured == pytest.approx(paper_millions, rel=0.03)


def test_mobilenet_v1_grid_is_sixteen_width_resolution_pairs() -> None:
    grid = {
        (model_info(n).kwargs["width"], model_info(n).input_size)
        for n in list_models(family="mobilenet_v1")
    }
    widths, resolutions = (1.0, 0.75, 0.5, 0.25), (224, 192, 160, 128)
    assert grid == {(w, (r, r)) for w in widths for r in resolutions}
    assert model_info("mobilenet_v1_x0_75_r160").input_size == (160, 160)
    assert model_info("mobilenet_v1_x0_75_r160").kwargs["width"] == 0.75


def test_mobilenet_v1_resolution_only_changes_cost() -> None:
    # Resolution multiplier ρ (paper §3.4) scales cost by ρ² and leaves the weights alone.
    model = mobilenet_v1(width=0.5).eval()
    full, small = multiply_adds(model, (224, 224)), multiply_adds(model, (128, 128))
    fc = 1024 // 2 * 1000
    assert (small - fc) / (full - fc) == pytest.approx((128 / 224) ** 2, rel=0.01)


def test_mobilenet_v1_ends_at_7x7_with_stride_32() -> None:
    features = mobilenet_v1().eval().features
    with torch.no_grad():
        out = features(torch.zeros(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 1024, 7, 7)


@pytest.mark.parametrize(
    "name", list_models("mobilenet_v2*") + list_models("mobilenet_v3*") + list_models("mnasnet*")
)
def test_channels_are_multiples_of_8(name: str) -> None:
    model = get_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bad = [
        (c.in_channels, c.out_channels)
        for c in convs
        if c.in_channels != 3
        and (c.in_channels % 8 or c.out_channels % 8)
        # MNASNet-A1 squeezes to a quarter of the block input, as the TF reference does.
        and not (name.startswith("mnasnet_a1") and c.kernel_size == (1, 1) and c.bias is not None)
    ]
    assert not bad


@pytest.mark.parametrize(("width", "last"), [(0.35, 1280), (1.0, 1280), (1.4, 1792)])
def test_mobilenet_v2_last_conv_is_never_thinned(width: float, last: int) -> None:
    # Sandler et al. §6.1: width multipliers below 1 are not applied to the last conv.
    model = mobilenet_v2(width=width).eval()
    assert model.features[-1].out_channels == last
    assert model.classifier[-1].in_features == last


@pytest.mark.parametrize(
    ("builder", "hardswish", "se_blocks"),
    [
        # Stem, 2 per HS bottleneck (expand + depthwise), last conv, hidden head layer.
        (mobilenet_v3_large, 1 + 2 * 9 + 1 + 1, 8),
        (mobilenet_v3_small, 1 + 2 * 8 + 1 + 1, 9),
    ],
)
def test_mobilenet_v3_hard_swish_and_hard_sigmoid_gates(
    builder: Callable[..., nn.Module], hardswish: int, se_blocks: int
) -> None:
    model = builder().eval()
    assert count(model, nn.Hardswish) == hardswish
    assert count(model, nn.Sigmoid) == 0
    se = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se) == se_blocks
    for block in se:
        assert isinstance(block.gate, nn.Hardsigmoid)
        # Paper §5.3: the SE bottleneck is a quarter of the expansion width, rounded to 8.
        assert block.reduce.out_channels == make_divisible(block.reduce.in_channels // 4, 8)


def test_mnasnet_a1_has_squeeze_excite_and_b1_none() -> None:
    a1, b1 = mnasnet_a1().eval(), mnasnet_b1().eval()
    a1_se = [m for m in a1.modules() if isinstance(m, SqueezeExcite)]
    # Paper Fig. 7: SE in the 40-, 112- and 160-channel stages (3 + 2 + 3 blocks).
    assert len(a1_se) == 8
    assert all(isinstance(m.gate, nn.Sigmoid) for m in a1_se)
    assert count(b1, SqueezeExcite) == 0
    blocks = [m for m in a1.modules() if isinstance(m, InvertedResidual)]
    for block in blocks:
        se = [m for m in block.modules() if isinstance(m, SqueezeExcite)]
        if se:
            assert se[0].reduce.out_channels == block.in_channels // 4


@pytest.mark.parametrize(
    ("builder", "blocks", "residual"),
    [
        # 17 bottlenecks; the 7 that open a stage change shape and cannot add their input.
        (mobilenet_v2, 17, 10),
        (mobilenet_v3_large, 15, 10),
        (mobilenet_v3_small, 11, 6),
        (mnasnet_a1, 16, 9),
        (mnasnet_b1, 17, 10),
    ],
)
def test_identity_skips_only_where_shapes_agree(
    builder: Callable[..., nn.Module], blocks: int, residual: int
) -> None:
    model = builder().eval()
    found = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(found) == blocks
    assert sum(b.use_residual for b in found) == residual
    # The skip really adds the input: zeroing the branch's last BN leaves the identity.
    block = next(b for b in found if b.use_residual)
    last_bn = block.block[-1][1]
    with torch.no_grad():
        last_bn.weight.zero_()
        last_bn.bias.zero_()
        x = torch.randn(1, block.in_channels, 8, 8)
        assert torch.equal(block(x), x)


def test_depthwise_separable_first_block_has_no_expansion() -> None:
    # MobileNet v2's t = 1 row and MNASNet's SepConv: depthwise then projection, nothing before.
    for model in (mobilenet_v2(), mnasnet_a1(), mnasnet_b1()):
        first = next(m for m in model.modules() if isinstance(m, InvertedResidual))
        convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].groups == convs[0].in_channels == first.in_channels
        assert first.out_channels == 16
