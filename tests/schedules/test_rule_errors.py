"""A schedule rule of ours that raises (a bug, not "not mine" or "mine but it failed") costs only
the kernels it raised on: they go to TVM's default lowering, every other kernel keeps its
schedule, and the rule, the kernel and the exception are recorded (``report.rule_errors``, the
layer's ``fallback``, the manifest, ``build --explain``, one warning line). In strict mode
(``EDGECOMPILE_STRICT_RULES=1``, which the test suite sets) the exception is raised instead.

The model is a four-layer ONNX graph (stem conv, depthwise, pointwise, max pool: one rule each,
and an unpack glue kernel before the global pool), so every build here takes a few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.schedules import compile_relax
from edgecompile.schedules.pipeline import (
    PIPELINE_FAILED,
    RULE_ERROR,
    STRICT_RULES_ENV,
    TVM_DEFAULT,
    RuleCrashed,
    ScheduleReport,
)
from edgecompile.schedules.rules import PointwiseNCHWc, UnpackNCHWc

INJECTED = "injected: list index out of range"
POINTWISE_LAYER = 2


def write_four_layer_onnx(path: Path) -> Path:
    """conv 3→16 3×3 → ReLU → depthwise 3×3 → ReLU → pointwise 16→32 → ReLU → max pool 2×2 →
    global average pool, on a 16×16 image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...]) -> Any:
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype("float32"), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("MaxPool", ["r3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "four_layers",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 32, 1, 1])],
        initializer=[
            weight("w1", (16, 3, 3, 3)),
            weight("w2", (16, 1, 3, 3)),
            weight("w3", (32, 16, 1, 1)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_four_layer_onnx(tmp_path_factory.mktemp("onnx") / "four_layers.onnx")


@pytest.fixture(scope="module")
def four_layer_module(four_layers: Path) -> Any:
    from edgecompile.importer import import_onnx

    return import_onnx(four_layers, name="four_layers")[0].module


def break_rule(monkeypatch: pytest.MonkeyPatch, rule: type) -> None:
    """``rule`` raises IndexError on every kernel it would have scheduled (as the unpack rule
    once did on ShuffleNet v1's concat), and declines the rest as before."""
    original = rule.try_schedule

    def broken(self: Any, func: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled = original(self, func, target, *args, **kwargs)
        if scheduled is not None:
            raise IndexError(INJECTED)
        return scheduled

    monkeypatch.setattr(rule, "try_schedule", broken)


def test_a_raising_rule_costs_only_its_own_kernels(
    four_layer_module: Any, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STRICT_RULES_ENV, raising=False)
    break_rule(monkeypatch, PointwiseNCHWc)
    report = ScheduleReport()
    _, records = compile_relax(four_layer_module, host_target, report=report)

    pointwise = records[POINTWISE_LAYER]
    assert pointwise["kind"] == "pointwise"
    assert pointwise["schedule"] == TVM_DEFAULT
    expected = f"{RULE_ERROR} in {PointwiseNCHWc.schedule_name}: IndexError: {INJECTED}"
    assert pointwise["fallback"] == expected
    # The stem conv, the depthwise conv and the pool keep our schedules: no whole-model fallback.
    others = [r for r in records if r["index"] != POINTWISE_LAYER]
    assert [r["schedule"] for r in others] == [
        "edgecompile.conv_nchwc",
        "edgecompile.depthwise_nchwc",
        "edgecompile.pool_nchwc",
    ]
    assert not any(PIPELINE_FAILED in str(r.get("fallback", "")) for r in records)
    (error,) = report.rule_errors
    assert (error.kernel, error.rule, error.layer) == (
        pointwise["kernel_name"],
        PointwiseNCHWc.schedule_name,
        POINTWISE_LAYER,
    )
    assert error.error == f"IndexError: {INJECTED}"


def test_strict_mode_raises_the_rules_exception(
    four_layer_module: Any, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_RULES_ENV, "1")
    break_rule(monkeypatch, PointwiseNCHWc)
    with pytest.raises(RuleCrashed) as raised:
        compile_relax(four_layer_module, host_target)
    assert isinstance(raised.value.__cause__, IndexError)  # the rule's own traceback
    assert PointwiseNCHWc.schedule_name in str(raised.value)
    assert raised.value.error.layer == POINTWISE_LAYER


def test_the_build_warns_once_and_explain_lists_each_kernel(
    four_layers: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgecompile.artifact import load_artifact
    from edgecompile.cli import main
    from edgecompile.schedules.coverage import build_fallback

    monkeypatch.delenv(STRICT_RULES_ENV, raising=False)
    break_rule(monkeypatch, PointwiseNCHWc)
    break_rule(monkeypatch, UnpackNCHWc)  # a glue kernel: no layer, no row of its own
    main(["build", str(four_layers), "--target", "host", "-o", str(tmp_path), "--explain"])
    captured = capsys.readouterr()

    # The model still builds, right (checked against ONNX Runtime), with one warning line.
    assert "verified against ONNX Runtime" in captured.out
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("warning: a schedule rule raised on 2 kernels")
    assert "--explain" in warning
    assert "(layer 2): edgecompile.pointwise_nchwc raised IndexError" in captured.out
    assert f"unpack_nchwc: {UnpackNCHWc.schedule_name} raised IndexError" in captured.out

    manifest = load_artifact(tmp_path / "four_layers-host").manifest
    assert [error["rule"] for error in manifest.extra["rule_errors"]] == [
        PointwiseNCHWc.schedule_name,
        UnpackNCHWc.schedule_name,
    ]
    fallback = build_fallback(manifest.schedules, manifest.extra)
    assert fallback is not None and fallback.startswith("2 kernels fell back")
