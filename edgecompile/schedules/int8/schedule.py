"""The schedule of a folded conv (a dlight-style rule, tried with ours in
:func:`edgecompile.schedules.pipeline.schedule_rules`).

The x86 rules ask for their tiles through :mod:`~edgecompile.schedules.knobs`, as the fp32
rules do: constants in a build, ``sample_perfect_tile`` at the analytic value in a design space
(:meth:`Int8ConvNCHW.design_spaces`). Only the loops outside the instruction are tiles: the
VNNI intrinsic's 16 output lanes × 4 input bytes (AVX2's: × 2 int16 inputs) and the depthwise
kernel's 16 channels are the blocked layout's, never split, so every sampled point still
tensorizes and computes the same integers."""

from __future__ import annotations

from typing import Any

from edgecompile.schedules.int8.compute import DEPTHWISE_ACC, OUT_BLOCK
from edgecompile.schedules.knobs import FIXED, KNOBS_ATTR, Knobs

#: The ``schedule`` of a folded conv :class:`Int8ConvNCHW` scheduled (manifest, ``--explain``).
INT8_SCHEDULE = "edgecompile-int8 (NCHW)"
#: The ``schedule`` of a channel-blocked folded conv, on AVX-512 VNNI's ``vpdpbusd``.
INT8_VNNI_SCHEDULE = "edgecompile-int8 (blocked, VNNI)"
#: The ``schedule`` of a channel-blocked folded conv on AVX2 without VNNI (``vpmaddwd``).
INT8_AVX2_SCHEDULE = "edgecompile-int8 (blocked, AVX2)"
#: The ``schedule`` of a channel-blocked folded depthwise conv (AVX-512: 16 int32 lanes; AVX2:
#: two registers of 8).
INT8_DEPTHWISE_SCHEDULE = "edgecompile-int8 (blocked depthwise)"
#: The ``schedule`` of a folded conv left to TVM's default lowering (the rule failed).
INT8_UNSCHEDULED = "edgecompile-int8 (NCHW, TVM lowering)"
#: Accumulator registers of the blocked conv's tile (of AVX-512's 32): the rest hold the
#: weight vector and the broadcast input.
_VNNI_TILE_REGISTERS = 24
#: Pixels of one row accumulated together by the blocked depthwise conv (of AVX-512's 32
#: registers; the rest hold a tap's weights and a widened input): 14 divides the widths
#: 224-input models have (112, 56, 28, 14, 7), and a prime width up to 13 is one tile.
_DEPTHWISE_TILE_PIXELS = 14
#: The largest output-channel tile the search may sample for the NCHW kernel (its analytic
#: tile is up to 8 channels, each an unrolled vector of pixels).
_NCHW_MAX_CHANNEL_TILE = 16
#: The most output blocks the search may sample for the VNNI tile (16 channels each; the
#: analytic tile takes 1 or 2).
_VNNI_MAX_BLOCK_TILE = 4
#: (block, pixel) pairs of the AVX2 conv's register tile: each pair is 16 int32 accumulators,
#: two of AVX2's 16 registers, so 6 pairs leave 4 for the broadcast input and the products.
_AVX2_TILE_PAIRS = 6
#: Fewer pairs than this leave ``vpmaddwd``'s latency exposed (as ``_VNNI_MIN_ACCUMULATORS``).
_AVX2_MIN_PAIRS = 4
#: Pixels of a row the depthwise conv accumulates together on AVX2 (two accumulators each, of
#: 16 registers), and the widest prime row taken whole (7: MobileNet's last blocks).
_AVX2_DEPTHWISE_TILE_PIXELS = 6
_AVX2_DEPTHWISE_WHOLE_ROW = 7


def blocked_instruction(target: Any) -> str | None:
    """The x86 instruction the channel-blocked integer conv multiplies with on ``target``:
    "vnni" (AVX-512 VNNI's ``vpdpbusd``), "avx2" (``vpmaddwd``), None (no blocked kernels:
    the NCHW one). Only ever x86: an ARM target's LLVM features carry no such names."""
    from tvm.target.codegen import target_has_features

    if target_has_features("avx512vnni", target):
        return "vnni"
    return "avx2" if target_has_features("avx2", target) else None


