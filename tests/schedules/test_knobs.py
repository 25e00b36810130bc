"""The pointwise rule as a design space (edgecompile.schedules.knobs): the untuned schedule has
no sampling instruction, the space's default point is the same code, and sampled points replay
and compute the same conv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.schedule import Trace

from edgecompile._tune_workers import build_kernel
from edgecompile.importer import import_onnx
from edgecompile.records import LOOP_ORDER_KNOB, knob_values
from edgecompile.schedules import compute, rules
from edgecompile.schedules.knobs import FIXED, UNROLL_KNOB, UNROLL_STEPS, Knobs
from edgecompile.schedules.pipeline import fused_module
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5
CHANNELS = (20, 40)  # in and out: not a multiple of the lanes
HEIGHT = 3
SAMPLED_POINTS = 4
TUNE_TRIALS = 4


def pointwise_onnx(directory: Path, width: int) -> Path:
    """1×1 conv with bias + ReLU on a ``HEIGHT × width`` image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    cin, cout = CHANNELS
    weight = rng.standard_normal((cout, cin, 1, 1)).astype("float32") / 4
    bias = rng.standard_normal(cout).astype("float32")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"]),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, HEIGHT, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, cout, HEIGHT, width])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    path = directory / f"pointwise{width}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def row_tile_onnx(directory: Path, width: int) -> Path:
    """Depthwise 3×3 + ReLU, then a 3×3 max pool (both padded), on a ``HEIGHT × width`` image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = CHANNELS[0]
    weight = np.random.default_rng(width).standard_normal((channels, 1, 3, 3)).astype("float32")
    same, shape = [1, 1, 1, 1], [1, channels, HEIGHT, width]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], group=channels, pads=same),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["output"], kernel_shape=[3, 3], pads=same),
        ],
        "row_tiles",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    path = directory / f"row_tiles{width}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _kernel(model: Path, target: Any, schedule: str) -> tirx.PrimFunc:
    """The fused, unscheduled PrimFunc holding the block our compute tagged ``schedule``."""
    fused, _ = fused_module(import_onnx(model)[0].module, target)
    (func,) = [
        func
        for _, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc)
        and rules.find_block(s_tir.Schedule(func), schedule) is not None
    ]
    return func.with_attr("global_symbol", "main")


def pointwise_kernel(directory: Path, width: int, target: Any) -> tirx.PrimFunc:
    return _kernel(pointwise_onnx(directory, width), target, compute.POINTWISE)


def sampling(trace: Any) -> list[str]:
    return [inst.kind.name for inst in trace.insts if inst.kind.name.startswith("Sample")]


def assembly(mod: Any, target: Any) -> str:
    return build_kernel(mod, target).inspect_source("asm")


@pytest.mark.parametrize(("preset", "width"), [("x86-64-v2", 28), ("host", 13)])
def test_untuned_is_the_design_spaces_default_point(
    preset: str, width: int, tmp_path: Path
) -> None:
    target = resolve_target(preset).tvm_target()
    func = pointwise_kernel(tmp_path, width, target)
    rule = rules.PointwiseNCHWc()
    untuned = rule.try_schedule(func, target)
    default = rule.try_schedule(func, target, Knobs(tunable=True))
    # The untuned build samples nothing; the design space samples its tiles: the output blocks,
    # the reduction split and (where the analytic tile divides the row) the pixels.
    assert sampling(untuned.trace) == []
    tail = rules.PARTITION_HINT in untuned.mod.script()
    # and the unroll depth (a categorical MutateUnroll evolves)
    tiles = ["SamplePerfectTile"] * (2 if tail else 3)
    assert sampling(default.trace) == [*tiles, "SampleCategorical"]
    # dlight's tunable flag asks for the same space
    assert sampling(rule.apply(func, target, tunable=True).trace) == sampling(default.trace)
    assert assembly(default.mod, target) == assembly(untuned.mod, target)
    assert assembly(postprocessed(default).mod, target) == assembly(untuned.mod, target)


def test_sampled_points_replay_and_compute_the_conv(tmp_path: Path) -> None:
    target = resolve_target("x86-64-v2").tvm_target()
    func = pointwise_kernel(tmp_path, 28, target)
    spaces = rules.PointwiseNCHWc().design_spaces(s_tir.Schedule(func), target)
    weights_stay = f'"{rules.LOOP_ORDER_ATTR}": "{rules.WEIGHTS_STAY}"'
    orders = {weights_stay in space.mod.script() for space in spaces}
    assert len(spaces) == 2 and len(orders) == 2  # one space per loop order

    # The reference: the compute as written, unscheduled (no rule of ours involved).
    rng = np.random.default_rng(0)
    args = [
        rng.standard_normal([int(d) for d in info.shape]).astype("float32")
        for info in ArgInfo.from_prim_func(func)
    ]
    expected = _run(build_kernel(tvm.IRModule({"main": func}), target), args)

    default_tiles = [d for s in spaces for d in _tiles(s.trace)]
    points = []
    for number in range(SAMPLED_POINTS):
        space = spaces[number % len(spaces)]
        point = s_tir.Schedule(func, seed=number + 1)
        Trace(space.trace.insts, {}).apply_to_schedule(point, remove_postproc=False)
        points.append(_tiles(point.trace))
        actual = _run(build_kernel(postprocessed(point).mod, target), args)
        assert np.abs(actual - expected).max() <= TOLERANCE * np.abs(expected).max()
    assert any(tiles != default_tiles[: len(tiles)] for tiles in points)


def postprocessed(sch: Any) -> Any:
    """``sch`` after MetaSchedule's postprocessor that applies the unroll knob, as a tuning
    candidate is (the annotation becomes ``pragma_auto_unroll_max_step``, or goes at 0)."""
    from tvm.s_tir import meta_schedule as ms

    assert ms.postproc.RewriteParallelVectorizeUnroll().apply(sch)
    return sch


def _tiles(trace: Any) -> list[list[int]]:
    return [
        [int(v) for v in decision]
        for inst, decision in trace.decisions.items()
        if inst.kind.name == "SamplePerfectTile"
    ]


def record_body(trace: Any, func: tirx.PrimFunc, target: Any, directory: Path) -> Any:
    """``trace`` as the body of a record line of MetaSchedule's JSON database (what `records
    show` reads)."""
    from tvm.s_tir import meta_schedule as ms

    (directory / "database").mkdir()
    database = ms.database.JSONDatabase(work_dir=str(directory / "database"))
    module = tvm.IRModule({"main": func})
    database.commit_tuning_record(
        ms.database.TuningRecord(
            trace,
            database.commit_workload(module),
            [0.001],
            target,
            ArgInfo.from_prim_func(func),
        )
    )
    lines = (directory / "database" / "database_tuning_record.json").read_text().splitlines()
    return json.loads(lines[-1])[1]


def _run(library: Any, args: list[np.ndarray]) -> np.ndarray:
    tensors = [tvm.runtime.tensor(a) for a in args]
    tensors[-1] = tvm.runtime.tensor(np.zeros_like(args[-1]))
    library["main"](*tensors)
    return tensors[-1].numpy()


def test_knobs_refuse_a_tile_that_does_not_divide(tmp_path: Path) -> None:
    sch = s_tir.Schedule(pointwise_kernel(tmp_path, 28, resolve_target("host").tvm_target()))
    block = rules.find_block(sch, compute.POINTWISE)
    width = sch.get_loops(block)[3]
    with pytest.raises(ValueError, match="does not divide"):
        Knobs(tunable=True).split(sch, width, 5, 32)
    _, inner = FIXED.split(sch, width, 7, 32)
    assert int(sch.get(inner).extent) == 7 and sampling(sch.trace) == []


def test_a_tiny_tune_searches_our_knobs_and_a_build_applies_a_point(tmp_path: Path) -> None:
    """On a stand-in target: the baseline record is our schedule with its sampling
    instructions, the search varies their decisions, and a build applies such a record."""
    from edgecompile.builder import build
    from edgecompile.records import (
        SEARCHED,
        Choice,
        describe_knobs,
        record_schedule,
        store_for,
        summarize,
        trace_digest,
    )
    from edgecompile.tuning import tune

    model, records = pointwise_onnx(tmp_path, 14), tmp_path / "records"
    tune(str(model), "x86-64-v2", trials=TUNE_TRIALS, records=records, threads=1)
    store = store_for(resolve_target("x86-64-v2"), records)
    (workload,) = [w for w, name in store.kernel_names().items() if "pointwise_nchwc" in name]
    bodies = store.records_by_workload()[workload]
    baselines = store.baselines()
    (baseline,) = [b for b in bodies if record_schedule(b, baselines) == compute.POINTWISE]
    assert "SamplePerfectTile" in json.dumps(baseline[0])
    searched = [
        b
        for b in bodies
        if record_schedule(b, baselines) == SEARCHED
        and compute.POINTWISE in json.dumps(b[0])  # ours: the rule's mark is in the trace
        and b[0][1] != baseline[0][1]  # other decisions
    ]
    assert searched

    # Whichever the verdict chose: a build applies a searched point of our space, and it
    # still matches ONNX Runtime.
    body = searched[0]
    store.add_choices({workload: Choice(trace_digest(body), 1.0, 0.5, len(bodies))})
    result = build(str(model), "x86-64-v2", output_dir=tmp_path / "out", records=records)
    manifest = result.artifact.manifest
    assert manifest.verification and manifest.verification["status"] == "passed"
    (conv,) = [s for s in manifest.schedules if s["op"] == "conv2d"]
    assert conv["schedule"] == f"{SEARCHED} from {compute.POINTWISE}"

    # `records show` says which knob values the build uses, the changed ones "untuned → won"
    defaults = knob_values(baseline)
    assert {"oc tile", "reduction unroll", LOOP_ORDER_KNOB} <= set(defaults)
    (kernel,) = [k for k in summarize(store) if "pointwise_nchwc" in k.name]
    assert kernel.uses == "tuned"
    assert kernel.knobs == describe_knobs(knob_values(body), defaults) and " → " in kernel.knobs


@pytest.mark.parametrize(("schedule", "width"), [(compute.DEPTHWISE, 28), (compute.POOL, 28)])
def test_row_tile_rules_default_point_and_a_sampled_point(
    schedule: str, width: int, tmp_path: Path
) -> None:
    target = resolve_target("x86-64-v2").tvm_target()
    func = _kernel(row_tile_onnx(tmp_path, width), target, schedule)
    rule = rules.DepthwiseNCHWc() if schedule == compute.DEPTHWISE else rules.PoolNCHWc()
    untuned = rule.try_schedule(func, target)
    (space,) = rule.design_spaces(s_tir.Schedule(func), target)
    assert sampling(untuned.trace) == []
    assert sampling(space.trace) == ["SamplePerfectTile", "SampleCategorical"]
    assert assembly(postprocessed(space.copy()).mod, target) == assembly(untuned.mod, target)

    rng = np.random.default_rng(0)
    args = [
        rng.standard_normal([int(d) for d in info.shape]).astype("float32")
        for info in ArgInfo.from_prim_func(func)
    ]
    expected = _run(build_kernel(tvm.IRModule({"main": func}), target), args)
    for seed in (1, 2):
        point = s_tir.Schedule(func, seed=seed)
        Trace(space.trace.insts, {}).apply_to_schedule(point, remove_postproc=False)
        actual = _run(build_kernel(postprocessed(point).mod, target), args)
        assert np.abs(actual - expected).max() <= TOLERANCE * np.abs(expected).max()


# The other rules' spaces: (schedule, ONNX nodes after the input, weights' shapes, output shape)
# on a HEIGHT × KERNEL_WIDTH image of KERNEL_CHANNELS channels.
KERNEL_WIDTH = 14
KERNEL_CHANNELS = 16
SAME = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
RULE_CASES = {
    # the stem: 3 input channels, every output block reads every input lane
    compute.DENSE: (
        [("Conv", {**SAME}, (KERNEL_CHANNELS, 3, 3, 3))],
        3,
        [1, KERNEL_CHANNELS, HEIGHT, KERNEL_WIDTH],
    ),
    compute.GROUPED: (
        [("Conv", {**SAME, "group": 2}, (KERNEL_CHANNELS, KERNEL_CHANNELS // 2, 3, 3))],
        KERNEL_CHANNELS,
        [1, KERNEL_CHANNELS, HEIGHT, KERNEL_WIDTH],
    ),
    # 1 output channel per group: too few for 4 lanes, so pixels are the vector
    compute.GROUPED_PIXELS: (
        [("Conv", {**SAME, "group": KERNEL_CHANNELS}, (KERNEL_CHANNELS, 2, 3, 3))],
        2 * KERNEL_CHANNELS,
        [1, KERNEL_CHANNELS, HEIGHT, KERNEL_WIDTH],
    ),
    compute.TRANSPOSED: (
        [
            (
                "ConvTranspose",
                {"kernel_shape": [2, 2], "strides": [2, 2]},
                (KERNEL_CHANNELS, KERNEL_CHANNELS, 2, 2),
            )
        ],
        KERNEL_CHANNELS,
        [1, KERNEL_CHANNELS, 2 * HEIGHT, 2 * KERNEL_WIDTH],
    ),
    # 1×1 conv → global average pool → flatten → Gemm: the classifier's packed GEMV
    compute.MATMUL: (
        [
            ("Conv", {}, (KERNEL_CHANNELS, KERNEL_CHANNELS, 1, 1)),
            ("GlobalAveragePool", {}, None),
            ("Flatten", {}, None),
            ("Gemm", {"transB": 1}, (10, KERNEL_CHANNELS)),
        ],
        KERNEL_CHANNELS,
        [1, 10],
    ),
}


def rule_case_onnx(directory: Path, schedule: str) -> Path:
    """The model of ``RULE_CASES[schedule]``, a ReLU after its first node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers, channels, out_shape = RULE_CASES[schedule]
    rng = np.random.default_rng(len(schedule))
    nodes, weights, current = [], [], "input"
    for i, (op, attributes, weight_shape) in enumerate(layers):
        inputs = [current]
        if weight_shape is not None:
            weight = rng.standard_normal(weight_shape).astype("float32") / 4
            weights.append(numpy_helper.from_array(weight, f"w{i}"))
            inputs.append(f"w{i}")
        nodes.append(helper.make_node(op, inputs, [f"x{i}"], **attributes))
        current = f"x{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [current], ["relu"]))
            current = "relu"
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    graph = helper.make_graph(
        nodes,
        "rule_case",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [1, channels, HEIGHT, KERNEL_WIDTH]
            )
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=weights,
    )
    path = directory / f"{schedule.rsplit('.', 1)[-1]}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


RULES = {
    compute.DENSE: rules.DenseConvNCHWc,
    compute.GROUPED: rules.GroupedNCHWc,
    compute.GROUPED_PIXELS: rules.GroupedPixels,
    compute.TRANSPOSED: rules.TransposedConvNCHWc,
    compute.MATMUL: rules.PackedMatmul,
}


@pytest.mark.parametrize("schedule", list(RULE_CASES))
def test_each_rules_space_holds_the_untuned_schedule_and_sampled_points_compute_it(
    schedule: str, tmp_path: Path
) -> None:
    target = resolve_target("x86-64-v2").tvm_target()
    func = _kernel(rule_case_onnx(tmp_path, schedule), target, schedule)
    rule = RULES[schedule]()
    untuned = rule.try_schedule(func, target)
    spaces = rule.design_spaces(s_tir.Schedule(func), target)
    assert sampling(untuned.trace) == []
    assert all(
        "SamplePerfectTile" in sampling(space.trace)
        and sampling(space.trace)[-1] == "SampleCategorical"  # the unroll depth
        for space in spaces
    )
    # the first space's default point is the untuned build's code
    assert assembly(postprocessed(spaces[0].copy()).mod, target) == assembly(untuned.mod, target)
    # `records show` names each sampled tile from the record alone, at its decision
    values = knob_values(record_body(spaces[0].trace, func, target, tmp_path))
    assert values.pop(UNROLL_KNOB) == UNROLL_STEPS[0]
    values.pop(LOOP_ORDER_KNOB, None)
    assert list(values.values()) == [inner for *_, inner in _tiles(spaces[0].trace)]

    rng = np.random.default_rng(0)
    args = [
        rng.standard_normal([int(d) for d in info.shape]).astype("float32")
        for info in ArgInfo.from_prim_func(func)
    ]
    expected = _run(build_kernel(tvm.IRModule({"main": func}), target), args)
    default_tiles = _tiles(spaces[0].trace)
    moved = False
    for seed in (1, 2, 3):  # random tiles, each unroll depth but the default's
        space = spaces[seed % len(spaces)]
        point = s_tir.Schedule(func, seed=seed)
        unroll = {i: seed for i in space.trace.insts if i.kind.name == "SampleCategorical"}
        Trace(space.trace.insts, unroll).apply_to_schedule(point, remove_postproc=False)
        moved |= _tiles(point.trace) != default_tiles
        built = postprocessed(point).mod
        assert f'"pragma_auto_unroll_max_step": {UNROLL_STEPS[seed]}' in built.script()
        actual = _run(build_kernel(built, target), args)
        assert np.abs(actual - expected).max() <= TOLERANCE * np.abs(expected).max()
    assert moved  # the points were other schedules than the default
