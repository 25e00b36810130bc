"""Consecutive folded kernels hand each other the blocked uint8 layout (MobileNet v2's expand
1×1 → depthwise → project 1×1): which outputs stay blocked and why the others are NCHW, and
the chain's integers equal the NCHW kernels' (each exact against numpy in
test_int8_kernels.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8 import (
    INT8_DEPTHWISE_SCHEDULE,
    INT8_SCHEDULE,
    INT8_VNNI_SCHEDULE,
    output_steps,
)
from edgecompile.schedules.int8.schedule import has_blocked_kernel
from edgecompile.schedules.pipeline import ScheduleReport
from edgecompile.targets import resolve_target

SIZE = 13  # a prime width: the depthwise tile is the whole row
CHANNELS, EXPANDED, PROJECTED = 16, 40, 24  # 40: the blocked tensors end in a part block

pytestmark = pytest.mark.skipif(
    not has_blocked_kernel(resolve_target("host").tvm_target()), reason="this host has no VNNI"
)


def inverted_residual(
    folder: Path, write_qdq_model: Callable[..., Path], residual: bool, stride: int = 1
) -> Path:
    """expand 1×1 → depthwise 3×3 → project 1×1 (+ the block's input when ``residual``),
    quantized as ``edgecompile quantize`` does (the conftest's ``write_qdq_model``)."""
    rng = np.random.default_rng(0)
    projected = CHANNELS if residual else PROJECTED
    shapes = {
        "w1": (EXPANDED, CHANNELS, 1, 1),
        "w2": (EXPANDED, 1, 3, 3),
        "w3": (projected, EXPANDED, 1, 1),
    }
    inits = [
        numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), name)
        for name, s in shapes.items()
    ]
    inits += [
        numpy_helper.from_array((rng.standard_normal(s[0]) * 0.2).astype(np.float32), f"b{i}")
        for i, s in enumerate(shapes.values(), 1)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["expanded"]),
        helper.make_node(
            "Conv",
            ["expanded", "w2", "b2"],
            ["filtered"],
            group=EXPANDED,
            pads=[1] * 4,
            strides=[stride] * 2,
        ),
        helper.make_node("Conv", ["filtered", "w3", "b3"], ["projected" if residual else "y"]),
    ]
    if residual:
        nodes.append(helper.make_node("Add", ["projected", "x"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    calibration = [
        {"x": rng.standard_normal((1, CHANNELS, SIZE, SIZE)).astype(np.float32) * 2}
        for _ in range(4)
    ]
    return write_qdq_model(graph, folder / "block.onnx", calibration)


def build_and_run(
    path: Path, target: Any, x: np.ndarray
) -> tuple[np.ndarray, ScheduleReport, list[dict[str, Any]]]:
    import tvm
    from tvm import relax

    model, _ = import_onnx(path, name="block")
    report = ScheduleReport()
    executable, records = compile_relax(model.module, target, report=report)
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(x)).numpy(), report, records


def _output_step(path: Path) -> float:
    (step,) = output_steps(import_onnx(path, name="block")[0].module)
    return step


def _input(path: Path) -> np.ndarray:
    """An input the model's own quantize maps to random uint8 exactly."""
    params = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    scale = next(v for k, v in params.items() if k.startswith("x_scale"))
    zero_point = next(v for k, v in params.items() if k.startswith("x_zero_point"))
    x_q = np.random.default_rng(1).integers(0, 256, (1, CHANNELS, SIZE, SIZE))
    return ((x_q - int(zero_point)) * np.float32(scale)).astype(np.float32)


@pytest.mark.parametrize("stride", [1, 2])
def test_chain_stays_blocked_and_keeps_the_nchw_kernels_integers(
    stride: int, tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """expand → depthwise → project: the expand's and the depthwise's outputs stay blocked
    (each is read only by the next folded kernel), the project's is NCHW (the model's output).
    The result is the NCHW integer kernels' (x86-64-v2: no VNNI, no AVX2) bit for bit."""
    import onnxruntime as ort

    path = inverted_residual(tmp_path, write_qdq_model, residual=False, stride=stride)
    x = _input(path)

    actual, report, records = build_and_run(path, host_target, x)
    expected, nchw_report, nchw_records = build_and_run(
        path, resolve_target("x86-64-v2").tvm_target(), x
    )

    assert report.int8.folded == {0, 1, 2}
    assert report.int8.blocked_outputs == {0, 1}
    assert [r["schedule"] for r in records] == [
        INT8_VNNI_SCHEDULE,
        INT8_DEPTHWISE_SCHEDULE,
        INT8_VNNI_SCHEDULE,
    ]
    assert nchw_report.int8.blocked_outputs == set()
    assert {r["schedule"] for r in nchw_records} == {INT8_SCHEDULE}
    assert np.unique(expected).size > 10  # the data spans the output range
    np.testing.assert_array_equal(actual, expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"x": x})
    assert np.abs(actual - ort_out).max() <= 2 * _output_step(path)


def test_output_read_by_fp32_glue_stays_nchw(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """With the residual add (fp32 between dequantize/quantize) reading the project's output,
    that output is NCHW; the expand's and the depthwise's still stay blocked."""
    import onnxruntime as ort

    path = inverted_residual(tmp_path, write_qdq_model, residual=True)
    x = _input(path)

    actual, report, _ = build_and_run(path, host_target, x)

    assert report.int8.folded == {0, 1, 2}
    assert report.int8.blocked_outputs == {0, 1}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"x": x})
    assert np.abs(actual - ort_out).max() <= 2 * _output_step(path)


def test_no_unpack_between_blocked_kernels(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """In the fused module the chain's kernels pass 5-D uint8 tensors: no unpack kernel is
    left (the one the fold emits for the dead fp32 chains goes with them), no fp32 conv."""
    from tvm import tirx

    from edgecompile.schedules.analysis import bindings_of, dtype_of, static_shape
    from edgecompile.schedules.pipeline import fused_module

    path = inverted_residual(tmp_path, write_qdq_model, residual=False)
    model, _ = import_onnx(path, name="block")

    fused, _ = fused_module(model.module, host_target)

    kernels = [g.name_hint for g, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert not [name for name in kernels if "unpack" in name]
    assert not [name for name in kernels if "conv2d" in name and "int8" not in name]
    blocked = [
        var
        for var in bindings_of(fused["main"])
        if dtype_of(var) == "uint8" and len(static_shape(var) or ()) == 5
    ]
    assert len(blocked) == 2  # the expand's output and the depthwise's
