"""Schedule rules for the fused PrimFuncs holding one of our blocked computes: pointwise,
depthwise, grouped and dense K×K convolution, pooling, and the classifier's packed matmul.

They run after FuseOps/FuseTIR (dlight-style, :class:`tvm.s_tir.dlight.ScheduleRule`), so a
PrimFunc is the conv plus whatever elementwise epilogue Relax fused into it (bias, BN, ReLU,
ReLU6, h-swish, residual add). The conv result is accumulated in a register tile (a ``local``
cache) and the epilogue is inlined into the tile's write-back, so each output is written once.

Register tile rule: accumulators + operand vectors + 1 must fit the target's vector registers
(:class:`~edgecompile.schedules.cpu.CpuInfo`): past that LLVM spills accumulators to the stack
in the inner loop (a probe measured such tiles 2x slower).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

from edgecompile.errors import last_line
from edgecompile.schedules import compute
from edgecompile.schedules.analysis import child_blocks, has_root_block
from edgecompile.schedules.cpu import CpuInfo, cpu_info

SCHEDULED_ATTR = "edgecompile.schedule"
# Block annotation a hand schedule leaves in its trace: a tuning record that replays the hand
# schedule (it measured fastest) still says which rule made it.
SCHEDULED_BY_ATTR = "edgecompile.scheduled_by"
# Split of the pointwise reduction over the lanes of one input block: unrolling by 4 gave LLVM
# enough independent FMAs to hide latency without blowing up code size.
REDUCTION_UNROLL = 4
MAX_POINTWISE_OUT_TILE = 8
MAX_SPATIAL_TILE = 32
# Output vectors a GEMV accumulates at once: enough independent FMA chains to cover the FMA
# latency while the weight streams in.
MAX_GEMV_ACCUMULATORS = 8
DEPTHWISE_SPATIAL_TARGET = 8
# Loop orders of the register-tiled convs (their outermost tile loop): the output-block tile
# outermost keeps its weights in L1 while every pixel streams past; the pixel tile outermost
# keeps its input column while every weight streams past.
WEIGHTS_STAY = "weights"
INPUTS_STAY = "inputs"
LOOP_ORDER_ATTR = "edgecompile.loop_order"


@dataclass
class ScheduleLog:
    """Which schedule each heavy op (index into ``main``'s heavy ops) actually got."""

    applied: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


@functools.cache
def _cpu(target_json: str) -> CpuInfo:
    import tvm

    return cpu_info(tvm.target.Target(target_json))


def target_cpu(target: Any) -> CpuInfo:
    return _cpu(str(target))


def divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def pixel_tiles(width: int) -> list[int]:
    """Pixel counts a pointwise tile may have: divisors of the output row.

    Tiles never straddle rows (no fused ``h*w`` axis): TIR cannot bound the row of a fused pixel
    index, so CompactBufferAllocation would keep the full-size accumulator buffer with dynamic
    offsets, which LLVM cannot keep in registers (seen on AArch64: loads/stores per FMA).
    """
    return [d for d in divisors(width) if d <= MAX_SPATIAL_TILE]


def pointwise_tile(pixels: list[int], out_blocks: int, cpu: CpuInfo) -> tuple[int, int]:
    """``(output blocks, pixels)`` of the register tile.

    Each reduction step loads ``oc`` weight vectors and broadcasts one input value per pixel
    into ``oc`` FMAs, so the tile maximises FMAs per load, ``oc*p / (oc+p)``, subject to
    ``oc*p`` accumulators + ``oc`` weight vectors + 1 broadcast <= the registers a tile may use
    (:attr:`CpuInfo.tile_registers`).
    ``oc`` divides the output blocks and ``p`` is one of ``pixels``: no predicated tails.
    """
    best: tuple[float, int, int, int] | None = None
    for oc in divisors(out_blocks):
        if oc > MAX_POINTWISE_OUT_TILE:
            break
        for count in pixels:
            if oc * count + oc + 1 > cpu.tile_registers:
                continue
            candidate = (oc * count / (oc + count), oc * count, count, oc)
            if best is None or candidate > best:
                best = candidate
    assert best is not None  # (1, 1) always fits
    return best[3], best[2]


def choose_loop_order(
    *,
    input_bytes: int,
    weight_bytes: int,
    output_bytes: int,
    out_tiles: int,
    pixel_tiles: int,
    cpu: CpuInfo,
    table_rows: int = 1,
) -> str:
    """The loop order of a pointwise (or grouped, or dense K×K) conv that moves fewer bytes
    from beyond the caches.

    With the weights staying, the whole input is read once per output-block tile; between two
    reads of an input line pass that tile's weights and its share of the output, so the input
    stays cached only if all three fit the cache a core can count on
    (:attr:`CpuInfo.cache_per_core`), else it comes from memory ``out_tiles`` times. With the
    inputs staying, all the weights are read once per pixel tile, past that tile's input and
    output. Ties keep the weights staying (each tile then reuses an L1-resident weight slice).
    A grouped conv reads its input in ``table_rows`` disjoint slices, each by its own
    ``out_tiles`` output tiles: a slice, not the whole input, has to stay.
    On this project's x86 host (a 32 MiB L3) no zoo layer flips; on a Raspberry Pi 4 (1 MiB L2
    for 4 cores, no L3) wide early layers do: ``benchmarks/cache_traffic.py`` measures both
    orders under a cache simulator, and this model predicted its misses to within a few percent
    where it matters (e.g. 512→1000 at 13²: 44 vs 27 MiB).
    """
    cache = cpu.cache_per_core
    tiles = out_tiles * table_rows
    input_stays = input_bytes // table_rows + (weight_bytes + output_bytes) // tiles <= cache
    weights_stay_cached = weight_bytes + (input_bytes + output_bytes) // pixel_tiles <= cache
    weights_stay = weight_bytes + input_bytes * (1 if input_stays else out_tiles)
    inputs_stay = input_bytes + weight_bytes * (1 if weights_stay_cached else pixel_tiles)
    return INPUTS_STAY if inputs_stay < weights_stay else WEIGHTS_STAY


def depthwise_tile(out_width: int, cpu: CpuInfo) -> int:
    """Output columns per register tile: a divisor of the width near 8.

    The tile holds that many accumulators plus one weight and one input vector. Around 8
    columns measured best (7 beat 14 on AVX-512); a divisor avoids a predicated tail.
    """
    limit = cpu.tile_registers - 3
    candidates = [d for d in divisors(out_width) if d <= limit]
    return min(candidates, key=lambda d: (abs(d - DEPTHWISE_SPATIAL_TARGET), -d))


def find_block(sch: Any, schedule: str) -> Any | None:
    """The block our compute tagged ``schedule``, if the PrimFunc holds exactly one."""
    found = [
        block
        for block in child_blocks(sch)
        if str(sch.get(block).annotations.get(compute.SCHEDULE_ATTR, "")) == schedule
    ]
    return found[0] if len(found) == 1 else None


def inline_epilogue_intermediates(sch: Any, conv: Any) -> None:
    """Inline the epilogue's intermediate blocks into their consumers, turning a DAG epilogue
    (h-swish reads the conv output twice: ``x * relu6(x + 3) / 6``) into one block per output.

    Only same-shape blocks whose consumers are all same-shape are inlined: a broadcast consumer
    (squeeze-excite's ``x * se``) would recompute the chain once per pixel of the big tensor.
    """
    out_shape = _written_shape(sch, conv)
    changed = True
    while changed:
        changed = False
        frontier, epilogue = list(sch.get_consumers(conv)), []
        while frontier:
            block = frontier.pop()
            if all(not sch.get(block).same_as(sch.get(seen)) for seen in epilogue):
                epilogue.append(block)
                frontier.extend(sch.get_consumers(block))
        for block in epilogue:
            consumers = sch.get_consumers(block)
            if not consumers or _written_shape(sch, block) != out_shape:
                continue
            if any(_written_shape(sch, consumer) != out_shape for consumer in consumers):
                continue
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                continue
            changed = True
            break


def inline_epilogue(sch: Any, writeback: Any, tile_loop: Any, lanes: int) -> None:
    """Inline the elementwise consumers of the conv into its register-tile write-back.

    A consumer that cannot be inlined (it also reads the conv output elsewhere) is computed at
    the tile instead. One that writes a bigger tensor than the conv's, like the broadcast
    ``x * se`` that FuseOps fuses after a squeeze-excite 1×1 conv, stays a loop nest of its own
    after the conv, vectorized and parallel.
    """
    out_shape = _written_shape(sch, writeback)
    while True:
        consumers = sch.get_consumers(writeback)
        if not consumers:
            return
        same_shape = [c for c in consumers if _written_shape(sch, c) == out_shape]
        if len(consumers) == 1 and same_shape:
            try:
                sch.reverse_compute_inline(consumers[0])
                continue
            except s_tir.ScheduleError:
                pass
        for consumer in consumers:
            if consumer in same_shape:
                try:
                    sch.reverse_compute_at(consumer, tile_loop)
                    sch.vectorize(sch.get_loops(consumer)[-1])
                    continue
                except s_tir.ScheduleError:
                    pass
            schedule_elementwise(sch, consumer, lanes)
        return


def schedule_elementwise(sch: Any, block: Any, lanes: int) -> None:
    """A root-level injective loop nest: parallel over its two outer loops, innermost loop
    vectorized when it is a whole number of vectors.

    The nest is not fused into one loop: the div/mod of 64-bit indices that would recover
    every coordinate per element cost more than the loop overhead they save.
    """
    loops = sch.get_loops(block)
    if not loops or len(loops) != len(sch.get(block).iter_vars):
        return
    inner = loops[-1]
    if len(loops) > 1 and int(sch.get(inner).extent) % lanes == 0:
        if int(sch.get(inner).extent) > lanes:
            _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
        loops = loops[:-1]
    outer = loops[:2] if len(loops) > 2 else loops[:1]
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _written_shape(sch: Any, block: Any) -> list[int]:
    return [int(d) for d in sch.get(block).writes[0].source.shape]


def register_tile(
    sch: Any,
    block: Any,
    tile_loop: Any,
    vector_loop: Any,
    unrolled: tuple[Any, ...],
    cpu: CpuInfo,
    *,
    inline_intermediates: bool = True,
) -> Any:
    """Accumulate ``block`` in a register tile written back at ``tile_loop``, the epilogue
    inlined into the write-back (its intermediates first, unless ``inline_intermediates`` is
    off), ``vector_loop`` vectorized and the ``unrolled`` loops unrolled. Returns the
    write-back block: its lane loop is vectorized last (:func:`_vectorize_tile_loops`), once
    the reduction is decomposed."""
    if inline_intermediates:
        inline_epilogue_intermediates(sch, block)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop)
    inline_epilogue(sch, writeback, tile_loop, cpu.lanes)
    sch.vectorize(vector_loop)
    for loop in unrolled:
        sch.unroll(loop)
    return writeback


