"""``edgecompile.build`` with the schedules: a zoo model still verifies against ONNX Runtime, and
the manifest names the schedule of every heavy op; ``custom_schedules=False`` turns them off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgecompile
from edgecompile.schedules import DENSE, DEPTHWISE, MATMUL, POINTWISE, TVM_DEFAULT


def test_mobilenet_v2_verifies_with_schedules(build_once: Callable[..., Any]) -> None:
    result = build_once("mobilenet_v2", "host")
    manifest = result.artifact.manifest
    assert manifest.verification["status"] == "passed"
    assert result.max_relative_error <= 1e-4
    by_kind: dict[str, set[str]] = {}
    for record in manifest.schedules:
        by_kind.setdefault(record["kind"], set()).add(record["schedule"])
        assert "fallback" not in record
    assert by_kind["pointwise"] == {POINTWISE}
    assert by_kind["depthwise"] == {DEPTHWISE}
    assert by_kind["conv"] == {DENSE}  # the 3×3 stem
    assert by_kind["matmul"] == {MATMUL}


def test_custom_schedules_off(tmp_path: Path) -> None:
    """A pointwise conv + ReLU network: scheduled by default, TVM's default when turned off."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((24, 16, 1, 1)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 10, 10])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "pointwise.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    for enabled, expected in ((True, POINTWISE), (False, TVM_DEFAULT)):
        result = edgecompile.build(
            str(path), "host", output_dir=tmp_path / str(enabled), custom_schedules=enabled
        )
        assert result.artifact.manifest.verification["status"] == "passed"
        assert [r["schedule"] for r in result.artifact.manifest.schedules] == [expected]


def test_shufflenet_v2_stays_blocked_through_the_channel_split(
    build_once: Callable[..., Any], tmp_path: Path
) -> None:
    """ShuffleNet v2 end to end: verified against ONNX Runtime, every conv scheduled, and no
    layout move or slice/transpose kernel anywhere but at the network's edges: each channel
    split reads lanes of the blocked tensor, each shuffle is folded into the channel order."""
    from tvm import relax

    from edgecompile.export import export_onnx, load_torch_model
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import GROUPED, POOL, optimize
    from edgecompile.targets import resolve_target

    result = build_once("shufflenet_v2", "host")
    manifest = result.artifact.manifest
    assert manifest.verification["status"] == "passed"
    assert all(record["schedule"] != TVM_DEFAULT for record in manifest.schedules)
    assert {r["schedule"] for r in manifest.schedules} <= {
        POINTWISE,
        DEPTHWISE,
        DENSE,
        GROUPED,
        MATMUL,
        POOL,
    }

    onnx_model = export_onnx(load_torch_model("shufflenet_v2"), tmp_path / "v2.onnx", verify=False)
    module, _ = optimize(
        import_onnx(onnx_model.path, name="v2")[0].module, resolve_target("host").tvm_target()
    )
    calls: list[str] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name_hint"):
            calls.append(expr.op.name_hint)

    relax.analysis.post_order_visit(module["main"], visit)
    moves = [call for call in calls if "pack_nchwc" in call]
    # The stem reads the image in NCHW; the only unpack is the pooled 1×1 features, fused with
    # the flatten before the classifier.
    assert moves == ["fused_unpack_nchwc_reshape"], moves
    glue = ("strided_slice", "transpose", "reshape", "layout_transform")
    assert [call for call in calls if any(word in call for word in glue)] == moves, calls
