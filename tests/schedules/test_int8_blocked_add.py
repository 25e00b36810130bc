"""The integer residual add (``int8/add.py``) kept in the blocked uint8 layout between blocked
convs: MobileNet v2's chain of inverted residual blocks runs blocked from the stem to the
head, each add on the blocked tensors, and the integers are the NCHW kernels' bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.importer import import_onnx
from edgecompile.schedules.int8 import output_steps
from edgecompile.schedules.int8.schedule import blocked_instruction
from edgecompile.targets import resolve_target

from .test_int8_glue import _run

SIZE, CHANNELS, EXPANDED = 14, 24, 72  # 24 channels: the blocked tensors end in a part block
BLOCKS = 3


def residual_chain(folder: Path, write_qdq_model: Callable[..., Path]) -> Path:
    """stem 3×3 → 3 × (expand 1×1 → depthwise 3×3 → project 1×1, + the block's input) →
    head 1×1, quantized as ``edgecompile quantize`` does: each add's output is read by the
    next block's expand and the next add."""
    rng = np.random.default_rng(0)
    inits: list[Any] = []
    nodes: list[Any] = []

    def conv(name: str, source: str, out: int, inputs: int, kernel: int, groups: int = 1) -> str:
        weight = rng.standard_normal((out, inputs // groups, kernel, kernel)) * 0.4
        bias = rng.standard_normal(out) * 0.2
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"))
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{name}_w", f"{name}_b"],
                [f"{name}_conv"],
                group=groups,
                pads=[kernel // 2] * 4,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_conv"], [name]))
        return name

    x = conv("stem", "x", CHANNELS, 3, 3)
    for i in range(BLOCKS):
        expanded = conv(f"e{i}", x, EXPANDED, CHANNELS, 1)
        filtered = conv(f"dw{i}", expanded, EXPANDED, EXPANDED, 3, EXPANDED)
        weight = rng.standard_normal((CHANNELS, EXPANDED, 1, 1)) * 0.4
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"p{i}_w"))
        nodes.append(helper.make_node("Conv", [filtered, f"p{i}_w"], [f"p{i}"]))
        nodes.append(helper.make_node("Add", [f"p{i}", x], [f"sum{i}"]))
        x = f"sum{i}"
    conv("head", x, 16, CHANNELS, 1)
    nodes[-1].output[0] = "y"  # the head's ReLU: the model's output
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    calibration = [
        {"x": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(4)
    ]
    return write_qdq_model(graph, folder / "chain.onnx", calibration)


@pytest.mark.parametrize("preset", ["x86-64-v3", "host"])
def test_residual_adds_stay_blocked_and_keep_the_nchw_integers(
    preset: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """AVX2 and (where the host has it) VNNI: every conv's output but the head's is blocked —
    the project convs' too, their only reader the add, and the stem's and each add's, read by
    an expand and an add —, and the output equals the NCHW kernels' (x86-64-v2) bit for bit,
    within 2 steps of ONNX Runtime."""
    import onnxruntime as ort

    target = resolve_target(preset).tvm_target()
    if preset == "host" and blocked_instruction(target) != "vnni":
        pytest.skip("this host has no VNNI")
    path = residual_chain(tmp_path, write_qdq_model)
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)

    actual, report, _ = _run(path, target, x)
    expected, nchw_report, _ = _run(path, resolve_target("x86-64-v2").tvm_target(), x)

    heavy_ops = 1 + 3 * BLOCKS + 1
    assert report.int8.folded == set(range(heavy_ops))
    assert report.int8.blocked_outputs == set(range(heavy_ops - 1))
    assert nchw_report.int8.blocked_outputs == set()
    assert np.unique(expected).size > 10  # the data spans the output range
    np.testing.assert_array_equal(actual, expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    (step,) = output_steps(import_onnx(path, name="glue")[0].module)
    assert np.abs(actual - theirs).max() <= 2 * step
