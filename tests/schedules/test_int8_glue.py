"""The glue between integer kernels runs on the quantized integers (``int8/glue.py``): a
SqueezeNet fire module's concat and max pool, a ShuffleNet v2 unit's split, concat and channel
shuffle. Which ops move to the integers and which stay fp32, and the integers are the fp32
glue's bit for bit (and ORT's within the build's steps)."""

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
from edgecompile.schedules.compute import POOL
from edgecompile.schedules.int8 import output_steps
from edgecompile.schedules.int8.schedule import has_blocked_kernel
from edgecompile.schedules.pipeline import ScheduleReport

SIZE = 12


def _conv(rng: Any, name: str, out_channels: int, in_channels: int, kernel: int) -> list[Any]:
    weight = rng.standard_normal((out_channels, in_channels, kernel, kernel)) * 0.4
    bias = rng.standard_normal(out_channels) * 0.2
    return [
        numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
    ]


def _conv_node(name: str, source: str, kernel: int, relu: bool = True) -> list[Any]:
    out = f"{name}_conv" if relu else name
    node = helper.make_node(
        "Conv", [source, f"{name}_w", f"{name}_b"], [out], pads=[kernel // 2] * 4
    )
    return [node, helper.make_node("Relu", [out], [name])] if relu else [node]


def fire_module(folder: Path, write_qdq_model: Callable[..., Path]) -> Path:
    """squeeze 1×1 → (expand 1×1, expand 3×3) → Concat → MaxPool 3×3/2 (ceil mode) → 1×1,
    SqueezeNet's fire module and the pool after it, quantized as ``edgecompile quantize``
    does: the two expands get their own scales, the concat one of them."""
    rng = np.random.default_rng(0)
    inits = [
        *_conv(rng, "squeeze", 8, 16, 1),
        *_conv(rng, "left", 16, 8, 1),
        *_conv(rng, "right", 16, 8, 3),
        *_conv(rng, "head", 16, 32, 1),
    ]
    nodes = [
        *_conv_node("squeeze", "x", 1),
        *_conv_node("left", "squeeze", 1),
        *_conv_node("right", "squeeze", 3),
        helper.make_node("Concat", ["left", "right"], ["joined"], axis=1),
        helper.make_node(
            "MaxPool", ["joined"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
        ),
        *_conv_node("head", "pooled", 1, relu=False),
    ]
    return _quantized(folder, write_qdq_model, nodes, inits, 16, "head")


def shuffle_unit(folder: Path, write_qdq_model: Callable[..., Path]) -> Path:
    """A 1×1 conv, then ShuffleNet v2's stride-1 unit as torch exports it: Slice in halves,
    one half through 1×1 → 3×3 depthwise → 1×1, Concat with the other, the channel shuffle as
    Reshape → Transpose → Reshape, then a 1×1 conv reading the shuffled tensor."""
    rng = np.random.default_rng(0)
    half = 8
    inits = [
        *_conv(rng, "stem", 2 * half, 2 * half, 1),
        *_conv(rng, "reduce", half, half, 1),
        numpy_helper.from_array(
            (rng.standard_normal((half, 1, 3, 3)) * 0.4).astype(np.float32), "depthwise_w"
        ),
        numpy_helper.from_array(
            (rng.standard_normal(half) * 0.2).astype(np.float32), "depthwise_b"
        ),
        *_conv(rng, "expand", half, half, 1),
        *_conv(rng, "head", 16, 2 * half, 1),
        *(
            numpy_helper.from_array(np.array(values, np.int64), name)
            for name, values in {
                "axes": [1],
                "zero": [0],
                "half": [half],
                "end": [2 * half],
                "split_shape": [1, 2, half, SIZE, SIZE],
                "joined_shape": [1, 2 * half, SIZE, SIZE],
            }.items()
        ),
    ]
    nodes = [
        *_conv_node("stem", "x", 1),
        helper.make_node("Slice", ["stem", "zero", "half", "axes"], ["kept"]),
        helper.make_node("Slice", ["stem", "half", "end", "axes"], ["branch"]),
        *_conv_node("reduce", "branch", 1),
        helper.make_node(
            "Conv",
            ["reduce", "depthwise_w", "depthwise_b"],
            ["depthwise"],
            group=half,
            pads=[1] * 4,
        ),
        *_conv_node("expand", "depthwise", 1),
        helper.make_node("Concat", ["kept", "expand"], ["joined"], axis=1),
        helper.make_node("Reshape", ["joined", "split_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "joined_shape"], ["shuffled"]),
        *_conv_node("head", "shuffled", 1, relu=False),
    ]
    return _quantized(folder, write_qdq_model, nodes, inits, 16, "head")


def _quantized(
    folder: Path,
    write_qdq_model: Callable[..., Path],
    nodes: list[Any],
    inits: list[Any],
    channels: int,
    output: str,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "glue",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, SIZE, SIZE])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        inits,
    )
    rng = np.random.default_rng(1)
    calibration = [
        {"x": rng.standard_normal((1, channels, SIZE, SIZE)).astype(np.float32) * 2}
        for _ in range(4)
    ]
    return write_qdq_model(graph, folder / "glue.onnx", calibration)


def _input(path: Path) -> np.ndarray:
    """An input the model's own quantize maps to random uint8 exactly."""
    params = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    scale = next(v for k, v in params.items() if k.startswith("x_scale"))
    zero_point = next(v for k, v in params.items() if k.startswith("x_zero_point"))
    x_q = np.random.default_rng(2).integers(0, 256, (1, 16, SIZE, SIZE))
    return ((x_q - int(zero_point)) * np.float32(scale)).astype(np.float32)


def _run(
    path: Path, target: Any, x: np.ndarray
) -> tuple[np.ndarray, ScheduleReport, list[dict[str, Any]]]:
    import tvm
    from tvm import relax

    model, _ = import_onnx(path, name="glue")
    report = ScheduleReport()
    executable, records = compile_relax(model.module, target, report=report)
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(x)).numpy(), report, records


def _glue_ops(path: Path) -> dict[str, set[str]]:
    """Op name → the dtypes it runs on, after the glue pass (dead code removed)."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of, dtype_of, is_const, op_name
    from edgecompile.schedules.int8.glue import integer_glue

    model, _ = import_onnx(path, name="glue")
    module = relax.transform.DeadCodeElimination()(integer_glue()(model.module))
    values = bindings_of(module["main"])
    found: dict[str, set[str]] = {}
    for value in values.values():
        if not isinstance(value, relax.Call) or op_name(value) not in _MOVES:
            continue
        source = values.get(value.args[0])
        if isinstance(source, relax.Call) and is_const(source.args[0]):
            continue  # a conv's bias, reshaped to broadcast: a constant, not glue
        found.setdefault(op_name(value), set()).add(dtype_of(value))
    return found


_MOVES = {
    "relax.concat",
    "relax.nn.max_pool2d",
    "relax.reshape",
    "relax.permute_dims",
    "relax.strided_slice",
}


@pytest.mark.parametrize("model", [fire_module, shuffle_unit])
def test_glue_runs_on_the_integers(
    model: Callable[..., Path], tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """Every concat, max pool, slice, reshape and transpose of the QDQ graph runs on uint8
    (the concat of two differently quantized expands too: one is requantized first)."""
    path = model(tmp_path, write_qdq_model)

    ops = _glue_ops(path)

    expected = (
        {"relax.concat", "relax.nn.max_pool2d"}
        if model is fire_module
        else _MOVES - {"relax.nn.max_pool2d"}
    )
    assert set(ops) == expected
    assert all(dtypes == {"uint8"} for dtypes in ops.values()), ops


@pytest.mark.parametrize("model", [fire_module, shuffle_unit])
def test_integer_glue_equals_the_fp32_glue(
    model: Callable[..., Path],
    tmp_path: Path,
    host_target: Any,
    write_qdq_model: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same integers as with the glue in fp32 between dequantize/quantize (the pass
    switched off), bit for bit, and within the build's 2 steps of ONNX Runtime. On a VNNI
    host the fire module runs blocked from the squeeze to the pool, which the pool rule
    schedules; ShuffleNet's slices and shuffle are NCHW."""
    import onnxruntime as ort

    from edgecompile.schedules import pipeline

    path = model(tmp_path, write_qdq_model)
    x = _input(path)

    actual, report, records = _run(path, host_target, x)
    monkeypatch.setattr(pipeline, "integer_glue", lambda: _identity_pass())
    expected, _, _ = _run(path, host_target, x)

    if has_blocked_kernel(host_target) and model is fire_module:
        assert report.int8.blocked_outputs == {0, 1, 2}  # squeeze, both expands
        pool = next(r for r in records if r["op"] == "pool")
        assert pool["schedule"] == POOL
    elif has_blocked_kernel(host_target):
        assert report.int8.blocked_outputs == {1, 2}  # the branch's 1×1 → depthwise

    assert np.unique(expected).size > 10  # the data spans the output range
    np.testing.assert_array_equal(actual, expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    (step,) = output_steps(import_onnx(path, name="glue")[0].module)
    assert np.abs(actual - theirs).max() <= 2 * step


def _identity_pass() -> Any:
    import tvm

    return tvm.transform.module_pass(lambda module, _context: module, opt_level=0, name="Off")


def test_concat_without_one_quantization_stays_fp32(concat_of_two_scales: Any) -> None:
    """Two differently quantized tensors concatenated twice: the concat the model returns in
    fp32 (no quantize reads it, so there is no one scale to assemble it in) stays fp32; the
    one read by a quantize runs on the integers, the input of the other scale requantized."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of, dtype_of, op_name
    from edgecompile.schedules.int8.glue import integer_glue

    module = relax.transform.DeadCodeElimination()(integer_glue()(concat_of_two_scales))

    values = bindings_of(module["main"]).values()
    concats = [v for v in values if isinstance(v, relax.Call) and op_name(v) == "relax.concat"]
    assert sorted(dtype_of(c) for c in concats) == ["float32", "uint8"]
    quantizes = [v for v in values if isinstance(v, relax.Call) and op_name(v) == "relax.quantize"]
    assert len(quantizes) == 1  # a's requantization to 0.2; b's is kept as it is


def test_requantization_for_the_concat_runs_in_the_conv(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """The expand whose output the concat requantizes, and the last conv whose output is
    dequantized for the model's output: FuseOps puts that dequantize (→ quantize) in the
    conv's kernel, and the VNNI rule inlines it into the requantization (no second pass over
    the output in float32)."""
    from tvm import tirx

    from edgecompile.schedules.analysis import sblocks
    from edgecompile.schedules.int8 import Int8ConvBlocked
    from edgecompile.schedules.pipeline import fused_module

    if not has_blocked_kernel(host_target):
        pytest.skip("this host has no VNNI")
    path = fire_module(tmp_path, write_qdq_model)
    fused, _ = fused_module(import_onnx(path, name="glue")[0].module, host_target)
    with_epilogue = {
        gvar.name_hint: func
        for gvar, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc)
        and "int8_conv2d" in gvar.name_hint
        and "quantize" in gvar.name_hint.split("int8_conv2d")[1]
    }
    # The expand requantized for the concat, and the last conv dequantized for the output.
    assert sorted("_quantize" in name for name in with_epilogue) == [False, True]

    for func in with_epilogue.values():
        before = {block.name_hint for block in sblocks(func.body)}
        scheduled = Int8ConvBlocked().try_schedule(func, host_target)

        after = {block.name_hint for block in sblocks(scheduled.mod["main"].body)}
        assert "int8_requantize" in after
        epilogue = {name for name in before if "quantize" in name and not name.startswith("int8")}
        assert epilogue and not epilogue & after, (before, after)
