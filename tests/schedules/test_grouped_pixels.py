"""Grouped convs with few output channels per group (CondenseNet's 3×3 convs: 1 or 2 per group),
vectorized over pixels in NCHW, and a pre-activation BN → ReLU applied as a grouped conv reads its
input: numerics against torch on the host, which rule ran, and the rpi4 build.

The networks go through the production path (ONNX → ``import_onnx`` → our pipeline), with the
BatchNormalization as the frontend imports it (an un-folded ``relax.nn.batch_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import (
    GROUPED,
    POINTWISE,
    TVM_DEFAULT,
    compile_relax,
    cpu_info,
    optimize,
    plan,
)
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.compute import GROUPED_PIXELS
from edgecompile.schedules.coverage import missed_schedules
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5


@dataclass(frozen=True)
class GroupedCase:
    """``BN → ReLU`` (if ``prologue``) then a grouped conv on a ``(1, groups * in_per_group,
    size, size)`` input."""

    groups: int
    in_per_group: int
    out_per_group: int
    kernel: int = 3
    stride: int = 1
    size: int = 16
    prologue: bool = False

    @property
    def in_channels(self) -> int:
        return self.groups * self.in_per_group

    @property
    def out_channels(self) -> int:
        return self.groups * self.out_per_group

    def weights(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.in_per_group * 10 + self.out_per_group)
        channels = self.in_channels
        shape = (self.out_channels, self.in_per_group, self.kernel, self.kernel)
        return {
            "w": (rng.standard_normal(shape) / np.sqrt(self.in_per_group * 9)).astype("float32"),
            "gamma": rng.uniform(0.5, 1.5, channels).astype("float32"),
            "beta": rng.standard_normal(channels).astype("float32"),
            "mean": rng.standard_normal(channels).astype("float32"),
            "var": rng.uniform(0.5, 2.0, channels).astype("float32"),
        }

    def onnx(self, path: Path) -> Path:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        weights = self.weights()
        pad = self.kernel // 2
        conv_input = "input"
        nodes = []
        if self.prologue:
            nodes += [
                helper.make_node(
                    "BatchNormalization", ["input", "gamma", "beta", "mean", "var"], ["bn"]
                ),
                helper.make_node("Relu", ["bn"], ["act"]),
            ]
            conv_input = "act"
        nodes.append(
            helper.make_node(
                "Conv",
                [conv_input, "w"],
                ["output"],
                group=self.groups,
                kernel_shape=[self.kernel, self.kernel],
                strides=[self.stride, self.stride],
                pads=[pad] * 4,
            )
        )
        shape = [1, self.in_channels, self.size, self.size]
        out_size = (self.size + 2 * pad - self.kernel) // self.stride + 1
        graph = helper.make_graph(
            nodes,
            "grouped",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
            [
                helper.make_tensor_value_info(
                    "output", TensorProto.FLOAT, [1, self.out_channels, out_size, out_size]
                )
            ],
            initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, str(path))
        return path

    def reference(self, data: np.ndarray) -> np.ndarray:
        w = {k: torch.from_numpy(v.astype("float64")) for k, v in self.weights().items()}
        x = torch.from_numpy(data.astype("float64"))
        if self.prologue:
            x = F.relu(F.batch_norm(x, w["mean"], w["var"], w["gamma"], w["beta"], eps=1e-5))
        y = F.conv2d(x, w["w"], stride=self.stride, padding=self.kernel // 2, groups=self.groups)
        return y.numpy()

    def module(self, directory: Path) -> Any:
        return import_onnx(self.onnx(directory / "net.onnx"), name="net")[0].module


def run(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    executable = tvm.compile(
        module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()


# Output channels per group 1, 2 and 4; input channels per group 2 to 8; strides 1 and 2; odd
# map sizes; with and without the BN → ReLU prologue.
CASES = {
    "g4 8→2 s1 prologue": GroupedCase(4, 8, 2, prologue=True),
    "g8 4→1 s1": GroupedCase(8, 4, 1, size=14),
    "g4 2→2 s2 prologue": GroupedCase(4, 2, 2, stride=2, size=15, prologue=True),
    "g8 3→1 s2": GroupedCase(8, 3, 1, stride=2),
    "g4 6→4 s1 prologue": GroupedCase(4, 6, 4, size=9, prologue=True),
    "g2 5→2 s1 13×13": GroupedCase(2, 5, 2, size=13),
    "g4 8→2 1×1 prologue": GroupedCase(4, 8, 2, kernel=1, size=12, prologue=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_few_channels_per_group_match_torch_on_host(
    name: str, tmp_path: Path, host_target: Any
) -> None:
    case = CASES[name]
    module, report = optimize(case.module(tmp_path), host_target)
    assert report.schedules.failed == {}
    (schedule,) = report.schedules.applied.values()
    if cpu_info(host_target).lanes >= 16 and case.out_per_group <= 2:
        # In 16 lanes a vector of output channels would span 8 or 16 groups: pixels instead.
        assert schedule == GROUPED_PIXELS
    else:
        assert schedule in (GROUPED, GROUPED_PIXELS)
    calls = called_kernels(module)
    # The prologue is applied as the conv reads its input: no batch norm kernel of its own.
    assert not [call for call in calls if "batch_norm" in call or "relu" in call], calls
    data = np.random.default_rng(3).standard_normal((1, case.in_channels, case.size, case.size))
    actual = run(module, host_target, data.astype("float32"))
    assert relative_error(actual, case.reference(data)) <= TOLERANCE


@pytest.mark.parametrize(("kernel", "expected"), [(1, GROUPED), (3, GROUPED_PIXELS)])
def test_four_channels_per_group_go_to_pixels_only_with_a_window(
    kernel: int, expected: str, tmp_path: Path, host_target: Any
) -> None:
    """4 output channels per group in 16 lanes (4x the work blocked): a 3×3 conv runs over
    pixels, a 1×1 conv stays blocked (ESPNet v2's: faster with its blocked input)."""
    if cpu_info(host_target).lanes != 16:
        pytest.skip("the bounds were measured for 16 lanes (AVX-512)")
    case = GroupedCase(4, 8, 4, kernel=kernel, size=12)
    _, report = optimize(case.module(tmp_path), host_target)
    assert report.schedules.applied == {0: expected}


def test_prologue_before_a_blocked_grouped_conv(tmp_path: Path, host_target: Any) -> None:
    """BN → ReLU before a grouped conv the blocked schedule runs (16 output channels per group):
    applied as the conv broadcasts its NCHW input, and the numbers match."""
    case = GroupedCase(2, 8, 16, kernel=1, size=10, prologue=True)
    module, report = optimize(case.module(tmp_path), host_target)
    assert report.schedules.applied == {0: GROUPED}
    assert not [call for call in called_kernels(module) if "batch_norm" in call]
    data = np.random.default_rng(4).standard_normal((1, case.in_channels, 10, 10))
    actual = run(module, host_target, data.astype("float32"))
    assert relative_error(actual, case.reference(data)) <= TOLERANCE


def test_tiny_groups_are_ours_not_tvms(tmp_path: Path, host_target: Any) -> None:
    """2 output channels per group: our rule claims the conv (no fallback for the coverage
    check), and a pool after it reads NCHW for a reason the check knows."""
    case = GroupedCase(4, 8, 2, prologue=True)
    _, records = compile_relax(case.module(tmp_path), host_target)
    assert [r["schedule"] for r in records] != [TVM_DEFAULT]
    assert missed_schedules(records) == []


@pytest.mark.parametrize("stride", [1, 2])
def test_pixels_schedule_compiles_for_rpi4(
    stride: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 NEON lanes fit 1 or 2 channels per group in blocks, so the pixels schedule is forced
    here (any waste over 1): LLVM accepts its AArch64 code, prologue and stride included."""
    monkeypatch.setattr(plan, "MAX_GROUPED_WASTE", 1.0)
    target = resolve_target("rpi4").tvm_target()
    case = GroupedCase(4, 8, 2, stride=stride, size=15, prologue=True)
    executable, records = compile_relax(case.module(tmp_path), target)
    assert [r["schedule"] for r in records] == [GROUPED_PIXELS]
    assert executable is not None


def test_prologue_before_a_pointwise_conv_is_applied_by_its_pack(
    tmp_path: Path, host_target: Any
) -> None:
    """BN → ReLU on an NCHW value before a pointwise conv (CondenseNet's training form): the
    pack that blocks the conv's input applies it, so no kernel computes it alone."""
    case = GroupedCase(1, 19, 24, kernel=1, size=7, prologue=True)
    module, report = optimize(case.module(tmp_path), host_target)
    assert report.schedules.applied == {0: POINTWISE}
    calls = called_kernels(module)
    assert not [call for call in calls if "batch_norm" in call or "relu" in call], calls
    data = np.random.default_rng(5).standard_normal((1, case.in_channels, 7, 7))
    actual = run(module, host_target, data.astype("float32"))
    assert relative_error(actual, case.reference(data)) <= TOLERANCE


@pytest.mark.emulator
def test_pixels_schedule_matches_torch_on_the_emulated_board(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pixels schedule (forced, as above) with the BN → ReLU prologue and stride 2, run on
    the emulated Cortex-A72: 4-lane NEON vectors of pixels."""
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.toolchain import toolchain_for

    monkeypatch.setattr(plan, "MAX_GROUPED_WASTE", 1.0)
    preset = resolve_target("rpi4")
    case = GroupedCase(4, 8, 2, stride=2, size=15, prologue=True)
    executable, records = compile_relax(case.module(tmp_path), preset.tvm_target())
    assert [r["schedule"] for r in records] == [GROUPED_PIXELS]
    library = tmp_path / "net_rpi4.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    data = np.random.default_rng(6).standard_normal((1, case.in_channels, 15, 15))
    (actual,) = run_library_in_rootfs(rootfs, library, {"input": data.astype("float32")})
    assert relative_error(actual, case.reference(data)) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("name", ["condensenet74_c4_g4", "condensenet74_c8_g8"])
def test_condensenet_matches_torch_on_the_emulated_board(
    name: str, rootfs: Path, tmp_path: Path
) -> None:
    """CondenseNet end to end for rpi4 (at 64×64, so the emulator runs it in seconds): the
    prologues, the blocked BN epilogues and, with 1 output channel per group (C=G=8), the
    pixels schedule on NEON."""
    from edgecompile.builder import build
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.export import example_input, load_torch_model, run_torch

    result = build(name, "rpi4", output_dir=tmp_path, input_size="64")
    records = result.artifact.manifest.schedules
    assert missed_schedules(records) == []
    if name.endswith("c8_g8"):  # 1 output channel per group: 4x the work in 4-lane blocks
        assert GROUPED_PIXELS in {record["schedule"] for record in records}
    spec = result.artifact.manifest.inputs[0]
    data = example_input(spec["shape"], seed=7)
    (actual,) = run_library_in_rootfs(
        rootfs, result.artifact.library, {spec["name"]: data}, cpu="cortex-a72", timeout=600
    )
    expected = run_torch(load_torch_model(name, input_size="64"), data)
    assert relative_error(actual, expected) <= 1e-4
