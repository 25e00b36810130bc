"""The int8 rules' tiles as knobs (issue #18, "tunable like the fp32 ones"): the untuned build
is unchanged, a design space samples the analytic tiles, and another point of it still computes
the integers the numpy reference does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.schedule import Trace

from edgecompile._tune_workers import build_kernel
from edgecompile.importer import import_onnx
from edgecompile.records import knob_values
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8 import INT8_SCHEDULE, INT8_VNNI_SCHEDULE
from edgecompile.schedules.int8.neon import (
    Int8DepthwiseNeon,
    Int8DepthwiseVmlal,
    depthwise_pixels,
)
from edgecompile.schedules.int8.schedule import (
    Int8ConvAvx2,
    Int8ConvBlocked,
    Int8ConvNCHW,
    Int8DepthwiseBlocked,
    depthwise_row_tile,
    has_blocked_kernel,
    narrowed,
)
from edgecompile.schedules.knobs import KNOBS_ATTR, UNROLL_KNOB, Knobs
from edgecompile.schedules.pipeline import fused_module
from edgecompile.targets import resolve_target

from .test_int8_kernels import CASES, output_codes, parameters, qdq_conv_model, reference

VNNI = has_blocked_kernel(resolve_target("host").tvm_target())
needs_vnni = pytest.mark.skipif(not VNNI, reason="this host has no VNNI")

#: (rule, case, preset): each x86 rule with knobs on a conv of its kind. x86-64-v3 (AVX2, no
#: VNNI) has the blocked conv on vpmaddwd, x86-64-v2 (no AVX2) keeps the NCHW kernel; this host
#: runs both.
RULES = {
    "vnni": (Int8ConvBlocked, "3x3-three-blocks", "host"),
    "avx2": (Int8ConvAvx2, "3x3-three-blocks", "x86-64-v3"),
    "depthwise": (Int8DepthwiseBlocked, "depthwise-width13-relu6", "host"),
    "nchw": (Int8ConvNCHW, "3x3-relu", "x86-64-v2"),
}


def _marks(name: str) -> list[Any]:
    return [needs_vnni] if RULES[name][2] == "host" else []


PARAMS = [pytest.param(name, marks=_marks(name), id=name) for name in RULES]


def _kernel(rule: Any, path: Path, target: Any) -> tirx.PrimFunc:
    """The fused kernel of ``path`` the rule claims, as the rule schedules it (a blocked one
    with int32 indices)."""
    fused, _ = fused_module(import_onnx(path)[0].module, target)
    funcs = [
        func.with_attr("global_symbol", "main")
        for _, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc)
    ]
    if rule.blocked:
        funcs = [narrowed(func) for func in funcs]
    (func,) = [func for func in funcs if rule.claims(s_tir.Schedule(func))]
    return func


def _sampling(trace: Any) -> list[str]:
    return [inst.kind.name for inst in trace.insts if inst.kind.name.startswith("Sample")]


def _tiles(trace: Any) -> list[list[int]]:
    return [
        [int(v) for v in decision]
        for inst, decision in trace.decisions.items()
        if inst.kind.name == "SamplePerfectTile"
    ]


def _postprocessed(sch: Any) -> Any:
    """``sch`` after the postprocessor that applies the unroll knob, as a tuning candidate is."""
    from tvm.s_tir import meta_schedule as ms

    assert ms.postproc.RewriteParallelVectorizeUnroll().apply(sch)
    return sch


def _assembly(mod: Any, target: Any) -> str:
    """The kernel's code, without its debug sections: a design space keeps a unit loop the
    untuned build drops, which names a variable differently in the debug info alone."""
    asm = build_kernel(mod, target).inspect_source("asm")
    code = asm.split("\t.section\t.debug", 1)[0]
    assert "main:" in code  # the kernel's code itself comes before the debug sections
    return code


def _analytic_tiles(rule: Any, func: tirx.PrimFunc, target: Any) -> list[int]:
    """The rule's analytic inner tiles, from its own tile functions."""
    from edgecompile.schedules.cpu import cpu_info

    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock(rule.acc_block))
    extents = [int(sch.get(loop).extent) for loop in loops]
    if isinstance(rule, Int8DepthwiseBlocked):
        return [depthwise_row_tile(extents[3])]
    if isinstance(rule, Int8ConvBlocked):
        return list(rule.register_tile(extents[1], extents[3]))
    lanes = cpu_info(target).lanes
    return [
        max(d for d in range(1, limit + 1) if extent % d == 0)
        for extent, limit in ((extents[1], 8), (extents[3], lanes))
    ]