class ScheduleFailed(Exception):
    """A rule recognised its block but a schedule primitive refused it; the reason is the text."""


class TriesSchedule(ScheduleRule):
    """A dlight rule whose :meth:`try_schedule` tells "not mine" (None) from "mine but it
    failed" (:class:`ScheduleFailed`), so the pipeline can report both per op; ``apply`` is the
    plain dlight interface (failure = None), for MetaSchedule and for use outside our pipeline.
    Ours and the user's rules (:class:`~edgecompile.schedules.user.UserRule`) share it."""

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        raise NotImplementedError

    def apply(self, func: Any, target: Any, tunable: bool) -> Any | None:
        try:
            return self.try_schedule(func, target)
        except ScheduleFailed:
            return None


class _ConvRule(TriesSchedule):
    """Shared plumbing: find the block our compute tagged with this rule's name, schedule it,
    mark it (a :class:`ScheduleFailed` when a primitive refuses)."""

    schedule_name = ""

    def try_schedule(self, func: Any, target: Any) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not has_root_block(func):
            return None
        sch = s_tir.Schedule(func)
        block = find_block(sch, self.schedule_name)
        if block is None:
            return None
        try:
            self.schedule(sch, block, target_cpu(target))
        except Exception as exc:  # a schedule primitive refused: keep TVM's default, say so
            raise ScheduleFailed(f"{type(exc).__name__}: {last_line(str(exc))}") from None
        sch.annotate(block, SCHEDULED_BY_ATTR, self.schedule_name)
        sch.mod["main"] = sch.mod["main"].with_attr(SCHEDULED_ATTR, self.schedule_name)
        return sch

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        raise NotImplementedError


