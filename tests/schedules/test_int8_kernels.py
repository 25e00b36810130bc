"""The int8 folding pass: a QDQ conv becomes one integer kernel, exact against a numpy integer
reference and within 2 output steps of ONNX Runtime's integer kernels on the same QDQ model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    KERNEL_NAME,
)
from edgecompile.schedules.int8.schedule import has_blocked_kernel
from edgecompile.schedules.pipeline import ScheduleReport

SIZE = 9  # odd, so a stride-2 conv leaves a tail


@dataclass(frozen=True)
class Conv:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    activation: str | None = None  # "Relu" or "Clip" (0..6), kept in the QDQ graph
    unsigned_weights: bool = False  # uint8 weights with a zero point: not foldable
    size: int = SIZE  # the input's height and width


CASES = {
    "pointwise": Conv(5, 7, 1),
    # Two output blocks of 16 (a tile of both) and an input block padded from 13 channels.
    "pointwise-two-blocks": Conv(13, 32, 1, activation="Relu"),
    "3x3-three-blocks": Conv(7, 33, 3, activation="Relu"),
    "3x3-relu": Conv(6, 10, 3, activation="Relu"),
    "3x3-stride2-relu6": Conv(3, 17, 3, stride=2, activation="Clip"),
    "3x3-stride2-relu-removed": Conv(6, 9, 3, stride=2),
    "depthwise": Conv(12, 12, 3, groups=12, activation="Relu"),
    "depthwise-stride2": Conv(12, 12, 3, stride=2, groups=12),
    # A prime width: the tile is the whole row of one block, not 2 blocks × 1 pixel.
    "pointwise-width13": Conv(20, 24, 1, activation="Relu", size=13),
    # The depthwise shape classes: 3×3 and 5×5, stride 1 and 2, a prime width, channels that
    # leave a part block (20, 33) or fill two (32).
    "depthwise-width13-relu6": Conv(20, 20, 3, groups=20, activation="Clip", size=13),
    "depthwise-stride2-width13": Conv(32, 32, 3, stride=2, groups=32, activation="Relu", size=13),
    "depthwise-5x5-width13": Conv(20, 20, 5, groups=20, activation="Relu", size=13),
    "depthwise-5x5-stride2-relu6": Conv(33, 33, 5, stride=2, groups=33, activation="Clip", size=14),
    # Grouped, not depthwise (ShuffleNet v1's 1×1 convs of 3 groups; a 3×3 of 2 groups).
    "grouped-pointwise-g3": Conv(12, 24, 1, groups=3, activation="Relu"),
    "grouped-3x3-g2": Conv(8, 6, 3, groups=2),
}


def qdq_conv_model(
    conv: Conv, folder: Path, write_qdq_model: Callable[..., Path], seed: int = 0
) -> Path:
    """A one-conv fp32 model quantized as `edgecompile quantize` does (the conftest's
    ``write_qdq_model``: symmetric int8 weights here), the activation kept in the graph."""
    rng = np.random.default_rng(seed)
    shape = (conv.out_channels, conv.in_channels // conv.groups, conv.kernel, conv.kernel)
    weight = (rng.standard_normal(shape) * 0.4).astype(np.float32)
    bias = (rng.standard_normal(conv.out_channels) * 0.2).astype(np.float32)
    pad, size = conv.kernel // 2, (conv.size, conv.size)
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["conv" if conv.activation else "y"],
            pads=[pad] * 4,
            strides=[conv.stride] * 2,
            group=conv.groups,
        )
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    if conv.activation == "Relu":
        nodes.append(helper.make_node("Relu", ["conv"], ["y"]))
    elif conv.activation == "Clip":
        inits += [numpy_helper.from_array(np.float32(v), n) for v, n in ((0, "lo"), (6, "hi"))]
        nodes.append(helper.make_node("Clip", ["conv", "lo", "hi"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, conv.in_channels, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    calibration = [
        {"x": rng.standard_normal((1, conv.in_channels, *size)).astype(np.float32) * 2}
        for _ in range(4)
    ]
    int8 = write_qdq_model(
        graph,
        folder / "conv.onnx",
        calibration,
        unsigned_weights=conv.unsigned_weights,
        extra_options={
            "WeightSymmetric": not conv.unsigned_weights,
            "ActivationSymmetric": False,
            # ORT drops a ReLU/Clip into the output's range by default; keep it, to test ours.
            "QDQKeepRemovableActivations": conv.activation is not None,
        },
    )
    if conv.activation is not None:
        _fuse_activation(int8)
    return int8


def _fuse_activation(path: Path) -> None:
    """Drop the Q/DQ ORT puts between the conv and its kept activation: conv → ReLU →
    quantize, the chain a QDQ exporter that fuses activations (torch's) writes."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    pair = [n for n in nodes if n.input[0] == "conv" or n.input[0].startswith("conv_Quantize")]
    assert [n.op_type for n in pair] == ["QuantizeLinear", "DequantizeLinear"]
    for node in nodes:
        if node.op_type in ("Relu", "Clip"):
            node.input[0] = "conv"
    for node in pair:
        model.graph.node.remove(node)
    onnx.save(model, str(path))


def parameters(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def conv_input(conv: Conv, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 codes over the whole range, and the float input the model's own quantize
    maps back to exactly those codes (whole steps of its scale)."""
    x_scale, x_zp = np.float32(params["x_scale"]), int(params["x_zero_point"])
    x_q = np.random.default_rng(1).integers(0, 256, (1, conv.in_channels, conv.size, conv.size))
    return x_q, ((x_q - x_zp) * x_scale).astype(np.float32)


def output_codes(actual: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """A float output as the model's output quantization codes (ORT's rounding to even)."""
    y_scale, y_zp = np.float32(params["y_scale"]), int(params["y_zero_point"])
    return np.rint(actual / y_scale).astype(np.int64) + y_zp


def reference(conv: Conv, params: dict[str, np.ndarray], x_q: np.ndarray) -> np.ndarray:
    """The integer conv in numpy: int64 accumulation, then ORT's requantization."""
    x_scale, x_zp = np.float32(params["x_scale"]), int(params["x_zero_point"])
    w_q, w_scale = params["w_quantized"].astype(np.int64), params["w_scale"].astype(np.float32)
    y_scale, y_zp = np.float32(params["y_scale"]), int(params["y_zero_point"])
    pad = conv.kernel // 2
    data = np.pad(x_q.astype(np.int64) - x_zp, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    out = (conv.size + 2 * pad - conv.kernel) // conv.stride + 1
    per_group_in = conv.in_channels // conv.groups
    per_group_out = conv.out_channels // conv.groups
    acc = np.zeros((1, conv.out_channels, out, out), np.int64)
    for o in range(conv.out_channels):
        first = o // per_group_out * per_group_in
        for ky in range(conv.kernel):
            for kx in range(conv.kernel):
                window = data[
                    0,
                    first : first + per_group_in,
                    ky : ky + conv.stride * out : conv.stride,
                    kx : kx + conv.stride * out : conv.stride,
                ]
                acc[0, o] += np.tensordot(w_q[o, :, ky, kx], window, axes=1)
    acc += params["b_quantized"].astype(np.int64)[None, :, None, None]
    multiplier = (x_scale * w_scale) / y_scale
    scaled = acc.astype(np.float32) * multiplier[None, :, None, None]
    low, high = 0 - y_zp, 255 - y_zp
    if conv.activation is not None:
        low = max(low, 0)
    if conv.activation == "Clip":
        high = min(high, int(np.rint(np.float32(6) / y_scale)))
    return np.rint(np.clip(scaled, low, high)).astype(np.int64) + y_zp


def expected_schedule(conv: Conv, target: Any) -> str:
    """Channel-blocked on VNNI for a conv with a channel sum or a depthwise one; NCHW
    otherwise."""
    if not has_blocked_kernel(target):
        return INT8_SCHEDULE
    if conv.groups == 1:
        return INT8_VNNI_SCHEDULE
    return INT8_DEPTHWISE_SCHEDULE if conv.groups == conv.in_channels else INT8_SCHEDULE


def build_and_run(path: Path, target: Any, x: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    import tvm
    from tvm import relax

    model, _ = import_onnx(path, name="conv")
    report = ScheduleReport()
    executable, records = compile_relax(model.module, target, report=report)
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(x)).numpy(), records


@pytest.mark.parametrize("case", CASES)
def test_folded_conv_is_exact_and_within_two_steps_of_onnxruntime(
    case: str, tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    import onnxruntime as ort

    conv = CASES[case]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    x_scale, x_zp = np.float32(params["x_scale"]), int(params["x_zero_point"])
    y_scale, y_zp = np.float32(params["y_scale"]), int(params["y_zero_point"])
    rng = np.random.default_rng(1)
    x_q = rng.integers(0, 256, (1, conv.in_channels, conv.size, conv.size))
    # Exactly representable steps: the model's own quantize gives back x_q.
    x = ((x_q - x_zp) * x_scale).astype(np.float32)

    actual, records = build_and_run(path, host_target, x)

    assert [r["schedule"] for r in records] == [expected_schedule(conv, host_target)]
    assert "conv2d" in records[0]["kernel_name"] and KERNEL_NAME in records[0]["kernel_name"]
    actual_q = np.rint(actual / y_scale).astype(np.int64) + y_zp
    expected_q = reference(conv, params, x_q)
    assert np.unique(expected_q).size > 10  # the test data spans the output range
    np.testing.assert_array_equal(actual_q, expected_q)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"x": x})
    assert np.abs(actual - ort_out).max() / y_scale <= 2


def test_unsigned_weights_stay_fp32_and_say_why(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """A conv with uint8 weights is not folded: it keeps the imported fp32 path and its record
    says why; the model still runs like ORT's."""
    import onnxruntime as ort

    conv = Conv(4, 6, 3, unsigned_weights=True)
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    assert params["w_quantized"].dtype == np.uint8
    x = np.random.default_rng(2).standard_normal((1, 4, SIZE, SIZE)).astype(np.float32)

    actual, records = build_and_run(path, host_target, x)

    assert records[0]["schedule"] not in (INT8_SCHEDULE, INT8_VNNI_SCHEDULE)
    assert records[0]["int8_fallback"] == "its weight is uint8, not int8"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"x": x})
    assert np.abs(actual - ort_out).max() / np.float32(params["y_scale"]) <= 2


def test_fp32_model_is_untouched(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """No quantize in the graph: no conv is folded and no record talks about int8."""
    qdq_conv_model(Conv(4, 6, 3), tmp_path, write_qdq_model)
    model, _ = import_onnx(tmp_path / "conv.onnx", name="conv")
    report = ScheduleReport()
    _, records = compile_relax(model.module, host_target, report=report)
    assert not report.int8.folded and not report.int8.kept
    assert all("int8_fallback" not in r and "int8" not in r["schedule"] for r in records)


def test_folds_for_rpi4(tmp_path: Path, write_qdq_model: Callable[..., Path]) -> None:
    """Cross-compiles for the board (compile only): the conv is the integer kernel there too,
    NEON's blocked one (test_int8_neon.py)."""
    from edgecompile.schedules.int8 import INT8_SMULL_SCHEDULE
    from edgecompile.targets import resolve_target

    path = qdq_conv_model(CASES["3x3-stride2-relu6"], tmp_path, write_qdq_model)
    model, _ = import_onnx(path, name="conv")
    report = ScheduleReport()
    executable, records = compile_relax(
        model.module, resolve_target("rpi4").tvm_target(), report=report
    )
    assert [r["schedule"] for r in records] == [INT8_SMULL_SCHEDULE]
    assert "aarch64" in executable.mod.imports[0].inspect_source("ll")[:2000]


def test_int8_build_is_verified_in_output_steps(
    tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """`build` of a QDQ model checks it against ONNX Runtime in output quantization steps
    (ORT's integer kernels are ~1e-2 off the fp32 reference: a relative check would refuse it)."""
    from edgecompile.builder import build
    from edgecompile.targets import resolve_target

    path = qdq_conv_model(CASES["3x3-stride2-relu-removed"], tmp_path, write_qdq_model)
    result = build(str(path), "host", output_dir=tmp_path / "build")

    manifest = result.artifact.manifest
    assert manifest.verification["status"] == "passed"
    assert manifest.verification["max_output_steps"] <= 2
    assert [s["schedule"] for s in manifest.schedules] == [
        expected_schedule(CASES["3x3-stride2-relu-removed"], resolve_target("host").tvm_target())
    ]


def test_requantization_rounds_half_to_even_like_onnxruntime(
    folded_conv: Callable[..., Any],
) -> None:
    """Ties (x.5 after scaling) go to the even integer, as MLAS rounds: 0.5 → 0, 1.5 → 2, 2.5 → 2;
    random data almost never hits a tie, so it is made here with a multiplier of exactly 0.5."""
    import tvm
    from tvm import te

    from edgecompile.schedules.int8.compute import integer_conv2d

    values = np.arange(12, dtype=np.uint8).reshape(1, 1, 3, 4)
    plan = folded_conv(np.ones((1, 1, 1, 1), np.int8), multiplier=np.full(1, 0.5, np.float32))
    data = te.placeholder(values.shape, "uint8")
    weight = te.placeholder((1, 1, 1, 1), "int8")
    bias = te.placeholder((1,), "int32")
    multiplier = te.placeholder((1,), "float32")
    out = integer_conv2d(data, weight, bias, multiplier, plan)
    kernel = tvm.compile(te.create_prim_func([data, weight, bias, multiplier, out]), "llvm")
    args = [values, plan.weight, plan.bias, plan.multiplier, np.zeros(values.shape, np.uint8)]
    tensors = [tvm.runtime.tensor(a) for a in args]
    kernel(*tensors)
    np.testing.assert_array_equal(tensors[-1].numpy(), np.rint(values * 0.5).astype(np.uint8))
    assert tensors[-1].numpy().reshape(-1)[[1, 3, 5]].tolist() == [0, 2, 2]
