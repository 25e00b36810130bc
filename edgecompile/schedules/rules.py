"""Schedule rules for the fused PrimFuncs holding one of our blocked computes: pointwise,
depthwise, grouped, dense K×K and transposed convolution, pooling, and the classifier's packed
matmul.

They run after FuseOps/FuseTIR (dlight-style, :class:`tvm.s_tir.dlight.ScheduleRule`), so a
PrimFunc is the conv plus whatever elementwise epilogue Relax fused into it (bias, BN, ReLU,
ReLU6, h-swish, residual add). The conv result is accumulated in a register tile (a ``local``
cache) and the epilogue is inlined into the tile's write-back, so each output is written once.

Register tile rule: accumulators + operand vectors + 1 must fit the target's vector registers
(:class:`~edgecompile.schedules.cpu.CpuInfo`): past that LLVM spills accumulators to the stack
in the inner loop (a probe measured such tiles 2x slower).

Row tails: a tile of output pixels need not divide its row (SqueezeNet's 55, 27 and 13, and
Xception's 37 and 19 would otherwise get 1-pixel or whole-row tiles). The last tile of such a
row is guarded and peeled off by TVM's loop partitioning of that one tile loop
(:func:`split_row`); partitioning every constant loop made whole models 1.3-2.3x slower.

Design spaces: every conv, pool and GEMV rule asks for its tiles (and the kernel's unroll
depth) through :mod:`~edgecompile.schedules.knobs`, so with dlight's ``tunable`` (or
:meth:`design_spaces`) the same schedule carries its choices as MetaSchedule sampling
instructions at the analytic values; untuned, they are constants and the code is what it was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

from edgecompile.errors import last_line
from edgecompile.schedules import compute, vector_sigmoid
from edgecompile.schedules.analysis import child_blocks, has_root_block, root_children
from edgecompile.schedules.cpu import CpuInfo, cpu_info
from edgecompile.schedules.knobs import FIXED, KNOBS_ATTR, Knobs
from edgecompile.schedules.tir import PARTITION_HINT

SCHEDULED_ATTR = "edgecompile.schedule"
# Block annotation a hand schedule leaves in its trace: a tuning record that replays the hand
# schedule (it measured fastest) still says which rule made it.
SCHEDULED_BY_ATTR = "edgecompile.scheduled_by"
# Split of the pointwise reduction over the lanes of one input block: unrolling by 4 gave LLVM
# enough independent FMAs to hide latency without blowing up code size.
REDUCTION_UNROLL = 4
#: The largest unrolled reduction split a design space samples (K×K convs, the GEMV): past it
#: the unrolled body outgrows the instruction cache's share of a tile.
MAX_REDUCTION_UNROLL = 8
MAX_POINTWISE_OUT_TILE = 8
MAX_SPATIAL_TILE = 32
# Output vectors a GEMV accumulates at once: enough independent FMA chains to cover the FMA
# latency while the weight streams in.
MAX_GEMV_ACCUMULATORS = 8
#: Output channels of one group a :class:`GroupedPixels` tile may hold: they share its input.
MAX_PIXELS_CHANNELS = 4
#: Pixel vectors a :class:`GroupedPixels` tile may hold (× its channels accumulators).
MAX_PIXELS_VECTORS = 8
DEPTHWISE_SPATIAL_TARGET = 8
# Loop orders of the register-tiled convs (their outermost tile loop): the output-block tile
# outermost keeps its weights in L1 while every pixel streams past; the pixel tile outermost
# keeps its input column while every weight streams past.
WEIGHTS_STAY = "weights"
INPUTS_STAY = "inputs"
LOOP_ORDER_ATTR = "edgecompile.loop_order"
#: The loop order's name as a knob (:attr:`~edgecompile.schedules.knobs.Knobs.forced`).
LOOP_ORDER = "loop_order"
#: A pointwise tile that leaves a tail must beat the best tile dividing the row by this much
#: (fewer loads per FMA): the tail is a second, narrower copy of the tile's code.
TAIL_GAIN = 1.1
#: What a tail costs a depthwise or pool tile, in columns away from the 8 it aims for.
DEPTHWISE_TAIL_COST = 2


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


def pointwise_tile(
    pixels: list[int],
    out_blocks: int,
    cpu: CpuInfo,
    score: Callable[[int, int], float] | None = None,
) -> tuple[int, int]:
    """``(output blocks, pixels)`` of the register tile.

    Each reduction step loads ``oc`` weight vectors and broadcasts one input value per pixel
    into ``oc`` FMAs, so the tile maximises FMAs per load, ``oc*p / (oc+p)``, subject to the
    ``oc*p`` accumulators, with the ``oc`` weight vectors and ``p`` input values of the steps
    LLVM keeps live, fitting the target's registers (:meth:`CpuInfo.tile_fits`).
    ``oc`` divides the output blocks and ``p`` is one of ``pixels``. ``score(oc, p)``
    replaces that ratio (:func:`pointwise_row_tile` counts a row's tail tile in it).
    """
    best: tuple[float, int, int, int] | None = None
    for oc in divisors(out_blocks):
        if oc > MAX_POINTWISE_OUT_TILE:
            break
        for count in pixels:
            if not cpu.tile_fits(oc * count, weights=oc, inputs=count):
                continue
            reuse = score(oc, count) if score else oc * count / (oc + count)
            candidate = (reuse, oc * count, count, oc)
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
    columns measured best (7 beat 14 on AVX-512); a divisor avoids a predicated tail. At most
    :attr:`CpuInfo.row_tile_limit` columns: the window's inputs and weights need registers too.
    """
    limit = cpu.row_tile_limit
    candidates = [d for d in divisors(out_width) if d <= limit]
    return min(candidates, key=lambda d: (abs(d - DEPTHWISE_SPATIAL_TARGET), -d))


def row_tiles(width: int) -> list[int]:
    """Pixel counts a tile of one output row may have when its last tile may be narrower (a
    tail, peeled by :func:`split_row`): any count up to the row."""
    return list(range(1, min(width, MAX_SPATIAL_TILE) + 1))


def _row_loads(width: int, oc: int, count: int) -> int:
    """Vectors one reduction step of a row loads with ``oc × count`` tiles: per tile ``oc``
    weights and one broadcast per pixel, the tail tile with its fewer pixels."""
    full, tail = divmod(width, count)
    return full * (oc + count) + (oc + tail if tail else 0)


def _row_reuse(width: int, oc: int, count: int) -> float:
    """FMAs per vector loaded in one reduction step of a row of ``width`` pixels tiled
    ``oc × count`` (:func:`_row_loads`)."""
    return oc * width / _row_loads(width, oc, count)


def pointwise_row_tile(width: int, out_blocks: int, cpu: CpuInfo) -> tuple[int, int]:
    """``(output blocks, pixels)`` of the register tile of a row of ``width`` pixels whose last
    tile may be a narrower tail: :func:`pointwise_tile`'s FMAs per load, counted over the whole
    row (a prime width such as 13 otherwise leaves only 1- or 13-pixel tiles). A tile with a
    tail is taken only when it beats the best dividing tile by :data:`TAIL_GAIN`."""

    reuse = functools.partial(_row_reuse, width)

    dividing = pointwise_tile(pixel_tiles(width), out_blocks, cpu)
    tailed = pointwise_tile(row_tiles(width), out_blocks, cpu, score=reuse)
    return tailed if reuse(*tailed) > TAIL_GAIN * reuse(*dividing) else dividing


def single_pixel_tile(chosen: tuple[int, int], out_blocks: int, cpu: CpuInfo) -> tuple[int, int]:
    """A pointwise tile of one pixel × up to :data:`LATENCY_ACCUMULATORS` output blocks instead
    of ``chosen`` where the target has no FMA but reads single-use weights from memory (SSE:
    :attr:`CpuInfo.reads_weights_from_memory`) and ``chosen`` holds fewer accumulators: each
    step is a multiply and a dependent add, so the chains, not the loads, bound such a tile.
    On SSE ``chosen`` is mostly 2 × 2 (4 chains); 8 × 1 fits without a spill and removed
    SqueezeNet's (``benchmarks/spills.py``), and, untuned against the 2 × 2 build in one
    process, MobileNet v2 ran 0.86× and ShuffleNet v2 0.94× built for ``x86-64-v2`` (the tuning
    search had kept moving this knob the same way). With AVX2's FMA (``x86-64-v3``) MobileNet v2
    gained only 4% and a 1-pixel tile over SqueezeNet's 16 input channels spilled the weights
    LLVM hoisted out of the pixel loop: ``chosen`` there, and everywhere else. A dense K×K
    conv on a blocked input takes it too on SSE (:class:`DenseConvNCHWc`)."""
    if not cpu.chain_bound:
        return chosen
    widest = _widest_single_pixel(divisors(out_blocks), cpu)
    return (widest, 1) if widest > chosen[0] * chosen[1] else chosen


def _widest_single_pixel(block_counts: Iterable[int], cpu: CpuInfo) -> int:
    """The most output blocks among ``block_counts`` of a one-pixel tile
    (:func:`single_pixel_tile`): up to :data:`LATENCY_ACCUMULATORS` chains, fitting the
    registers; 1 if none does."""
    limit = min(LATENCY_ACCUMULATORS, MAX_POINTWISE_OUT_TILE)
    fitting = [d for d in block_counts if d <= limit and cpu.single_pixel_tile_fits(d)]
    return max(fitting, default=1)


def fma_chains_tile(
    chosen: tuple[int, int], width: int, out_blocks: int, cpu: CpuInfo
) -> tuple[int, int]:
    """On x86 with FMA below AVX-512 (AVX2: ``x86-64-v3``), the tile of a row of ``width``
    pixels with the most FMAs per load (a row's tail counted, :func:`pointwise_row_tile`'s
    score and :data:`TAIL_GAIN`) among those whose one reduction step fits the registers:
    the accumulators, the tile's weight vectors and one broadcast (:func:`_one_step_fits`);
    ``chosen`` elsewhere, and where no such tile loads less per FMA.

    :func:`pointwise_tile` budgets the operands of two steps (:attr:`CpuInfo.operand_steps`),
    which on 16 registers leaves 2 × 2: 4 FMA chains. There the FMA reads an operand from
    memory and LLVM does not load the next step's operands ahead, so a step holds only its
    accumulators, its weight vectors and the one broadcast its FMAs are reading. The tuning
    search kept filling all 16 that way on ``x86-64-v3`` (MobileNet v2: ``oc tile 1 → 3, pixel
    tile 4`` on its 24-channel 56² projections, ``oc tile 4 → 5`` at 7²). The layer alone,
    interleaved, against the tile this function gave before (up to 8 accumulators of the
    chosen pixels): 96 → 24 at 56² 3 × 4 0.75× (1 × 4 before), 960 → 160 at 7² 5 × 2 0.94×,
    96 → 576 at 14² 3 × 4 0.91×, each spill-free; 2 × 7, 4 × 3 and 6 × 2 (17-19 registers)
    spilled 22-52 stack accesses."""
    if not cpu.fma_from_memory:
        return chosen

    reuse = functools.partial(_row_reuse, width)

    def best(counts: list[int]) -> tuple[int, int]:
        fitting = [
            (reuse(oc, count), oc * count, oc, count)
            for oc in divisors(out_blocks)
            if oc <= MAX_POINTWISE_OUT_TILE
            for count in counts
            if _one_step_fits(oc, count, cpu)
        ]
        return max(fitting)[2:]  # (1, 1) always fits

    dividing, tailed = best(pixel_tiles(width)), best(row_tiles(width))
    wanted = tailed if reuse(*tailed) > TAIL_GAIN * reuse(*dividing) else dividing
    return wanted if reuse(*wanted) > reuse(*chosen) else chosen


def _one_step_fits(oc: int, count: int, cpu: CpuInfo) -> bool:
    """Whether an ``oc × count`` tile's one reduction step fits the vector registers: its
    accumulators, its ``oc`` weight vectors and the broadcast being read."""
    return oc * count + oc + 1 <= cpu.registers


def pointwise_register_tile(
    width: int, out_blocks: int, in_channels: int, cpu: CpuInfo, *, row_tail: bool = True
) -> tuple[int, int]:
    """``(output blocks, pixels)`` of a pointwise conv's register tile among the output-block
    counts dividing ``out_blocks``: the row's best (:func:`pointwise_row_tile`; without
    ``row_tail``, of the tiles dividing the row), as the target's arithmetic wants it
    (:func:`single_pixel_tile`, :func:`fma_chains_tile`, :func:`short_reduction_tile`)."""
    row = (
        pointwise_row_tile(width, out_blocks, cpu)
        if row_tail
        else pointwise_tile(pixel_tiles(width), out_blocks, cpu)
    )
    chosen = single_pixel_tile(row, out_blocks, cpu)
    chosen = fma_chains_tile(chosen, width, out_blocks, cpu)
    return short_reduction_tile(chosen, width, out_blocks, in_channels, cpu)


#: Output blocks :func:`output_block_tail_tile` rounds a prime block count up to a multiple of.
TAIL_BLOCKS_MULTIPLE = 4


def _blocks_reuse(out_blocks: int, oc: int, pixels: int) -> float:
    """FMAs per vector loaded in one reduction step over all ``out_blocks`` output blocks of
    ``pixels`` pixels, tiled by ``oc`` blocks (the last tile the rest): :func:`_row_reuse` with
    the two axes swapped (each tile loads its weight vectors and the pixels' broadcasts)."""
    return _row_reuse(out_blocks, pixels, oc)


def output_block_tail_tile(
    width: int, out_blocks: int, in_channels: int, cpu: CpuInfo
) -> tuple[int, int]:
    """:func:`pointwise_register_tile`, or where no tile of several output blocks divides
    ``out_blocks`` (a prime count past :data:`MAX_POINTWISE_OUT_TILE`: ShuffleNet v2's 232
    channels are 29 AVX2 blocks, its 116 are 29 NEON blocks), the tile the target would take
    for the next multiple of :data:`TAIL_BLOCKS_MULTIPLE` blocks, its last output-block tile a
    narrower tail (peeled like a row's, :func:`split_row`), its pixels dividing the row
    where :func:`pointwise_row_tile` would leave a tail, when it loads :data:`TAIL_GAIN`
    times fewer vectors per FMA (on SSE, one pixel × as many output blocks as
    :func:`single_pixel_tile` would take, when that is more chains). Without it those layers
    ran one output block per tile: one weight vector and every pixel's broadcast per step
    (AVX2: 1 × 4, NEON: 1 × 7, SSE: 1 × 4)."""
    chosen = pointwise_register_tile(width, out_blocks, in_channels, cpu)
    several = [d for d in divisors(out_blocks) if 1 < d <= MAX_POINTWISE_OUT_TILE]
    if several or out_blocks <= MAX_POINTWISE_OUT_TILE:
        return chosen
    if cpu.chain_bound:
        # SSE: chains of a multiply and a dependent add bound the tile, not its loads, so
        # :func:`single_pixel_tile`'s widest tile, were it to divide the blocks, if it has more
        # chains. ShuffleNet v2's 116 → 116 at 14² and 28² on ``x86-64-v2``: 8 × 1 (tail 5 × 1)
        # 0.72× its 1 × 4. The tile of the next multiple of 4 spilled there (24 → 68 at 56²:
        # 17 blocks, 5 × 1, 70 stack accesses; 8 × 1 none).
        widest = _widest_single_pixel(range(1, out_blocks + 1), cpu)
        return (widest, 1) if widest > chosen[0] * chosen[1] else chosen
    rounded = compute.ceil_div(out_blocks, TAIL_BLOCKS_MULTIPLE) * TAIL_BLOCKS_MULTIPLE
    # Its pixels divide the row: with a row tail too, NEON's 4 × 3 on 28 pixels spilled on
    # the Cortex-A53 (rpi3).
    wanted = pointwise_register_tile(width, rounded, in_channels, cpu, row_tail=False)
    if wanted[0] == 1:
        return chosen
    gain = _blocks_reuse(out_blocks, *wanted) / _blocks_reuse(out_blocks, *chosen)
    return wanted if gain > TAIL_GAIN else chosen


#: Input blocks of a pointwise reduction LLVM unrolls whole (:func:`short_reduction_tile`):
#: 2 blocks × the 2 unrolled splits of each are 4 iterations of the tile's body.
SHORT_REDUCTION_BLOCKS = 2


def short_reduction_tile(
    chosen: tuple[int, int], width: int, out_blocks: int, in_channels: int, cpu: CpuInfo
) -> tuple[int, int]:
    """A pointwise tile dividing the row instead of ``chosen`` where ``chosen`` leaves a row
    tail over a reduction LLVM unrolls whole, on x86 with FMA below AVX-512 (``x86-64-v3``).

    A tail keeps the row's full tiles a serial loop of their own (:func:`split_row`), in which
    every weight of a whole-unrolled reduction is invariant: LLVM hoists them all out of it and
    spills them (SqueezeNet 1.1's 16-input expands at 55²: 2 × 2 tiles hoisted 32 weight vectors
    into 16 registers, 24 stack accesses per tile). A dividing tile runs in the fused parallel
    loop, where the output block varies: nothing is hoisted. Its budget is one step of operands,
    as the tile reads them: the accumulators, its weight vectors (each loaded once, for all its
    pixels) and two broadcasts. 2 × 5 read spill-free and ran 0.86× the 2 × 2 tile (the layer
    alone, interleaved). Elsewhere ``chosen``: AVX-512 folds its broadcasts, SSE takes one-pixel
    tiles (:func:`single_pixel_tile`), and neither ARM target spilled there."""
    short = in_channels <= SHORT_REDUCTION_BLOCKS * cpu.lanes
    if not (cpu.fma_from_memory and short) or width % chosen[1] == 0:
        return chosen
    fitting = [
        (oc * count / (oc + count), oc * count, count, oc)
        for oc in divisors(out_blocks)
        if oc < out_blocks and oc <= MAX_POINTWISE_OUT_TILE  # the output block must vary
        for count in pixel_tiles(width)
        if oc * count + oc + 2 <= cpu.tile_registers
    ]
    if not fitting:
        return chosen
    best = max(fitting)
    return best[3], best[2]


#: Share of the L1 data cache the weights of one chunk of a pointwise reduction may fill
#: (:func:`reduction_chunk`); the rest holds the tile's input lines and the outputs it re-reads.
CHUNK_L1_SHARE = 1 / 3
#: Share of the L2 cache an output-block tile's outputs may fill for its reduction to run in
#: chunks (:func:`reduction_chunk`): every chunk reads and writes them all again.
CHUNK_OUTPUT_L2_SHARE = 1 / 4
#: Output-block tiles per core a chunked conv needs: they are its only parallel loop (the
#: chunks run outside the rows), and fewer would leave a core idle for a share of the layer.
CHUNK_TILES_PER_CORE = 4


def reduction_chunk(
    oc_tile: int, out_tiles: int, in_blocks: int, lanes: int, pixels: int, cpu: CpuInfo
) -> int:
    """Input blocks per chunk of a pointwise reduction whose tile's weights do not fit the L1
    data cache (0: one chunk, the whole reduction), on AVX-512 (:attr:`CpuInfo.folds_broadcasts`).

    Each tile reads its ``oc_tile`` output blocks' weights for every input channel; with the
    weights staying (:data:`WEIGHTS_STAY`) the same weights serve every pixel tile, from L1 only
    if they fit. Xception's 728-channel reductions at 2 output blocks are 94 KiB of weights per
    tile, streamed from L2 for every 14 pixels. In chunks of :data:`CHUNK_L1_SHARE` of L1 (8
    blocks there, as few chunks as fit it), each chunk's weights serve every pixel of the tile's
    output blocks from L1, which accumulate in memory between chunks: so only where those
    outputs (``oc_tile`` blocks × ``pixels``) stay in L2 (:data:`CHUNK_OUTPUT_L2_SHARE`), and
    only with :data:`CHUNK_TILES_PER_CORE` of the ``out_tiles`` output-block tiles per core.
    The layer alone, interleaved against one chunk (thread CPU time, a loaded machine): 728→728
    at 19² 0.92×, at 37² 0.95×, 728→1024 at 19² 0.93×, 1536→2048 at 10² 0.89×, MobileNet
    v1's 1024→1024 at 7² 0.83×; 256→256 at 74² (1.4 MiB of outputs per tile) ran 1.15×, and
    is left whole. Measured on this project's AVX-512 host only: other targets keep one chunk."""
    block_bytes = oc_tile * lanes * lanes * 4  # one input block's weights for the tile, float32
    l1_bytes = cpu.cache_bytes(1)
    if not cpu.folds_broadcasts or in_blocks * block_bytes <= l1_bytes:
        return 0
    if oc_tile * lanes * 4 * pixels > cpu.cache_bytes(2) * CHUNK_OUTPUT_L2_SHARE:
        return 0
    if out_tiles < CHUNK_TILES_PER_CORE * cpu.cores:
        return 0
    budget = max(int(l1_bytes * CHUNK_L1_SHARE) // block_bytes, 1)
    chunks = compute.ceil_div(in_blocks, budget)
    return compute.ceil_div(in_blocks, chunks)


def depthwise_row_tile(out_width: int, cpu: CpuInfo) -> int:
    """Output columns per depthwise or pool tile when the last tile of a row may be a tail: the
    count nearest 8, a tail costing :data:`DEPTHWISE_TAIL_COST` columns of distance (so 14
    keeps 7+7 and 10 one tile of 10, while 13, 37 and 55 get tiles of 8, not 13, 1 and 11), at
    most :attr:`CpuInfo.row_tile_limit` (:attr:`CpuInfo.tailed_row_tile_limit` with a tail)."""
    limit, tailed_limit = cpu.row_tile_limit, cpu.tailed_row_tile_limit
    candidates = [
        d for d in row_tiles(out_width) if d <= (tailed_limit if out_width % d else limit)
    ] or [1]

    def cost(count: int) -> tuple[int, int]:
        tail = DEPTHWISE_TAIL_COST if out_width % count else 0
        return abs(count - DEPTHWISE_SPATIAL_TARGET) + tail, -count

    return min(candidates, key=cost)


def split_row(sch: Any, loop: Any, tile: int) -> tuple[Any, Any, bool]:
    """Split a row's pixel ``loop`` into tiles of ``tile``: ``(tile loop, pixel loop, tail)``.

    Where ``tile`` does not divide the row, the split guards the pixels past its end and the
    tile loop is marked (:data:`PARTITION_HINT`) so TVM peels the last tile off: the full
    tiles then run unguarded, and the tail's unrolled loops fold their guards away. The
    caller keeps the tile loop a loop of its own (not fused with the parallel loop), since the
    partition needs its variable in the guard. A row the tile divides has no tail and no mark.
    """
    width = int(sch.get(loop).extent)
    outer, inner = sch.split(loop, [None, tile])
    tail = width % tile != 0
    if tail:
        sch.annotate(outer, PARTITION_HINT, 1)
    return outer, inner, tail


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


def inline_epilogue(
    sch: Any, writeback: Any, tile_loop: Any, lanes: int, *, keep_unit_loops: bool = False
) -> None:
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
        gates = [c for c in consumers if _gate_of_one_pixel(sch, c, out_shape)]
        same_shape = [
            c for c in consumers if _written_shape(sch, c) == out_shape and c not in gates
        ]
        if len(consumers) == 1 and same_shape:
            try:
                sch.reverse_compute_inline(consumers[0])
                continue
            except s_tir.ScheduleError:
                pass
        for consumer in consumers:
            if consumer in same_shape:
                try:
                    sch.reverse_compute_at(consumer, tile_loop, keep_unit_loops)
                    sch.vectorize(sch.get_loops(consumer)[-1])
                    continue
                except s_tir.ScheduleError:
                    pass
            schedule_elementwise(sch, consumer, lanes)
        for gate in gates:  # what reads the gate (the ``x * gate``) follows it
            for reader in sch.get_consumers(gate):
                schedule_elementwise(sch, reader, lanes)
        return


def _gate_of_one_pixel(sch: Any, block: Any, out_shape: list[int]) -> bool:
    """Whether ``block`` is our sigmoid (:mod:`~edgecompile.schedules.vector_sigmoid`) of a
    conv of one pixel, a squeeze-excite gate. Inlined into the write-back, its dozen polynomial
    constants, which LLVM hoists out of the loop over output tiles, crowd the tile's registers
    (MnasNet's gates spilled so on rpi4, rpi5 and the stand-ins); a loop of its own over the
    gate's few vectors costs next to nothing."""
    one_pixel = math.prod(out_shape[2:4]) == 1
    return one_pixel and sch.get(block).name_hint.startswith(vector_sigmoid.BLOCK_NAMES)


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
    keep_unit_loops: bool = False,
) -> Any:
    """Accumulate ``block`` in a register tile written back at ``tile_loop``, the epilogue
    inlined into the write-back (its intermediates first, unless ``inline_intermediates`` is
    off), ``vector_loop`` vectorized and the ``unrolled`` loops unrolled. Returns the
    write-back block: its lane loop is vectorized last (:func:`_vectorize_tile_loops`), once
    the reduction is decomposed. ``keep_unit_loops`` keeps a tile loop of one iteration in the
    write-back, for a design space: a trace replays ``get_loops`` only with as many loops as it
    recorded, whatever tile a mutated decision gives."""
    if inline_intermediates:
        inline_epilogue_intermediates(sch, block)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop, keep_unit_loops)
    inline_epilogue(sch, writeback, tile_loop, cpu.lanes, keep_unit_loops=keep_unit_loops)
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
    #: Whether :meth:`schedule` takes :class:`~edgecompile.schedules.knobs.Knobs` (the rule is
    #: a design space: dlight's ``tunable`` and :meth:`design_spaces`).
    has_knobs = False

    def try_schedule(self, func: Any, target: Any, knobs: Knobs = FIXED) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not has_root_block(func):
            return None
        return self.schedule_here(s_tir.Schedule(func), target, knobs)

    def apply(self, func: Any, target: Any, tunable: bool) -> Any | None:
        knobs = Knobs(tunable=True) if tunable and self.has_knobs else FIXED
        try:
            return self.try_schedule(func, target, knobs)
        except ScheduleFailed:
            return None

    def claims(self, sch: Any) -> bool:
        """Whether ``sch`` holds this rule's block."""
        return find_block(sch, self.schedule_name) is not None

    def design_spaces(self, sch: Any, target: Any) -> list[Any]:
        """The rule's design spaces on (copies of) the traced schedule ``sch``: its choices as
        sampling instructions at their analytic values; a rule without knobs, its schedule."""
        return [self.schedule_here(sch, target, Knobs(tunable=self.has_knobs))]

    def schedule_here(self, sch: Any, target: Any, knobs: Knobs = FIXED) -> Any | None:
        """Schedule this rule's block in ``sch`` (None if it holds none) and mark it."""
        block = find_block(sch, self.schedule_name)
        if block is None:
            return None
        try:
            if knobs is FIXED:
                self.schedule(sch, block, target_cpu(target))
            else:
                knobs.names.clear()
                self.schedule(sch, block, target_cpu(target), knobs)
        except Exception as exc:  # a schedule primitive refused: keep TVM's default, say so
            raise ScheduleFailed(f"{type(exc).__name__}: {last_line(str(exc))}") from None
        if knobs.names:  # which sampled tile is which knob, for `records show`
            sch.annotate(block, KNOBS_ATTR, ",".join(knobs.names))
        knobs.unroll(sch, sch.get_sblock("root"))
        sch.annotate(block, SCHEDULED_BY_ATTR, self.schedule_name)
        sch.mod["main"] = sch.mod["main"].with_attr(SCHEDULED_ATTR, self.schedule_name)
        return sch

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo) -> None:
        raise NotImplementedError


