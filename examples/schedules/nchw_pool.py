"""A user schedule for the pools edgecompile leaves at TVM's default: NCHW average/max pooling.

Our layout pass moves a pool to the channel-blocked layout only when its input already is
blocked. The pools on the image itself (ESPNet v2's input reinforcement averages the 3-channel
image down 3x3/2 at every level; ESPNet v1 likewise) and a few on plain NCHW tensors stay NCHW,
where no rule of ours claims them, and TVM lowers each to three serial loop nests: copy the
padded input, sum every window into a buffer, divide into the output -- one thread, both
intermediates in memory.

This rule computes each output element's window sum (or max) in a register right before it is
written, reads the input through a bounds test instead of a padded copy, and unrolls the
window. Elementwise ops Relax fused after the pool are folded into the output's loop. Measured
on this project's host, one thread: 1.7-3.8x faster than TVM's default on ESPNet v2's pool
shapes (see docs/custom-schedules.md).

Build with it: ``edgecompile build espnet_v2 --schedules examples/schedules --explain``.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

from edgecompile.schedules.user import ScheduleFailed, schedule

#: The window-reduction blocks TOPI's ``pool2d`` makes (the kernels LegalizeOps gives NCHW
#: ``avg_pool2d``/``max_pool2d``). Our blocked pools are ``pool_nchwc``, global pools
#: ``adaptive_pool_*``: neither matches, so this rule never takes a kernel ours handle.
REDUCTIONS = ("pool_sum", "pool_max")
#: The average's division: the pool's output when there is one.
AVERAGE = "pool_avg"


@schedule("nchw_pool")
def nchw_pool(func: tirx.PrimFunc, target: Any) -> s_tir.Schedule | None:
    """Schedule a fused PrimFunc holding one NCHW pool; None for any other kernel."""
    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # no root block: not a kernel LegalizeOps made
        return None
    blocks = {sch.get(block).name_hint: block for block in sch.get_child_blocks(root)}
    found = [name for name in REDUCTIONS if name in blocks]
    if len(found) != 1:
        return None
    reduction = blocks[found[0]]
    if len(sch.get_loops(reduction)) != 6:  # n, c, h, w, kh, kw: a 2-D pool in NCHW
        return None
    try:
        _schedule_pool(sch, reduction, blocks.get(AVERAGE))
    except s_tir.ScheduleError as error:  # ours to claim, but a primitive refused: say why
        raise ScheduleFailed(str(error).strip().splitlines()[-1]) from None
    return sch


def _schedule_pool(sch: s_tir.Schedule, reduction: Any, average: Any | None) -> None:
    for producer in sch.get_producers(reduction):
        if sch.get(producer).name_hint.startswith("pad"):
            # The padded copy becomes a bounds test per load: one pass over the input instead
            # of two. (Copying the padded rows per output row instead, with unguarded loads,
            # measured 1.4-3.6x slower than this: the bounds tests predict perfectly.)
            sch.compute_inline(producer)
    # The block that writes each output element: the division of an average pool; for a max
    # pool, a write-back from a register accumulator.
    if average is not None:
        sch.set_scope(reduction, 0, "local")
        output = average
    else:
        output = sch.cache_write(reduction, 0, "local")
    _inline_elementwise_consumers(sch, output)
    w = sch.get_loops(output)[3]
    # One output element's window, summed in a register right before its division: neither
    # the window sums nor the max go through memory.
    sch.compute_at(reduction, w)
    for loop in sch.get_loops(reduction)[-2:]:  # kh, kw: a 3x3 window is 9 straight adds
        sch.unroll(loop)
    # No sch.parallel over the rows: on the loaded 2-core host these numbers come from,
    # parallel rows ran 3-6x slower than one thread (the kernels take 10-50 us; waking the
    # thread pool costs more). On an idle multi-core board, try sch.parallel(sch.fuse(n, c, h)).


def _inline_elementwise_consumers(sch: s_tir.Schedule, block: Any) -> None:
    """Fold what Relax fused after the pool (a bias, an activation) into the output's loop."""
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:  # not elementwise: it stays a loop nest of its own
            return
