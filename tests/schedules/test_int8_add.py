"""A QDQ residual add (``quantize(dequantize(a) + dequantize(b))``) in an int8 build: computed
on the integers as ONNX Runtime's QLinearAdd rounds (int8/add.py), so it matches ORT on the
same QDQ model exactly, where the fp32 chain differed by a step near half steps (the first
difference from ORT in mnasnet_a1, 3 output steps by its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8.add import ADD_KERNEL_NAME, QuantizedAdd, integer_adds
from edgecompile.schedules.pipeline import ScheduleReport

# Scales in the ratios 1/2 and 3/2 to the output's: many of the 256 × 256 input pairs sum to
# a real half step, which QLinearAdd's exact products round to even, and the fp32 chain's
# rounding errors push either way (4807 of the pairs differ).
A = (0.1, 131)
B = (0.3, 97)
OUT = (0.2, 120)
SHAPE = (1, 256, 16, 16)  # every pair (a, b) of uint8 values once


def qdq_add_model(
    folder: Path, b_shape: tuple[int, ...] = SHAPE, float_output: bool = False
) -> Path:
    """``a_q, b_q`` (uint8) → DequantizeLinear each → Add → QuantizeLinear → ``c_q``: the chain
    ORT's quantizer leaves around a residual add, and ORT fuses into QLinearAdd.
    ``float_output``: the add's float result is an output of the model too."""
    constants = []
    for name, (scale, zero_point) in (("a", A), ("b", B), ("c", OUT)):
        constants.append(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"))
        constants.append(numpy_helper.from_array(np.array(zero_point, np.uint8), f"{name}_zp"))
    nodes = [
        helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zp"], ["a"]),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "c_scale", "c_zp"], ["c_q"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_add",
        [
            helper.make_tensor_value_info("a_q", TensorProto.UINT8, SHAPE),
            helper.make_tensor_value_info("b_q", TensorProto.UINT8, b_shape),
        ],
        [
            helper.make_tensor_value_info("c_q", TensorProto.UINT8, SHAPE),
            *([helper.make_tensor_value_info("c", TensorProto.FLOAT, SHAPE)] * float_output),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "add.int8.onnx"
    onnx.save(model, str(path))
    return path


def every_pair() -> tuple[np.ndarray, np.ndarray]:
    values = np.arange(256, dtype=np.uint8)
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.reshape(SHAPE), b.reshape(SHAPE)


def fp32_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the QDQ graph says literally (and our build computed before): dequantize, add in
    float32, divide by the output scale, round half to even."""
    real = (a.astype(np.float32) - A[1]) * np.float32(A[0])
    real = real + (b.astype(np.float32) - B[1]) * np.float32(B[0])
    return np.clip(np.rint(real / np.float32(OUT[0])) + OUT[1], 0, 255).astype(np.uint8)


def test_qdq_add_matches_onnx_runtime_exactly(tmp_path: Path, host_target: Any) -> None:
    import tvm
    from tvm import relax

    path = qdq_add_model(tmp_path)
    a, b = every_pair()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"a_q": a, "b_q": b})[0]
    # The data reaches the rounding cases where the literal fp32 chain and ORT part ways.
    assert np.any(fp32_chain(a, b) != theirs)

    model, _ = import_onnx(path, name="add")
    report = ScheduleReport()
    executable, _ = compile_relax(model.module, host_target, report=report)
    machine = relax.VirtualMachine(executable, tvm.cpu())
    ours = machine["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    add = QuantizedAdd.of(A, B, OUT, "uint8")
    np.testing.assert_array_equal(add.reference(a, b), theirs)


@pytest.mark.parametrize(
    ("b_shape", "float_output", "folds"),
    [
        (SHAPE, False, True),
        # A broadcast add (one value per channel): not the residual add, left in fp32.
        ((1, SHAPE[1], 1, 1), False, False),
        # Its float sum read by something else too: ORT does not fuse that chain either.
        (SHAPE, True, False),
    ],
    ids=["residual", "broadcast", "sum-also-read"],
)
def test_only_the_chain_ort_fuses_becomes_an_integer_add(
    tmp_path: Path, b_shape: tuple[int, ...], float_output: bool, folds: bool
) -> None:
    path = qdq_add_model(tmp_path, b_shape=b_shape, float_output=float_output)
    model, _ = import_onnx(path, name="add")
    rewritten = integer_adds()(model.module)
    kernels = [gvar.name_hint for gvar in rewritten.get_global_vars()]
    assert any(name.startswith(ADD_KERNEL_NAME) for name in kernels) == folds