class _TiledConvRule(_ConvRule):
    """A conv with the ``oc × p`` register tile, whose two loop orders trade input re-reads for
    weight re-reads. ``order`` forces one (:data:`WEIGHTS_STAY` or :data:`INPUTS_STAY`); by
    default :func:`choose_loop_order` picks it from the target's caches. Its knobs: the tiles
    (:mod:`~edgecompile.schedules.knobs`) and the loop order, one design space per order."""

    has_knobs = True

    def __init__(self, order: str | None = None) -> None:
        super().__init__()
        if order not in (None, WEIGHTS_STAY, INPUTS_STAY):
            raise ValueError(f"order must be {WEIGHTS_STAY!r} or {INPUTS_STAY!r}, not {order!r}")
        self.order = order

    def loop_order(
        self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED, **geometry: int
    ) -> str:
        """The order for this block (forced, by the rule or the design space, or from the
        caches), recorded on the block."""
        order = knobs.choose(LOOP_ORDER, self.order or choose_loop_order(cpu=cpu, **geometry))
        sch.annotate(block, LOOP_ORDER_ATTR, order)
        return order

    def design_spaces(self, sch: Any, target: Any) -> list[Any]:
        """One design space per loop order (a trace cannot branch between two nests)."""
        default = sch.copy()
        block = find_block(default, self.schedule_name)
        spaces = [self.schedule_here(default, target, Knobs(tunable=True))]
        order = str(default.get(block).annotations[LOOP_ORDER_ATTR])
        for other in (WEIGHTS_STAY, INPUTS_STAY):
            if other != order:
                forced = Knobs(tunable=True, forced={LOOP_ORDER: other})
                spaces.append(self.schedule_here(sch.copy(), target, forced))
        return spaces


