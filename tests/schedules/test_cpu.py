"""What the schedules read from a target: caches per preset, from sysfs for this machine, and the
pointwise loop order they pick."""

from __future__ import annotations

from pathlib import Path

import pytest
import tvm

from edgecompile.schedules import cpu_info
from edgecompile.schedules.cpu import (
    CORE_CACHES,
    GENERIC_CACHES,
    KIB,
    SOC_CACHES,
    CacheLevel,
    CpuInfo,
    host_caches,
    target_caches,
)
from edgecompile.schedules.rules import INPUTS_STAY, WEIGHTS_STAY, choose_loop_order
from edgecompile.targets import list_presets


@pytest.mark.parametrize("preset", list_presets(), ids=lambda p: p.name)
def test_every_preset_has_caches(preset) -> None:
    info = cpu_info(preset.tvm_target())
    levels = [level.level for level in info.caches]
    assert levels == sorted(levels) and levels[0] == 1
    l1 = info.caches[0]
    assert l1.shared_by == 1 and l1.size >= 16 * KIB
    assert info.cache_per_core >= l1.size
    model = str(preset.target.get("model", ""))
    if model:
        assert info.caches == SOC_CACHES[model]


def test_cache_per_core_divides_shared_levels() -> None:
    rpi4 = CpuInfo("aarch64", 4, 32, cores=4, caches=SOC_CACHES["bcm2711"])
    assert rpi4.cache_per_core == 256 * KIB  # 1 MiB L2 for 4 cores
    rpi5 = CpuInfo("aarch64", 4, 32, cores=4, caches=SOC_CACHES["bcm2712"])
    assert rpi5.cache_per_core == 512 * KIB  # its private L2 (the L3 gives 512 KiB a core too)
    # Two of four cores in use by the build's threads: a shared level splits two ways.
    assert CpuInfo("aarch64", 4, 32, cores=2, caches=SOC_CACHES["bcm2711"]).cache_per_core == (
        512 * KIB
    )


def _llvm(**attrs: object) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", **attrs})


