"""A pointwise reduction whose tile's weights do not fit L1 runs in chunks on AVX-512
(``rules.reduction_chunk``): Xception's 728-channel convs, not the short reductions of the
small models, and no other target. Chunked, the kernel adds in the same order: the same bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.schedules import rules
from edgecompile.schedules.cpu import CpuInfo, _caches, cpu_info

LANES = 16
#: This project's host: AVX-512, 48 KiB L1 and 2 MiB L2 per core.
AVX512 = CpuInfo("x86_64", lanes=LANES, registers=32, cores=2, caches=_caches(48, 2048, 1))
AVX2 = CpuInfo("x86_64", lanes=8, registers=16, cores=2, caches=_caches(48, 2048, 1))
NEON = CpuInfo("aarch64", lanes=4, registers=32, cores=4, caches=_caches(32, 1024, 4))


def blocks(channels: int, lanes: int = LANES) -> int:
    return -(-channels // lanes)


def chunk_weight_bytes(oc_tile: int, chunk: int, lanes: int = LANES) -> int:
    return oc_tile * chunk * lanes * lanes * 4


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "width"),
    [(728, 728, 19), (728, 728, 37), (728, 1024, 19), (1536, 2048, 10)],
)
def test_long_reductions_run_in_chunks_whose_weights_fit_l1(
    in_channels: int, out_channels: int, width: int
) -> None:
    in_blocks = blocks(in_channels)
    oc_tile, _ = rules.pointwise_row_tile(width, blocks(out_channels), AVX512)
    tiles = blocks(out_channels) // oc_tile
    # The whole reduction's weights of one tile overflow L1 ...
    assert chunk_weight_bytes(oc_tile, in_blocks) > AVX512.cache_bytes(1)
    chunk = rules.reduction_chunk(oc_tile, tiles, in_blocks, LANES, width * width, AVX512)
    # ... one chunk's fit its share, in as few chunks as that allows.
    assert 1 < chunk < in_blocks
    assert chunk_weight_bytes(oc_tile, chunk) <= AVX512.cache_bytes(1) * rules.CHUNK_L1_SHARE
    budget = int(AVX512.cache_bytes(1) * rules.CHUNK_L1_SHARE) // chunk_weight_bytes(oc_tile, 1)
    assert -(-in_blocks // chunk) == -(-in_blocks // budget)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "width"),
    [(128, 128, 147), (128, 256, 74), (256, 728, 37), (64, 128, 147), (16, 64, 55)],
)
def test_reductions_whose_weights_fit_l1_stay_whole(
    in_channels: int, out_channels: int, width: int
) -> None:
    oc_tile, _ = rules.pointwise_row_tile(width, blocks(out_channels), AVX512)
    tiles = blocks(out_channels) // oc_tile
    in_blocks = blocks(in_channels)
    assert rules.reduction_chunk(oc_tile, tiles, in_blocks, LANES, width**2, AVX512) == 0


def test_a_map_whose_tile_outputs_overflow_l2_stays_whole() -> None:
    """Xception's 256 → 256 at 74²: its weights overflow L1, but every chunk would re-read and
    re-write the tile's 1.4 MiB of outputs (it ran 1.15× chunked)."""
    oc_tile, _ = rules.pointwise_row_tile(74, blocks(256), AVX512)
    assert chunk_weight_bytes(oc_tile, blocks(256)) > AVX512.cache_bytes(1)
    many = rules.CHUNK_TILES_PER_CORE * AVX512.cores  # tiles enough for the cores
    assert rules.reduction_chunk(oc_tile, many, blocks(256), LANES, 74 * 74, AVX512) == 0
    # The same reduction on a map a quarter of L2 holds is chunked.
    assert rules.reduction_chunk(oc_tile, many, blocks(256), LANES, 14 * 14, AVX512)


def test_a_conv_of_few_output_tiles_stays_whole() -> None:
    """MobileNet v2's 384 → 64 at 14²: one output-block tile, the chunked nest's only parallel
    loop, would leave the second core idle."""
    oc_tile, _ = rules.pointwise_row_tile(14, blocks(64), AVX512)
    tiles = blocks(64) // oc_tile
    assert tiles < rules.CHUNK_TILES_PER_CORE * AVX512.cores
    assert rules.reduction_chunk(oc_tile, tiles, blocks(384), LANES, 14 * 14, AVX512) == 0
    many = rules.CHUNK_TILES_PER_CORE * AVX512.cores
    assert rules.reduction_chunk(oc_tile, many, blocks(384), LANES, 14 * 14, AVX512)


@pytest.mark.parametrize("cpu", [AVX2, NEON], ids=["avx2", "neon"])
def test_other_targets_keep_one_chunk(cpu: CpuInfo) -> None:
    """Measured on the AVX-512 host only: the stand-ins and the boards keep their kernels."""
    oc_tile, _ = rules.pointwise_row_tile(19, blocks(728, cpu.lanes), cpu)
    in_blocks = blocks(728, cpu.lanes)
    many = rules.CHUNK_TILES_PER_CORE * cpu.cores
    assert rules.reduction_chunk(oc_tile, many, in_blocks, cpu.lanes, 19 * 19, cpu) == 0


