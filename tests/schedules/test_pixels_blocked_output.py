"""A grouped conv vectorized over pixels whose result a PReLU and then blocked ops read (ESPNet
v2's grouped convs of one output channel per group, issue #16's layout glue): the conv packs its
result, the PReLU applied, row by row in its own kernel, where a ``prelu → pack`` kernel of its
own read the whole NCHW result back (1.9% of espnet_v2_seg's time). Numerics against float64
torch on the host (padding lanes, odd widths, stride 2), no pack kernel left, and the rpi4 build.

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

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.compute import GROUPED_PIXELS
from edgecompile.schedules.coverage import missed_schedules
from edgecompile.targets import resolve_target

from .test_pixels_blocked_input import run

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Net:
    """3×3 conv ``3 → in_channels`` → PReLU → grouped conv (``kernel``, ``groups``, ``stride``)
    to ``out_channels`` → PReLU → 1×1 conv to 8 channels, the model's output."""

    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    stride: int
    height: int
    width: int

    def weights(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.out_channels * 100 + self.width)
        per_group = self.in_channels // self.groups
        shapes = {
            "w0": (self.in_channels, 3, 3, 3),
            "w1": (self.out_channels, per_group, self.kernel, self.kernel),
            "w2": (8, self.out_channels, 1, 1),
        }
        found = {
            name: (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype("float32")
            for name, shape in shapes.items()
        }
        # Slopes of both signs and sizes: a lane's slope read from the wrong channel shows.
        found["a0"] = rng.uniform(-0.5, 0.5, (self.in_channels, 1, 1)).astype("float32")
        found["a1"] = rng.uniform(-0.5, 0.5, (self.out_channels, 1, 1)).astype("float32")
        return found

    def reference(self, data: np.ndarray) -> np.ndarray:
        t = {k: torch.from_numpy(v.astype("float64")) for k, v in self.weights().items()}
        x = F.prelu(
            F.conv2d(torch.from_numpy(data.astype("float64")), t["w0"], padding=1),
            t["a0"].reshape(-1),
        )
        pad = self.kernel // 2
        x = F.conv2d(x, t["w1"], stride=self.stride, padding=pad, groups=self.groups)
        x = F.prelu(x, t["a1"].reshape(-1))
        return F.conv2d(x, t["w2"]).numpy()

    def module(self, directory: Path) -> Any:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        pad = self.kernel // 2
        nodes = [
            helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1] * 4),
            helper.make_node("PRelu", ["c0", "a0"], ["p0"]),
            helper.make_node(
                "Conv",
                ["p0", "w1"],
                ["c1"],
                pads=[pad] * 4,
                strides=[self.stride] * 2,
                group=self.groups,
            ),
            helper.make_node("PRelu", ["c1", "a1"], ["p1"]),
            helper.make_node("Conv", ["p1", "w2"], ["output"]),
        ]
        shape = [1, 3, self.height, self.width]
        out_shape = list(self.reference(np.zeros(shape, "float32")).shape)
        graph = helper.make_graph(
            nodes,
            "pixels_prelu",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.weights().items()],
        )
        path = directory / "net.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return import_onnx(path, name="net")[0].module


NETS = {
    # espnet_v2_seg's last pyramid: 3×3 of one output per group, 9 channels (padding lanes on
    # 4, 8 and 16 lanes), odd width.
    "3×3 g9 18→9 19 wide": Net(18, 9, 9, 3, 1, 7, 19),
    # The same at stride 2 on an even width.
    "3×3 g9 18→9 s2 24 wide": Net(18, 9, 9, 3, 2, 8, 24),
    # ESPNet v2's reduce: a 1×1 grouped conv, 48 channels (whole blocks), width 37.
    "1×1 g48 96→48 37 wide": Net(96, 48, 48, 1, 1, 5, 37),
}


def packs(module: Any) -> list[str]:
    """The kernels that pack (not unpack): the glue the conv's own pack replaces."""
    return [k for k in called_kernels(module) if "pack" in k.replace("unpack", "")]


@pytest.mark.parametrize("name", list(NETS))
def test_pixels_conv_packs_its_prelu_result_in_its_own_kernel(
    name: str, tmp_path: Path, host_target: Any
) -> None:
    net = NETS[name]
    module, report = optimize(net.module(tmp_path), host_target)
    assert report.schedules.failed == {}
    assert GROUPED_PIXELS in report.schedules.applied.values()
    assert packs(module) == [], called_kernels(module)
    data = np.random.default_rng(5).standard_normal((1, 3, net.height, net.width))
    actual = run(module, host_target, data.astype("float32"))
    assert relative_error(actual, net.reference(data.astype("float32"))) <= TOLERANCE


def test_pixels_conv_packing_its_result_builds_for_rpi4(tmp_path: Path) -> None:
    net = NETS["3×3 g9 18→9 19 wide"]
    target = resolve_target("rpi4").tvm_target()
    module, report = optimize(net.module(tmp_path), target)
    assert GROUPED_PIXELS in report.schedules.applied.values()
    assert packs(module) == [], called_kernels(module)
    executable, records = compile_relax(net.module(tmp_path), target)
    assert missed_schedules(records) == []
    assert executable is not None
