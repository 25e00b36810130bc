"""A dense K×K conv on a blocked input (SqueezeNet's 3×3 expands) reads its weights tap by tap:
packed ``(CO/x, KH, KW, CI, x)``, the window loops outside the input lanes, so each tap's
weights are one contiguous run; and its padded input is copied once per row of tiles, not once
per tile, where there are enough rows to share among the cores. The stem, on the plain image,
keeps ``(CO/x, CI, KH, KW, x)``.

A fire module (squeeze 1×1 → expand 1×1 ‖ expand 3×3 → concat) at SqueezeNet's widths must
match torch on the host and build for the rpi4's 4-lane NEON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax, s_tir, tirx

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import DENSE, compute, optimize, rules
from edgecompile.schedules.analysis import sblocks
from edgecompile.schedules.cpu import cpu_info
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5
# input, squeeze (not a multiple of 16 lanes: padding lanes in the packed weights), expands
CHANNELS = (24, 20, 32, 48)
TIR_PIPELINE = register_tir_pipeline()


def fire(directory: Path, height: int, width: int) -> tuple[Path, dict[str, np.ndarray]]:
    """stem 3×3 on the 3-channel image → squeeze 1×1 + ReLU → expand 1×1 + ReLU ‖ expand 3×3
    + ReLU → concat."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    inputs, squeeze, expand1, expand3 = CHANNELS
    weights = {
        "stem": rng.standard_normal((inputs, 3, 3, 3)).astype("float32") / 4,
        "squeeze": rng.standard_normal((squeeze, inputs, 1, 1)).astype("float32") / 4,
        "expand1": rng.standard_normal((expand1, squeeze, 1, 1)).astype("float32") / 4,
        "expand3": rng.standard_normal((expand3, squeeze, 3, 3)).astype("float32") / 12,
        "bias3": rng.standard_normal(expand3).astype("float32"),
    }
    same = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["input", "stem"], ["c0"], pads=same),
        helper.make_node("Relu", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "squeeze"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["s"]),
        helper.make_node("Conv", ["s", "expand1"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["e1"]),
        helper.make_node("Conv", ["s", "expand3", "bias3"], ["c3"], pads=same),
        helper.make_node("Relu", ["c3"], ["e3"]),
        helper.make_node("Concat", ["e1", "e3"], ["output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fire",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, [1, expand1 + expand3, height, width]
            )
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = directory / f"fire{width}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    x = F.relu(F.conv2d(torch.from_numpy(data.astype("float64")), t["stem"], padding=1))
    s = F.relu(F.conv2d(x, t["squeeze"]))
    e1 = F.relu(F.conv2d(s, t["expand1"]))
    e3 = F.relu(F.conv2d(s, t["expand3"], t["bias3"], padding=1))
    return torch.cat([e1, e3], dim=1).numpy()


def dense_kernels(module: Any) -> list[tirx.PrimFunc]:
    return [
        func
        for _, func in module.functions_items()
        if isinstance(func, tirx.PrimFunc)
        and str((func.attrs or {}).get("edgecompile.schedule", "")) == DENSE
    ]


def weight_shape(func: tirx.PrimFunc) -> list[int]:
    """Shape of the weight the conv's blocks read beside the input (batch 1: its first axis)."""
    shapes = [
        [int(d) for d in region.source.shape]
        for block in sblocks(func.body)
        if str(block.annotations.get(compute.SCHEDULE_ATTR, "")) == DENSE
        for region in block.reads
        if len(region.source.shape) == 5 and int(region.source.shape[0]) != 1
    ]
    assert shapes and all(shape == shapes[0] for shape in shapes)
    return shapes[0]


def copied_columns(func: tirx.PrimFunc) -> int:
    """Columns of the padded input the kernel copies at a time: its pad block's column loop
    (inside it, only the vectorized lanes)."""
    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock("pad_nchwc"))
    return int(sch.get(loops[-2]).extent)


def split_kernels(module: Any) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """(the stem, on the plain image; the expand, on a blocked input)."""
    kernels = dense_kernels(module)
    assert len(kernels) == 2
    stem = [k for k in kernels if compute.TAPS_OUTER_ATTR not in k.script()]
    expand = [k for k in kernels if compute.TAPS_OUTER_ATTR in k.script()]
    assert len(stem) == 1 and len(expand) == 1
    return stem[0], expand[0]


@pytest.mark.parametrize("width", [13, 27, 55])
def test_fire_expand_reads_taps_outer_matches_torch_and_builds_for_rpi4(
    width: int, tmp_path: Path, host_target: Any
) -> None:
    cores = cpu_info(host_target).cores
    height = rules.ROWS_PER_CORE * cores  # enough rows for a copy per row on the host
    path, weights = fire(tmp_path, height, width)
    relax_model, _ = import_onnx(path, name="fire")
    module, report = optimize(relax_model.module, host_target)
    assert report.schedules.failed == {}

    stem, expand = split_kernels(module)
    lanes = cpu_info(host_target).lanes
    squeeze_lanes = -(-CHANNELS[1] // lanes) * lanes
    assert weight_shape(expand) == [CHANNELS[3] // lanes, 3, 3, squeeze_lanes, lanes]
    assert weight_shape(stem) == [-(-CHANNELS[0] // lanes), 3, 3, 3, lanes]
    # One copy of each padded row (the width + 2 columns) for the row's tiles, not a window of
    # a tile's pixels + 2 columns per tile.
    assert copied_columns(expand) == width + 2

    executable = tvm.compile(
        module, target=host_target, relax_pipeline=None, tir_pipeline=TIR_PIPELINE
    )
    data = np.random.default_rng(1).standard_normal((1, 3, height, width)).astype("float32")
    machine = relax.VirtualMachine(executable, tvm.cpu())
    actual = machine["main"](tvm.runtime.tensor(data)).numpy()
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE

    rpi4 = resolve_target("rpi4").tvm_target()
    board_module, board_report = optimize(relax_model.module, rpi4)
    assert board_report.schedules.failed == {}
    _, board_expand = split_kernels(board_module)
    assert weight_shape(board_expand) == [CHANNELS[3] // 4, 3, 3, CHANNELS[1], 4]
    tvm.compile(
        board_module, target=rpi4, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )


def test_too_few_rows_per_core_keep_a_copy_per_tile(tmp_path: Path, host_target: Any) -> None:
    """Rows shared among the cores unevenly would idle some: below ROWS_PER_CORE rows per core
    the tiles stay the parallel tasks, each copying its own window."""
    cores = cpu_info(host_target).cores
    width = 55
    path, _ = fire(tmp_path, rules.ROWS_PER_CORE * cores - 1, width)
    relax_model, _ = import_onnx(path, name="fire")
    module, report = optimize(relax_model.module, host_target)
    assert report.schedules.failed == {}
    _, expand = split_kernels(module)
    assert copied_columns(expand) < width + 2
