"""SqueezeNet Fire modules and Xception separable blocks are built as the papers say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompile.zoo.squeezenet import SQUEEZENET_CONFIGS, Fire, SqueezeNet, squeezenet
from edgecompile.zoo.xception import SeparableConv2d, Xception, XceptionBlock, xception


@pytest.fixture(scope="module")
def xception_model() -> Xception:
    torch.manual_seed(0)
    return xception().eval()


@pytest.mark.parametrize("version", sorted(SQUEEZENET_CONFIGS))
def test_fire_modules_concatenate_both_expands(version: str) -> None:
    model = squeezenet(version=version)
    fires = [m for m in model.modules() if isinstance(m, Fire)]
    assert len(fires) == 8
    previous = SQUEEZENET_CONFIGS[version].stem_channels
    for fire in fires:
        assert fire.in_channels == previous
        # The squeeze really is the bottleneck the module is named for (paper's SR < 1).
        assert fire.squeeze.out_channels < fire.expand1x1.out_channels + fire.expand3x3.out_channels
        out = fire(torch.zeros(1, fire.in_channels, 5, 5))
        assert out.shape == (1, fire.expand1x1.out_channels + fire.expand3x3.out_channels, 5, 5)
        assert fire.out_channels == out.shape[1]
        previous = fire.out_channels


@pytest.mark.parametrize("version", sorted(SQUEEZENET_CONFIGS))
def test_squeezenet_final_map_is_13x13_with_no_linear_layer(version: str) -> None:
    model: SqueezeNet = squeezenet(version=version, num_classes=10).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, 224, 224))
        logits = model(torch.zeros(1, 3, 224, 224))
    # Ceil-mode pooling (as in Caffe) gives the original's 13×13 map, not 12×12.
    assert features.shape == (1, 512, 13, 13)
    assert logits.shape == (1, 10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_squeezenet_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="unknown SqueezeNet version '1_2'"):
        squeezenet(version="1_2")


def test_xception_separable_convs_are_depthwise_then_pointwise(xception_model: Xception) -> None:
    separables = [m for m in xception_model.modules() if isinstance(m, SeparableConv2d)]
    # Paper Fig. 5: 36 conv layers = 2 stem convs + 34 separable convs (shortcuts not counted).
    assert len(separables) == 34
    for sep in separables:
        assert sep.depthwise.groups == sep.depthwise.in_channels == sep.depthwise.out_channels
        assert sep.depthwise.kernel_size == (3, 3)
        assert sep.pointwise.groups == 1 and sep.pointwise.kernel_size == (1, 1)
        assert sep.pointwise.out_channels == sep.out_channels


def test_xception_shortcuts_project_only_when_the_shape_changes(xception_model: Xception) -> None:
    blocks = [m for m in xception_model.modules() if isinstance(m, XceptionBlock)]
    assert len(blocks) == 12
    projected = [not isinstance(b.skip, nn.Identity) for b in blocks]
    # Entry flow (3 blocks) and the exit block downsample; the 8 middle-flow blocks are identity.
    assert projected == [True] * 3 + [False] * 8 + [True]


def test_xception_feature_maps_at_299(xception_model: Xception) -> None:
    sizes: list[tuple[int, ...]] = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:])))
        for b in xception_model.blocks
    ]
    with torch.no_grad():
        logits = xception_model(torch.zeros(1, 3, 299, 299))
    for hook in hooks:
        hook.remove()
    assert sizes[:3] == [(128, 74, 74), (256, 37, 37), (728, 19, 19)]
    assert sizes[3:11] == [(728, 19, 19)] * 8
    assert sizes[11] == (1024, 10, 10)
    assert logits.shape == (1, 1000)
