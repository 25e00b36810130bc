"""Fixtures of the schedule tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def host_target() -> Any:
    """This machine's TVM target (the ``host`` preset)."""
    from edgecompile.targets import resolve_target

    return resolve_target("host").tvm_target()


@pytest.fixture(scope="session")
def write_qdq_model() -> Callable[..., Path]:
    """``write(graph, fp32_path, calibration, unsigned_weights=False, extra_options=None)``:
    the fp32 ONNX model of ``graph`` saved at ``fp32_path`` and quantized beside it
    (``<name>.int8.onnx``, its path returned) as ``edgecompile quantize`` does: ONNX Runtime's
    QDQ, per-channel int8 weights (uint8 with ``unsigned_weights``, which our kernels do not
    fold), uint8 activations, min/max calibration on the ``calibration`` batches (used up)."""
    from onnx import helper, save
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    def write(
        graph: Any,
        fp32: Path,
        calibration: list[dict[str, np.ndarray]],
        unsigned_weights: bool = False,
        extra_options: dict[str, Any] | None = None,
    ) -> Path:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        int8 = fp32.with_suffix(".int8.onnx")
        save(model, str(fp32))

        class Reader(CalibrationDataReader):
            def get_next(self) -> dict[str, np.ndarray] | None:
                return calibration.pop() if calibration else None

        quantize_static(
            str(fp32),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra_options,
        )
        return int8

    return write


@pytest.fixture(scope="session")
def folded_conv() -> Callable[..., Any]:
    """``plan(weight, **fields)``: the folding pass's ``QuantizedConv`` of an int8 ``weight``
    with the plainest other fields (stride 1, no padding, one group, zero bias and zero
    points, multiplier 1, the whole uint8 range), ``fields`` replacing any of them."""
    from edgecompile.schedules.int8.graph import QuantizedConv

    def plan(weight: np.ndarray, **fields: Any) -> QuantizedConv:
        out_channels = weight.shape[0]
        plainest = {
            "data": None,
            "data_zero_point": 0,
            "weight": weight,
            "bias": np.zeros(out_channels, np.int32),
            "multiplier": np.ones(out_channels, np.float32),
            "out_zero_point": 0,
            "out_dtype": "uint8",
            "low": 0,
            "high": 255,
            "strides": (1, 1),
            "padding": (0, 0, 0, 0),
            "dilation": (1, 1),
            "groups": 1,
            "op_index": 0,
        }
        return QuantizedConv(**{**plainest, **fields})

    return plan


@pytest.fixture
def concat_of_two_scales() -> Any:
    """A Relax module concatenating two uint8 tensors dequantized with scales 0.1 and 0.2
    twice: once returned in fp32 (no quantize reads it), once quantized at 0.2."""
    from tvm import relax
    from tvm.script import relax as R

    def scalar(value: float, dtype: str) -> Any:
        return relax.const(np.array(value, dtype), dtype)

    builder = relax.BlockBuilder()
    inputs = [relax.Var(name, R.Tensor((1, 16, 4, 4), "uint8").asobject()) for name in "ab"]
    with builder.function("main", inputs):
        with builder.dataflow():
            real = [
                builder.emit(relax.op.dequantize(x, scalar(scale, "float32"), scalar(0, "uint8")))
                for x, scale in zip(inputs, (0.1, 0.2), strict=True)
            ]
            returned = builder.emit_output(relax.op.concat(real, axis=1))
            joined = builder.emit(relax.op.concat(real, axis=1))
            quantized = builder.emit_output(
                relax.op.quantize(
                    joined, scalar(0.2, "float32"), scalar(0, "uint8"), out_dtype="uint8"
                )
            )
        builder.emit_func_output(relax.Tuple([returned, quantized]))
    return builder.get()
