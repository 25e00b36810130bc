"""The schedule of a folded conv (a dlight-style rule, tried with ours in
:func:`edgecompile.schedules.pipeline.schedule_rules`)."""

from __future__ import annotations

from typing import Any

#: The ``schedule`` of a folded conv :class:`Int8ConvNCHW` scheduled (manifest, ``--explain``).
INT8_SCHEDULE = "edgecompile-int8 (NCHW)"
#: The ``schedule`` of a channel-blocked folded conv, on AVX-512 VNNI's ``vpdpbusd``.
INT8_VNNI_SCHEDULE = "edgecompile-int8 (blocked, VNNI)"
#: The ``schedule`` of a folded conv left to TVM's default lowering (the rule failed).
INT8_UNSCHEDULED = "edgecompile-int8 (NCHW, TVM lowering)"
#: Accumulator registers of the blocked conv's tile (of AVX-512's 32): the rest hold the
#: weight vector and the broadcast input.
_VNNI_TILE_REGISTERS = 24


def has_blocked_kernel(target: Any) -> bool:
    """Whether ``target`` has a kernel for the channel-blocked integer conv (AVX-512 VNNI)."""
    from tvm.target.codegen import target_has_features

    return bool(target_has_features("avx512vnni", target))


def _largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


class Int8ConvNCHW:  # a dlight-style rule, tried like ours (pipeline.schedule_rules)
    """A simple schedule for a folded conv: a register tile of a few output channels × a row
    segment of pixels (the vector), the reduction outside the tile, each output row requantized
    right after it is accumulated. Vector lanes are int32 (the accumulator), from the target."""

    schedule_name = INT8_SCHEDULE
    blocked = False
    loops = ("n", "o", "y", "x", "ic", "ky", "kx")  # the acc block's, as the compute makes it

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        from tvm import s_tir, tirx

        from edgecompile.schedules.cpu import cpu_info

        if not isinstance(func, tirx.PrimFunc):
            return None
        if self.blocked:
            # TVM's tensor intrinsics are written with int32 indices; Relax gives int64 ones.
            # Narrowing refuses a kernel with an int64 buffer (CondenseNet's index_select): not
            # ours, and it must not fail the whole pipeline.
            if any(str(param.dtype) in ("int64", "uint64") for param in func.params):
                return None
            import tvm

            func = tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
        sch = s_tir.Schedule(func)
        try:
            acc = sch.get_sblock("int8_acc")
            requantize = sch.get_sblock("int8_requantize")
        except Exception:  # not one of ours: TVM raises its own error type for a missing block
            return None
        if len(sch.get_loops(acc)) != len(self.loops):
            return None  # the other layout's kernel
        if self.blocked and not has_blocked_kernel(target):
            return None  # compiled for another target than folded for: TVM lowers it
        try:
            return self._schedule(sch, acc, requantize, cpu_info(target).lanes)
        except Exception as error:  # a primitive refused: this kernel keeps TVM's lowering
            from edgecompile.errors import last_line
            from edgecompile.schedules.rules import ScheduleFailed

            raise ScheduleFailed(f"{self.schedule_name}: {last_line(error)}") from None

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


class Int8ConvBlocked(Int8ConvNCHW):
    """The channel-blocked folded conv (:func:`.compute.blocked_integer_conv2d`) on AVX-512
    VNNI."""

    schedule_name = INT8_VNNI_SCHEDULE
    blocked = True
    loops = ("n", "ob", "y", "x", "o", "ic", "ky", "kx", "ii")

    def _schedule(self, sch: Any, acc: Any, requantize: Any, lanes: int) -> Any:
        """A register tile of output blocks × pixels of one row, accumulated over the input
        blocks and the window with one ``vpdpbusd`` per (block, pixel), then requantized
        straight from the registers into the NCHW output."""
        from edgecompile.schedules.int8.intrinsics import vnni_intrinsic
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        sch.compute_inline(sch.get_sblock("int8_pad"))
        n, ob, y, x, o, ic, ky, kx, ii = sch.get_loops(acc)
        out_blocks, out_w = int(sch.get(ob).extent), int(sch.get(x).extent)
        ob_tile = 2 if out_blocks % 2 == 0 and out_w >= 4 else 1
        x_tile = _largest_divisor(out_w, _VNNI_TILE_REGISTERS // ob_tile)
        ob_outer, ob_inner = sch.split(ob, [None, ob_tile])
        x_outer, x_inner = sch.split(x, [None, x_tile])
        sch.reorder(n, ob_outer, y, x_outer, ic, ky, kx, ob_inner, x_inner, o, ii)
        # The tile's accumulators in a local buffer (registers once unrolled), requantized
        # where the tile ends: the int32 accumulators never reach memory.
        tile = sch.cache_write(acc, 0, "local")
        sch.compute_inline(tile)
        sch.reverse_compute_at(requantize, x_outer)
        # Each output channel's pixels are contiguous in NCHW: one vector store per channel.
        sch.vectorize(sch.get_loops(requantize)[-1])
        sch.unroll(ob_inner)
        sch.unroll(x_inner)
        sch.parallel(sch.fuse(n, ob_outer, y))
        sch.annotate(acc, SCHEDULED_BY_ATTR, INT8_VNNI_SCHEDULE)
        # Last: parallel refuses a reduction whose init was split off, and the intrinsic
        # matches only the update block.
        init = sch.decompose_reduction(acc, ic)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(o, vnni_intrinsic())
        return sch