class PointwiseNCHWc(_TiledConvRule):
    """1×1 conv: ``oc × p`` tile of output blocks × pixels, weights as vectors, inputs broadcast.

    Its knobs: the output-block tile and the pixel tile (each fixed where the analytic tile
    leaves a tail of output blocks or of the row: only divisors are sampled) and the
    reduction's unrolled split, each a ``sample_perfect_tile``; the loop order, one design
    space per order."""

    schedule_name = compute.POINTWISE

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        n, cob, h, w, co, cib, ci = sch.get_loops(block)
        out_blocks, out_w = int(sch.get(cob).extent), int(sch.get(w).extent)
        in_channels = int(sch.get(cib).extent) * int(sch.get(ci).extent)
        oc_tile, pixel_tile = output_block_tail_tile(out_w, out_blocks, in_channels, cpu)
        # Where LLVM would load a reduction's every step ahead, it is one loop of single steps.
        short = in_channels == STREAMED_POINTWISE_STEPS
        one_pixel = int(sch.get(h).extent) * out_w == 1
        fewest = STREAMED_GATE_MIN_STEPS if cpu.separate_products else STREAMED_POINTWISE_STEPS
        gate = one_pixel and fewest < in_channels <= STREAMED_GATE_STEPS
        streamed = cpu.loads_whole_block_first and (short or gate)
        if streamed:
            oc_tile, pixel_tile, _ = streamed_tile(out_w, out_blocks, in_channels, cpu, 1)
        if out_blocks % oc_tile:
            cob_o, cob_i, oc_tail = split_row(sch, cob, oc_tile)
        else:
            cob_o, cob_i = knobs.split(sch, cob, oc_tile, MAX_POINTWISE_OUT_TILE, "oc tile")
            oc_tail = False
        if out_w % pixel_tile:
            pix_o, pix_i, tail = split_row(sch, w, pixel_tile)
        else:
            pix_o, pix_i = knobs.split(sch, w, pixel_tile, MAX_SPATIAL_TILE, "pixel tile")
            tail = False
        lanes = int(sch.get(ci).extent)
        unroll = REDUCTION_UNROLL if lanes % REDUCTION_UNROLL == 0 else lanes
        ci_o, ci_i = knobs.split(sch, ci, 1 if streamed else unroll, lanes, "reduction unroll")
        in_blocks, out_tiles = int(sch.get(cib).extent), compute.ceil_div(out_blocks, oc_tile)
        pixels, in_channels = int(sch.get(h).extent) * out_w, in_blocks * lanes
        out_channels = out_blocks * int(sch.get(co).extent)
        order = self.loop_order(
            sch,
            block,
            cpu,
            knobs,
            input_bytes=in_channels * pixels * 4,
            weight_bytes=out_channels * in_channels * 4,
            output_bytes=out_channels * pixels * 4,
            out_tiles=out_tiles,
            pixel_tiles=int(sch.get(h).extent) * compute.ceil_div(out_w, pixel_tile),
        )
        # An output-block tail keeps its tile loop out of the chunked nest's fused parallel loop.
        chunked = order == WEIGHTS_STAY and not oc_tail
        chunk = reduction_chunk(oc_tile, out_tiles, in_blocks, lanes, pixels, cpu) if chunked else 0
        if chunk:
            tiles, inner = (n, cob_o, h, pix_o), (pix_i, cob_i, co)
            schedule_chunked(sch, block, tiles, (cib, ci_o, ci_i), inner, chunk, cpu, knobs)
            return
        outer = (n, cob_o, h, pix_o) if order == WEIGHTS_STAY else (n, h, pix_o, cob_o)
        sch.reorder(*outer, cib, ci_o, ci_i, pix_i, cob_i, co)
        writeback = register_tile(
            sch, block, outer[-1], co, (ci_i, pix_i, cob_i), cpu, keep_unit_loops=knobs.tunable
        )
        if oc_tail and order == WEIGHTS_STAY:
            # The output-block tile loop is the parallel one, a loop of its own for its tail's
            # partition; the rows and pixel tiles inside it run serially.
            sch.parallel(cob_o)
        else:
            parallel_tiles(sch, outer, pix_o if tail else cob_o if oc_tail else None)
        # Decomposing last: vectorize/parallel refuse a reduction whose init was split off.
        sch.decompose_reduction(block, sch.fuse(cib, ci_o) if streamed else cib)
        _vectorize_tile_loops(sch, writeback)


