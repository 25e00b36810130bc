"""A build fails its tests when an op one of our rules should have scheduled went to TVM's default
lowering (:mod:`edgecompile.schedules.coverage`): zoo models for the host, the reasons the layout
pass records for the fallbacks the design accepts, and proof that a broken rule or layout
decision turns the check red."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.importer import import_onnx
from edgecompile.schedules import (
    DEPTHWISE,
    POINTWISE,
    POOL,
    TVM_DEFAULT,
    assert_no_missed_schedules,
    compile_relax,
    cpu_info,
    missed_schedules,
    optimize,
    rules,
)
from edgecompile.schedules.coverage import Fallback, fallbacks
from edgecompile.schedules.pipeline import schedule_records
from edgecompile.schedules.plan import PIXELS_OUTPUT

#: One model per schedule mix: inverted residuals (pointwise, depthwise, dense stem, matmul),
#: shuffled grouped convs with pools and concats, fire modules (dense 3×3, max pools).
REPRESENTATIVE_MODELS = ["mobilenet_v2", "shufflenet_v1", "squeezenet1_1"]


def record(index: int, kind: str, schedule: str = TVM_DEFAULT, **extra: Any) -> dict[str, Any]:
    op = "pool" if kind.endswith("_pool") else "matmul" if kind == "matmul" else "conv2d"
    entry: dict[str, Any] = {"index": index, "op": op, "kind": "pool" if op == "pool" else kind}
    if op == "pool":
        entry["pool"] = kind.removesuffix("_pool")
    return {**entry, "schedule": schedule, **extra}


# -- the check on manifest records --------------------------------------------------------------


def test_a_claimed_op_on_tvm_default_is_missed() -> None:
    records = [
        record(0, "conv", "edgecompile.conv_nchwc"),
        record(1, "pointwise"),
        record(2, "depthwise", fallback="ScheduleError: the loop cannot be vectorized"),
        record(3, "matmul", fallback="edgecompile pipeline failed: boom"),
        record(
            4, "max_pool", fallback="its input is in NCHW: relax.image.resize2d has no blocked form"
        ),
    ]
    assert missed_schedules(records) == [
        Fallback(1, "pointwise", "no reason recorded"),
        Fallback(2, "depthwise", "ScheduleError: the loop cannot be vectorized"),
        Fallback(3, "matmul", "edgecompile pipeline failed: boom"),
        Fallback(4, "max_pool", "its input is in NCHW: relax.image.resize2d has no blocked form"),
    ]
    with pytest.raises(AssertionError, match=r"4 op\(s\) in net went to TVM's default") as error:
        assert_no_missed_schedules(records, "net")
    assert "op #2 (depthwise): ScheduleError" in str(error.value)


def test_fallbacks_by_design_and_known_gaps_pass() -> None:
    pixels = "a grouped conv vectorized over pixels writes NCHW"
    records = [
        record(0, "grouped", "edgecompile.grouped_pixels"),
        record(1, "avg_pool", fallback="its input is in NCHW: the model's input"),
        record(2, "avg_pool", fallback=f"its input is in NCHW: {pixels}"),
        record(
            3,
            "conv2d_transpose",
            fallback="transposed conv with groups or dilation: no blocked form yet",
        ),
        record(
            4,
            "max_pool",
            fallback="its input is in NCHW: "
            "transposed conv with groups or dilation: no blocked form yet",
        ),
        record(
            5, "avg_pool", fallback="average pool in ceil mode: TVM's pool, on the blocked layout"
        ),
        record(6, "adaptive_avg_pool"),  # no rule of ours claims it
        record(8, "user_schedule_only", "user:mine"),
        record(9, "pointwise", "metaschedule from edgecompile.pointwise_nchwc"),
    ]
    assert missed_schedules(records) == []
    assert_no_missed_schedules(records)
    # The known gap is still a fallback: visible, only not a failure.
    assert [f.index for f in fallbacks(records)] == [1, 2, 3, 4, 5]


# -- the reasons the layout pass records ------------------------------------------------------


def save_graph(
    path: Path, nodes: list[Any], weights: dict[str, np.ndarray], shape: list[int]
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(path))
    return path


def records_of(path: Path, target: Any) -> list[dict[str, Any]]:
    module = import_onnx(path, name="net")[0].module
    _, report = optimize(module, target)
    return schedule_records(module, report)


def test_pool_on_the_image_is_left_to_tvm_by_design(tmp_path: Path, host_target: Any) -> None:
    from onnx import helper

    weights = {"w": np.ones((16, 3, 1, 1), "float32")}
    nodes = [
        helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w"], ["output"]),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, weights, [1, 3, 17, 17])
    records = records_of(path, host_target)
    assert [(r["schedule"], r.get("fallback")) for r in records] == [
        (TVM_DEFAULT, "its input is in NCHW: the model's input"),
        (POINTWISE, None),
    ]
    assert missed_schedules(records) == []


def test_pool_after_prelu_is_scheduled(tmp_path: Path, host_target: Any) -> None:
    """PReLU is blocked (ESPNet v2): the pool after one reads NCHW[x]c and is ours."""
    from onnx import helper

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((16, 16, 1, 1)).astype("float32"),
        "slope": rng.standard_normal((16, 1, 1)).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"]),
        helper.make_node("PRelu", ["c", "slope"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["output"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, weights, [1, 16, 8, 8])
    records = records_of(path, host_target)
    assert [r["schedule"] for r in records] == [POINTWISE, POOL]
    assert fallbacks(records) == []


def test_pool_behind_a_pixels_grouped_conv_is_a_known_gap(tmp_path: Path, host_target: Any) -> None:
    """The grouped conv runs in NCHW over pixels (2 output channels per group in 16 lanes), so
    the pool reads NCHW; it says why, tracing back through the ReLU between them."""
    from onnx import helper

    if cpu_info(host_target).lanes < 8:
        pytest.skip("narrow vectors fit 2-channel groups")
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((8, 8, 3, 3)).astype("float32")}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["output"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, weights, [1, 32, 8, 8])
    records = records_of(path, host_target)
    assert [r["schedule"] for r in records] == ["edgecompile.grouped_pixels", TVM_DEFAULT]
    assert records[1]["fallback"] == "its input is in NCHW: " + PIXELS_OUTPUT
    assert missed_schedules(records) == []


# -- the check has teeth ------------------------------------------------------------------------


def depthwise_network(tmp_path: Path) -> Any:
    from onnx import helper

    rng = np.random.default_rng(2)
    weights = {
        "pw": rng.standard_normal((32, 16, 1, 1)).astype("float32"),
        "dw": rng.standard_normal((32, 1, 3, 3)).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "pw"], ["c"]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("Conv", ["a", "dw"], ["d"], group=32, pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["d"], ["output"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, weights, [1, 16, 8, 8])
    return import_onnx(path, name="net")[0].module


def test_a_failing_rule_is_caught(
    tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = depthwise_network(tmp_path)
    _, records = compile_relax(module, host_target)
    assert [r["schedule"] for r in records] == [POINTWISE, DEPTHWISE, POOL]
    assert_no_missed_schedules(records)

    def broken(self: Any, sch: Any, block: Any, cpu: Any) -> None:
        raise RuntimeError("the depthwise rule is broken")

    monkeypatch.setattr(rules.DepthwiseNCHWc, "schedule", broken)
    _, records = compile_relax(module, host_target)
    with pytest.raises(AssertionError, match="op #1 \\(depthwise\\): RuntimeError: the depthwise"):
        assert_no_missed_schedules(records)


def test_a_layout_pass_that_stops_blocking_is_caught(
    tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pointwise conv the layout pass no longer claims goes to TVM's default: missed (the
    depthwise conv behind it packs its input and stays ours)."""
    from edgecompile.schedules import layout

    module = depthwise_network(tmp_path)
    classify = layout.classify_conv

    def no_pointwise(call: Any) -> tuple[str | None, str]:
        schedule, reason = classify(call)
        return (None, "pointwise is switched off") if schedule == POINTWISE else (schedule, reason)

    monkeypatch.setattr(layout, "classify_conv", no_pointwise)
    _, records = compile_relax(module, host_target)
    assert [m.index for m in missed_schedules(records)] == [0]
    assert missed_schedules(records)[0].reason == "pointwise is switched off"


# -- zoo models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPRESENTATIVE_MODELS)
def test_zoo_model_has_no_missed_schedules(name: str, build_once: Callable[..., Any]) -> None:
    manifest = build_once(name, "host").artifact.manifest
    assert manifest.schedules, "the premise: the manifest lists the heavy ops"
    assert_no_missed_schedules(manifest.schedules, f"{name} for host")
