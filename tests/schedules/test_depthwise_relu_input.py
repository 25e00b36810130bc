"""A ReLU whose input is also read elsewhere (Xception: the block's output feeds the residual
branch and, through a ReLU, the next separable conv) is applied by the depthwise conv as it
loads its window, not by a kernel of its own. Numerics against torch on the host (with and
without padding, stride 2, a width with a row tail), no ReLU kernel left, and the rpi4 build
on the emulated board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.targets import resolve_target

from .test_conv_schedules import TOLERANCE, run_module, save_graph

CHANNELS = 24  # a block and a half of AVX-512 lanes: the padding lanes must stay zero


def block_graph(
    directory: Path, size: int, pad: int, stride: int
) -> tuple[Path, dict[str, np.ndarray]]:
    """1×1 conv → y; relu(y) → depthwise 3×3 (``pad``, ``stride``) → 1×1 conv, plus y itself
    (pooled to the same size when strided): the residual sum is the output."""
    rng = np.random.default_rng(size * 10 + pad + stride)
    weights = {
        "w0": (rng.standard_normal((CHANNELS, 8, 1, 1)) / 3).astype("float32"),
        "wd": (rng.standard_normal((CHANNELS, 1, 3, 3)) / 3).astype("float32"),
        "w1": (rng.standard_normal((CHANNELS, CHANNELS, 1, 1)) / 5).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["y"]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node(
            "Conv", ["r", "wd"], ["d"], group=CHANNELS, pads=[pad] * 4, strides=[stride] * 2
        ),
        helper.make_node("Conv", ["d", "w1"], ["p"]),
        helper.make_node(
            "MaxPool", ["y"], ["skip"], kernel_shape=[3, 3], pads=[pad] * 4, strides=[stride] * 2
        ),
        helper.make_node("Add", ["p", "skip"], ["output"]),
    ]
    out = (size + 2 * pad - 3) // stride + 1
    path = save_graph(
        directory / f"block{size}_{pad}_{stride}.onnx",
        nodes,
        weights,
        {"input": [1, 8, size, size]},
        {"output": [1, CHANNELS, out, out]},
    )
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray], pad: int, stride: int) -> Any:
    w = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    y = F.conv2d(torch.from_numpy(data.astype("float64")), w["w0"])
    d = F.conv2d(F.relu(y), w["wd"], padding=pad, stride=stride, groups=CHANNELS)
    skip = F.max_pool2d(y, 3, stride=stride, padding=pad)
    return (F.conv2d(d, w["w1"]) + skip).numpy()


@pytest.mark.parametrize(("size", "pad", "stride"), [(19, 1, 1), (13, 0, 1), (37, 1, 2)])
def test_depthwise_applies_the_shared_relu_as_it_reads(
    size: int, pad: int, stride: int, tmp_path: Path, host_target: Any
) -> None:
    path, weights = block_graph(tmp_path, size, pad, stride)
    module, _ = optimize(import_onnx(path)[0].module, host_target)
    kernels = called_kernels(module)
    # The ReLU is in no kernel of its own and fused into no other: only the depthwise reads it.
    assert not [name for name in kernels if "relu" in name], kernels
    data = np.random.default_rng(size).standard_normal((1, 8, size, size)).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights, pad, stride)) <= TOLERANCE


@pytest.mark.emulator
def test_depthwise_with_relu_input_matches_torch_on_the_emulated_board(
    rootfs: Path, tmp_path: Path
) -> None:
    """The rpi4 build (4-lane NEON, the ReLU in the depthwise's loads) on the emulated
    Cortex-A72."""
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.schedules import compile_relax
    from edgecompile.toolchain import toolchain_for

    preset = resolve_target("rpi4")
    path, weights = block_graph(tmp_path, 19, 1, 1)
    relax_model = import_onnx(path)[0]
    module, _ = optimize(relax_model.module, preset.tvm_target())
    assert not [name for name in called_kernels(module) if "relu" in name]
    executable, _ = compile_relax(relax_model.module, preset.tvm_target())
    library = tmp_path / "block_rpi4.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    data = np.random.default_rng(19).standard_normal((1, 8, 19, 19)).astype("float32")
    (actual,) = run_library_in_rootfs(rootfs, library, {"input": data})
    assert relative_error(actual, reference(data, weights, 1, 1)) <= TOLERANCE