def schedule_chunked(
    sch: Any,
    block: Any,
    tiles: tuple[Any, Any, Any, Any],
    reduction: tuple[Any, Any, Any],
    inner: tuple[Any, Any, Any],
    chunk: int,
    cpu: CpuInfo,
    knobs: Knobs,
) -> None:
    """A pointwise conv's weights-staying nest with its reduction in chunks of ``chunk`` input
    blocks (:func:`reduction_chunk`) outside the pixel tiles: ``n × output-block tile`` (the
    parallel loop), chunk, ``h``, pixel tile, then the tile's steps as :class:`PointwiseNCHWc`
    runs them. The tile accumulates in the conv's output between chunks (LLVM keeps it in
    registers within one: its address is the same at every step), so the epilogue runs after
    the last chunk, per output-block tile, and the sum is added in the same order as in one
    chunk: the result is bit for bit the same."""
    n, cob_o, h, pix_o = tiles
    cib, ci_o, ci_i = reduction
    pix_i, cob_i, co = inner
    chunk_o, chunk_i, _ = split_row(sch, cib, chunk)
    sch.reorder(n, cob_o, chunk_o, h, pix_o, chunk_i, ci_o, ci_i, pix_i, cob_i, co)
    inline_epilogue_intermediates(sch, block)
    inline_epilogue(sch, block, cob_o, cpu.lanes, keep_unit_loops=knobs.tunable)
    sch.vectorize(co)
    for loop in (ci_i, pix_i, cob_i):
        sch.unroll(loop)
    sch.parallel(sch.fuse(n, cob_o))
    sch.decompose_reduction(block, chunk_o)


def parallel_tiles(sch: Any, tiles: tuple[Any, ...], tail_loop: Any | None) -> Any:
    """Run the tile loops (outermost first) in parallel; returns the innermost tile loop.

    All of them fuse into one parallel loop unless ``tail_loop``, the pixel-tile loop of a row
    with a tail (:func:`split_row`), is one of them: it and the loops inside it stay serial
    loops of their own, so TVM can peel the tail off it; the loops outside it are fused.
    """
    if tail_loop is None:
        fused = sch.fuse(*tiles)
        sch.parallel(fused)
        return fused
    index = next(i for i, loop in enumerate(tiles) if loop.same_as(tail_loop))
    if index:
        sch.parallel(sch.fuse(*tiles[:index]) if index > 1 else tiles[0])
    return tiles[-1]


def _row_tile(
    sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED, *, weighted: bool = False
) -> tuple[Any, ...]:
    """Depthwise and pooling windows: padding inlined, a tile of output columns of one row ×
    one channel block, the window loops outside the tile. Returns ``n, cb, h, w_o, w_i, c, kh,
    kw``. The tile is a knob where it divides the row (a tail's split stays fixed). A
    ``weighted`` window (depthwise) leaves registers for its weights
    (:meth:`CpuInfo.holding_window`); where the strided window's taps would hold more shared
    input columns than fit beside the tile, they run inside each column instead
    (:meth:`CpuInfo.taps_outside_tile_fit`)."""
    stride = window_column_stride(sch, block) if weighted else 1
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.startswith("pad_nchwc"):
            sch.compute_inline(producer)
    n, cb, h, w, c, kh, kw = sch.get_loops(block)
    if weighted:
        cpu = cpu.holding_window(int(sch.get(kh).extent), int(sch.get(kw).extent))
    width = int(sch.get(w).extent)
    width_tile = depthwise_row_tile(width, cpu)
    if width % width_tile:
        w_o, w_i, _ = split_row(sch, w, width_tile)
    else:
        w_o, w_i = knobs.split(sch, w, width_tile, cpu.row_tile_limit, "row tile")
    if cpu.taps_outside_tile_fit(width_tile, stride, width):
        sch.reorder(n, cb, h, w_o, kh, kw, w_i, c)
    else:
        sch.reorder(n, cb, h, w_o, kh, w_i, kw, c)
    return n, cb, h, w_o, w_i, c, kh, kw


def window_column_stride(sch: Any, block: Any) -> int:
    """The column stride of a depthwise block (``n, cb, h, w, c`` × its taps): the step of
    its (padded) input's column index per output column; 1 if no read says."""
    from tvm.sym.pattern import detect_linear_equation

    stmt = sch.get(block)
    column = stmt.iter_vars[3].var
    for region in stmt.reads:
        if len(region.region) == 5:  # the blocked input; the weights are 4-d
            coefficients = detect_linear_equation(region.region[3].min, [column])
            if coefficients and isinstance(coefficients[0], tirx.IntImm):
                return int(coefficients[0])
    return 1


