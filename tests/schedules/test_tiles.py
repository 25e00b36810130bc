"""The register-tile arithmetic the schedules derive from the target, on every preset kind, and
the channel arithmetic of grouped convs and shuffles in the blocked layout."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompile.schedules import cpu_info
from edgecompile.schedules.channels import ChannelOrder, grouped_layout
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