def has_blocked_kernel(target: Any) -> bool:
    """Whether ``target`` has kernels for the channel-blocked integer convs and glue (AVX-512
    VNNI, or AVX2): the blocked depthwise conv, concat and max pool need neither's dot
    product."""
    return blocked_instruction(target) is not None


def _inline_padding(sch: Any) -> None:
    """Inline the kernel's ``int8_pad`` block into its reader, if the compute made one."""
    try:
        pad = sch.get_sblock("int8_pad")
    except Exception:  # none: TVM raises its own error type for a missing block
        return
    sch.compute_inline(pad)


def _reads_blocked(sch: Any, block: Any) -> bool:
    """Whether ``block`` reads a 5-D (blocked ``[N, C/16, H, W, 16]``) buffer."""
    return all(len(region.source.shape) == 5 for region in sch.get(block).reads)


def _inline_requantized_readers(sch: Any, requantize: Any) -> None:
    """Inline the elementwise kernels FuseOps put after the requantization into it: the
    ``dequantize → quantize`` that moves a conv's output to a concat's quantization
    (:mod:`.glue`) then runs on the tile's registers, not as a second pass over memory in
    float32. One that cannot be inlined (it reads more than this element) stays as it was."""
    from tvm import s_tir

    while True:
        consumers = sch.get_consumers(requantize)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            return


def narrowed(func: Any) -> Any:
    """``func`` with int32 indices, as TVM's tensor intrinsics are written (Relax gives int64
    ones): what a blocked rule schedules, and so what its design space must start from."""
    import tvm
    from tvm import tirx

    return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]


def _largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


#: Fewer accumulators than this leave ``vpdpbusd``'s latency exposed (each step's products
#: wait on the last step's): the tile then takes more output blocks or a whole prime row.
_VNNI_MIN_ACCUMULATORS = 8