class _RowTileRule(_ConvRule):
    """A window op (depthwise conv, pool) on one tile of output columns of a row × one channel
    block, the lanes vectorized, parallel over batch × channel blocks × rows."""

    #: Inline the epilogue's intermediate blocks first (:func:`inline_epilogue_intermediates`);
    #: the pool rule leaves its epilogue's blocks as they are.
    inline_intermediates = True
    #: Unroll the window's columns too, not only the tile's; the pool rule does not.
    unroll_window = True
    #: Whether the window has weights that may stay in registers; a pool's has none.
    weighted = True
    has_knobs = True

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        n, cb, h, w_o, w_i, c, kh, kw = _row_tile(sch, block, cpu, knobs, weighted=self.weighted)
        unrolled = (w_i, kw) if self.unroll_window else (w_i,)
        writeback = register_tile(
            sch,
            block,
            w_o,
            c,
            unrolled,
            cpu,
            inline_intermediates=self.inline_intermediates,
            keep_unit_loops=knobs.tunable,
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


def window_dilation(sch: Any, block: Any) -> int:
    """The row dilation of a K×K conv block (``n, cob, h, w, co`` × ``r, kh, kw``): the step
    of its padded input's row index per kernel row; 1 when the input is not padded."""
    from tvm.sym.pattern import detect_linear_equation

    stmt = sch.get(block)
    reduced = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    for region in stmt.reads:
        if region.source.name.startswith("pad_nchw") and len(reduced) == 3:
            coefficients = detect_linear_equation(region.region[2].min, [reduced[1]])
            if coefficients and isinstance(coefficients[0], tirx.IntImm):
                return int(coefficients[0])
    return 1


#: Accumulators a K×K tile needs to keep enough FMAs in flight to hide their latency (2 FMA
#: pipes × 4 cycles on this project's AVX-512 host); a row's tail tile with fewer runs slower.
LATENCY_ACCUMULATORS = 8
#: How many more loads per FMA a K×K row tile may cost than the fewest, to keep its tail busy.
WINDOW_LOAD_SLACK = 1.02


def window_row_tile(width: int, out_blocks: int, cpu: CpuInfo) -> tuple[int, int]:
    """:func:`pointwise_row_tile` for a K×K conv, but a row's last tile keeps at least
    :data:`LATENCY_ACCUMULATORS` accumulators if a tile within :data:`WINDOW_LOAD_SLACK` of the
    fewest loads per FMA can: a 1-pixel tail runs its whole window on too few to hide the FMA
    latency (13 wide on AVX-512: 64→256 3×3 with 5+5+3 pixels 8% faster than 6+6+1, 48→192
    with 4×5 tiles 8% faster than 6×4; 7 wide 4+3 13% faster than 6+1)."""
    chosen = pointwise_row_tile(width, out_blocks, cpu)

    reuse = functools.partial(_row_reuse, width)

    def busy(oc: int, count: int) -> int:  # accumulators of the row's narrowest tile
        return min(oc * (width % count or count), LATENCY_ACCUMULATORS)

    candidates = [
        (oc, count)
        for oc in divisors(out_blocks)
        if oc <= MAX_POINTWISE_OUT_TILE
        for count in row_tiles(width)
        if cpu.tile_fits(oc * count, weights=oc, inputs=count)
        and reuse(oc, count) * WINDOW_LOAD_SLACK >= reuse(*chosen)
    ]
    best = max(candidates, key=lambda tile: (busy(*tile), reuse(*tile), tile == chosen))
    return best if busy(*best) > busy(*chosen) else chosen


def two_taps_tile(
    chosen: tuple[int, int], width: int, out_blocks: int, cpu: CpuInfo
) -> tuple[int, int]:
    """A K×K conv's tile on x86 with FMA below AVX-512 (AVX2: ``x86-64-v3``): the most FMAs
    per load (a row's tail allowed) among the tiles of at least :data:`LATENCY_ACCUMULATORS`
    accumulators whose registers also hold two taps' weight vectors (LLVM loads the next tap's
    ahead in the unrolled window), more accumulators breaking ties; ``chosen`` elsewhere, and
    where none fits. Dense convs on a blocked input only (:class:`DenseConvNCHWc`): the stems
    and the grouped convs spilled with it.

    The two-step budget of :meth:`CpuInfo.tile_fits` left 2 × 1 or 1 × 3 on 16 registers: two
    or three FMA chains, latency-bound. SqueezeNet 1.1's expands alone, interleaved: 64 → 256
    3×3 at 13² 2 × 6 0.31× (2 × 1 before), 16 → 64 at 55² 2 × 6 0.50× (1 × 3), both spill-free;
    tiles past the budget (3 × 4, 5 × 2, 4 × 3) spilled 113-170 stack accesses, and some within
    it too (2 × 5 at 55²: 50; 4 × 2: 4), which the tie-break and the score leave unchosen."""
    if not cpu.fma_from_memory:
        return chosen

    reuse = functools.partial(_row_reuse, width)

    fitting = [
        (reuse(oc, count), oc * count, oc, count)
        for oc in divisors(out_blocks)
        if oc <= MAX_POINTWISE_OUT_TILE
        for count in row_tiles(width)
        if oc * count >= LATENCY_ACCUMULATORS and oc * count + 2 * oc <= cpu.registers
    ]
    return max(fitting)[2:] if fitting else chosen


def two_taps_reduction_unroll(steps: int, cpu: CpuInfo) -> int:
    """Reduction steps unrolled in a dense K×K conv on a blocked input: on AVX2, beside
    :func:`two_taps_tile`, :data:`MAX_REDUCTION_UNROLL` where they divide a longer reduction;
    elsewhere :func:`reduction_unroll`'s. Eight input channels per iteration instead of four
    halve the innermost loop's iterations, and its index arithmetic per FMA (SqueezeNet 1.1's
    13² expand: 7 scalar instructions beside each 48 FMAs at four). Untuned ``x86-64-v3`` builds,
    whole models, interleaved: SqueezeNet 1.1 0.946× (its 3×3 expands are ~59% of it),
    spill-free; ESPNet 0.93×. 16 channels: 0.955× but 2 spills at 13². A reduction of only 8
    keeps 4: unrolled whole with its window, ESPNet's 3-channel convs spilled 6-40 more stack
    accesses. Not taken on AVX-512 (0.99×) nor SSE4.2 (1.01×)."""
    if cpu.fma_from_memory and steps > MAX_REDUCTION_UNROLL and steps % MAX_REDUCTION_UNROLL == 0:
        return MAX_REDUCTION_UNROLL
    return reduction_unroll(steps)


#: Output pixels of a stem's register tile (:func:`stem_tile`).
STEM_PIXELS = 2


def stem_tile(width: int, out_blocks: int, cpu: CpuInfo) -> tuple[int, int] | None:
    """``(output blocks, pixels)`` of the register tile of a K×K conv on the NCHW image (a stem:
    3 channels, stride 2) on 64-bit ARM and on x86 below AVX-512; None elsewhere (AVX-512 folds
    its broadcasts, and 32-bit ARM keeps its own tile).

    A stem's whole reduction (3 channels × the window) is a few dozen taps, so LLVM unrolls it
    and keeps every input it loaded live until its last tap: at stride 2, ``p`` pixels read
    ``2p + 1`` columns per kernel row, each live over two taps, where :func:`window_row_tile`
    counts ``p`` per step. Its wide-pixel tiles spilled: 2 × 4 on rpi3 (3 stack accesses per
    tile, the Cortex-A53 scheduler loading the inputs ahead), 3 × 3 on rpi5 (4), 3 × 1 on
    x86-64-v2 (13), and on x86-64-v3 1 × 3, whose window LLVM held in registers and broadcast
    with ``vpermps`` (6 masks, 85 accesses). Two pixels × as many output blocks as fit read
    spill-free on all of them (``benchmarks/spills.py``), and weights are cheap: each serves
    both pixels. On x86-64-v3 it ran 0.67x the 1 × 3 tile, on x86-64-v2 0.92-0.95x (the
    layer alone, interleaved). The budget: on AArch64 :meth:`CpuInfo.tile_fits` across the
    window (its scheduler loads the next taps' operands ahead); on x86, whose FMA reads an
    operand from memory, one step of operands and a spare; two steps without FMA (SSE's
    ``mulps`` overwrites a copy of its operand).

    A row the two pixels leave a tail (SqueezeNet 1.1's unpadded 111) keeps the K×K tile: its
    full tiles then run as a serial loop of their own (:func:`split_row`) in which every weight
    is invariant, and 4 × 2 spilled them there (17 accesses per tile on rpi4 and rpi5).

    Without FMA on x86 (SSE: ``x86-64-v2``) a stem takes one pixel instead
    (:func:`one_pixel_stem_tile`), whatever its width."""
    if cpu.folds_broadcasts or cpu.arch.startswith(("arm", "thumb")):
        return None
    if cpu.chain_bound:
        return one_pixel_stem_tile(out_blocks, cpu)
    if width % STEM_PIXELS:
        return None
    pixels = STEM_PIXELS

    def fits(oc: int) -> bool:
        accumulators = oc * pixels
        if not cpu.reads_weights_from_memory:
            return cpu.across_window().tile_fits(accumulators, weights=oc, inputs=pixels)
        steps = 1 if cpu.fma else 2
        return accumulators + steps * (oc + pixels) + int(cpu.fma) <= cpu.tile_registers

    fitting = [oc for oc in divisors(out_blocks) if oc <= MAX_POINTWISE_OUT_TILE and fits(oc)]
    return (max(fitting, default=1), pixels)


def one_pixel_stem_tile(out_blocks: int, cpu: CpuInfo) -> tuple[int, int]:
    """``(output blocks, 1)``: a stem's register tile on x86 without FMA (SSE), one pixel × the
    most output blocks whose products fit beside them
    (:meth:`CpuInfo.unrolled_single_pixel_tile_fits`).

    Each weight then serves one multiply, which reads it from memory (``mulps xmm, [w]``), so
    the tile's registers go to accumulator chains instead of weights and a second pixel's
    inputs; the 2 × 2 tile had 4 chains for a multiply and a dependent add per step. The tuning
    search moved these stems to 8 × 1, which spilled (MobileNet v2's 4, SqueezeNet 1.1's 2
    stack accesses per tile). The stem alone, untuned, interleaved against the old tile (the
    fastest of 40 runs each on a loaded machine): MobileNet v2's 4 × 1 0.88× its 2 × 2,
    ShuffleNet v2's 6 × 1 0.77× its 2 × 2, SqueezeNet 1.1's 4 × 1 0.83× its 1 × 3 K×K tile
    (one pixel leaves its 111-wide row no tail)."""
    fitting = [
        d
        for d in divisors(out_blocks)
        if d <= MAX_POINTWISE_OUT_TILE and cpu.across_window().unrolled_single_pixel_tile_fits(d)
    ]
    return max(fitting, default=1), 1


def reads_the_image(sch: Any, block: Any) -> bool:
    """Whether a K×K conv block reads a plain NCHW input (the image: :func:`stem_tile`), not a
    blocked one."""
    return any(len(region.source.shape) == 4 for region in sch.get(block).reads)


#: Scalar instructions an iteration of a streamed reduction loop (:func:`streamed_tile`)
#: spends on its indices (the fused loop's divisions by the window): in armv7's listings 7 (a
#: 16-input pointwise), 13 (a stem's 2 × 3 × 1) to ~36 (a 3×3 expand's 2 × 2 × 2, its steps
#: split in two). The zoo's tiles are the same anywhere from 11 to 36.
STREAMED_LOOP_OVERHEAD = 24
#: Input channels of a pointwise reduction that runs as one loop of single steps where LLVM's
#: scheduler loads whole unrolled blocks ahead (:func:`streamed_tile`): with 4 blocks of 4
#: unrolled steps LLVM unrolled the reduction whole (16-input expands spilled 16 to 34 times
#: per tile on armv7); 16 iterations of one step it keeps as a loop, 8 it still unrolls. With
#: 32 or more inputs, the reduction's loop of 4-step blocks stays a loop and read spill-free.
STREAMED_POINTWISE_STEPS = 16
#: Up to this many inputs, a one-pixel pointwise conv (a squeeze-excite expand) streams its
#: reduction too: unrolled whole, its input pixel is invariant across the output-block tiles,
#: so LLVM hoisted all of its broadcasts out of them (MnasNet's 20- to 40-input expands
#: spilled 40 to 64 times per tile on armv7; streamed, none did).
STREAMED_GATE_STEPS = 64
#: Without FMA (:attr:`CpuInfo.separate_products`: a step is a multiply and an add), a
#: one-pixel pointwise reduction of more inputs than this (not this many) streams too: its loop
#: of single steps stays a loop on armv7. MnasNet's 10-input expands (12 with the padding to
#: whole blocks) in blocks of 4 steps, unrolled whole, spilled 14 times per tile; as one loop of
#: 12 steps none did. A loop of 8 LLVM unrolls whole again, its input broadcasts hoisted out of
#: the tiles (the 6-input expand: 16 accesses; in blocks of 4 it reads spill-free). With FMA
#: the smaller body is unrolled whole at 12 steps too (rpi4-armv7: 118 accesses; unstreamed
#: none): there only reductions longer than :data:`STREAMED_POINTWISE_STEPS` stream.
STREAMED_GATE_MIN_STEPS = 8


def streamed_tile(
    width: int, out_blocks: int, steps: int, cpu: CpuInfo, max_unroll: int = MAX_REDUCTION_UNROLL
) -> tuple[int, int, int]:
    """``(output blocks, pixels, reduction unroll)`` of a conv whose reduction (its steps × a
    K×K window) runs as one loop, where LLVM's scheduler would load a whole unrolled window
    ahead (:attr:`CpuInfo.loads_whole_block_first`): a loop of ``steps × kh × kw / unroll``
    iterations is too long for LLVM to unroll, so only ``unroll`` steps' operands are live
    (:meth:`CpuInfo.streamed_tile_fits`). Maximises a row's FMAs per other instruction: the
    loads of its tiles (a tail's too, like :func:`pointwise_row_tile`) and each iteration's
    :data:`STREAMED_LOOP_OVERHEAD`, shared by the unrolled steps (at most ``max_unroll``).

    A pointwise reduction (``max_unroll`` 1) takes only tiles dividing the row: a row's tail
    tile is a loop of its own whose short reduction LLVM unrolls whole (a one-pixel body is too
    small to keep as a loop) and whose input pixel is then invariant across the output blocks:
    its 16 broadcasts were hoisted and spilled. On armv7: SqueezeNet's 3×3 expands (55 wide, 16
    output blocks) 2 × 2 × 2, the stems 2 × 3 × 1, its 16-input pointwise expands 1 × 5."""
    best: tuple[float, int, int, int, int] | None = None
    for oc in divisors(out_blocks):
        if oc > MAX_POINTWISE_OUT_TILE:
            break
        for count in row_tiles(width) if max_unroll > 1 else pixel_tiles(width):
            for unroll in (u for u in divisors(steps) if u <= max_unroll):
                if not cpu.streamed_tile_fits(oc * count, oc, count, unroll):
                    continue
                tiles = compute.ceil_div(width, count)
                cost = _row_loads(width, oc, count) + tiles * STREAMED_LOOP_OVERHEAD / unroll
                candidate = (oc * width / cost, oc * count, unroll, count, oc)
                if best is None or candidate > best:
                    best = candidate
    assert best is not None  # (1, 1, 1) always fits
    return best[4], best[3], best[2]


class _GatherConvRule(_TiledConvRule):
    """K×K conv as broadcast input scalar × weight vector (see :func:`compute._conv_nchwc`):
    the pointwise ``oc × p`` register tile, with the kernel window in the reduction and the
    padding inlined as predicated loads."""

    #: Whether a tile over a blocked input takes the target's dense-conv tile: one pixel × up
    #: to 8 output blocks on SSE (:func:`single_pixel_tile`), where the tuning search found it;
    #: two taps' operands on AVX2 (:func:`two_taps_tile`). Dense convs only.
    dense = False

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        inline_prologues(sch, block)
        pads = [p for p in sch.get_producers(block) if sch.get(p).name_hint.startswith("pad_nchw")]
        blocks_per_row = int(sch.get(block).annotations[compute.BLOCKS_PER_ROW_ATTR])
        n, cob, h, w, co, r, kh, kw = sch.get_loops(block)
        # Only output blocks reading the same table row share their broadcast inputs.
        # LLVM unrolls the window loops: its tile must leave room for the next tap's loads.
        width = int(sch.get(w).extent)
        steps = int(sch.get(r).extent)
        unroll = reduction_unroll(steps)
        # Where LLVM would load the whole unrolled window ahead, the window is one loop.
        streamed = cpu.loads_whole_block_first
        if streamed:
            oc_tile, pixel_tile, unroll = streamed_tile(width, blocks_per_row, steps, cpu)
        else:
            image = reads_the_image(sch, block)
            stem = stem_tile(width, blocks_per_row, cpu) if image else None
            oc_tile, pixel_tile = stem or window_row_tile(
                width, blocks_per_row, cpu.across_window()
            )
            if self.dense and not image:
                oc_tile, pixel_tile = two_taps_tile(
                    single_pixel_tile((oc_tile, pixel_tile), blocks_per_row, cpu.across_window()),
                    width,
                    blocks_per_row,
                    cpu,
                )
                unroll = two_taps_reduction_unroll(steps, cpu)
        order = self.loop_order(
            sch,
            block,
            cpu,
            knobs,
            **_gather_geometry(sch, block, blocks_per_row, oc_tile, pixel_tile),
        )
        # A sampled output-block tile may straddle two table rows: still the same conv, only
        # without the shared broadcasts, which the search then measures.
        cob_o, cob_i = knobs.split(sch, cob, oc_tile, MAX_POINTWISE_OUT_TILE, "oc tile")
        if width % pixel_tile:
            pix_o, pix_i, tail = split_row(sch, w, pixel_tile)
        else:
            pix_o, pix_i = knobs.split(sch, w, pixel_tile, MAX_SPATIAL_TILE, "pixel tile")
            tail = False
        r_o, r_i = knobs.split(sch, r, unroll, MAX_REDUCTION_UNROLL, "reduction unroll")
        tiles = (n, cob_o, h, pix_o) if order == WEIGHTS_STAY else (n, h, pix_o, cob_o)
        # The window outside the lanes where each tap's weights are one contiguous run.
        taps_outer = bool(sch.get(block).annotations.get(compute.TAPS_OUTER_ATTR, 0))
        window = (kh, kw, r_o) if taps_outer else (r_o, kh, kw)
        sch.reorder(*tiles, *window, r_i, pix_i, cob_i, co)
        writeback = register_tile(
            sch,
            block,
            tiles[-1],
            co,
            (r_i, pix_i, cob_i),
            cpu,
            keep_unit_loops=knobs.tunable,
        )
        dilated = window_dilation(sch, block) > 1
        # A blocked input's padded rows are copied once per row of tiles, not per tile: a
        # tile's window overlaps its neighbours' (SqueezeNet's 5-pixel tiles copied 7 columns).
        row_copy = taps_outer and pads and not dilated
        outer = parallel_rows(sch, tiles, pix_o, cpu) if row_copy else None
        if outer is None:
            outer = parallel_tiles(sch, tiles, pix_o if tail else None)
        for pad in pads:
            if dilated:
                # A dilated window spans (k-1)·d + 1 rows and columns and reads k of them: a
                # copy per tile would copy most of the input for every tile (ESPNet's 3×3 at
                # dilation 16: 3x slower). Padded once, in a pass of its own.
                schedule_elementwise(sch, pad, cpu.lanes)
                continue
            # The padded window of one tile (or row of tiles), copied next to it: the tile's
            # loads then need no bounds test (inlined, every broadcast load was predicated:
            # ~2x slower).
            sch.compute_at(pad, outer, knobs.tunable)
            _vectorize_tile_loops(sch, pad)
        sch.decompose_reduction(block, sch.fuse(*window) if streamed else window[0])
        _vectorize_tile_loops(sch, writeback)


#: Fewest whole rows of tiles per core for a K×K conv to run its rows, not its tiles, as the
#: parallel tasks (:func:`parallel_rows`): an uneven split then costs a core at most an eighth.
ROWS_PER_CORE = 8


def parallel_rows(sch: Any, tiles: tuple[Any, ...], pixel_loop: Any, cpu: CpuInfo) -> Any | None:
    """Run the tile loops outside ``pixel_loop`` (whole rows of tiles) as one parallel loop
    and return it, the pixel-tile loop and those inside it serial within each row; None (and
    nothing scheduled) where that leaves fewer than :data:`ROWS_PER_CORE` rows per core."""
    index = next(i for i, loop in enumerate(tiles) if loop.same_as(pixel_loop))
    outside = tiles[:index]
    if math.prod(int(sch.get(loop).extent) for loop in outside) < ROWS_PER_CORE * cpu.cores:
        return None
    fused = sch.fuse(*outside) if len(outside) > 1 else outside[0]
    sch.parallel(fused)
    return fused


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

    # (out blocks, steps, kh, kw, lanes), or (out blocks, kh, kw, steps, lanes) with the taps
    # outer; a shuffle's channel table is (out blocks, steps) too.
    taps_outer = bool(sch.get(block).annotations.get(compute.TAPS_OUTER_ATTR, 0))
    steps_axis = 3 if taps_outer else 1
    weight = next(
        b
        for b in buffers
        if len(b.shape) == 5 and [int(b.shape[0]), int(b.shape[steps_axis])] == [out_blocks, steps]
    )
    source = max((b for b in buffers if len(b.shape) >= 4 and not b.same_as(weight)), key=size)
    out_w = int(sch.get(w).extent)
    return {
        "input_bytes": size(source),
        "weight_bytes": size(weight),
        "output_bytes": size(sch.get(block).writes[0].source),
        "out_tiles": blocks_per_row // oc_tile,
        "pixel_tiles": int(sch.get(h).extent) * compute.ceil_div(out_w, pixel_tile),
        "table_rows": out_blocks // blocks_per_row,
    }


class GroupedNCHWc(_GatherConvRule):
    """Grouped conv: each output block reads its group's channels through a channel table."""

    schedule_name = compute.GROUPED


def inline_prologues(sch: Any, block: Any) -> None:
    """Inline a conv's pre-activation stage (:func:`compute.with_prologue`) into what reads it:
    the padded copy (copied per tile, so the activation is applied as the tile's window is
    copied) or the conv itself (applied to each input value as it is broadcast)."""
    prologues = [
        producer
        for reader in [block, *sch.get_producers(block)]
        for producer in sch.get_producers(reader)
        if sch.get(producer).name_hint.startswith(compute.PROLOGUE_STAGE)
    ]
    for prologue in prologues:
        sch.compute_inline(prologue)


def pixel_vector(width: int, lanes: int) -> int:
    """Output pixels per vector of a :class:`GroupedPixels` conv: a power of two of at least 4
    dividing the row (112: 16, 56: 8 on AVX-512), else the whole row if it fits in the lanes,
    else the widest divisor that does (a prime width wider than the lanes: scalar)."""
    power = lanes
    while power >= 4:
        if width % power == 0:
            return power
        power //= 2
    if width <= lanes:
        return width
    return max(d for d in divisors(width) if d <= lanes)


def pixels_tile(per_group: int, vectors: int, cpu: CpuInfo) -> tuple[int, int]:
    """``(output channels, pixel vectors)`` of a :class:`GroupedPixels` register tile: the
    channels of one group (they read the same input vector), up to 4, times the most vectors of
    the row that fit: ``c × v`` accumulators + ``v`` input vectors + 1 broadcast weight."""
    channels = max(d for d in divisors(per_group) if d <= 4)
    fitting = [v for v in divisors(vectors) if cpu.tile_fits(channels * v, v, inputs=channels)]
    return channels, max(fitting or [1])


class GroupedPixels(_ConvRule):
    """Grouped conv with few output channels per group, in NCHW
    (:func:`compute.grouped_conv_pixels`): a tile of output channels of one group × vectors of
    pixels of one row, each tap one input vector load and one broadcast weight per channel; the
    padded input window (with the pre-activation, if any) copied per row of tiles. A result
    packed in the kernel (:func:`compute.packed_pixels`) runs rows outermost: every channel of a
    row, then that row packed from cache."""

    schedule_name = compute.GROUPED_PIXELS
    #: Its knobs: the channels and the pixel vectors of the tile (the vector itself stays).
    has_knobs = True

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        inline_prologues(sch, block)
        pads = [p for p in sch.get_producers(block) if sch.get(p).name_hint.startswith("pad_nchw")]
        per_group = int(sch.get(block).annotations[compute.PER_GROUP_ATTR])
        packs = [
            c for c in sch.get_consumers(block) if sch.get(c).name_hint == compute.PIXELS_PACK_STAGE
        ]
        row = None
        if packs:
            # The pack's rows outermost, the conv computed per row under them: the pack reads
            # the row from cache. (Moved under the conv's loops instead, the pack would only
            # cover the channels the conv computes, leaving its padding lanes unwritten.)
            p_n, p_cb, p_h, p_w, p_c = sch.get_loops(packs[0])
            sch.reorder(p_n, p_h, p_cb, p_w, p_c)
            row = sch.fuse(p_n, p_h)
            sch.vectorize(p_c)
            sch.compute_at(block, row, preserve_unit_loops=True)
            _, n, co, h, w, r, kh, kw = sch.get_loops(block)
        else:
            n, co, h, w, r, kh, kw = sch.get_loops(block)
        out_w = int(sch.get(w).extent)
        vector = pixel_vector(out_w, cpu.lanes)
        channels, vectors = pixels_tile(per_group, out_w // vector, cpu)
        co_o, co_i = knobs.split(sch, co, channels, MAX_PIXELS_CHANNELS, "channels")
        if knobs.tunable:  # the vector stays; how many of them a tile holds is the knob
            w_vectors, w_v = sch.split(w, [None, vector])
            w_o, w_t = knobs.split(sch, w_vectors, vectors, MAX_PIXELS_VECTORS, "pixel vectors")
        else:
            w_o, w_t, w_v = sch.split(w, [None, vectors, vector])
        if row is None:
            sch.reorder(n, co_o, h, w_o, r, kh, kw, co_i, w_t, w_v)
        else:
            sch.reorder(n, h, co_o, w_o, r, kh, kw, co_i, w_t, w_v)
        writeback = register_tile(
            sch, block, w_o, w_v, (kw, co_i, w_t), cpu, keep_unit_loops=knobs.tunable
        )
        outer = sch.fuse(n, co_o, h) if row is None else row
        sch.parallel(outer)
        for pad in pads:
            sch.compute_at(pad, outer if row is None else co_o, knobs.tunable)
            _vectorize_tile_loops(sch, pad)
        sch.decompose_reduction(block, r)
        if vector > 1:  # a prime row wider than the lanes runs scalar: no lane loop to vectorize
            _vectorize_tile_loops(sch, writeback)
        for unpack in [
            *sch.get_producers(block),
            *(p for pad in pads for p in sch.get_producers(pad)),
        ]:
            if sch.get(unpack).name_hint == compute.UNPACK_WINDOW_STAGE:
                # A blocked input (compute.unpacked_window), unpacked once at the top of the
                # kernel, row by row like UnpackNCHWc (every channel of a row reads the same
                # blocked row, then in cache). Unpacked per row of tiles instead, it gathered
                # each value 3 times with strided loads: condensenet74_c4_g4 1.2x slower.
                n_u, c_u, h_u, w_u = sch.get_loops(unpack)
                sch.reorder(n_u, h_u, c_u, w_u)
                sch.parallel(sch.fuse(n_u, h_u))
                if int(sch.get(w_u).extent) % cpu.lanes == 0:
                    sch.vectorize(sch.split(w_u, [None, cpu.lanes])[1])


class DenseConvNCHWc(_GatherConvRule):
    """Dense K×K conv (the stem, SqueezeNet's 3×3 expand): every output block reads every
    input lane.

    On SSE (``x86-64-v2``: no FMA) a conv on a blocked input takes one pixel × up to 8 output
    blocks, as a pointwise conv there: untuned, SqueezeNet 1.1's 3×3 expands took 1 to 3
    blocks × 1 to 3 pixels, too few accumulator chains for each step's multiply and dependent
    add, and the tuning search moved them to 8 × 1 (2.6 → 1.3 and 1.0 → 0.7 ms,
    ``benchmarks/tuning.py``). Not the stems (:func:`stem_tile`): the search moved them to 8 × 1
    too, but MobileNet v2's and ShuffleNet v2's then spilled 4 and 2 times per tile. On AVX2
    (``x86-64-v3``) it takes a tile of 8 or more accumulators beside two taps' weights
    (:func:`two_taps_tile`)."""

    schedule_name = compute.DENSE
    dense = True


def transposed_tile(
    pixels: list[int], out_blocks: int, phases: int, cpu: CpuInfo
) -> tuple[int, int]:
    """``(output blocks, input positions)`` of a transposed conv's register tile, which holds
    all ``phases`` column phases of each position: every broadcast input value feeds
    ``oc * phases`` FMAs (one weight vector per block and phase). Maximises FMAs per load,
    ``oc*p*phases / (oc*phases + p)``, with accumulators + weight vectors + 1 within the tile's
    registers, like :func:`pointwise_tile`."""
    best: tuple[float, int, int, int] | None = None
    for oc in divisors(out_blocks):
        if oc > MAX_POINTWISE_OUT_TILE:
            break
        for count in pixels:
            if not cpu.tile_fits(oc * count * phases, weights=oc * phases, inputs=count):
                continue
            fmas = oc * count * phases
            candidate = (fmas / (oc * phases + count), fmas, count, oc)
            if best is None or candidate > best:
                best = candidate
    return (best[3], best[2]) if best is not None else (1, 1)


def _unpacked_register_tile(
    sch: Any,
    block: Any,
    unpack: Any,
    tile_loop: Any,
    vector_loop: Any,
    unrolled: tuple[Any, ...],
    cpu: CpuInfo,
    keep_unit_loops: bool = False,
) -> Any:
    """:func:`register_tile` for a conv whose result is unpacked to NCHW in the same function:
    the tile is written back to a tile-sized blocked buffer and unpacked from there at once,
    channel by channel (contiguous stores along the row), so the blocked result never goes to
    memory. Elementwise ops after the unpack are inlined into it. Returns the write-back."""
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop, keep_unit_loops)
    sch.reverse_compute_at(unpack, tile_loop, keep_unit_loops)
    inline_epilogue(sch, unpack, tile_loop, cpu.lanes, keep_unit_loops=keep_unit_loops)
    sch.vectorize(vector_loop)
    for loop in unrolled:
        sch.unroll(loop)
    _vectorize_tile_loops(sch, unpack)
    return writeback


class TransposedConvNCHWc(_ConvRule):
    """Transposed conv as a sub-pixel conv (:func:`compute.transposed_conv_nchwc`): each output
    axis split into input position × phase where the stride divides it. A tile is one output
    row (one row phase) × ``oc`` output blocks × ``p`` input positions with all their column
    phases, so it writes a contiguous run of the row (a tile of one column phase would write
    every other pixel, which the write-back cannot express) and each broadcast input feeds
    every phase. Output blocks outermost (the weights stay): a transposed conv's weights are
    tiny next to its output."""

    schedule_name = compute.TRANSPOSED
    #: Its knobs: the output-block and input-position tiles and the reduction split.
    has_knobs = True

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        pads = [p for p in sch.get_producers(block) if sch.get(p).name_hint.startswith("pad_nchw")]
        strides = [int(s) for s in sch.get(block).annotations[compute.STRIDES_ATTR]]
        n, cob, h, w, co, r, th, tw = sch.get_loops(block)
        # Where the stride does not divide the output (output padding 0 at kernel 3), the axis
        # stays whole and the phase is computed per pixel.
        row_phase = column_phase = None
        if int(sch.get(h).extent) % strides[0] == 0:
            h, row_phase = sch.split(h, [None, strides[0]])
        if int(sch.get(w).extent) % strides[1] == 0:
            w, column_phase = sch.split(w, [None, strides[1]])
        phases = strides[1] if column_phase is not None else 1
        oc_tile, pixel_tile = transposed_tile(
            pixel_tiles(int(sch.get(w).extent)), int(sch.get(cob).extent), phases, cpu
        )
        cob_o, cob_i = knobs.split(sch, cob, oc_tile, MAX_POINTWISE_OUT_TILE, "oc tile")
        pix_o, pix_i = knobs.split(sch, w, pixel_tile, MAX_SPATIAL_TILE, "pixel tile")
        unroll = reduction_unroll(int(sch.get(r).extent))
        r_o, r_i = knobs.split(sch, r, unroll, MAX_REDUCTION_UNROLL, "reduction unroll")
        tiles = (n, cob_o, h, pix_o)
        tile = (*tiles, *([row_phase] if row_phase is not None else []))
        in_tile = (pix_i, *([column_phase] if column_phase is not None else []), cob_i)
        sch.reorder(*tile, r_o, th, tw, r_i, *in_tile, co)
        unpack = next(
            (c for c in sch.get_consumers(block) if sch.get(c).name_hint == "unpack_nchwc"), None
        )
        if unpack is None:
            writeback = register_tile(
                sch, block, tile[-1], co, (r_i, *in_tile), cpu, keep_unit_loops=knobs.tunable
            )
        else:
            writeback = _unpacked_register_tile(
                sch, block, unpack, tile[-1], co, (r_i, *in_tile), cpu, knobs.tunable
            )
        outer = sch.fuse(*tiles)
        sch.parallel(outer)
        for pad in pads:
            # The padded input window of one tile (both its rows), copied next to it.
            sch.compute_at(pad, outer, knobs.tunable)
            _vectorize_tile_loops(sch, pad)
        sch.decompose_reduction(block, r_o)
        _vectorize_tile_loops(sch, writeback)


class PackedMatmul(_ConvRule):
    """The classifier GEMV: ``T`` output vectors accumulated over the input, the weight read as
    one contiguous stream per output vector."""

    schedule_name = compute.MATMUL
    #: Its knobs: the accumulators and the reduction split.
    has_knobs = True

    def schedule(self, sch: Any, block: Any, cpu: CpuInfo, knobs: Knobs = FIXED) -> None:
        n, j, k = sch.get_loops(block)
        lanes = int(sch.get(block).annotations[compute.VECTOR_LANES_ATTR])
        j_o, j_i = sch.split(j, [None, lanes])
        blocks = int(sch.get(j_o).extent)
        # Per step: one weight vector per accumulator and one broadcast input.
        limit = max(
            t for t in range(1, MAX_GEMV_ACCUMULATORS + 1) if cpu.tile_fits(t, weights=t, inputs=1)
        )
        accumulators = max(d for d in divisors(blocks) if d <= limit)
        tile_o, tile_i = knobs.split(sch, j_o, accumulators, limit, "accumulators")
        unroll = reduction_unroll(int(sch.get(k).extent))
        k_o, k_i = knobs.split(sch, k, unroll, MAX_REDUCTION_UNROLL, "reduction unroll")
        sch.reorder(n, tile_o, k_o, k_i, tile_i, j_i)
        writeback = register_tile(
            sch,
            block,
            tile_o,
            j_i,
            (k_i, tile_i),
            cpu,
            inline_intermediates=False,
            keep_unit_loops=knobs.tunable,
        )
        sch.parallel(sch.fuse(n, tile_o))
        sch.decompose_reduction(block, k_o)
        _vectorize_tile_loops(sch, writeback)


class UnpackNCHWc(TriesSchedule):
    """A lone NCHW[x]c → NCHW unpack (a model's output, the input of an op left in NCHW), row by
    row: for one row, every channel reads the same ``W × x`` block rows, which then stay in
    cache. TVM's lowering loops channel-outermost, so each of ``C`` channels streamed the whole
    blocked tensor from memory, one float per cache line: ESPNet's 19 full-size output channels
    took 170 ms so. Within a row, a tile of ``x`` columns at a time, all channels. An unpack
    fused behind blocked elementwise stages (ESPNet v2's logits resized to the image size)
    computes them a tile at a time in its loops; other fused unpacks (with an epilogue or a
    concat) are left as they are."""

    schedule_name = "edgecompile.unpack_nchwc"

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        found = root_children(func)
        if found is None:
            return None
        sch, blocks = found
        if not blocks or not sch.get(blocks[-1]).name_hint.startswith("unpack_nchwc"):
            return None  # no blocks (a function of loops only) or not an unpack last
        unpack = blocks[-1]
        # Blocked elementwise stages in front of it (ESPNet v2's output: the logits resized to
        # the image in NCHW[x]c) are computed row by row inside the unpack's row loop.
        producers = blocks[:-1]
        if any(sch.get(b).name_hint not in BLOCKED_ELEMENTWISE_STAGES for b in producers):
            return None
        loops = sch.get_loops(unpack)
        if len(loops) != 4:
            return None
        lanes = target_cpu(target).lanes
        try:
            n, c, h, w = loops
            # Marked like our other rules' blocks: a tuning record replaying it says who made it.
            sch.annotate(unpack, SCHEDULED_BY_ATTR, self.schedule_name)
            sch.reorder(n, h, c, w)
            row = sch.fuse(n, h)
            sch.parallel(row)
            at = row
            if int(sch.get(w).extent) % lanes == 0:
                # Every channel of a tile of `lanes` columns, then the next tile: the channels
                # read the same few blocked pixels, in L1. Channel by channel along the whole
                # row, each read strided through a row of blocks too large for L1 (ESPNet v2's
                # output: 2 blocks × 1024 pixels, 128 KiB): a 3×3 conv with this resize +
                # unpack behind it (19 × 64 × 1024 output) took 1.6× as long so (AVX-512).
                w_o, w = sch.split(w, [None, lanes])
                sch.reorder(w_o, c, w)
                sch.vectorize(w)
                at = w_o
            if producers:
                for block in producers[:-1]:
                    sch.compute_inline(block)
                _row_of_blocked_stage(sch, producers[-1], at, lanes)
        except Exception as exc:  # a schedule primitive refused: keep TVM's default, say so
            raise ScheduleFailed(f"{type(exc).__name__}: {last_line(str(exc))}") from None
        return sch


def _row_of_blocked_stage(sch: Any, block: Any, row: Any, lanes: int) -> None:
    """``block`` (NCHW[x]c) computed one output row (or one tile of a row) at a time under the
    unpack's ``row`` loop, its lane loop vectorized: the row's blocks are transposed while
    still in cache, and the full blocked tensor is never written."""
    sch.compute_at(block, row)
    loops = sch.get_loops(block)
    if int(sch.get(loops[-1]).extent) == lanes:
        sch.vectorize(loops[-1])
    if sch.get(block).name_hint == RESIZE_STAGE and len(loops) >= 3:
        _blocks_inside_pixels(sch, loops[-3], loops[-2])


def _resize_by_pixel(sch: Any, block: Any) -> None:
    """A blocked resize's kernel (its inlined stages and what follows it) parallel over rows,
    each pixel's channel blocks innermost (:func:`_blocks_inside_pixels`), lanes vectorized."""
    n, cb, h, w, c = sch.get_loops(block)
    sch.reorder(n, h, w, cb, c)
    sch.vectorize(c)
    sch.parallel(sch.fuse(n, h))


def _blocks_inside_pixels(sch: Any, blocks: Any, pixels: Any) -> None:
    """A resize's channel-block loop moved inside its pixel loop: a pixel's source indices and
    weights (a dozen scalar instructions: scale, floor, clamps, int conversions) are then
    computed once for all its blocks, not once per block, which was most of its instructions
    (ESPNet v2's logits resized to 19 × 512 × 1024 and unpacked: 8.9 → 7.1 ms, 1 thread,
    AVX-512)."""
    sch.reorder(pixels, blocks)
    sch.unroll(blocks)


class PoolNCHWc(_RowTileRule):
    """Max/average pooling: a row of output columns × one channel block per tile, like
    depthwise without weights; padding inlined, the average's division in the write-back."""

    schedule_name = compute.POOL
    inline_intermediates = False
    unroll_window = False
    weighted = False


#: The block ``topi.image.resize2d`` computes.
RESIZE_STAGE = "resize"
#: The blocks of :func:`compute.prelu_nchwc` and :func:`compute.channel_affine_nchwc`, and
#: ``topi.image.resize2d``'s, which the layout pass emits in NCHW[x]c (ESPNet v2's decoder:
#: its per-pixel source indices and weights are shared by the lanes a vector computes), and
#: :func:`compute.window_mean_nchwc` (its pyramid's adaptive pools, windows read by table).
BLOCKED_ELEMENTWISE_STAGES = frozenset(
    {"prelu_nchwc", "batch_norm_nchwc", RESIZE_STAGE, "window_mean_nchwc"}
)


class BlockedElementwise(TriesSchedule):
    """A kernel of blocked elementwise ops with no conv to ride on: ESPNet v2's batch norm +
    PReLU after a concat or a sum, with the concat or the adds FuseOps put in front of them.
    The intermediate stages are inlined into the last, which runs parallel over its outer
    loops with the lane loop vectorized: one pass over memory. TVM's lowering ran each stage as
    a serial nest of its own through a full-size intermediate buffer: ESPNet v2 x0.5's seven
    concat → BN → PReLU kernels took 0.48 ms so, 0.03 ms scheduled (AVX-512, 1 thread)."""

    schedule_name = "edgecompile.elementwise_nchwc"

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        found = root_children(func)
        if found is None:
            return None
        sch, blocks = found
        if not {sch.get(b).name_hint for b in blocks} & BLOCKED_ELEMENTWISE_STAGES:
            return None
        lanes = target_cpu(target).lanes
        last = sch.get(blocks[-1])
        shape = _written_shape(sch, blocks[-1])
        spatial = all(
            iv.iter_type == tirx.IterVar.DataPar for b in blocks for iv in sch.get(b).iter_vars
        )
        if not spatial or len(shape) != 5 or shape[-1] != lanes or len(last.iter_vars) != 5:
            return None
        resize = any(sch.get(b).name_hint == RESIZE_STAGE for b in blocks)
        try:
            for block in blocks[:-1]:
                sch.compute_inline(block)
            sch.annotate(blocks[-1], SCHEDULED_BY_ATTR, self.schedule_name)
            if resize:
                _resize_by_pixel(sch, blocks[-1])
            else:
                schedule_elementwise(sch, blocks[-1], lanes)
        except Exception as exc:  # a schedule primitive refused: keep TVM's default, say so
            raise ScheduleFailed(f"{type(exc).__name__}: {last_line(str(exc))}") from None
        return sch
