"""A K×K conv's row tile keeps its last tile busy: a 1-pixel tail runs the whole window on too few
accumulators to hide the FMA latency, so a tile within a small slack of the fewest loads per FMA
whose narrowest tile holds more accumulators wins."""

from __future__ import annotations

import pytest

from edgecompile.schedules import rules
from edgecompile.schedules.cpu import cpu_info
from edgecompile.targets import resolve_target


def _narrowest(width: int, oc: int, count: int) -> int:
    return oc * (width % count or count)


def _reuse(width: int, oc: int, count: int) -> float:
    return oc * width / rules._row_loads(width, oc, count)


@pytest.mark.parametrize("width", [7, 13, 14, 19, 27, 37, 55])
@pytest.mark.parametrize("out_blocks", [12, 16])
@pytest.mark.parametrize("preset", ["host", "rpi4"])
def test_window_tile_keeps_the_tail_busy_within_the_load_slack(
    width: int, out_blocks: int, preset: str
) -> None:
    cpu = cpu_info(resolve_target(preset).tvm_target()).across_window()
    oc, count = rules.window_row_tile(width, out_blocks, cpu)
    base = rules.pointwise_row_tile(width, out_blocks, cpu)
    assert out_blocks % oc == 0 and cpu.tile_fits(oc * count, weights=oc, inputs=count)
    assert _reuse(width, oc, count) * rules.WINDOW_LOAD_SLACK >= _reuse(width, *base)
    busy = min(_narrowest(width, oc, count), rules.LATENCY_ACCUMULATORS)
    assert busy >= min(_narrowest(width, *base), rules.LATENCY_ACCUMULATORS)
    if (oc, count) != base:
        assert busy > _narrowest(width, *base)


@pytest.mark.parametrize(
    ("width", "out_blocks", "before", "after"),
    [(13, 16, (4, 6), (4, 5)), (13, 12, (6, 4), (4, 5)), (7, 32, (4, 6), (4, 4))],
)
def test_measured_window_tiles_on_avx512(
    width: int, out_blocks: int, before: tuple[int, int], after: tuple[int, int]
) -> None:
    """The measured cases (this host, 1 thread: 8%, 8% and 13% faster than ``before``)."""
    cpu = cpu_info(resolve_target("host").tvm_target()).across_window()
    if cpu.lanes != 16:
        pytest.skip("the measured tiles are AVX-512's")
    assert rules.pointwise_row_tile(width, out_blocks, cpu) == before
    assert rules.window_row_tile(width, out_blocks, cpu) == after