def test_caches_by_soc_then_core_then_generic() -> None:
    cross = {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert (
        target_caches(_llvm(mcpu="cortex-a72", model="bcm2711", **cross)) == SOC_CACHES["bcm2711"]
    )
    assert target_caches(_llvm(mcpu="cortex-a76", **cross)) == CORE_CACHES["cortex-a76"]
    assert target_caches(_llvm(mcpu="generic", **cross)) == GENERIC_CACHES


def test_host_caches_from_sysfs(tmp_path: Path) -> None:
    entries = [
        ("Data", 1, "48K", "0"),
        ("Instruction", 1, "32K", "0"),
        ("Unified", 2, "2048K", "0-1"),
        ("Unified", 3, "32M", "0-7,16-23"),
    ]
    for number, (kind, level, size, shared) in enumerate(entries):
        index = tmp_path / f"index{number}"
        index.mkdir()
        (index / "type").write_text(kind + "\n")
        (index / "level").write_text(f"{level}\n")
        (index / "size").write_text(size + "\n")
        (index / "shared_cpu_list").write_text(shared + "\n")
    assert host_caches(tmp_path) == (
        CacheLevel(1, 48 * KIB, 1),
        CacheLevel(2, 2048 * KIB, 2),
        CacheLevel(3, 32 * KIB * KIB, 16),
    )
    assert host_caches(tmp_path / "missing") == ()


def test_this_machine_reads_its_own_caches() -> None:
    from edgecompile.targets import resolve_target

    expected = host_caches() or GENERIC_CACHES
    assert cpu_info(resolve_target("host").tvm_target()).caches == expected


SMALL = CpuInfo("aarch64", 4, 32, cores=4, caches=SOC_CACHES["bcm2711"])  # 256 KiB a core


@pytest.mark.parametrize(
    ("input_kib", "weight_kib", "output_kib", "out_tiles", "pixel_tiles", "expected"),
    [
        # MobileNet v1's 32→64 at 112²: the input comes back from memory per output tile.
        (1568, 8, 3136, 4, 1792, INPUTS_STAY),
        # Everything fits: keep the weights in L1 (ties keep the weights).
        (100, 50, 100, 4, 100, WEIGHTS_STAY),
        # One output tile: the input streams once either way.
        (1568, 8, 3136, 1, 1792, WEIGHTS_STAY),
        # Weights too big to stay: sweeping them per pixel tile costs far more.
        (1369, 728, 3893, 23, 1369, WEIGHTS_STAY),
        # Weights filling the whole cache do not stay (Xception's 256→256 at 74²: 7.6x the
        # traffic when they were taken to).
        (5476, 256, 5476, 8, 1369, WEIGHTS_STAY),
        # The input fits, but the output written between two of its reads evicts it
        # (SqueezeNet's 16→64 at 55²).
        (189, 4, 756, 4, 605, INPUTS_STAY),
        # The input and its tile's share of weights and output fit: it stays.
        (196, 4096, 196, 128, 7, WEIGHTS_STAY),
    ],
)
def test_choose_loop_order(
    input_kib: int,
    weight_kib: int,
    output_kib: int,
    out_tiles: int,
    pixel_tiles: int,
    expected: str,
) -> None:
    order = choose_loop_order(
        input_bytes=input_kib * KIB,
        weight_bytes=weight_kib * KIB,
        output_bytes=output_kib * KIB,
        out_tiles=out_tiles,
        pixel_tiles=pixel_tiles,
        cpu=SMALL,
    )
    assert order == expected


def test_a_big_cache_keeps_the_weights_staying() -> None:
    big = CpuInfo("x86_64", 16, 32, cores=2, caches=(CacheLevel(3, 32 * KIB * KIB, 2),))
    order = choose_loop_order(
        input_bytes=1568 * KIB,
        weight_bytes=8 * KIB,
        output_bytes=3136 * KIB,
        out_tiles=4,
        pixel_tiles=1792,
        cpu=big,
    )
    assert order == WEIGHTS_STAY


SSE = CpuInfo("x86_64", lanes=4, registers=16, cores=1, fma=False)
AVX2 = CpuInfo("x86_64", lanes=8, registers=16, cores=1)
AVX512 = CpuInfo("x86_64", lanes=16, registers=32, cores=1)
NEON = CpuInfo("aarch64", lanes=4, registers=32, cores=4)


@pytest.mark.parametrize(
    ("preset", "fma"),
    [("x86-64-v2", False), ("x86-64-v3", True), ("rpi4", True), ("armv7", False)],
)
def test_fma_from_the_target(preset: str, fma: bool) -> None:
    from edgecompile.targets import resolve_target

    assert cpu_info(resolve_target(preset).tvm_target()).fma is fma


def test_only_x86_below_avx512_reads_single_use_weights_from_memory() -> None:
    assert SSE.reads_weights_from_memory and AVX2.reads_weights_from_memory
    assert not AVX512.reads_weights_from_memory and not NEON.reads_weights_from_memory
    # 8 accumulators + the broadcasts of 2 live steps + 1 product fit SSE's 15; 13 do not.
    assert SSE.single_pixel_tile_fits(8) and not SSE.single_pixel_tile_fits(13)


@pytest.mark.parametrize(
    ("out_blocks", "expected"),
    [(24, (8, 1)), (36, (6, 1)), (6, (6, 1)), (4, (2, 2)), (5, (5, 1)), (1, (2, 2))],
)
def test_sse_pointwise_tiles_hold_more_chains_in_one_pixel(
    out_blocks: int, expected: tuple[int, int]
) -> None:
    """The analytic 2 × 2 tile has 4 accumulator chains; a one-pixel tile of up to 8 output
    blocks that divide the layer's replaces it where it holds more (not where it ties)."""
    from edgecompile.schedules.rules import single_pixel_tile

    assert single_pixel_tile((2, 2), out_blocks, SSE) == expected


def test_targets_with_fma_keep_the_analytic_pointwise_tile() -> None:
    """AVX-512 and NEON hold their weights in registers; AVX2 reads them from memory too, but
    with FMA its 1-pixel tiles gained little and spilled SqueezeNet's hoisted weights."""
    from edgecompile.schedules.rules import pointwise_row_tile, single_pixel_tile

    for cpu in (AVX512, NEON, AVX2):
        for width, out_blocks in ((56, 6), (28, 24), (7, 36), (14, 40)):
            chosen = pointwise_row_tile(width, out_blocks, cpu)
            assert single_pixel_tile(chosen, out_blocks, cpu) == chosen


def test_avx2_pointwise_tiles_fill_the_registers_one_step_holds() -> None:
    """AVX2's analytic 2 × 2 (two steps' operands budgeted) holds 4 FMA chains; one step holds
    only its accumulators, its weight vectors and one broadcast, so the tile with the fewest
    loads per FMA within 16 registers: the tiles the tuning search found and the layers alone
    ran faster with (96 → 24 at 56²: 3 × 4; 960 → 160 at 7², a row tail: 5 × 2; 96 → 576 at
    14²: 3 × 4, a row tail beating 4 × 2 by more than TAIL_GAIN). Targets without AVX2's
    memory-operand FMA keep their tiles."""
    from edgecompile.schedules.rules import fma_chains_tile, pointwise_row_tile

    for width, out_blocks, tile in ((56, 3, (3, 4)), (7, 20, (5, 2)), (14, 72, (3, 4))):
        chosen = pointwise_row_tile(width, out_blocks, AVX2)
        assert fma_chains_tile(chosen, width, out_blocks, AVX2) == tile
        oc, pixels = tile
        assert oc * pixels + oc + 1 <= AVX2.registers
    assert fma_chains_tile((1, 1), 7, 1, AVX2) == (1, 7)  # one block: the whole row
    for cpu in (AVX512, NEON, SSE):
        for width, out_blocks in ((56, 6), (28, 24), (7, 36), (14, 40)):
            chosen = pointwise_row_tile(width, out_blocks, cpu)
            assert fma_chains_tile(chosen, width, out_blocks, cpu) == chosen
