"""ShuffleNet v1/v2 specifics: paper tables, group wiring, the shortcut paths and the ONNX split."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.zoo import list_models, model_info
from edgecompile.zoo.layers import ChannelShuffle
from edgecompile.zoo.shufflenet_v1 import (
    ShuffleNetV1,
    ShuffleUnit,
    shufflenet_v1,
    stage_specs,
    stem_channels,
)
from edgecompile.zoo.shufflenet_v2 import ShuffleNetV2, ShuffleV2Unit, shufflenet_v2

# Written out again from the papers rather than imported, so a typo in a module table fails here.
PAPER_TABLE_1 = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
PAPER_TABLE_5 = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
# Megvii's ShuffleNet-Series ShuffleNetV1/network.py: (stem, stage 2, stage 3, stage 4).
MEGVII_V1 = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}
V1_WIDTHS = ("0_25", "0_5", "1_0", "1_5", "2_0")


def _v1_widths(model: ShuffleNetV1) -> tuple[int, ...]:
    stem = model.stem[0].out_channels
    # A stage's last unit has stride 1, so its expand conv writes the whole stage width.
    return (stem, *(stage[-1].expand[0].out_channels for stage in model.stages))


def _v2_widths(model: ShuffleNetV2) -> tuple[int, ...]:
    stages = tuple(2 * stage[-1].right[-1][0].out_channels for stage in model.stages)
    return (model.stem[0].out_channels, *stages, model.head[0].out_channels)


def _unit_in_channels(unit: nn.Module) -> int:
    if isinstance(unit, ShuffleUnit):
        return unit.compress[0].in_channels
    # A stride-1 v2 unit's right branch sees only half of the input.
    return unit.right[0][0].in_channels * (1 if unit.stride == 2 else 2)


def test_registered_names() -> None:
    expected_v1 = {f"shufflenet_v1_g{g}_x{w}" for g in PAPER_TABLE_1 for w in V1_WIDTHS}
    expected_v1 = (expected_v1 - {"shufflenet_v1_g3_x1_0"}) | {"shufflenet_v1"}
    assert set(list_models(family="shufflenet_v1")) == expected_v1
    assert set(list_models(family="shufflenet_v2")) == {
        "shufflenet_v2",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
    }
    assert dict(model_info("shufflenet_v1").kwargs) == {"groups": 3, "width": 1.0}
    assert dict(model_info("shufflenet_v2").kwargs) == {"width": 1.0}


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE_1))
def test_v1_one_x_follows_table_1(groups: int) -> None:
    model = shufflenet_v1(groups=groups)
    assert _v1_widths(model) == (24, *PAPER_TABLE_1[groups])
    assert [len(stage) for stage in model.stages] == [4, 8, 4]


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE_1))
def test_v1_group_wiring(groups: int) -> None:
    units = [unit for stage in shufflenet_v1(groups=groups).stages for unit in stage]
    compress_groups = [unit.compress[0].groups for unit in units]
    # Only stage 2's first pointwise conv is dense (paper, Sec. 3.3).
    assert compress_groups == [1] + [groups] * (len(units) - 1)
    assert all(unit.expand[0].groups == groups for unit in units)
    for unit in units:
        in_channels = unit.compress[0].in_channels
        branch = unit.expand[0].out_channels
        out_channels = branch + in_channels if unit.stride == 2 else branch
        assert unit.compress[0].out_channels == out_channels // 4
        assert unit.depthwise[0].groups == unit.depthwise[0].in_channels
    shuffles = [unit.shuffle for unit in units]
    if groups == 1:
        assert not any(isinstance(s, ChannelShuffle) for s in shuffles)
    else:
        assert not isinstance(shuffles[0], ChannelShuffle)
        assert all(isinstance(s, ChannelShuffle) and s.groups == groups for s in shuffles[1:])


@pytest.mark.parametrize(("groups", "width"), sorted(MEGVII_V1))
def test_v1_scaled_widths_match_reference(groups: int, width: float) -> None:
    stages = tuple(spec.out_channels for spec in stage_specs(groups, width))
    assert (stem_channels(groups, width), *stages) == MEGVII_V1[groups, width]


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE_1))
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_v1_every_variant_divides_into_groups(groups: int, width: float) -> None:
    stem = stem_channels(groups, width)
    stages = [spec.out_channels for spec in stage_specs(groups, width)]
    for stage, paper in zip(stages, PAPER_TABLE_1[groups], strict=True):
        assert stage % (4 * groups) == 0  # the bottleneck, a quarter, splits into the groups
        assert abs(stage - width * paper) <= 0.1 * width * paper
    assert (stages[0] - stem) % groups == 0  # stage 2's first residual branch is grouped too
    # On the meta device construction and shape propagation run without allocating weights.
    with torch.device("meta"), torch.no_grad():
        model = shufflenet_v1(groups=groups, width=width, num_classes=10).eval()
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_v1_stride2_unit_concatenates_pooled_input_first() -> None:
    torch.manual_seed(0)
    unit = ShuffleUnit(24, 240, groups=3, stride=2, group_first_conv=False).eval()
    x = torch.rand(1, 24, 14, 14)
    with torch.no_grad():
        out = unit(x)
    assert out.shape == (1, 240, 7, 7)
    pooled = nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
    torch.testing.assert_close(out[:, :24], pooled)
    assert out[:, 24:].min() >= 0


@pytest.mark.parametrize("width", sorted(PAPER_TABLE_5))
def test_v2_follows_table_5(width: float) -> None:
    model = shufflenet_v2(width=width)
    assert _v2_widths(model) == (24, *PAPER_TABLE_5[width])
    assert [len(stage) for stage in model.stages] == [4, 8, 4]


def test_v2_stride1_unit_passes_first_half_through() -> None:
    torch.manual_seed(0)
    unit = ShuffleV2Unit(16, 16, stride=1).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        out = unit(x)
    # The two-group shuffle interleaves the halves: the untouched half lands on even channels.
    torch.testing.assert_close(out[:, 0::2], x[:, :8])
    assert not torch.allclose(out[:, 1::2], x[:, 8:])


@pytest.mark.parametrize(("groups", "channels"), [(2, 4), (2, 116), (3, 12), (8, 96)])
def test_channel_shuffle_is_undone_by_the_transposed_shuffle(groups: int, channels: int) -> None:
    x = torch.arange(channels, dtype=torch.float32).reshape(1, channels, 1, 1)
    once = ChannelShuffle(groups, channels)(x)
    assert sorted(once.flatten().tolist()) == x.flatten().tolist()
    assert not torch.equal(once, x)
    # Shuffling views channels as a groups × (channels / groups) matrix and transposes it, so the
    # inverse uses channels // groups groups; with 2 groups it is its own inverse only at 4.
    torch.testing.assert_close(ChannelShuffle(channels // groups, channels)(once), x)
    twice = ChannelShuffle(groups, channels)(once)
    assert torch.equal(twice, x) == (channels == groups * groups)


@pytest.mark.parametrize(
    "make_unit",
    [
        pytest.param(lambda: ShuffleV2Unit(16, 16, stride=1), id="v2-stride1-split"),
        pytest.param(lambda: ShuffleV2Unit(8, 16, stride=2), id="v2-stride2"),
        pytest.param(lambda: ShuffleUnit(24, 24, groups=3, stride=1), id="v1-stride1"),
    ],
)
def test_units_export_static_onnx(make_unit: Callable[[], nn.Module], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    unit = make_unit().eval()
    x = torch.randn(1, _unit_in_channels(unit), 8, 8)
    path = tmp_path / "unit.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(unit, (x,), str(path), dynamo=True, opset_version=18)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "Shape" not in ops
    if isinstance(unit, ShuffleV2Unit) and unit.stride == 1:
        assert ops.count("Slice") + ops.count("Split") >= 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = unit(x).numpy()
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_v2_split_is_static_under_torchscript_export(tmp_path: Path) -> None:
    # The dynamo exporter specialises a run-time split (x.chunk, x.shape[1] // 2) to constants;
    # the TorchScript exporter does not, so it is the one that catches a regression to either.
    onnx = pytest.importorskip("onnx")
    unit = ShuffleV2Unit(16, 16, stride=1).eval()
    path = tmp_path / "unit.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(unit, (torch.randn(1, 16, 8, 8),), str(path), dynamo=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "Slice" in ops
    assert "Shape" not in ops


def test_builders_reject_unknown_configurations() -> None:
    with pytest.raises(ValueError, match="group count 5"):
        shufflenet_v1(groups=5)
    with pytest.raises(ValueError, match=r"width 0\.75"):
        shufflenet_v2(width=0.75)
