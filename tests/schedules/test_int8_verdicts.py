"""The int8 verdicts of the ops the integer passes handle besides convs (``int8/glue.py``,
``int8/add.py``): a max pool or a concat moved onto the integers says ``int8``, an add left in
fp32 says why, and ``build --explain`` shows them per layer from the build's records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.explain import (
    GLUE_KIND,
    INT8_HEADER,
    explain_rows,
    format_explain,
    headers_for,
)
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8.add import BROADCAST, SUM_READ_ELSEWHERE, integer_adds
from edgecompile.schedules.int8.glue import CONCAT_SCALES_DIFFER, integer_glue
from edgecompile.schedules.int8.graph import Int8Log, glue_verdict
from edgecompile.schedules.pipeline import ScheduleReport

SIZE = 8


def _fire_module(folder: Path, write_qdq_model: Callable[..., Path]) -> Path:
    """expand 1×1 and expand 3×3 of one input → Concat → MaxPool 3×3/2 → 1×1: a SqueezeNet
    fire module's tail, quantized as ``edgecompile quantize`` does (the expands get scales
    of their own, so the concat requantizes one of them)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for name, out_channels, in_channels, kernel, source in (
        ("left", 8, 8, 1, "x"),
        ("right", 8, 8, 3, "x"),
        ("head", 8, 16, 1, "pooled"),
    ):
        weight = rng.standard_normal((out_channels, in_channels, kernel, kernel)) * 0.4
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
        bias = rng.standard_normal(out_channels) * 0.2
        inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"))
        conv = helper.make_node(
            "Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_conv"], pads=[kernel // 2] * 4
        )
        nodes += [conv, helper.make_node("Relu", [f"{name}_conv"], [name])]
        if name == "right":
            nodes += [
                helper.make_node("Concat", ["left", "right"], ["joined"], axis=1),
                helper.make_node(
                    "MaxPool", ["joined"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]
                ),
            ]
    graph = helper.make_graph(
        nodes,
        "fire",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, SIZE, SIZE])],
        [helper.make_tensor_value_info("head", TensorProto.FLOAT, None)],
        inits,
    )
    rng = np.random.default_rng(1)
    calibration = [
        {"x": rng.standard_normal((1, 8, SIZE, SIZE)).astype(np.float32)} for _ in range(4)
    ]
    return write_qdq_model(graph, folder / "fire.onnx", calibration)


