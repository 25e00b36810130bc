"""A grouped conv vectorized over pixels reading a blocked input (issue #16's layout glue):
CondenseNet's 3×3 conv after the blocked 1×1 grouped conv and its channel shuffle, ESPNet v2's
1×1 grouped convs after a blocked conv. The unpack that ran as a kernel of its own before each
such conv now runs inside the conv's kernel; the lane order (the shuffle's) is read through a
table. Also: a batch norm left in NCHW becomes a folded multiply-add. Numerics against float64
torch on the host (prime and odd widths, strides 1 and 2), no unpack kernel left, and the rpi4
build.

The networks go through the production path (ONNX → ``import_onnx`` → our pipeline).
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
from edgecompile.schedules import GROUPED, POINTWISE, compile_relax, cpu_info, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.compute import GROUPED_PIXELS
from edgecompile.schedules.coverage import missed_schedules
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Conv:
    """A Conv (``pad`` on every side) and what follows it: a ReLU, then a channel shuffle of
    ``shuffle`` groups (reshape → transpose → reshape, as the exporter writes it)."""

    in_channels: int
    out_channels: int
    kernel: int
    groups: int = 1
    stride: int = 1
    pad: int = 0
    relu: bool = False
    shuffle: int = 0
    norm: bool = False  # an un-folded BatchNormalization (then the ReLU) after the conv


def norm_parameters(conv: Conv) -> tuple[np.ndarray, ...]:
    """``(mean, var, gamma, beta)`` of the batch norm after ``conv``, float64."""
    rng = np.random.default_rng(conv.out_channels)
    channels = conv.out_channels
    return (
        rng.standard_normal(channels),
        rng.uniform(0.5, 2.0, channels),
        rng.uniform(0.5, 1.5, channels),
        rng.standard_normal(channels),
    )


@dataclass(frozen=True)
class Net:
    convs: tuple[Conv, ...]
    height: int
    width: int
    expected: tuple[str, ...]  # schedule per conv on 16 lanes

    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.convs[0].in_channels, self.height, self.width)

    def weights(self) -> list[np.ndarray]:
        rng = np.random.default_rng(len(self.convs) * 100 + self.width)
        found = []
        for conv in self.convs:
            per_group = conv.in_channels // conv.groups
            shape = (conv.out_channels, per_group, conv.kernel, conv.kernel)
            scale = 1 / np.sqrt(per_group * conv.kernel**2)
            found.append((rng.standard_normal(shape) * scale).astype("float32"))
        return found

    def reference(self, data: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(data.astype("float64"))
        for conv, weight in zip(self.convs, self.weights(), strict=True):
            w = torch.from_numpy(weight.astype("float64"))
            x = F.conv2d(x, w, stride=conv.stride, padding=conv.pad, groups=conv.groups)
            if conv.norm:
                mean, var, gamma, beta = (torch.from_numpy(p) for p in norm_parameters(conv))
                x = F.batch_norm(x, mean, var, gamma, beta, eps=1e-5)
            if conv.relu:
                x = F.relu(x)
            if conv.shuffle:
                n, c, h, width = x.shape
                x = x.reshape(n, conv.shuffle, c // conv.shuffle, h, width)
                x = x.transpose(1, 2).reshape(n, c, h, width)
        return x.numpy()

    def module(self, directory: Path) -> Any:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits, current = [], [], "input"
        out_shape = self.reference(np.zeros(self.shape(), "float32")).shape
        for i, (conv, weight) in enumerate(zip(self.convs, self.weights(), strict=True)):
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, f"w{i}"],
                    [f"conv{i}"],
                    kernel_shape=[conv.kernel] * 2,
                    strides=[conv.stride] * 2,
                    pads=[conv.pad] * 4,
                    group=conv.groups,
                )
            )
            current = f"conv{i}"
            if conv.norm:
                names = [f"{p}{i}" for p in ("mean", "var", "gamma", "beta")]
                inits += [
                    numpy_helper.from_array(p.astype("float32"), n)
                    for p, n in zip(norm_parameters(conv), names, strict=True)
                ]
                order = [current, names[2], names[3], names[0], names[1]]
                nodes.append(helper.make_node("BatchNormalization", order, [f"norm{i}"]))
                current = f"norm{i}"
            if conv.relu:
                nodes.append(helper.make_node("Relu", [current], [f"relu{i}"]))
                current = f"relu{i}"
            if conv.shuffle:
                size = (self.height + 2 * conv.pad - conv.kernel) // conv.stride + 1
                split = [1, conv.shuffle, conv.out_channels // conv.shuffle, size, size]
                merged = [1, conv.out_channels, size, size]
                inits += [
                    numpy_helper.from_array(np.array(split, "int64"), f"split{i}"),
                    numpy_helper.from_array(np.array(merged, "int64"), f"merged{i}"),
                ]
                nodes += [
                    helper.make_node("Reshape", [current, f"split{i}"], [f"grouped{i}"]),
                    helper.make_node(
                        "Transpose", [f"grouped{i}"], [f"swapped{i}"], perm=[0, 2, 1, 3, 4]
                    ),
                    helper.make_node("Reshape", [f"swapped{i}", f"merged{i}"], [f"shuf{i}"]),
                ]
                current = f"shuf{i}"
        nodes.append(helper.make_node("Identity", [current], ["output"]))
        graph = helper.make_graph(
            nodes,
            "pixels_blocked",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.shape()))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
            initializer=inits,
        )
        path = directory / "net.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return import_onnx(path, name="net")[0].module


NETS = {
    # CondenseNet's dense layer: the 1×1 grouped conv (8 outputs per group: blocked), its
    # shuffle (a lane order, no data moved), ReLU, the 3×3 conv of 2 outputs per group.
    "condensenet 1×1 g4 shuffle → 3×3 g4 32→8 13×13": Net(
        (
            Conv(16, 32, 1, groups=4, relu=True, shuffle=4),
            Conv(32, 8, 3, groups=4, pad=1),
        ),
        13,
        13,
        (GROUPED, GROUPED_PIXELS),
    ),
    # The same at stride 2 after a plain 1×1 conv (the identity lane order), odd width 19.
    "1×1 → 3×3 g8 s2 32→8 19×19": Net(
        (Conv(12, 32, 1, relu=True), Conv(32, 8, 3, groups=8, stride=2, pad=1)),
        19,
        19,
        (POINTWISE, GROUPED_PIXELS),
    ),
    # ESPNet v2 ×0.5's reduce: a 1×1 grouped conv 16 → 4 in 4 groups, no padding (the window
    # copy is made anyway), ReLU after it; width 37.
    "espnet_v2 1×1 → 1×1 g4 16→4 37×37": Net(
        (Conv(8, 16, 1, relu=True), Conv(16, 4, 1, groups=4, relu=True)),
        9,
        37,
        (POINTWISE, GROUPED_PIXELS),
    ),
    # A row of 55 (11 pixels a vector on AVX-512), read from the model's NCHW input.
    "3×3 g4 32→8 55 wide, NCHW input": Net(
        (Conv(32, 8, 3, groups=4, pad=1),),
        5,
        55,
        (GROUPED_PIXELS,),
    ),
}


def run(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    executable = tvm.compile(
        module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_pixels_conv_reads_its_blocked_input_in_place(
    name: str, tmp_path: Path, host_target: Any
) -> None:
    net = NETS[name]
    module, report = optimize(net.module(tmp_path), host_target)
    assert report.schedules.failed == {}
    if cpu_info(host_target).lanes == 16:
        assert tuple(report.schedules.applied.values()) == net.expected
    if GROUPED_PIXELS in report.schedules.applied.values():
        calls = called_kernels(module)
        # The blocked conv's result goes straight into the pixels conv: no unpack before it
        # (and the pixels conv writes the model's NCHW result: none after it either).
        assert not [call for call in calls if "unpack" in call], calls
    data = np.random.default_rng(7).standard_normal(net.shape()).astype("float32")
    actual = run(module, host_target, data)
    assert relative_error(actual, net.reference(data)) <= TOLERANCE


def test_pixels_conv_on_blocked_input_builds_for_rpi4(tmp_path: Path) -> None:
    """4 NEON lanes: one output channel per group still goes over pixels (4x the work
    blocked); its blocked input read through the shuffle's lane order compiles for AArch64."""
    net = Net(
        (Conv(16, 32, 1, groups=4, relu=True, shuffle=4), Conv(32, 8, 3, groups=8, pad=1)),
        11,
        11,
        (GROUPED, GROUPED_PIXELS),
    )
    target = resolve_target("rpi4").tvm_target()
    executable, records = compile_relax(net.module(tmp_path), target)
    assert [r["schedule"] for r in records][-1] == GROUPED_PIXELS
    assert missed_schedules(records) == []
    assert executable is not None


def test_batch_norm_of_an_nchw_value_is_a_folded_multiply_add(
    tmp_path: Path, host_target: Any
) -> None:
    """A batch norm the exporter could not fold, on an NCHW value (here the pixels conv's
    result; in CondenseNet the last concat's): one multiply-add per element with constants
    folded at compile time, fused with the ReLU, where TVM's lowering divided by a square root
    per element."""
    net = Net((Conv(16, 8, 3, groups=8, pad=1, norm=True, relu=True),), 13, 13, (GROUPED_PIXELS,))
    module, report = optimize(net.module(tmp_path), host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(module)
    assert not [call for call in calls if "batch_norm" in call], calls
    data = np.random.default_rng(8).standard_normal(net.shape()).astype("float32")
    actual = run(module, host_target, data)
    assert relative_error(actual, net.reference(data)) <= TOLERANCE