class _TiledConvRule(_ConvRule):
    """A conv with the ``oc × p`` register tile, whose two loop orders trade input re-reads for
    weight re-reads. ``order`` forces one (:data:`WEIGHTS_STAY` or :data:`INPUTS_STAY`); by
    default :func:`choose_loop_order` picks it from the target's caches."""

    def __init__(self, order: str | None = None) -> None:
        super().__init__()
        if order not in (None, WEIGHTS_STAY, INPUTS_STAY):
            raise ValueError(f"order must be {WEIGHTS_STAY!r} or {INPUTS_STAY!r}, not {order!r}")
        self.order = order

    def loop_order(self, sch: Any, block: Any, cpu: CpuInfo, **geometry: int) -> str:
        """The order for this block (forced or from the caches), recorded on the block."""
        order = self.order or choose_loop_order(cpu=cpu, **geometry)
        sch.annotate(block, LOOP_ORDER_ATTR, order)
        return order


class PointwiseNCHWc(_TiledConvRule):
    """1×1 conv: ``oc × p`` tile of output blocks × pixels, weights as vectors, inputs broadcast."""

    schedule_name = compute.POINTWISE

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        n, cob, h, w, co, cib, ci = sch.get_loops(block)
        out_blocks, out_w = int(sch.get(cob).extent), int(sch.get(w).extent)
        oc_tile, pixel_tile = pointwise_tile(pixel_tiles(out_w), out_blocks, cpu)
        cob_o, cob_i = sch.split(cob, [None, oc_tile])
        pix_o, pix_i = sch.split(w, [None, pixel_tile])
        lanes = int(sch.get(ci).extent)
        unroll = REDUCTION_UNROLL if lanes % REDUCTION_UNROLL == 0 else lanes
        ci_o, ci_i = sch.split(ci, [None, unroll])
        pixels, in_channels = int(sch.get(h).extent) * out_w, int(sch.get(cib).extent) * lanes
        out_channels = out_blocks * int(sch.get(co).extent)
        order = self.loop_order(
            sch,
            block,
            cpu,
            input_bytes=in_channels * pixels * 4,
            weight_bytes=out_channels * in_channels * 4,
            output_bytes=out_channels * pixels * 4,
            out_tiles=out_blocks // oc_tile,
            pixel_tiles=int(sch.get(h).extent) * (out_w // pixel_tile),
        )
        outer = (n, cob_o, h, pix_o) if order == WEIGHTS_STAY else (n, h, pix_o, cob_o)
        sch.reorder(*outer, cib, ci_o, ci_i, pix_i, cob_i, co)
        writeback = register_tile(sch, block, outer[-1], co, (ci_i, pix_i, cob_i), cpu)
        sch.parallel(sch.fuse(*outer))
        # Decomposing last: vectorize/parallel refuse a reduction whose init was split off.
        sch.decompose_reduction(block, cib)
        _vectorize_tile_loops(sch, writeback)


def _row_tile(sch: Any, block: Any, cpu: CpuInfo) -> tuple[Any, ...]:
    """Depthwise and pooling windows: padding inlined, a tile of output columns of one row ×
    one channel block, the window loops outside the tile. Returns ``n, cb, h, w_o, w_i, c, kh,
    kw``."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.startswith("pad_nchwc"):
            sch.compute_inline(producer)
    n, cb, h, w, c, kh, kw = sch.get_loops(block)
    width_tile = depthwise_tile(int(sch.get(w).extent), cpu)
    w_o, w_i = sch.split(w, [None, width_tile])
    sch.reorder(n, cb, h, w_o, kh, kw, w_i, c)
    return n, cb, h, w_o, w_i, c, kh, kw


class _RowTileRule(_ConvRule):
    """A window op (depthwise conv, pool) on one tile of output columns of a row × one channel
    block, the lanes vectorized, parallel over batch × channel blocks × rows."""

    #: Inline the epilogue's intermediate blocks first (:func:`inline_epilogue_intermediates`);
    #: the pool rule leaves its epilogue's blocks as they are.
    inline_intermediates = True
    #: Unroll the window's columns too, not only the tile's; the pool rule does not.
    unroll_window = True

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        n, cb, h, w_o, w_i, c, kh, kw = _row_tile(sch, block, cpu)
        unrolled = (w_i, kw) if self.unroll_window else (w_i,)
        writeback = register_tile(
            sch, block, w_o, c, unrolled, cpu, inline_intermediates=self.inline_intermediates
        )
        sch.parallel(sch.fuse(n, cb, h))
        sch.decompose_reduction(block, kh)
        _vectorize_tile_loops(sch, writeback)


class DepthwiseNCHWc(_RowTileRule):
    """Depthwise: a row of ``w`` output columns × one channel block, padding inlined."""

    schedule_name = compute.DEPTHWISE


def _vectorize_tile_loops(sch: Any, block: Any) -> None:
    """Vectorize the lane loop of the tile's write-back (the loops reverse_compute_at made)."""
    serial = [loop for loop in sch.get_loops(block) if sch.get(loop).kind == tirx.ForKind.SERIAL]
    if serial:
        sch.vectorize(serial[-1])


def reduction_unroll(steps: int) -> int:
    """Reduction steps unrolled in the innermost loop: 4 like pointwise where they divide."""
    return next(unroll for unroll in (REDUCTION_UNROLL, 3, 2, 1) if steps % unroll == 0)


class _GatherConvRule(_TiledConvRule):
    """K×K conv as broadcast input scalar × weight vector (see :func:`compute._conv_nchwc`):
    the pointwise ``oc × p`` register tile, with the kernel window in the reduction and the
    padding inlined as predicated loads."""

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        pads = [p for p in sch.get_producers(block) if sch.get(p).name_hint.startswith("pad_nchw")]
        blocks_per_row = int(sch.get(block).annotations[compute.BLOCKS_PER_ROW_ATTR])
        n, cob, h, w, co, r, kh, kw = sch.get_loops(block)
        # Only output blocks reading the same table row share their broadcast inputs.
        oc_tile, pixel_tile = pointwise_tile(
            pixel_tiles(int(sch.get(w).extent)), blocks_per_row, cpu
        )
        order = self.loop_order(
            sch,
            block,
            cpu,
            **_gather_geometry(sch, block, blocks_per_row, oc_tile, pixel_tile),
        )
        cob_o, cob_i = sch.split(cob, [None, oc_tile])
        pix_o, pix_i = sch.split(w, [None, pixel_tile])
        r_o, r_i = sch.split(r, [None, reduction_unroll(int(sch.get(r).extent))])
        tiles = (n, cob_o, h, pix_o) if order == WEIGHTS_STAY else (n, h, pix_o, cob_o)
        sch.reorder(*tiles, r_o, kh, kw, r_i, pix_i, cob_i, co)
        writeback = register_tile(sch, block, tiles[-1], co, (r_i, pix_i, cob_i), cpu)
        outer = sch.fuse(*tiles)
        sch.parallel(outer)
        for pad in pads:
            # The padded window of one tile, copied next to it: the tile's loads then need no
            # bounds test (inlined, every broadcast load was predicated: ~2x slower).
            sch.compute_at(pad, outer)
            _vectorize_tile_loops(sch, pad)
        sch.decompose_reduction(block, r_o)
        _vectorize_tile_loops(sch, writeback)


def _gather_geometry(
    sch: Any, block: Any, blocks_per_row: int, oc_tile: int, pixel_tile: int
) -> dict[str, int]:
    """What :func:`choose_loop_order` needs of a grouped or dense conv block, before it is split:
    its input (the data or its padded copy), weight and output sizes, and its tiles."""
    _, cob, h, w, _, r, *_ = sch.get_loops(block)
    out_blocks, steps = int(sch.get(cob).extent), int(sch.get(r).extent)
    buffers = [region.source for region in sch.get(block).reads]

    def size(buffer: Any) -> int:  # float32
        return 4 * math.prod(int(extent) for extent in buffer.shape)

    # (out blocks, steps, kh, kw, lanes); a shuffle's channel table is (out blocks, steps) too.
    weight = next(
        b
        for b in buffers
        if len(b.shape) == 5 and [int(d) for d in b.shape[:2]] == [out_blocks, steps]
    )
    source = max((b for b in buffers if len(b.shape) >= 4 and not b.same_as(weight)), key=size)
    out_w = int(sch.get(w).extent)
    return {
        "input_bytes": size(source),
        "weight_bytes": size(weight),
        "output_bytes": size(sch.get(block).writes[0].source),
        "out_tiles": blocks_per_row // oc_tile,
        "pixel_tiles": int(sch.get(h).extent) * (out_w // pixel_tile),
        "table_rows": out_blocks // blocks_per_row,
    }


class GroupedNCHWc(_GatherConvRule):
    """Grouped conv: each output block reads its group's channels through a channel table."""

    schedule_name = compute.GROUPED


class DenseConvNCHWc(_GatherConvRule):
    """Dense K×K conv (the stem, SqueezeNet's 3×3 expand): every output block reads every
    input lane."""

    schedule_name = compute.DENSE


class PackedMatmul(_ConvRule):
    """The classifier GEMV: ``T`` output vectors accumulated over the input, the weight read as
    one contiguous stream per output vector."""

    schedule_name = compute.MATMUL

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        n, j, k = sch.get_loops(block)
        lanes = int(sch.get(block).annotations[compute.VECTOR_LANES_ATTR])
        j_o, j_i = sch.split(j, [None, lanes])
        blocks = int(sch.get(j_o).extent)
        limit = min(MAX_GEMV_ACCUMULATORS, cpu.tile_registers - 2)
        accumulators = max(d for d in divisors(blocks) if d <= limit)
        tile_o, tile_i = sch.split(j_o, [None, accumulators])
        k_o, k_i = sch.split(k, [None, reduction_unroll(int(sch.get(k).extent))])
        sch.reorder(n, tile_o, k_o, k_i, tile_i, j_i)
        writeback = register_tile(
            sch, block, tile_o, j_i, (k_i, tile_i), cpu, inline_intermediates=False
        )
        sch.parallel(sch.fuse(n, tile_o))
        sch.decompose_reduction(block, k_o)
        _vectorize_tile_loops(sch, writeback)


class PoolNCHWc(_RowTileRule):
    """Max/average pooling: a row of output columns × one channel block per tile, like
    depthwise without weights; padding inlined, the average's division in the write-back."""

    schedule_name = compute.POOL
    inline_intermediates = False
    unroll_window = False
