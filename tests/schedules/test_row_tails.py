"""Register tiles that need not divide the row: maps of prime width (SqueezeNet's 55, 27, 13,
Xception's 37, 19) get full-size tiles and one narrower tail tile per row, the tail peeled off
by TVM's loop partitioning of that one loop only.

One small network per width runs every row-tiled kernel kind in a chain (pointwise, depthwise,
dense 3×3, max pool), a few rows high so that it compiles fast: on the host it must match torch,
and it must compile for the rpi4's 4-lane NEON, whose tiles are sized differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax, tirx

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import DENSE, DEPTHWISE, POINTWISE, POOL, optimize, rules
from edgecompile.schedules.cpu import CpuInfo
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5
HEIGHT = 3
CHANNELS = (20, 40)  # in and out: neither a multiple of 16 lanes

AVX512 = CpuInfo("x86_64", lanes=16, registers=32, cores=2)
NEON = CpuInfo("aarch64", lanes=4, registers=32, cores=4)


def chain(directory: Path, width: int) -> tuple[Path, dict[str, np.ndarray]]:
    """pointwise + ReLU → depthwise 3×3 + ReLU → dense 3×3 → max pool 3×3 (stride 1, same)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    channels_in, channels = CHANNELS
    weights = {
        "pw": rng.standard_normal((channels, channels_in, 1, 1)).astype("float32") / 4,
        "dw": rng.standard_normal((channels, 1, 3, 3)).astype("float32") / 3,
        "dense": rng.standard_normal((channels_in, channels, 3, 3)).astype("float32") / 16,
        "bias": rng.standard_normal(channels_in).astype("float32"),
    }
    same = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["input", "pw"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "dw"], ["c1"], group=channels, pads=same),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "dense", "bias"], ["c2"], pads=same),
        helper.make_node("MaxPool", ["c2"], ["output"], kernel_shape=[3, 3], pads=same),
    ]
    shape = [1, channels_in, HEIGHT, width]
    graph = helper.make_graph(
        nodes,
        "row_tails",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = directory / f"chain{width}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    x = F.relu(F.conv2d(torch.from_numpy(data.astype("float64")), t["pw"]))
    x = F.relu(F.conv2d(x, t["dw"], padding=1, groups=x.shape[1]))
    x = F.conv2d(x, t["dense"], t["bias"], padding=1)
    return F.max_pool2d(x, 3, stride=1, padding=1).numpy()


def scheduled(module: Any) -> dict[str, tirx.PrimFunc]:
    """Our scheduled kernels by schedule kind."""
    return {
        str(func.attrs["edgecompile.schedule"]): func
        for _, func in module.functions_items()
        if isinstance(func, tirx.PrimFunc) and "edgecompile.schedule" in (func.attrs or {})
    }


def has_tail(func: tirx.PrimFunc) -> bool:
    """The kernel's pixel-tile loop is marked for peeling a tail."""
    return rules.PARTITION_HINT in func.script()


@pytest.mark.parametrize("width", [13, 19, 37, 55])
def test_prime_widths_match_torch_and_build_for_rpi4(
    width: int, tmp_path: Path, host_target: Any
) -> None:
    path, weights = chain(tmp_path, width)
    relax_model, _ = import_onnx(path, name="chain")
    module, report = optimize(relax_model.module, host_target)
    assert report.schedules.failed == {}
    assert sorted(report.schedules.applied.values()) == sorted([POINTWISE, DEPTHWISE, DENSE, POOL])
    # The old rule left 13, 19 and 37 one tile a row or one pixel a tile: the depthwise and
    # pool tiles of a prime row are now 8 wide with a tail.
    kernels = scheduled(module)
    assert has_tail(kernels[DEPTHWISE]) and has_tail(kernels[POOL])

    executable = tvm.compile(
        module, target=host_target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    data = np.random.default_rng(1).standard_normal((1, CHANNELS[0], HEIGHT, width))
    data = data.astype("float32")
    machine = relax.VirtualMachine(executable, tvm.cpu())
    actual = machine["main"](tvm.runtime.tensor(data)).numpy()
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE

    rpi4 = resolve_target("rpi4").tvm_target()
    board_module, board_report = optimize(relax_model.module, rpi4)
    assert board_report.schedules.failed == {}
    assert len(board_report.schedules.applied) == 4
    tvm.compile(board_module, target=rpi4, relax_pipeline=None, tir_pipeline=TIR_PIPELINE)


TIR_PIPELINE = register_tir_pipeline()


@tvm.ir.instrument.pass_instrument
class AfterLoopPartition:
    """Keeps the module as TVM's ``LoopPartition`` left it (loops not yet unrolled)."""

    def __init__(self) -> None:
        self.module: Any = None

    def run_after_pass(self, module: Any, info: Any) -> None:
        if info.name.endswith("LoopPartition"):
            self.module = module


def partitioned(func: tirx.PrimFunc, target: Any) -> tirx.PrimFunc:
    """``func`` lowered by our TIR pipeline up to and including loop partitioning."""
    capture = AfterLoopPartition()
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with tvm.transform.PassContext(opt_level=3, instruments=[capture]):
        tvm.tirx.build(module, target=target, pipeline=TIR_PIPELINE)
    return next(iter(capture.module.functions.values()))


def copies_and_tile_tests(func: tirx.PrimFunc, loop_name: str) -> tuple[int, int]:
    """How many loops named ``loop_name`` the body has, and how many ``if`` statements test the
    pixel-tile loop's variable (``w_0``): a bounds test run in every tile, not only the tail."""
    import tvm_ffi

    loops, tests = [], []

    def loop(node: Any) -> Any:
        if node.loop_var.name == loop_name:
            loops.append(node)
        return node

    def test(node: Any) -> Any:
        names: list[str] = []

        def var(v: Any) -> Any:
            names.append(v.name)
            return v

        tvm_ffi.structural_map(node.condition, [(tirx.Var, var)])
        if "w_0" in names:
            tests.append(node)
        return node

    tvm_ffi.structural_map(func.body, [(tirx.For, loop), (tirx.IfThenElse, test)])
    return len(loops), len(tests)


# The loop each kind's tile runs its reduction (or window) in: one per copy of the tile's code.
REDUCTION_LOOP = {POINTWISE: "cib", DEPTHWISE: "kh", POOL: "kh"}


@pytest.mark.parametrize("width", [13, 16])
def test_only_a_row_with_a_tail_gets_a_peeled_copy(
    width: int, tmp_path: Path, host_target: Any
) -> None:
    """13 leaves a tail in every row-tiled kind: the full tiles run one copy of the tile's
    code, the tail a second, and no bounds test is left that every tile runs. 16 divides
    every tile chosen: one copy, no mark."""
    path, _ = chain(tmp_path, width)
    module, _ = optimize(import_onnx(path, name="chain")[0].module, host_target)
    kernels = scheduled(module)
    for kind, loop_name in REDUCTION_LOOP.items():
        copies, tests = copies_and_tile_tests(partitioned(kernels[kind], host_target), loop_name)
        assert tests == 0, kind
        assert has_tail(kernels[kind]) == (width == 13), kind
        assert copies == (2 if width == 13 else 1), kind


@pytest.mark.parametrize("cpu", [AVX512, NEON], ids=["avx512", "neon"])
@pytest.mark.parametrize("width", [13, 19, 27, 37, 55])
def test_prime_rows_get_wide_tiles(cpu: CpuInfo, width: int) -> None:
    """Tiles of SqueezeNet's and Xception's rows are neither 1 pixel nor the whole row, and
    they fit the registers."""
    oc, count = rules.pointwise_row_tile(width, 16, cpu)
    assert cpu.tile_fits(oc * count, weights=oc, inputs=count)
    assert 1 < count < width
    tile = rules.depthwise_row_tile(width, cpu)
    assert 1 < tile < width and tile <= cpu.row_tile_limit
    # Loads per output block and row: fewer than the best tile that divides a prime row
    # (55 = 5 × 11 may keep its dividing tile).
    divides = rules.pointwise_tile(rules.pixel_tiles(width), 16, cpu)
    loads = rules._row_loads(width, divides[0], divides[1]) / divides[0]
    if width in (13, 19, 37):
        assert rules._row_loads(width, oc, count) / oc < loads
    else:
        assert rules._row_loads(width, oc, count) / oc <= loads


@pytest.mark.parametrize("cpu", [AVX512, NEON], ids=["avx512", "neon"])
@pytest.mark.parametrize("width", [7, 14, 28, 56, 112])
def test_rows_the_old_tiles_divide_keep_them(cpu: CpuInfo, width: int) -> None:
    """The zoo's usual maps keep their dividing tiles: a tail must pay for itself."""
    assert rules.depthwise_row_tile(width, cpu) == rules.depthwise_tile(width, cpu)
    for out_blocks in (6, 16, 36):
        expected = rules.pointwise_tile(rules.pixel_tiles(width), out_blocks, cpu)
        chosen = rules.pointwise_row_tile(width, out_blocks, cpu)
        assert chosen == expected or width % chosen[1], (out_blocks, chosen, expected)


@pytest.mark.slow
@pytest.mark.emulator
def test_prime_width_on_the_emulated_board(rootfs: Path, tmp_path: Path) -> None:
    """The 4-lane NEON tiles with their tails (the pool's too), run on the emulated
    Cortex-A72. Slow (about a minute); the default run's emulated-board test in
    ``test_conv_schedules.py`` runs tails of the other kinds at 15 columns."""
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.schedules import compile_relax
    from edgecompile.toolchain import toolchain_for

    preset = resolve_target("rpi4")
    path, weights = chain(tmp_path, 37)
    relax_model, _ = import_onnx(path, name="chain")
    module, _ = optimize(relax_model.module, preset.tvm_target())
    assert has_tail(scheduled(module)[DEPTHWISE])
    executable, records = compile_relax(relax_model.module, preset.tvm_target())
    assert {r["schedule"] for r in records} == {POINTWISE, DEPTHWISE, DENSE, POOL}
    library = tmp_path / "chain_rpi4.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    data = np.random.default_rng(3).standard_normal((1, CHANNELS[0], HEIGHT, 37))
    data = data.astype("float32")
    (actual,) = run_library_in_rootfs(rootfs, library, {"input": data})
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE
