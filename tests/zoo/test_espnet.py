"""ESPNet v1 / v2 specifics that the registry-wide checks (params, MACs, shapes, ONNX) miss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompile.zoo import get_model
from edgecompile.zoo.espnet import ESP_DILATIONS, ESPModule, ESPNet, espnet
from edgecompile.zoo.espnet_v2 import (
    EESP,
    LEVELS,
    WIDTHS,
    EESPDownSampler,
    ESPNetV2Segmentation,
    eesp_dilations,
    espnet_v2,
    espnet_v2_seg,
)


@pytest.fixture(scope="module")
def espnet_model() -> ESPNet:
    model = get_model("espnet")
    assert isinstance(model, ESPNet)
    return model


def _identity_bn_act(module: nn.Sequential) -> None:
    bn, act = module
    bn.reset_running_stats()
    bn.eps = 0.0  # ESPNet's eps=1e-3 would scale by 1/sqrt(1 + eps)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    nn.init.ones_(act.weight)  # PReLU with slope 1 is the identity


# ---------------------------------------------------------------- ESPNet v1


def test_esp_modules_use_the_papers_five_dilations(espnet_model: ESPNet) -> None:
    modules = [m for m in espnet_model.modules() if isinstance(m, ESPModule)]
    # 2 down-samplers, p=2 + q=8 modules, and the decoder's fusion module.
    assert len(modules) == 2 + 2 + 8 + 1
    for module in modules:
        assert [b.dilation[0] for b in module.branches] == list(ESP_DILATIONS)
        assert [b.padding[0] for b in module.branches] == list(ESP_DILATIONS)
        assert module.reduce.out_channels == module.branches[1].in_channels
        # The concatenated branches add up to the module's width.
        assert sum(b.out_channels for b in module.branches) == module.bn_act[0].num_features


@pytest.mark.parametrize("residual", [True, False])
def test_esp_module_fuses_branches_hierarchically(residual: bool) -> None:
    torch.manual_seed(0)
    module = ESPModule(20, 20, residual=residual).eval()
    _identity_bn_act(module.bn_act)
    x = torch.randn(1, 20, 33, 33)
    with torch.no_grad():
        reduced = module.reduce(x)
        d1, d2, d4, d8, d16 = (branch(reduced) for branch in module.branches)
        expected = torch.cat((d1, d2, d2 + d4, d2 + d4 + d8, d2 + d4 + d8 + d16), dim=1)
        if residual:
            expected = expected + x
        torch.testing.assert_close(module(x), expected)


def test_strided_esp_module_halves_resolution() -> None:
    module = ESPModule(19, 64, stride=2, residual=False)
    assert module.reduce.stride == (2, 2) and module.reduce.kernel_size == (3, 3)
    assert module(torch.randn(1, 19, 32, 48)).shape == (1, 64, 16, 24)
    with pytest.raises(ValueError, match="residual"):
        ESPModule(19, 64, stride=2)


@pytest.mark.parametrize("size", [(256, 512), (64, 96)])
def test_espnet_logits_have_the_input_resolution(
    espnet_model: ESPNet, size: tuple[int, int]
) -> None:
    with torch.no_grad():
        out = espnet_model(torch.randn(2, 3, *size))
    assert out.shape == (2, 19, *size)
    assert torch.isfinite(out).all()


def test_espnet_decoder_upsamples_with_transposed_convs(espnet_model: ESPNet) -> None:
    deconvs = [m for m in espnet_model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in deconvs)
    assert not any(isinstance(m, nn.Upsample) for m in espnet_model.modules())


@pytest.mark.parametrize(("q", "params"), [(3, 201_542), (5, 266_310), (8, 363_462)])
def test_espnet_depth_q(q: int, params: int) -> None:
    # The authors released q = 3, 5 and 8; q = 8 is the paper's 0.364M-parameter ESPNet.
    model = espnet(q=q)
    assert len(model.level3) == q and len(model.level2) == 2
    assert sum(p.numel() for p in model.parameters()) == params


# ---------------------------------------------------------------- ESPNet v2


@pytest.mark.parametrize(
    ("limit", "dilations"),
    [(13, (1, 2, 3, 4)), (9, (1, 2, 3, 4)), (7, (1, 1, 2, 3)), (5, (1, 1, 1, 2))],
)
def test_eesp_dilations_respect_the_receptive_limit(limit: int, dilations: tuple[int, ...]) -> None:
    assert eesp_dilations(4, limit) == dilations


def test_eesp_convs_are_grouped_and_depthwise() -> None:
    model = espnet_v2(width=1.0)
    units = [m for m in model.modules() if isinstance(m, EESP)]
    assert len(units) == 4 + 3 + 7 + 3
    for unit in units:
        reduce_conv, expand_conv = unit.reduce[0], unit.expand[0]
        assert reduce_conv.groups == 4 and reduce_conv.kernel_size == (1, 1)
        assert expand_conv.groups == 4 and expand_conv.kernel_size == (1, 1)
        width = reduce_conv.out_channels
        assert expand_conv.in_channels == expand_conv.out_channels == 4 * width
        for branch, dilation in zip(unit.branches, unit.dilations, strict=True):
            assert branch.groups == branch.in_channels == branch.out_channels == width
            assert branch.dilation == (dilation, dilation)
    # Level 5's units (receptive limit 5) use dilations 1, 1, 1, 2.
    assert [u.dilations for u in model.backbone.levels[3].units] == [(1, 1, 1, 2)] * 3
    head_pointwise = model.head[1][0]
    assert head_pointwise.groups == 4


def test_eesp_residual_only_when_shapes_agree() -> None:
    torch.manual_seed(0)
    for in_channels, residual in ((32, True), (64, False)):
        unit = EESP(in_channels, 32).eval()
        assert unit.residual is residual
        # Zeroing the expansion's BatchNorm leaves only what the residual passes through.
        nn.init.zeros_(unit.expand[1].weight)
        x = torch.randn(1, in_channels, 16, 16)
        with torch.no_grad():
            expected = unit.act(x) if residual else unit.act(torch.zeros(1, 32, 16, 16))
            torch.testing.assert_close(unit(x), expected)


def test_input_reinforcement_feeds_levels_2_to_4_only() -> None:
    model = espnet_v2(width=0.5).eval()
    calls: list[int] = []
    samplers = [m for m in model.modules() if isinstance(m, EESPDownSampler)]
    assert len(samplers) == 4
    for i, sampler in enumerate(samplers):
        sampler.reinforce.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert calls == [0, 1, 2]
    assert [level.input_reinforcement for level in LEVELS] == [True, True, True, False]


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_backbone_levels_have_table_widths_and_strides(width: float) -> None:
    model = espnet_v2(width=width).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 224, 224))
    widths = WIDTHS[width]
    expected = [widths.level1, widths.level2, widths.level3, widths.level4, widths.level5]
    assert [f.shape[1] for f in features] == expected
    assert [f.shape[2] for f in features] == [112, 56, 28, 14, 7]


def test_classifier_is_size_agnostic() -> None:
    with torch.no_grad():
        out = espnet_v2(width=0.5).eval()(torch.randn(2, 3, 160, 192))
    assert out.shape == (2, 1000)


def test_unsupported_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="width"):
        espnet_v2(width=0.75)


def test_segmentation_pyramid_sizes_are_fixed_at_construction() -> None:
    model = espnet_v2_seg(image_size=(512, 1024))
    # Scales 2, 1.5, 1, 0.5, 0.1 of the 1/16 map (32×64), the smallest clamped to at least 5.
    first = model.pyramids[0]
    assert first.size == (32, 64)
    assert first.branch_sizes == ((64, 128), (48, 96), (32, 64), (16, 32), (5, 7))
    assert [p.size for p in model.pyramids] == [(32, 64), (64, 128), (128, 256), (256, 512)]
    # The decoder's 2× up-sampling is a fixed-scale module, not a size read at run time.
    assert model.upsample.scale_factor == 2.0 and model.upsample.size is None


def test_segmentation_at_another_size() -> None:
    model = get_model("espnet_v2_seg", image_size=(256, 512))
    assert isinstance(model, ESPNetV2Segmentation)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 512))
    assert out.shape == (1, 19, 256, 512)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="built for"):
        model(torch.randn(1, 3, 512, 1024))
    with pytest.raises(ValueError, match="multiples of 16"):
        espnet_v2_seg(image_size=(264, 512))
