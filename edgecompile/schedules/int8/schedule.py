"""The schedule of a folded conv (a dlight-style rule, tried with ours in
:func:`edgecompile.schedules.pipeline.schedule_rules`)."""

from __future__ import annotations

from typing import Any

#: The ``schedule`` of a folded conv :class:`Int8ConvNCHW` scheduled (manifest, ``--explain``).
INT8_SCHEDULE = "edgecompile-int8 (NCHW)"
#: The ``schedule`` of a folded conv left to TVM's default lowering (the rule failed).
INT8_UNSCHEDULED = "edgecompile-int8 (NCHW, TVM lowering)"


def _largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


class Int8ConvNCHW:  # a dlight-style rule, tried like ours (pipeline.schedule_rules)
    """A simple schedule for a folded conv: a register tile of a few output channels × a row
    segment of pixels (the vector), the reduction outside the tile, each output row requantized
    right after it is accumulated. Vector lanes are int32 (the accumulator), from the target."""

    schedule_name = INT8_SCHEDULE

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        from tvm import s_tir, tirx

        from edgecompile.schedules.cpu import cpu_info

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        try:
            acc = sch.get_sblock("int8_acc")
            requantize = sch.get_sblock("int8_requantize")
        except Exception:  # not one of ours: TVM raises its own error type for a missing block
            return None
        try:
            return self._schedule(sch, acc, requantize, cpu_info(target).lanes)
        except Exception as error:  # a primitive refused: this kernel keeps TVM's lowering
            from edgecompile.errors import last_line
            from edgecompile.schedules.rules import ScheduleFailed

            raise ScheduleFailed(f"{INT8_SCHEDULE}: {last_line(error)}") from None

    def _schedule(self, sch: Any, acc: Any, requantize: Any, lanes: int) -> Any:
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        # lanes: the target's float32 lanes, as many int32 accumulators.
        n, o, y, x, ic, ky, kx = sch.get_loops(acc)
        extents = [int(sch.get(loop).extent) for loop in (o, x)]
        o_outer, o_inner = sch.split(o, [None, _largest_divisor(extents[0], 8)])
        x_outer, x_inner = sch.split(x, [None, _largest_divisor(extents[1], lanes)])
        sch.reorder(n, o_outer, y, x_outer, ic, ky, kx, o_inner, x_inner)
        sch.reverse_compute_at(requantize, y)
        sch.unroll(o_inner)
        sch.vectorize(x_inner)
        sch.vectorize(sch.get_loops(requantize)[-1])
        # Marked like our other rules' blocks: a tuning record replaying it says who made it.
        sch.annotate(acc, SCHEDULED_BY_ATTR, INT8_SCHEDULE)
        # Last: the primitives above check the block is still a whole reduction.
        sch.decompose_reduction(acc, ic)
        return sch
