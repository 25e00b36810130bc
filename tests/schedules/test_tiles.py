"""The register-tile arithmetic the schedules derive from the target, on every preset kind."""

from __future__ import annotations

import pytest

from edgecompile.schedules import cpu_info
from edgecompile.schedules.cpu import CpuInfo
from edgecompile.schedules.rules import depthwise_tile, pixel_tiles, pointwise_tile
from edgecompile.targets import resolve_target

# The feature maps of the zoo's models at 224² and 160², plus odd ones.
MAPS = [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (80, 80), (10, 10), (5, 5), (15, 15)]
MAPS += [(13, 13), (7, 9), (1, 1), (3, 17)]


@pytest.mark.parametrize(
    ("preset", "lanes", "registers"),
    [("host", None, None), ("rpi4", 4, 32), ("rpi3-armv7", 4, 16), ("aarch64", 4, 32)],
)
def test_cpu_info_from_target(preset: str, lanes: int | None, registers: int | None) -> None:
    info = cpu_info(resolve_target(preset).tvm_target())
    assert info.cores == resolve_target(preset).threads or preset == "host"
    if lanes is None:  # this machine: whatever LLVM says, consistently
        assert info.lanes in (4, 8, 16)
        assert info.registers == (32 if info.lanes == 16 else 16)
    else:
        assert (info.lanes, info.registers) == (lanes, registers)


CPUS = [
    CpuInfo("x86_64", lanes=16, registers=32, cores=2),
    CpuInfo("x86_64", lanes=8, registers=16, cores=4),
    CpuInfo("aarch64", lanes=4, registers=32, cores=4),
    CpuInfo("armv7l", lanes=4, registers=16, cores=4),
]


@pytest.mark.parametrize("cpu", CPUS, ids=lambda c: f"{c.arch}-{c.lanes}x{c.registers}")
def test_pointwise_tile_fits_the_registers(cpu: CpuInfo) -> None:
    for _, width in MAPS:
        pixels = pixel_tiles(width)
        for out_blocks in (1, 2, 3, 5, 6, 15, 20, 60, 80):
            oc, count = pointwise_tile(pixels, out_blocks, cpu)
            assert oc * count + oc + 1 <= cpu.tile_registers  # accumulators + weights + broadcast
            assert out_blocks % oc == 0
            assert count in pixels


def test_pixel_tiles_divide_the_row() -> None:
    for _, width in MAPS:
        assert all(width % count == 0 for count in pixel_tiles(width))


def test_pointwise_tile_prefers_reuse() -> None:
    avx512, neon = CPUS[0], CPUS[2]
    assert pointwise_tile(pixel_tiles(56), 6, avx512) == (6, 4)  # 24 acc + 6 w + 1 = 31
    assert pointwise_tile(pixel_tiles(7), 20, avx512) == (2, 7)  # (4, 7) would need 33
    assert pointwise_tile(pixel_tiles(56), 36, neon) == (3, 8)  # 28 <= 32 - 2


@pytest.mark.parametrize("cpu", CPUS, ids=lambda c: f"{c.arch}-{c.lanes}x{c.registers}")
def test_depthwise_tile_divides_the_row(cpu: CpuInfo) -> None:
    for _, width in MAPS:
        tile = depthwise_tile(width, cpu)
        assert width % tile == 0
        assert tile + 3 <= cpu.tile_registers