def _pointwise_onnx(path: Path, in_channels: int, out_channels: int, height: int, width: int):
    """conv 1×1 + bias → ReLU → + the input (a residual add, fused after the conv)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, in_channels, 1, 1)) / np.sqrt(in_channels)
    bias = rng.standard_normal(out_channels)
    shape = [1, in_channels, height, width]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Add", ["r", "input"], ["output"]),
        ],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=[
            numpy_helper.from_array(weight.astype("float32"), "w"),
            numpy_helper.from_array(bias.astype("float32"), "b"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, weight, bias


def _run(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    from edgecompile.schedules.tir import register_tir_pipeline

    executable = tvm.compile(
        module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(data)).numpy()


def test_xception_width_runs_chunked_with_the_same_bits(
    tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """728 → 728 over a 19-wide row (a tail), with its epilogue: chunked on this machine, equal
    to torch, and bit for bit the kernel of one chunk."""
    import torch
    import torch.nn.functional as F
    import tvm_ffi
    from tvm import tirx

    from edgecompile.export import relative_error
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import POINTWISE, optimize

    cpu = cpu_info(host_target)
    if not cpu.folds_broadcasts:
        pytest.skip("this machine has no AVX-512")
    channels, height, width = 728, 2, 19
    path, weight, bias = _pointwise_onnx(tmp_path / "pw.onnx", channels, channels, height, width)
    relax_model, _ = import_onnx(path, name="pointwise")
    oc_tile, _ = rules.pointwise_row_tile(width, blocks(channels), cpu)
    tiles = blocks(channels) // oc_tile
    chunk = rules.reduction_chunk(oc_tile, tiles, blocks(channels), LANES, height * width, cpu)
    assert chunk

    module, report = optimize(relax_model.module, host_target)
    assert list(report.schedules.applied.values()) == [POINTWISE]
    (kernel,) = [
        func
        for _, func in module.functions_items()
        if isinstance(func, tirx.PrimFunc)
        and str((func.attrs or {}).get("edgecompile.schedule", "")) == POINTWISE
    ]
    # The chunk loop: the input blocks' loop split at the chunk, outside the pixel tiles.
    loops = []

    def visit(node: Any) -> Any:
        loops.append(int(node.extent))
        return node

    tvm_ffi.structural_map(kernel.body, [(tirx.For, visit)])
    assert -(-blocks(channels) // chunk) in loops and chunk in loops
    assert blocks(channels) not in loops  # the whole reduction's loop, unchunked

    data = np.random.default_rng(1).standard_normal((1, channels, height, width))
    data = data.astype("float32")
    chunked = _run(module, host_target, data)
    x = torch.from_numpy(data.astype("float64"))
    w, b = torch.from_numpy(weight), torch.from_numpy(bias)
    expected = (F.relu(F.conv2d(x, w, b)) + x).numpy()
    assert relative_error(chunked, expected) <= 1e-5

    monkeypatch.setattr(rules, "reduction_chunk", lambda *_: 0)
    whole, _ = optimize(relax_model.module, host_target)
    np.testing.assert_array_equal(chunked, _run(whole, host_target, data))


def test_the_chunked_kernel_is_its_design_spaces_default_point(
    tmp_path: Path, host_target: Any
) -> None:
    """Tuning starts from the untuned kernel: the chunked one, whose tiles stay knobs."""
    from tvm import s_tir, tirx
    from tvm.s_tir import meta_schedule as ms

    from edgecompile._tune_workers import build_kernel
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import POINTWISE
    from edgecompile.schedules.knobs import Knobs
    from edgecompile.schedules.pipeline import fused_module

    if not cpu_info(host_target).folds_broadcasts:
        pytest.skip("this machine has no AVX-512")
    path, _, _ = _pointwise_onnx(tmp_path / "pw.onnx", 728, 728, 2, 19)
    fused, _ = fused_module(import_onnx(path)[0].module, host_target)
    (func,) = [
        func.with_attr("global_symbol", "main")
        for _, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc)
        and rules.find_block(s_tir.Schedule(func), POINTWISE) is not None
    ]
    rule = rules.PointwiseNCHWc()
    untuned = rule.try_schedule(func, host_target)
    default = rule.try_schedule(func, host_target, Knobs(tunable=True))
    assert rules.PARTITION_HINT in untuned.mod.script()
    assert any(inst.kind.name == "SamplePerfectTile" for inst in default.trace.insts)
    assert ms.postproc.RewriteParallelVectorizeUnroll().apply(default)

    def asm(mod: Any) -> str:
        return build_kernel(mod, host_target).inspect_source("asm")

    assert asm(default.mod) == asm(untuned.mod)
