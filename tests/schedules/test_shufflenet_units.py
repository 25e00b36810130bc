"""ShuffleNet v1's units in the blocked layout, as the small models (g8 ×0.25, g4 ×0.5) have them:
the grouped conv feeding the residual add (or the concat) keeps the plain channel order, so the
add runs in its epilogue and the concat in place; the compress conv a shuffle reads stays
blocked, so the shuffle moves no data. Numerics against torch on the host, and the rpi4 build.

The units are the zoo's own (:class:`~edgecompile.zoo.shufflenet_v1.ShuffleUnit`, BatchNorm
folded by the exporter), behind a 1×1 conv so that their input arrives blocked as in the model;
they go through the production path (torch → ONNX → ``import_onnx`` → our pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from edgecompile.export import TorchModel, export_onnx, relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import (
    DEPTHWISE,
    GROUPED,
    POINTWISE,
    compile_relax,
    cpu_info,
    optimize,
)
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.channels import grouped_layout
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target
from edgecompile.zoo.shufflenet_v1 import ShuffleUnit

TOLERANCE = 1e-5


@dataclass(frozen=True)
class UnitCase:
    """A 1×1 conv + ReLU to ``in_channels``, one ShuffleNet v1 unit, a 1×1 conv to 8 channels
    (so the unit's output is read blocked, as the next unit reads it), on a ``size``² map."""

    groups: int
    in_channels: int
    out_channels: int
    stride: int = 1
    size: int = 12

    def network(self) -> nn.Module:
        torch.manual_seed(self.groups * 1000 + self.in_channels + self.stride)
        network = nn.Sequential(
            nn.Conv2d(8, self.in_channels, 1),
            nn.ReLU(),
            ShuffleUnit(
                self.in_channels, self.out_channels, groups=self.groups, stride=self.stride
            ),
            nn.Conv2d(self.out_channels, 8, 1),
        )
        for module in network.modules():  # BatchNorm statistics away from the identity
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.5, 0.5)
                assert module.running_mean.shape == (channels,)
        return network.eval()

    def export(self, directory: Path) -> tuple[Any, nn.Module]:
        network = self.network()
        model = TorchModel("unit", network, (1, 8, self.size, self.size), "test", "seeded")
        onnx_model = export_onnx(model, directory / "unit.onnx")
        relax_model, _ = import_onnx(onnx_model.path, name="unit")
        return relax_model.module, network


def run(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    executable = tvm.compile(
        module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()


# Stage 2 of g8 ×0.25 (compress 96 → 24: 3 channels per group, 5.3x the work in 16-lane blocks,
# was run over pixels; expand 24 → 96: 12 per group, was padded to 16 lanes each), its stage 3's
# downsampling unit (96 → 192: the concat of two whole-block halves), g4 ×0.5's stage 2 (9 and
# 36 channels per group) and g8 ×0.5's stage 3 downsampling unit (expand 96 → 192: 24 channels
# per group, was padded to 32 lanes each, so the concat of 192 + 192 was a lane gather).
CASES = {
    "g8 96 s1": UnitCase(8, 96, 96),
    "g8 96→192 s2": UnitCase(8, 96, 192, stride=2),
    "g4 144 s1": UnitCase(4, 144, 144, size=10),
    "g8 192→384 s2": UnitCase(8, 192, 384, stride=2, size=7),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unit_stays_blocked_and_matches_torch(name: str, tmp_path: Path, host_target: Any) -> None:
    case = CASES[name]
    module, network = case.export(tmp_path)
    optimized, report = optimize(module, host_target)
    assert report.schedules.failed == {}
    applied = [report.schedules.applied[index] for index in sorted(report.schedules.applied)]
    pool = ["edgecompile.pool_nchwc"] if case.stride == 2 else []
    assert applied == [POINTWISE, GROUPED, DEPTHWISE, GROUPED, *pool, POINTWISE]
    calls = called_kernels(optimized)
    # The input's pack before the first conv and the output's unpack: no layout move between.
    assert [call for call in calls if "pack_nchwc" in call and "unpack" not in call] == [
        "pack_nchwc"
    ], calls
    assert len([call for call in calls if "unpack_nchwc" in call]) == 1, calls
    assert not [call for call in calls if "transpose" in call], calls
    if case.stride == 1:  # the residual add and ReLU run in the expand conv's epilogue
        assert any(call.startswith("fused_grouped_nchwc") and "add" in call for call in calls)
        assert not [call for call in calls if call.startswith(("fused_add", "add"))], calls
    lanes = cpu_info(host_target).lanes
    halves = (case.in_channels, case.out_channels - case.in_channels)
    if case.stride == 2 and all(channels % lanes == 0 for channels in halves):
        assert not [call for call in calls if "concat" in call], calls  # written in place
    data = np.random.default_rng(6).standard_normal((1, 8, case.size, case.size))
    actual = run(optimized, host_target, data.astype("float32"))
    with torch.no_grad():
        expected = network.double()(torch.from_numpy(data)).numpy()
    assert relative_error(actual, expected) <= TOLERANCE


def test_residual_in_a_padded_order_moves_once(tmp_path: Path, host_target: Any) -> None:
    """g4 ×1.5's stage 2 (expand 104 → 416: 26 per group, padded to 32 lanes, the plain order
    would cost 624 more vector multiply-adds per pixel): the unit's input is permuted into the
    padded order once, in blocks, and the add runs in the conv's epilogue; it used to unpack
    both to NCHW, add there and pack the sum."""
    if cpu_info(host_target).lanes != 16:
        pytest.skip("the padded order is chosen for 16 lanes (AVX-512)")
    case = UnitCase(4, 416, 416, size=7)
    module, network = case.export(tmp_path)
    optimized, report = optimize(module, host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(optimized)
    assert len([call for call in calls if "reorder_nchwc" in call]) == 1, calls
    assert len([call for call in calls if "unpack_nchwc" in call]) == 1, calls  # the output's
    assert any(call.startswith("fused_grouped_nchwc") and "add" in call for call in calls)
    data = np.random.default_rng(7).standard_normal((1, 8, case.size, case.size))
    actual = run(optimized, host_target, data.astype("float32"))
    with torch.no_grad():
        expected = network.double()(torch.from_numpy(data)).numpy()
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("name", ["g8 96 s1", "g8 192→384 s2"])
def test_unit_builds_for_rpi4(name: str, tmp_path: Path) -> None:
    """4 NEON lanes: the same plan (no channel group fills a 4-lane block in g8's compress conv)
    compiles to AArch64."""
    module, _ = CASES[name].export(tmp_path)
    executable, records = compile_relax(module, resolve_target("rpi4").tvm_target())
    assert [record["schedule"] for record in records][:4] == [
        POINTWISE,
        GROUPED,
        DEPTHWISE,
        GROUPED,
    ]
    assert executable is not None


@pytest.mark.parametrize(
    ("out_channels", "groups", "in_per_group", "plain"),
    [
        (96, 8, 3, True),  # 12 per group: 6 blocks × 6 steps, 12 more than padded (8 × 3)
        (272, 4, 17, True),  # 68 per group: 17 × 34, 238 more than 20 × 17
        (416, 4, 26, False),  # 104 per group: 26 × 52, 624 more than 28 × 26: padded
        (24, 8, 12, False),  # 3 per group: 2 × 72, 48 more than 8 × 12
    ],
)
def test_plain_order_layout_unless_it_costs_more_than_the_glue(
    out_channels: int, groups: int, in_per_group: int, plain: bool
) -> None:
    """``plain_order``: channels in their own lanes, each block reading the groups it holds,
    while that costs at most one vector multiply-add per channel more than padding the groups
    (which the default picks for all of these)."""
    layout = grouped_layout(out_channels, groups, in_per_group, 16, plain_order=True)
    assert layout.out_order.is_identity(16) == plain
    assert not grouped_layout(out_channels, groups, in_per_group, 16).out_order.is_identity(16)
    if plain:
        blocks = out_channels // 16
        assert layout.rows.shape == (blocks, 2 * in_per_group)  # 2 groups per block at most
        assert layout.waste == pytest.approx(blocks * 16 * 2 / out_channels)
