"""The NEON int8 convs' register tiles as knobs (issue #18, "tunable like the fp32 ones"): on
rpi5 (``sdot``, its indexed form on 4 adjacent pixels), rpi4 (``smull``/``sadalp``) and armv7
(``vmull``/``vpadal``) the design space samples the analytic tile and its default point is the
untuned kernel's very code; another point still computes the numpy integers; ``tune`` of a QDQ
model for a board searches these knobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tvm import s_tir
from tvm.s_tir.schedule import Trace

from edgecompile.importer import import_onnx
from edgecompile.schedules.int8.neon import (
    Int8ConvSdot,
    Int8ConvSmull,
    Int8ConvVmull,
    neon_integer_conv2d,
    pack_neon_weight,
    register_tile,
)
from edgecompile.schedules.int8.neon_intrinsics import SDOT_PIXELS
from edgecompile.schedules.knobs import KNOBS_ATTR, Knobs
from edgecompile.targets import resolve_target

from .test_int8_kernels import (
    CASES,
    Conv,
    conv_input,
    output_codes,
    parameters,
    qdq_conv_model,
    reference,
)
from .test_int8_knobs import (
    _another_tile,
    _assembly,
    _every_tile_changed,
    _kernel,
    _postprocessed,
    _sampling,
    _tiles,
)
from .test_int8_neon import assert_gives_numpy_integers, random_plan

#: The board's rule, and the knobs its design space samples, by (board, case): rpi5 on a row
#: of 16 (the indexed sdot: the tile counted in quads of pixels) and on a row of 9 (a
#: broadcast per pixel), the widening kernels of rpi4 and armv7.
SPACES = {
    ("rpi5", "width16"): (Int8ConvSdot, ["block tile", "pixel quad tile"]),
    ("rpi5", "3x3-three-blocks"): (Int8ConvSdot, ["block tile", "pixel tile"]),
    ("rpi4", "3x3-three-blocks"): (Int8ConvSmull, ["block tile", "pixel tile"]),
    ("armv7", "3x3-three-blocks"): (Int8ConvVmull, ["block tile", "pixel tile"]),
}
CONVS = {**CASES, "width16": Conv(7, 33, 3, activation="Relu", size=16)}


def _analytic_tile(rule: Int8ConvSdot, out_channels: int, out_w: int, quads: bool) -> list[int]:
    """The rule's analytic (blocks, pixels) tile, from its own tile function, as the design
    space's inner factors (quads of pixels for the indexed sdot)."""
    blocks, pixels = register_tile(
        -(-out_channels // 4),
        out_w,
        rule.tile_registers,
        rule.pairs,
        rule.temporaries,
        rule.prefer_pixels,
        SDOT_PIXELS if quads else 1,
    )
    return [blocks, pixels // SDOT_PIXELS if quads else pixels]


@pytest.mark.parametrize(("board", "case"), list(SPACES), ids=[f"{b}-{c}" for b, c in SPACES])
def test_neon_conv_default_point_is_the_untuned_kernel(
    board: str, case: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    rule_class, knobs = SPACES[board, case]
    rule, target, conv = rule_class(), resolve_target(board).tvm_target(), CONVS[case]
    func = _kernel(rule, qdq_conv_model(conv, tmp_path, write_qdq_model), target)

    untuned = rule.try_schedule(func, target)
    (space,) = rule.design_spaces(s_tir.Schedule(func), target)

    assert _sampling(untuned.trace) == []
    assert _sampling(space.trace) == ["SamplePerfectTile"] * 2 + ["SampleCategorical"]
    quads = "pixel quad tile" in knobs
    assert [t[-1] for t in _tiles(space.trace)] == _analytic_tile(
        rule, conv.out_channels, conv.size, quads
    )
    assert f'"{",".join(knobs)}"' in space.mod.script()  # KNOBS_ATTR: which tile is which
    assert KNOBS_ATTR in space.mod.script()
    assert _assembly(_postprocessed(space).mod, target) == _assembly(untuned.mod, target)


def _portable(rule_class: type[Int8ConvSdot]) -> type[Int8ConvSdot]:
    """``rule_class`` tensorizing its step with an intrinsic of the same description whose
    implementation is that description's loops, so its schedule compiles for this host: the
    tiles, loops and accumulators are the rule's; the instruction's arithmetic is checked on
    the emulated boards (test_int8_neon)."""
    from tvm.s_tir import TensorIntrin

    from edgecompile.schedules.int8.intrinsics import registered_intrinsic

    class Portable(rule_class):  # type: ignore[valid-type, misc]
        def _tensor_intrinsic(self, quads: bool) -> str:
            name = super()._tensor_intrinsic(quads)
            description = TensorIntrin.get(name).desc
            return registered_intrinsic(f"{name}_portable", lambda: (description, description))

    return Portable


#: (rule, conv) of the host runs: the indexed sdot's quads (stride 1, row of 12), the
#: broadcast sdot (stride 2), the widening kernels (an input block padded from 6 channels).
HOST_CASES = {
    "sdot-quads": (Int8ConvSdot, {"in_channels": 6, "out_channels": 16, "kernel": 3}),
    "sdot-stride2": (
        Int8ConvSdot,
        {"in_channels": 5, "out_channels": 16, "kernel": 3, "stride": 2},
    ),
    "smull": (Int8ConvSmull, {"in_channels": 6, "out_channels": 16, "kernel": 3}),
    "vmull": (Int8ConvVmull, {"in_channels": 6, "out_channels": 16, "kernel": 1}),
}


@pytest.mark.parametrize("name", HOST_CASES)
def test_neon_conv_mutated_tiles_give_the_numpy_integers(name: str) -> None:
    """Every tile of the NEON conv's design space changed (to 1 block, 1 pixel or quad) and
    the trace replayed as the search does, compiled for this host: still exactly the numpy
    integers."""
    import tvm
    from tvm import te

    rule_class, conv = HOST_CASES[name]
    rule = _portable(rule_class)()
    rng = np.random.default_rng(len(name))
    plan = random_plan(rng, **conv)
    x_q = rng.integers(0, 256, (1, conv["in_channels"], 12, 12)).astype(np.uint8)
    x_q[0, 0, 0, :2] = (0, 255)
    weight, bias = pack_neon_weight(plan, rule.pairs)
    data = te.placeholder(x_q.shape, "uint8")
    weight_in = te.placeholder(weight.shape, "int8")
    bias_in = te.placeholder(bias.shape, "int32")
    multiplier = te.placeholder(plan.multiplier.shape, "float32")
    out = neon_integer_conv2d(data, weight_in, bias_in, multiplier, plan)
    func = te.create_prim_func([data, weight_in, bias_in, multiplier, out])
    sch = s_tir.Schedule(func)
    acc, requantize = sch.get_sblock("int8_acc"), sch.get_sblock("int8_requantize")
    knobs = Knobs(tunable=True)
    space = rule._schedule(sch, acc, requantize, lanes=4, knobs=knobs)
    tiles = [i for i in space.trace.decisions if i.kind.name == "SamplePerfectTile"]
    mutated = {
        inst: _another_tile([int(v) for v in space.trace.decisions[inst]], int(inst.attrs[1]))
        for inst in tiles
    }
    point = s_tir.Schedule(func)
    Trace(space.trace.insts, {**space.trace.decisions, **mutated}).apply_to_schedule(
        point, remove_postproc=False
    )

    assert len(tiles) == 2 and _tiles(point.trace) == list(mutated.values())
    assert all(a != b for a, b in zip(_tiles(point.trace), _tiles(space.trace), strict=True))
    # the indexed sdot's quads where the row's pixels are adjacent
    pixels = "pixel quad tile" if name == "sdot-quads" else "pixel tile"
    assert knobs.names == ["block tile", pixels]
    kernel = tvm.compile(point.mod, "llvm")
    assert_gives_numpy_integers(kernel, plan, x_q, weight, bias)


@pytest.mark.parametrize("board", ["rpi4", "rpi5", "armv7"])
def test_tune_for_a_board_searches_the_neon_conv_knobs(
    board: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """`tune model.int8.onnx --target <board>`: the conv's task is searched in the NEON rule's
    own space (not MetaSchedule's generic one) and its baseline, which seeds the search, is
    the space's default point."""
    from edgecompile.tuning.baseline import untuned_schedule
    from edgecompile.tuning.search import design_space
    from edgecompile.tuning.tasks import extract_tasks

    target = resolve_target(board).tvm_target()
    path = qdq_conv_model(CASES["3x3-three-blocks"], tmp_path, write_qdq_model)
    tasks = extract_tasks(import_onnx(path)[0].module, target)
    (task,) = [t for t in tasks if "int8_conv2d" in t.name]

    assert design_space(task) != "post-order-apply"
    baseline = untuned_schedule(task.module, target)
    assert _sampling(baseline.trace) == ["SamplePerfectTile"] * 2 + ["SampleCategorical"]


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("board", "case"),
    [
        # ~80 s each under qemu on a loaded machine: slow, as the default point's code is the
        # untuned kernel's (above) and other points' integers are checked on this host.
        pytest.param("rpi5", "width16", marks=pytest.mark.slow),  # the indexed sdot's quads
        pytest.param("rpi4", "3x3-three-blocks", marks=pytest.mark.slow),
    ],
)
def test_mutated_neon_conv_is_exact_on_the_emulated_core(
    board: str, case: str, rootfs: Path, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """A build whose conv replays a mutated point of the NEON space (every tile changed), run
    on qemu's model of the board's core: the numpy integers, with the real instruction."""
    from tvm import tirx

    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.schedules import compile_relax
    from edgecompile.schedules.int8.schedule import narrowed
    from edgecompile.toolchain import toolchain_for

    from .test_int8_neon import BOARDS

    rule_class, _ = SPACES[board, case]
    preset, conv, rule = resolve_target(board), CONVS[case], rule_class()
    target = preset.tvm_target()
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    (space,) = rule.design_spaces(s_tir.Schedule(_kernel(rule, path, target)), target)
    decisions = _every_tile_changed(space)
    replayed: list[Any] = []

    def mutated_point(func: tirx.PrimFunc, target: Any) -> Any:
        kernel = narrowed(func)
        if not rule.claims(s_tir.Schedule(kernel)):
            return None
        point = s_tir.Schedule(kernel)
        Trace(space.trace.insts, decisions).apply_to_schedule(point, remove_postproc=False)
        replayed.append(point)
        return _postprocessed(point)

    executable, _ = compile_relax(
        import_onnx(path, name="conv")[0].module, target, extra_rules=[mutated_point]
    )
    (point,) = replayed
    assert all(a != b for a, b in zip(_tiles(point.trace), _tiles(space.trace), strict=True))
    library = tmp_path / f"conv_{board}.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    params = parameters(path)
    x_q, x = conv_input(conv, params)

    (actual,) = run_library_in_rootfs(rootfs, library, {"x": x}, cpu=BOARDS[board][2])

    expected = reference(conv, params, x_q)
    assert np.unique(expected).size > 10
    np.testing.assert_array_equal(output_codes(actual, params), expected)
