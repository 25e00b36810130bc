"""The classifier of a QDQ model (ONNX Gemm, transB: ``matmul(x, permute_dims(w))`` once
imported) folded into the integer kernel as a 1×1 conv: exact against a numpy integer
reference, within 2 output steps of ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .test_int8_kernels import build_and_run, parameters

FEATURES, CLASSES = 37, 21  # neither a whole number of blocks


def qdq_classifier(folder: Path, write_qdq_model: Callable[..., Path]) -> Path:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((CLASSES, FEATURES)) * 0.3).astype(np.float32)
    bias = (rng.standard_normal(CLASSES) * 0.2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    calibration = [{"x": rng.standard_normal((1, FEATURES)).astype(np.float32)} for _ in range(4)]
    return write_qdq_model(
        graph,
        folder / "classifier.onnx",
        calibration,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def test_classifier_folds_and_is_exact(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    import onnxruntime as ort

    path = qdq_classifier(tmp_path, write_qdq_model)
    params = parameters(path)
    x_scale, x_zp = np.float32(params["x_scale"]), int(params["x_zero_point"])
    y_scale, y_zp = np.float32(params["y_scale"]), int(params["y_zero_point"])
    x_q = np.random.default_rng(1).integers(0, 256, (1, FEATURES))
    x = ((x_q - x_zp) * x_scale).astype(np.float32)

    actual, records = build_and_run(path, host_target, x)

    assert records[0]["op"] == "matmul" and records[0].get("int8") is True
    assert "int8_fallback" not in records[0]
    w_q, w_scale = params["w_quantized"].astype(np.int64), params["w_scale"].astype(np.float32)
    acc = (x_q - x_zp) @ w_q.T + params["b_quantized"].astype(np.int64)
    scaled = acc.astype(np.float32) * ((x_scale * w_scale) / y_scale)
    expected_q = np.rint(np.clip(scaled, -y_zp, 255 - y_zp)).astype(np.int64) + y_zp
    actual_q = np.rint(actual / y_scale).astype(np.int64) + y_zp
    assert actual.shape == (1, CLASSES)
    np.testing.assert_array_equal(actual_q, expected_q)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"x": x})
    assert np.abs(actual - ort_out).max() / y_scale <= 2