@pytest.mark.parametrize("name", PARAMS)
def test_untuned_is_the_design_spaces_default_point(
    name: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    rule_class, case, preset = RULES[name]
    rule, target = rule_class(), resolve_target(preset).tvm_target()
    func = _kernel(rule, qdq_conv_model(CASES[case], tmp_path, write_qdq_model), target)

    untuned = rule.try_schedule(func, target)
    (space,) = rule.design_spaces(s_tir.Schedule(func), target)

    # The untuned build samples nothing; the design space samples its tiles at their analytic
    # values, and the unroll depth (a categorical MutateUnroll evolves).
    assert _sampling(untuned.trace) == []
    tiles = _analytic_tiles(rule, func, target)
    assert _sampling(space.trace) == ["SamplePerfectTile"] * len(tiles) + ["SampleCategorical"]
    assert [tile[-1] for tile in _tiles(space.trace)] == tiles
    assert KNOBS_ATTR in space.mod.script()
    # try_schedule with tunable knobs (what `tune`'s baseline measures) is the same space
    tunable = rule.try_schedule(func, target, Knobs(tunable=True))
    assert _sampling(tunable.trace) == _sampling(space.trace)
    # and its default point compiles to the untuned kernel's very code
    assert _assembly(_postprocessed(space).mod, target) == _assembly(untuned.mod, target)


def _another_tile(decision: list[int], max_inner: int) -> list[int]:
    """A different perfect 2-tile of the same extent, its inner factor within ``max_inner``:
    the smallest, so a tile of 1 (unit loops) is replayed wherever the analytic one is not."""
    extent, inner = decision[0] * decision[1], decision[1]
    others = [d for d in range(1, min(extent, max_inner) + 1) if extent % d == 0 and d != inner]
    return [extent // min(others), min(others)]


def _every_tile_changed(space: Any) -> dict[Any, Any]:
    """A design space's decisions with every tile decision moved to another tile."""
    return {
        inst: (
            _another_tile([int(v) for v in decision], int(inst.attrs[1]))
            if inst.kind.name == "SamplePerfectTile"
            else decision
        )
        for inst, decision in space.trace.decisions.items()
    }


@pytest.mark.parametrize("name", PARAMS)
def test_a_mutated_tile_replays_and_stays_exact(
    name: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """Every tile decision changed, the trace replayed as the search does: still the numpy
    integer reference's output, exactly (the instructions' own lanes are never tiles)."""
    rule_class, case, preset = RULES[name]
    rule, target = rule_class(), resolve_target(preset).tvm_target()
    conv = CASES[case]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    (space,) = rule.design_spaces(s_tir.Schedule(_kernel(rule, path, target)), target)
    decisions = _every_tile_changed(space)
    replayed: list[Any] = []

    def mutated_point(func: tirx.PrimFunc, target: Any) -> Any:
        kernel = narrowed(func) if rule.blocked else func
        if not rule.claims(s_tir.Schedule(kernel)):
            return None
        point = s_tir.Schedule(kernel)
        Trace(space.trace.insts, decisions).apply_to_schedule(point, remove_postproc=False)
        replayed.append(point)
        return _postprocessed(point)

    params = parameters(path)
    x_q = np.random.default_rng(1).integers(0, 256, (1, conv.in_channels, conv.size, conv.size))
    x = ((x_q - int(params["x_zero_point"])) * np.float32(params["x_scale"])).astype(np.float32)
    executable, _ = compile_relax(
        import_onnx(path, name="conv")[0].module, target, extra_rules=[mutated_point]
    )
    machine = relax.VirtualMachine(executable, tvm.cpu())
    actual = machine["main"](tvm.runtime.tensor(x)).numpy()

    (point,) = replayed  # the build compiled the conv from the mutated trace
    mutated = [d for i, d in decisions.items() if i.kind.name == "SamplePerfectTile"]
    assert _tiles(point.trace) == mutated
    assert all(a != b for a, b in zip(_tiles(point.trace), _tiles(space.trace), strict=True))
    actual_q = output_codes(actual, params)
    np.testing.assert_array_equal(actual_q, reference(conv, params, x_q))


@needs_vnni
def test_records_show_reads_the_int8_knobs(
    tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """A record of a VNNI point names its knobs (``records show``) from the trace alone."""
    from .test_knobs import record_body

    rule, target = Int8ConvBlocked(), resolve_target("host").tvm_target()
    path = qdq_conv_model(CASES["3x3-three-blocks"], tmp_path, write_qdq_model)
    func = _kernel(rule, path, target)
    (space,) = rule.design_spaces(s_tir.Schedule(func), target)

    values = knob_values(record_body(space.trace, func, target, tmp_path))

    assert values == {"block tile": 1, "pixel tile": 9, UNROLL_KNOB: 0}


#: (preset, case, schedule, knobs) of the tiny tunes: the NCHW kernel (SSE4.2), the VNNI one.
TUNES = {
    "nchw": ("x86-64-v2", "3x3-relu", INT8_SCHEDULE, {"oc tile", "pixel tile"}),
    "vnni": ("host", "3x3-three-blocks", INT8_VNNI_SCHEDULE, {"block tile", "pixel tile"}),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n), id=n) for n in TUNES])
def test_a_tiny_tune_searches_the_int8_knobs_and_a_build_applies_a_point(
    name: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """`tune` of a QDQ model measures the int8 rule's default point as its baseline, searches
    the rule's own space (other tiles, the rule's mark in each trace), and a build applies
    such a point, still within ORT's steps (here: exact)."""
    from edgecompile.builder import build
    from edgecompile.records import (
        SEARCHED,
        Choice,
        record_schedule,
        store_for,
        trace_digest,
    )
    from edgecompile.tuning import tune

    preset, case, schedule, knobs = TUNES[name]
    model, records = qdq_conv_model(CASES[case], tmp_path, write_qdq_model), tmp_path / "r"
    tune(str(model), preset, trials=4, records=records, threads=1)

    store = store_for(resolve_target(preset), records)
    (workload,) = [w for w, name in store.kernel_names().items() if "int8_conv2d" in name]
    bodies, baselines = store.records_by_workload()[workload], store.baselines()
    (baseline,) = [b for b in bodies if record_schedule(b, baselines) == schedule]
    assert set(knob_values(baseline)) == {*knobs, UNROLL_KNOB}
    searched = [
        b
        for b in bodies
        if record_schedule(b, baselines) == SEARCHED
        and schedule in json.dumps(b[0])  # ours: the rule's mark is in the trace
        and knob_values(b) != knob_values(baseline)
    ]
    assert searched

    body = searched[0]
    store.add_choices({workload: Choice(trace_digest(body), 1.0, 0.5, len(bodies))})
    result = build(str(model), preset, output_dir=tmp_path / "out", records=records)
    manifest = result.artifact.manifest
    assert manifest.verification and manifest.verification["status"] == "passed"
    (conv,) = [s for s in manifest.schedules if s["op"] == "conv2d"]
    assert conv["schedule"] == f"{SEARCHED} from {schedule}"


@pytest.mark.parametrize("board", ["rpi4", "armv7"])
def test_neon_depthwise_default_point_is_the_untuned_kernel(
    board: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The ARM depthwise conv's pixel tile is a knob too: its design space samples the
    analytic tile, and that point compiles to the board's untuned code."""
    target = resolve_target(board).tvm_target()
    rule = Int8DepthwiseVmlal() if board == "armv7" else Int8DepthwiseNeon()
    path = qdq_conv_model(CASES["depthwise-width13-relu6"], tmp_path, write_qdq_model)
    func = _kernel(rule, path, target)

    untuned = rule.try_schedule(func, target)
    (space,) = rule.design_spaces(s_tir.Schedule(func), target)

    assert _sampling(untuned.trace) == []
    assert _sampling(space.trace) == ["SamplePerfectTile", "SampleCategorical"]
    (tile,) = _tiles(space.trace)
    assert tile[-1] == depthwise_pixels(13, rule.max_pixels)
    assert _assembly(_postprocessed(space).mod, target) == _assembly(untuned.mod, target)


@pytest.mark.parametrize("rule_class", [Int8DepthwiseNeon, Int8DepthwiseVmlal])
def test_neon_depthwise_mutated_tile_gives_the_numpy_integers(rule_class: type) -> None:
    """The ARM depthwise schedule with another pixel tile replayed from its trace, compiled for
    this host: still exactly the numpy integers (as test_int8_neon checks the untuned one)."""
    from tvm import te

    from edgecompile.schedules.int8.compute import DEPTHWISE_ACC, NCHW, blocked_integer_depthwise
    from edgecompile.schedules.int8.neon import pack_neon_depthwise_weight

    from .test_int8_neon import assert_gives_numpy_integers, random_plan

    channels, size = 12, 12
    rng = np.random.default_rng(channels)
    plan = random_plan(
        rng, out_channels=channels, in_channels=1, kernel=3, stride=1, groups=channels
    )
    x_q = rng.integers(0, 256, (1, channels, size, size)).astype(np.uint8)
    weight, bias = pack_neon_depthwise_weight(plan)
    data = te.placeholder(x_q.shape, "uint8")
    weight_in = te.placeholder(weight.shape, "int16")
    bias_in = te.placeholder(bias.shape, "int32")
    multiplier = te.placeholder(plan.multiplier.shape, "float32")
    out = blocked_integer_depthwise(data, weight_in, bias_in, multiplier, plan, NCHW)
    func = te.create_prim_func([data, weight_in, bias_in, multiplier, out])
    sch = s_tir.Schedule(func)
    acc, requantize = sch.get_sblock(DEPTHWISE_ACC), sch.get_sblock("int8_requantize")
    rule = rule_class()
    space = rule._schedule(sch, acc, requantize, lanes=4, knobs=Knobs(tunable=True))
    (inst,) = [i for i in space.trace.decisions if i.kind.name == "SamplePerfectTile"]
    decision = [int(v) for v in space.trace.decisions[inst]]
    mutated = _another_tile(decision, int(inst.attrs[1]))
    point = s_tir.Schedule(func)
    Trace(space.trace.insts, {**space.trace.decisions, inst: mutated}).apply_to_schedule(
        point, remove_postproc=False
    )
    assert _tiles(point.trace) == [mutated] and mutated != decision

    kernel = tvm.compile(point.mod, "llvm")
    assert_gives_numpy_integers(kernel, plan, x_q, weight, bias)