def test_fire_module_max_pool_and_concat_are_int8(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """The build's records: the max pool (a heavy op) ``int8`` as the folded convs are, the
    concat (none) under the conv it follows; explain shows both as int8 rows."""
    model, _ = import_onnx(_fire_module(tmp_path, write_qdq_model), name="fire")
    _, records = compile_relax(model.module, host_target, report=ScheduleReport())

    ops = [(r["op"], r.get("pool")) for r in records]
    assert ops == [("conv2d", None), ("conv2d", None), ("pool", "max"), ("conv2d", None)]
    assert all(r.get("int8") for r in records), records
    # The concat reads both expands: it follows the second (layer 1), the only glue verdict.
    glue = [(r["index"], g) for r in records for g in r.get("int8_glue", [])]
    assert [(index, g["op"], g.get("int8")) for index, g in glue] == [(1, "concat", True)]
    assert glue[0][1]["shapes"] == [[1, 8, SIZE, SIZE]] * 2

    int8_column = headers_for(records).index(INT8_HEADER)
    rows = explain_rows(records)
    pool_row = next(row for row in rows if row[2] == "max_pool")
    concat_row = next(row for row in rows if row[2] == "concat")
    assert pool_row[int8_column] == "int8"
    assert concat_row[:4] == ("1+", "-", "concat", GLUE_KIND)
    assert concat_row[int8_column] == "int8"
    lines = format_explain(records).splitlines()
    # Right below the layer it follows.
    firsts = [line.split()[:1] for line in lines]
    assert firsts.index(["1+"]) == firsts.index(["1"]) + 1
    assert lines[-1].endswith("; 4 in int8, 0 in fp32; concats/adds: 1 in int8, 0 in fp32")


def test_concat_of_other_scales_no_one_quantize_reads_stays_fp32(concat_of_two_scales: Any) -> None:
    """Two differently quantized tensors concatenated twice: the concat returned in fp32 (no
    one scale to assemble it in) says why; the one a quantize reads is int8."""
    log = Int8Log()

    integer_glue(log)(concat_of_two_scales)

    verdicts = [(v["op"], v.get("int8"), v.get("int8_fallback")) for v in log.glue.values()]
    assert verdicts == [("concat", None, CONCAT_SCALES_DIFFER), ("concat", True, None)]


def _add_module(b_shape: tuple[int, ...], sum_also_returned: bool) -> Any:
    """``quantize(dequantize(a) + dequantize(b))`` on uint8 ``a`` [1, 8, 4, 4] and ``b``."""
    from tvm import relax
    from tvm.script import relax as R

    def scalar(value: float, dtype: str) -> Any:
        return relax.const(np.array(value, dtype), dtype)

    builder = relax.BlockBuilder()
    a = relax.Var("a", R.Tensor((1, 8, 4, 4), "uint8").asobject())
    b = relax.Var("b", R.Tensor(b_shape, "uint8").asobject())
    with builder.function("main", [a, b]):
        with builder.dataflow():
            real = [
                builder.emit(relax.op.dequantize(x, scalar(scale, "float32"), scalar(3, "uint8")))
                for x, scale in ((a, 0.1), (b, 0.3))
            ]
            total = builder.emit(relax.op.add(*real))
            quantized = builder.emit_output(
                relax.op.quantize(total, scalar(0.2, "float32"), scalar(5, "uint8"))
            )
            returned = builder.emit_output(total) if sum_also_returned else None
        builder.emit_func_output(
            relax.Tuple([quantized, returned]) if returned is not None else quantized
        )
    return builder.get()


@pytest.mark.parametrize(
    ("b_shape", "sum_also_returned", "reason"),
    [
        ((1, 8, 4, 4), False, None),
        ((1, 8, 1, 1), False, BROADCAST),
        ((1, 8, 4, 4), True, SUM_READ_ELSEWHERE),
    ],
    ids=["residual", "broadcast", "sum-also-read"],
)
def test_add_verdict_says_int8_or_why_fp32(
    b_shape: tuple[int, ...], sum_also_returned: bool, reason: str | None
) -> None:
    log = Int8Log()
    integer_adds(log)(_add_module(b_shape, sum_also_returned))
    assert [(v["op"], v.get("int8"), v.get("int8_fallback")) for v in log.glue.values()] == [
        ("add", None if reason else True, reason)
    ]
    assert next(iter(log.glue.values()))["shapes"] == [[1, 8, 4, 4], list(b_shape)]


def test_explain_rows_of_concats_and_adds() -> None:
    """Each verdict a row under the layer it follows: kind ``glue``, its input shapes, no
    kernel or schedule, ``int8`` or ``fp32: <why>``; the summary counts them apart."""
    records = [
        {
            "index": 0,
            "op": "conv2d",
            "kind": "pointwise",
            "schedule": "edgecompile.int8_vnni",
            "int8": True,
            "int8_glue": [
                glue_verdict("concat", 0, [[1, 8, 4, 4], [1, 8, 4, 4]]),
                glue_verdict("add", 0, [[1, 16, 4, 4], [1, 16, 1, 1]], BROADCAST),
            ],
        },
        {"index": 1, "op": "pool", "pool": "avg", "kind": "pool", "schedule": "tvm-default"},
    ]
    lines = format_explain(records).splitlines()
    body = [line.split() for line in lines[2:-2]]
    assert [row[:6] for row in body] == [
        ["0", "-", "conv2d", "pointwise", "-", "-"],
        ["0+", "-", "concat", GLUE_KIND, "1x8x4x4", "1x8x4x4"],
        ["0+", "-", "add", GLUE_KIND, "1x16x4x4", "1x16x1x1"],
        ["1", "-", "avg_pool", "pool", "-", "-"],
    ]
    assert body[1][-1] == "int8"
    assert lines[4].endswith(f"fp32: {BROADCAST}")
    assert lines[-1].endswith("; 1 in int8, 1 in fp32; concats/adds: 1 in int8, 1 in fp32")