def vnni_register_tile(
    out_blocks: int,
    out_w: int,
    pairs: int = _VNNI_TILE_REGISTERS,
    min_pairs: int = _VNNI_MIN_ACCUMULATORS,
) -> tuple[int, int]:
    """Output blocks × pixels of one row the VNNI conv accumulates in registers: 2 blocks
    (when they divide) × the largest pixel divisor that fits; a row that leaves that tile
    with too few accumulators (a prime width such as 13: 2 × 1) takes the tile of whole
    divisors with the most accumulators instead (1 × 13), 2 blocks first. ``pairs``: the
    (block, pixel) pairs that fit the registers, ``min_pairs`` the fewest worth taking (the
    AVX2 conv's are two registers each: :func:`avx2_register_tile`)."""
    ob_tile = 2 if out_blocks % 2 == 0 and out_w >= 4 else 1
    x_tile = _largest_divisor(out_w, pairs // ob_tile)
    if ob_tile * x_tile >= min_pairs:
        return ob_tile, x_tile
    return max(
        (
            (blocks, pixels)
            for blocks in (1, 2)  # 4 × 3 ran the stem (111 wide) 1.3× slower than 2 × 3
            if out_blocks % blocks == 0
            for pixels in range(1, out_w + 1)
            if out_w % pixels == 0 and blocks * pixels <= pairs
        ),
        key=lambda tile: (tile[0] * tile[1], tile[0]),
    )


def avx2_register_tile(out_blocks: int, out_w: int) -> tuple[int, int]:
    """Output blocks × pixels the AVX2 conv accumulates in registers: as
    :func:`vnni_register_tile`, within AVX2's 16 registers, two per (block, pixel)."""
    return vnni_register_tile(out_blocks, out_w, _AVX2_TILE_PAIRS, _AVX2_MIN_PAIRS)


def depthwise_row_tile(
    out_w: int, pixels: int = _DEPTHWISE_TILE_PIXELS, whole_row: int = _VNNI_TILE_REGISTERS
) -> int:
    """Pixels of a row the depthwise conv accumulates together: the largest divisor of the
    row up to ``pixels`` (:data:`_DEPTHWISE_TILE_PIXELS` on AVX-512), or a whole row of up to
    ``whole_row`` pixels (24 of AVX-512's 32 registers) whose divisors are all too small
    (17, 19, 23)."""
    tile = _largest_divisor(out_w, pixels)
    return out_w if tile < 4 and out_w <= whole_row else tile


class Int8ConvNCHW:  # a dlight-style rule, tried like ours (pipeline.schedule_rules)
    """A simple schedule for a folded conv: a register tile of a few output channels × a row
    segment of pixels (the vector), the reduction outside the tile, each output row requantized
    right after it is accumulated. Vector lanes are int32 (the accumulator), from the target."""

    schedule_name = INT8_SCHEDULE
    blocked = False
    acc_block = "int8_acc"
    loops = ("n", "o", "y", "x", "ic", "ky", "kx")  # the acc block's, as the compute makes it
    #: Whether :meth:`_schedule` takes :class:`~edgecompile.schedules.knobs.Knobs` (the rule is
    #: a design space for ``tune``); every int8 conv rule's does, the NEON ones' included.
    has_knobs = True

    def has_kernel(self, target: Any) -> bool:
        """Whether ``target`` has the instructions this rule's blocked kernel is written for."""
        return has_blocked_kernel(target)

    def try_schedule(self, func: Any, target: Any, knobs: Knobs = FIXED) -> Any | None:
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc):
            return None
        if self.blocked:
            # TVM's tensor intrinsics are written with int32 indices; Relax gives int64 ones.
            # Narrowing refuses a kernel with an int64 buffer (CondenseNet's index_select): not
            # ours, and it must not fail the whole pipeline.
            if any(str(param.dtype) in ("int64", "uint64") for param in func.params):
                return None
            func = narrowed(func)
        return self.schedule_here(s_tir.Schedule(func), target, knobs)

    def claims(self, sch: Any) -> bool:
        """Whether ``sch`` holds this rule's kernel (its blocks, its layout's loops)."""
        return self._blocks(sch) is not None

    def design_spaces(self, sch: Any, target: Any) -> list[Any]:
        """The rule's design space on the traced schedule ``sch``: its tiles as sampling
        instructions at their analytic values; none where the rule does not schedule it (another
        target's kernel). ``tune`` gives it the fused kernel as is (Relax's int64 indices),
        the tests the kernel a build schedules (:func:`narrowed`): both schedule alike."""
        space = self.schedule_here(sch, target, Knobs(tunable=self.has_knobs))
        return [] if space is None else [space]

    def _blocks(self, sch: Any) -> tuple[Any, Any] | None:
        """The kernel's accumulation and requantization blocks, if ``sch`` holds this rule's."""
        try:
            acc = sch.get_sblock(self.acc_block)
            requantize = sch.get_sblock("int8_requantize")
        except Exception:  # not one of ours: TVM raises its own error type for a missing block
            return None
        if len(sch.get_loops(acc)) != len(self.loops):
            return None  # the other layout's kernel
        return acc, requantize

    def schedule_here(self, sch: Any, target: Any, knobs: Knobs = FIXED) -> Any | None:
        """Schedule this rule's kernel in ``sch`` (None if it holds none, or the target lacks
        the blocked kernel's instructions)."""
        from edgecompile.schedules.cpu import cpu_info

        blocks = self._blocks(sch)
        if blocks is None:
            return None
        acc, requantize = blocks
        if self.blocked and not self.has_kernel(target):
            return None  # compiled for another target than folded for: TVM lowers it
        lanes = cpu_info(target).lanes
        try:
            if knobs is FIXED or not self.has_knobs:
                # exactly the schedule the rule wrote before it had knobs
                return self._schedule(sch, acc, requantize, lanes)
            knobs.names.clear()
            self._schedule(sch, acc, requantize, lanes, knobs)
            # which sampled tile is which knob, for `records show`: on the root block, as
            # the intrinsic replaced the accumulation's
            root = sch.get_sblock("root")
            sch.annotate(root, KNOBS_ATTR, ",".join(knobs.names))
            knobs.unroll(sch, root)
            return sch
        except Exception as error:  # a primitive refused: this kernel keeps TVM's lowering
            from edgecompile.errors import last_line
            from edgecompile.schedules.rules import ScheduleFailed

            raise ScheduleFailed(f"{self.schedule_name}: {last_line(error)}") from None

    def _schedule(
        self, sch: Any, acc: Any, requantize: Any, lanes: int, knobs: Knobs = FIXED
    ) -> Any:
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        # lanes: the target's float32 lanes, as many int32 accumulators.
        n, o, y, x, ic, ky, kx = sch.get_loops(acc)
        extents = [int(sch.get(loop).extent) for loop in (o, x)]
        o_tile = _largest_divisor(extents[0], 8)
        o_outer, o_inner = knobs.split(sch, o, o_tile, _NCHW_MAX_CHANNEL_TILE, "oc tile")
        x_tile = _largest_divisor(extents[1], lanes)
        x_outer, x_inner = knobs.split(sch, x, x_tile, lanes, "pixel tile")
        sch.reorder(n, o_outer, y, x_outer, ic, ky, kx, o_inner, x_inner)
        _inline_requantized_readers(sch, requantize)
        # A design space keeps a sampled tile's unit loops: a point of 1 channel replays the
        # trace's loops one for one.
        sch.reverse_compute_at(requantize, y, preserve_unit_loops=knobs.tunable)
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
    #: :func:`blocked_instruction`'s name of the instruction this rule's kernel is written for.
    instruction = "vnni"
    #: Input channels per dot product (the ``ii`` loop): the packed weight's last axis.
    in_block = 4
    #: The most (block, pixel) pairs the search may sample as the pixel tile.
    max_pixel_tile = _VNNI_TILE_REGISTERS

    def has_kernel(self, target: Any) -> bool:
        return blocked_instruction(target) == self.instruction

    def _blocks(self, sch: Any) -> tuple[Any, Any] | None:
        blocks = super()._blocks(sch)
        if blocks is None or int(sch.get(sch.get_loops(blocks[0])[-1]).extent) != self.in_block:
            return None  # the other instruction's kernel
        return blocks

    def register_tile(self, out_blocks: int, out_w: int) -> tuple[int, int]:
        return vnni_register_tile(out_blocks, out_w)

    def intrinsic(self) -> str:
        from edgecompile.schedules.int8.intrinsics import vnni_intrinsic

        return vnni_intrinsic()

    def _schedule(
        self, sch: Any, acc: Any, requantize: Any, lanes: int, knobs: Knobs = FIXED
    ) -> Any:
        """A register tile of output blocks × pixels of one row, accumulated over the input
        blocks and the window with one ``vpdpbusd`` per (block, pixel), then requantized
        straight from the registers into the NCHW output."""
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        # A blocked input without padding is read in place: no pad, no pack.
        _inline_padding(sch)
        n, ob, y, x, o, ic, ky, kx, ii = sch.get_loops(acc)
        out_blocks, out_w = int(sch.get(ob).extent), int(sch.get(x).extent)
        ob_tile, x_tile = self.register_tile(out_blocks, out_w)
        # Blocks × pixels only: the instruction's own loops (o, ii) stay whole.
        ob_outer, ob_inner = knobs.split(sch, ob, ob_tile, _VNNI_MAX_BLOCK_TILE, "block tile")
        x_outer, x_inner = knobs.split(sch, x, x_tile, self.max_pixel_tile, "pixel tile")
        sch.reorder(n, ob_outer, y, x_outer, ic, ky, kx, ob_inner, x_inner, o, ii)
        # The tile's accumulators in a local buffer (registers once unrolled), requantized
        # where the tile ends: the int32 accumulators never reach memory.
        tile = sch.cache_write(acc, 0, "local")
        sch.compute_inline(tile)
        _inline_requantized_readers(sch, requantize)
        # A design space keeps a sampled tile's unit loops: a point of 1 block or 1 pixel
        # replays the trace's loops one for one.
        sch.reverse_compute_at(requantize, x_outer, preserve_unit_loops=knobs.tunable)
        # Each output channel's pixels are contiguous in NCHW: one vector store per channel.
        sch.vectorize(sch.get_loops(requantize)[-1])
        sch.unroll(ob_inner)
        sch.unroll(x_inner)
        sch.parallel(sch.fuse(n, ob_outer, y))
        sch.annotate(acc, SCHEDULED_BY_ATTR, self.schedule_name)
        # Last: parallel refuses a reduction whose init was split off, and the intrinsic
        # matches only the update block.
        init = sch.decompose_reduction(acc, ic)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(o, self.intrinsic())
        return sch


