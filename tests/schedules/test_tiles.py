"""The register-tile arithmetic the schedules derive from the target, on every preset kind, and
the channel arithmetic of grouped convs and shuffles in the blocked layout."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompile.schedules import cpu_info
from edgecompile.schedules.channels import ChannelOrder, grouped_layout
from edgecompile.schedules.cpu import CpuInfo
from edgecompile.schedules.rules import (
    MAX_POINTWISE_OUT_TILE,
    depthwise_tile,
    pixel_tiles,
    pointwise_tile,
)
from edgecompile.targets import resolve_target

# The feature maps of the zoo's models at 224² and 160², plus odd ones.
MAPS = [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (80, 80), (10, 10), (5, 5), (15, 15)]
MAPS += [(13, 13), (7, 9), (1, 1), (3, 17)]


@pytest.mark.parametrize(
    ("preset", "lanes", "registers"),
    [
        ("host", None, None),
        ("rpi4", 4, 32),
        ("rpi3-armv7", 4, 16),
        ("aarch64", 4, 32),
        # The stand-ins: from the target's features, not this machine's (AVX-512 here).
        ("x86-64-v2", 4, 16),
        ("x86-64-v3", 8, 16),
    ],
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
    # NEON: 12 accumulators + 2 live steps x (3 weight vectors + 4 inputs) = 26 <= 32 - 2;
    # (3, 8), which counted one broadcast only, spilled.
    assert pointwise_tile(pixel_tiles(56), 36, neon) == (3, 4)


def test_avx512_tiles_keep_the_budget_the_host_schedules_were_timed_with() -> None:
    """AVX-512 folds its broadcasts into the FMAs, so its budget stays accumulators + weights
    + 1 of all 32 registers: the host's tiles are the ones it was timed with."""
    avx512 = CPUS[0]
    assert avx512.folds_broadcasts and avx512.tile_registers == 32
    for _, width in MAPS:
        pixels = pixel_tiles(width)
        for out_blocks in (1, 2, 3, 5, 6, 15, 20, 60, 80):
            fitting = [
                (oc * p / (oc + p), oc * p, p, oc)
                for oc in range(1, min(out_blocks, MAX_POINTWISE_OUT_TILE) + 1)
                if out_blocks % oc == 0
                for p in pixels
                if oc * p + oc + 1 <= 32
            ]
            best = max(fitting)
            assert pointwise_tile(pixels, out_blocks, avx512) == (best[3], best[2])
        assert depthwise_tile(width, avx512) <= avx512.tile_registers - 3


@pytest.mark.parametrize("cpu", CPUS[1:], ids=lambda c: f"{c.arch}-{c.lanes}x{c.registers}")
def test_tiles_without_folded_broadcasts_count_every_input(cpu: CpuInfo) -> None:
    """SSE, AVX2 and NEON load each pixel's input into a register, and LLVM keeps the next
    reduction step's operands live too: a tile leaves room for both steps."""
    for _, width in MAPS:
        for out_blocks in (1, 2, 3, 5, 6, 15, 20, 60, 80):
            oc, count = pointwise_tile(pixel_tiles(width), out_blocks, cpu)
            assert oc * count + cpu.operand_steps * (oc + count) <= cpu.tile_registers
        assert depthwise_tile(width, cpu) <= cpu.registers // 4


@pytest.mark.parametrize("cpu", CPUS, ids=lambda c: f"{c.arch}-{c.lanes}x{c.registers}")
def test_depthwise_tile_divides_the_row(cpu: CpuInfo) -> None:
    for _, width in MAPS:
        tile = depthwise_tile(width, cpu)
        assert width % tile == 0
        assert tile + 3 <= cpu.tile_registers


@pytest.mark.parametrize(
    ("out_channels", "groups", "in_per_group", "block", "blocks_per_row", "total", "waste"),
    [
        (240, 3, 20, 16, 5, 240, 1.0),  # 80 per group: whole blocks, no waste
        (60, 3, 80, 16, 2, 96, 1.6),  # 20 per group: each padded to 32 lanes
        (96, 8, 6, 16, 1, 128, 4 / 3),  # 12 per group: padded to 16 beats straddling blocks
        (32, 8, 4, 16, 1, 32, 4.0),  # 4 per group: a tie, so channels stay in order
        (60, 3, 80, 4, 5, 60, 1.0),  # NEON: 20 per group is 5 whole 4-lane blocks
    ],
)
def test_grouped_layout(
    out_channels: int,
    groups: int,
    in_per_group: int,
    block: int,
    blocks_per_row: int,
    total: int,
    waste: float,
) -> None:
    layout = grouped_layout(out_channels, groups, in_per_group, block)
    assert layout.blocks_per_row == blocks_per_row
    assert layout.out_order.total == total
    assert layout.waste == pytest.approx(waste)
    # Every output block reads exactly the inputs of the groups its lanes hold.
    per_group = out_channels // groups
    lane_channel = layout.out_order.channel_of_lane()
    for index in range(total // block):
        lanes = lane_channel[index * block : (index + 1) * block]
        needed = {
            c // per_group * in_per_group + i for c in lanes if c >= 0 for i in range(in_per_group)
        }
        row = layout.rows[index // layout.blocks_per_row]
        assert needed <= set(row[row >= 0].tolist())


def test_shuffled_order_matches_torch() -> None:
    """Reading channel ``k`` of the shuffled value through the order gives torch's shuffle."""
    import torch

    from edgecompile.zoo.layers import channel_shuffle

    values = torch.arange(60.0).reshape(1, 60, 1, 1)
    expected = channel_shuffle(values, 3, 60).flatten().numpy()
    order = ChannelOrder.identity(60, 16).shuffled(3)
    stored = np.zeros(order.total)
    stored[:60] = values.flatten().numpy()  # the unshuffled data, identity lanes
    np.testing.assert_array_equal(stored[order.lanes], expected)