class Int8ConvAvx2(Int8ConvBlocked):
    """The same channel-blocked conv on AVX2 without VNNI: its weights int16 in pairs of input
    channels (:func:`.compute.pack_weight` with :data:`.compute.AVX2_IN_BLOCK`), each (block,
    pixel, pair of input channels) two exact ``vpmaddwd`` (:mod:`.avx2_intrinsics`), in a
    register tile sized for AVX2's 16 registers."""

    schedule_name = INT8_AVX2_SCHEDULE
    instruction = "avx2"
    in_block = 2
    max_pixel_tile = 2 * _AVX2_TILE_PAIRS

    def register_tile(self, out_blocks: int, out_w: int) -> tuple[int, int]:
        return avx2_register_tile(out_blocks, out_w)

    def intrinsic(self) -> str:
        from edgecompile.schedules.int8.avx2_intrinsics import avx2_intrinsic

        return avx2_intrinsic()


class Int8DepthwiseBlocked(Int8ConvNCHW):
    """The channel-blocked folded depthwise conv (:func:`.compute.blocked_integer_depthwise`):
    a register tile of one block's 16 channels (the vector) × up to 14 pixels of a row,
    accumulated over the window's taps in int32 (a widened uint8 load, a multiply by the tap's
    16 weights, an add), then requantized straight from the registers into the NCHW output. The
    input is packed per channel block, just before the block's rows are computed, while it is
    still in cache."""

    schedule_name = INT8_DEPTHWISE_SCHEDULE
    blocked = True
    acc_block = DEPTHWISE_ACC
    loops = ("n", "b", "y", "x", "c", "ky", "kx")

    def _schedule(
        self, sch: Any, acc: Any, requantize: Any, lanes: int, knobs: Knobs = FIXED
    ) -> Any:
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        _inline_padding(sch)
        pack = sch.get_sblock("int8_pack")
        # A blocked input's pack copies 16 contiguous channels (one vector); an NCHW input's
        # gathers them a plane apart, byte by byte.
        contiguous_pack = _reads_blocked(sch, pack)
        n, b, y, x, c, ky, kx = sch.get_loops(acc)
        if lanes >= OUT_BLOCK:  # AVX-512: a pixel's 16 channels are one register
            x_tile, most = depthwise_row_tile(int(sch.get(x).extent)), _VNNI_TILE_REGISTERS
        else:  # AVX2: two registers per pixel, of 16
            x_tile = depthwise_row_tile(
                int(sch.get(x).extent), _AVX2_DEPTHWISE_TILE_PIXELS, _AVX2_DEPTHWISE_WHOLE_ROW
            )
            most = 2 * _AVX2_DEPTHWISE_TILE_PIXELS
        # Pixels only: the block's 16 channels are the vector.
        x_outer, x_inner = knobs.split(sch, x, x_tile, most, "pixel tile")
        sch.reorder(n, b, y, x_outer, ky, kx, x_inner, c)
        # As in Int8ConvBlocked: the tile's accumulators stay in registers.
        tile = sch.cache_write(acc, 0, "local")
        sch.compute_inline(tile)
        _inline_requantized_readers(sch, requantize)
        # A design space keeps a sampled tile's unit loops: a point of 1 pixel replays the
        # trace's loops one for one.
        sch.reverse_compute_at(requantize, x_outer, preserve_unit_loops=knobs.tunable)
        sch.vectorize(sch.get_loops(requantize)[-1])
        sch.compute_at(pack, b)
        if contiguous_pack:
            sch.vectorize(sch.get_loops(pack)[-1])
        sch.unroll(ky)
        sch.unroll(kx)
        sch.unroll(x_inner)
        sch.vectorize(c)
        sch.parallel(sch.fuse(n, b))
        sch.annotate(acc, SCHEDULED_BY_ATTR, INT8_DEPTHWISE_SCHEDULE)
        # Last, as in Int8ConvBlocked.
        init = sch.decompose_reduction(acc, ky)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch
