"""The folded conv on ARM NEON (groups 1, uint8 input): channels blocked as NEON's
``sdot`` wants them, 4 output channels (the int32 lanes of one 128-bit register) × 4 input
channels (the int8 products each lane sums).

``sdot`` multiplies signed × signed (``udot`` is unsigned × unsigned, and the mixed ``usdot``
needs i8mm, which Cortex-A76 lacks), so the kernel shifts the uint8 input to int8 as it packs it,
``x' = x - 128``, and the bias takes the difference, exactly:

    Σ (x - zp)·w = Σ x'·w - (zp - 128)·Σ w

The padding holds the input's zero point (a real 0), shifted like every other input, so every
output sees the whole window and ``(zp - 128)·Σ w[o]`` is one constant per output channel.

A core without the dot-product extension (Cortex-A53/A72: rpi3, rpi4; and 32-bit ARM, whose
``vmull``/``vpadal`` are the same operations) widens instead:
``smull`` (int8 × int8 → int16) and ``sadalp`` (adjacent int16 pairs added into int32 lanes), so
each output channel keeps two int32 accumulators, for input lanes 0-1 and 2-3 of every block,
summed once when requantized (:data:`SMULL_PAIRS`; the intrinsics in :mod:`.neon_intrinsics`).

A depthwise conv sums no channels: it runs as the channel-blocked depthwise conv of
:mod:`.compute` (16 channels per block, as on x86) with int16 weights and its input widened to
int16 as it is packed, each tap one widening multiply-accumulate of 4 channels (``smlal``;
``vmlal.s16`` on 32-bit ARM) per pixel of a row (:class:`Int8DepthwiseNeon`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from edgecompile.schedules.int8.compute import (
    _requantize,
    bias_less_input_offset,
    blocked_weight,
    is_depthwise,
    output_size,
    pack_depthwise_weight,
    pad_with_zero_point,
)
from edgecompile.schedules.int8.graph import QuantizedConv
from edgecompile.schedules.int8.schedule import (
    Int8ConvNCHW,
    Int8DepthwiseBlocked,
    _inline_padding,
    _inline_requantized_readers,
)
from edgecompile.schedules.knobs import FIXED, Knobs

#: Output channels per block: the int32 lanes of one 128-bit NEON register.
OUT_BLOCK = 4
#: Input channels summed per int32 lane by one ``sdot``.
IN_BLOCK = 4
#: What the kernel takes off each uint8 input to make it int8 for the signed multiply.
INPUT_SHIFT = 128
#: The most output blocks the search may sample for the conv's register tile (the analytic
#: tile's range, :func:`register_tile`).
OUT_BLOCKS_MAX_TILE = 4
#: Accumulators per output channel of the widening kernel: ``sadalp`` adds the products of
#: input lanes 0-1 into one, of lanes 2-3 into the other.
SMULL_PAIRS = 2
#: The block adding the widening kernel's two accumulators per output channel.
PAIR_SUMS = "int8_pair_sums"

#: The ``schedule`` of the NEON blocked conv, per instruction (manifest, ``--explain``).
INT8_SDOT_SCHEDULE = "edgecompile-int8 (blocked, NEON sdot)"
INT8_SMULL_SCHEDULE = "edgecompile-int8 (blocked, NEON smull)"
INT8_VMULL_SCHEDULE = "edgecompile-int8 (blocked, NEON vmull)"
#: The ``schedule`` of the NEON blocked depthwise conv: ``smlal``, ``vmlal.s16`` on 32-bit ARM.
INT8_NEON_DEPTHWISE_SCHEDULE = "edgecompile-int8 (blocked depthwise, NEON smlal)"
INT8_VMLAL_DEPTHWISE_SCHEDULE = "edgecompile-int8 (blocked depthwise, NEON vmlal)"
#: Channels of the depthwise conv's register tile: the int32 lanes of one 128-bit register, so
#: each pixel is one accumulator and one ``smlal`` per tap (8 channels, two accumulators per
#: pixel, gave fewer pixels per tile and no fewer instructions per product).
DEPTHWISE_TILE_CHANNELS = 4


def neon_instruction(target: Any) -> str | None:
    """The instruction the NEON blocked conv multiplies with on ``target``: "sdot" with the
    dot-product extension, "smull" on other 64-bit ARM cores, "vmull" (the same, 32-bit ARM's
    name) on 32-bit ARM with NEON, None elsewhere (x86: the NCHW kernel, or VNNI's)."""
    from tvm.target.codegen import target_has_features

    from edgecompile.schedules.cpu import cpu_info

    arch = cpu_info(target).arch
    if not target_has_features("neon", target):
        return None
    if arch.startswith("aarch64"):
        return "sdot" if target_has_features("dotprod", target) else "smull"
    return "vmull" if arch.startswith(("arm", "thumb")) else None


def pack_neon_weight(plan: QuantizedConv, pairs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The NEON conv's constants: the weight as ``[O/4, C/4, KH, KW, 4, 4]`` (zero-padded to
    whole blocks; each 16 bytes one ``sdot`` operand, output-major), the last axis split as
    ``[pairs, 4/pairs]`` for the widening kernel (the same bytes), and the int32 bias with the
    input zero point and the shift folded in (the module docstring's identity)."""
    blocked = blocked_weight(plan.weight, OUT_BLOCK, IN_BLOCK)
    if pairs > 1:
        blocked = blocked.reshape(*blocked.shape[:-1], pairs, IN_BLOCK // pairs)
    return blocked, bias_less_input_offset(plan, plan.data_zero_point - INPUT_SHIFT)


def neon_kernel(instruction: str, plan: QuantizedConv) -> tuple[Any, np.ndarray, np.ndarray]:
    """``plan``'s conv for the instruction :func:`neon_instruction` chose: its TE compute (a
    ``call_te`` function of ``data, weight, bias, multiplier``), its weight and its bias."""
    pairs = 1 if instruction == "sdot" else SMULL_PAIRS

    def compute(data: Any, weight: Any, bias: Any, multiplier: Any) -> Any:
        return neon_integer_conv2d(data, weight, bias, multiplier, plan)

    return compute, *pack_neon_weight(plan, pairs)


def neon_integer_conv2d(
    data: Any, weight: Any, bias: Any, multiplier: Any, plan: QuantizedConv
) -> Any:
    """The folded conv in NEON's blocks: the input shifted to int8 and packed to
    ``[N, C/4, H, W, 4]`` in the kernel, the weight pre-packed by :func:`pack_neon_weight`,
    int32 accumulators ``[N, O/4, OH, OW, 4]``, the output NCHW (its neighbours stay NCHW).
    A weight packed in pairs (``[..., 4, 2, 2]``) gives the widening kernel's layout: the
    input ``[N, C/4, H, W, 2, 2]``, accumulators ``[N, O/4, OH, OW, 4, 2]``, one per pair of
    input lanes. Same integers as :func:`.compute.integer_conv2d`."""
    from tvm import te

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    batch, in_channels, height, width = (int(d) for d in data.shape)
    out_blocks, in_blocks, kernel_h, kernel_w = (int(d) for d in weight.shape[:4])
    lane_shape = [int(d) for d in weight.shape[5:]]  # [4], or [pairs, 4 / pairs]
    out_channels = int(multiplier.shape[0])
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h, out_w = output_size(plan, height, width, kernel_h, kernel_w)
    padded = pad_with_zero_point(data, plan, in_blocks * IN_BLOCK - in_channels)

    def channel_of(block: Any, lanes: tuple[Any, ...]) -> Any:
        return block * IN_BLOCK + (
            lanes[0] * lane_shape[1] + lanes[1] if len(lanes) == 2 else lanes[0]
        )

    packed = te.compute(
        (batch, in_blocks, height + top + bottom, width + left + right, *lane_shape),
        lambda n, c, y, x, *lanes: (
            padded[n, channel_of(c, lanes), y, x].astype("int16") - INPUT_SHIFT
        ).astype("int8"),
        name="int8_pack",
    )
    channel = te.reduce_axis((0, in_blocks), name="ic")
    ky = te.reduce_axis((0, kernel_h), name="ky")
    kx = te.reduce_axis((0, kernel_w), name="kx")
    lane = te.reduce_axis((0, lane_shape[-1]), name="ii")
    row = lambda y: y * stride_h + ky * dilation_h  # noqa: E731
    column = lambda x: x * stride_w + kx * dilation_w  # noqa: E731
    # Which layer this is, through fusion (as in compute.integer_conv2d).
    attrs = {OP_INDEX_ATTR: plan.op_index}
    if len(lane_shape) == 1:
        acc = te.compute(
            (batch, out_blocks, out_h, out_w, OUT_BLOCK),
            lambda n, ob, y, x, o: te.sum(
                packed[n, channel, row(y), column(x), lane].astype("int32")
                * weight[ob, channel, ky, kx, o, lane].astype("int32"),
                axis=[channel, ky, kx, lane],
            ),
            name="int8_acc",
            attrs=attrs,
        )

        def total(n: Any, o: Any, y: Any, x: Any) -> Any:
            return acc[n, o // OUT_BLOCK, y, x, o % OUT_BLOCK]
    else:
        acc = te.compute(
            (batch, out_blocks, out_h, out_w, OUT_BLOCK, lane_shape[0]),
            lambda n, ob, y, x, o, p: te.sum(
                packed[n, channel, row(y), column(x), p, lane].astype("int32")
                * weight[ob, channel, ky, kx, o, p, lane].astype("int32"),
                axis=[channel, ky, kx, lane],
            ),
            name="int8_acc",
            attrs=attrs,
        )
        # The pairs summed in a block of their own: the requantization reading both by a
        # constant index is a pattern TVM's compute-at cannot place.
        pair = te.reduce_axis((0, lane_shape[0]), name="p")
        sums = te.compute(
            (batch, out_blocks, out_h, out_w, OUT_BLOCK),
            lambda n, ob, y, x, o: te.sum(acc[n, ob, y, x, o, pair], axis=[pair]),
            name=PAIR_SUMS,
        )

        def total(n: Any, o: Any, y: Any, x: Any) -> Any:
            return sums[n, o // OUT_BLOCK, y, x, o % OUT_BLOCK]

    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, o, y, x: _requantize(total(n, o, y, x) + bias[o], multiplier[o], plan),
        name="int8_requantize",
    )


def register_tile(
    out_blocks: int,
    out_w: int,
    registers: int,
    per_accumulator: int = 1,
    temporaries: int = 0,
    prefer_pixels: bool = False,
    pixels_per_load: int = 1,
) -> tuple[int, int] | None:
    """Output blocks × pixels of one row held as accumulators: the most accumulators whose
    registers (``per_accumulator`` each), with one weight vector per block, one input vector
    per ``pixels_per_load`` pixels (a broadcast each, or the indexed sdot's 4 pixels: then
    whole loads only, None if no such tile fits) and the step's ``temporaries``, fit in
    ``registers``; of equal tiles the
    one with more output blocks (each pixel's input then feeds more of them), or with
    ``prefer_pixels`` more pixels (each weight feeds more); whole divisors only (a tail would
    put the tensorized loop under a condition). LLVM loads every operand of a step before
    the first multiply, so the operands count whole: a tile of 3 blocks × 8 pixels of
    ``sdot`` (24 + 3 + 8 registers) spilled."""
    return max(
        (
            (blocks, pixels)
            for blocks in range(1, OUT_BLOCKS_MAX_TILE + 1)
            if out_blocks % blocks == 0
            for pixels in range(pixels_per_load, out_w + 1, pixels_per_load)
            if out_w % pixels == 0
            and blocks * pixels * per_accumulator + blocks + pixels // pixels_per_load + temporaries
            <= registers
        ),
        default=None,
        key=lambda tile: (tile[0] * tile[1], tile[1] if prefer_pixels else tile[0]),
    )


def _reads_adjacent_columns(sch: Any, acc: Any) -> bool:
    """Whether the conv ``acc`` reads the packed input's column ``x + kx`` for output pixel
    ``x`` and tap ``kx`` (stride and dilation 1 along the row): 4 adjacent pixels' 4 channels
    are then 16 adjacent bytes."""
    from tvm import sym, tirx

    block = sch.get(acc)
    x, kx = block.iter_vars[3].var, block.iter_vars[-2].var
    (packed,) = [r for r in block.reads if len(r.region) == 5]
    # [x's coefficient, kx's, the rest]; none when the column is not linear in them.
    coefficients = sym.detect_linear_equation(packed.region[3].min, [x, kx])
    return len(coefficients) == 3 and all(
        isinstance(c, tirx.IntImm) and c.value == 1 for c in coefficients[:2]
    )


class Int8ConvSdot(Int8ConvNCHW):
    """The NEON blocked folded conv (:func:`neon_integer_conv2d`) on ``sdot``."""

    schedule_name = INT8_SDOT_SCHEDULE
    instruction = "sdot"
    blocked = True
    loops = ("n", "ob", "y", "x", "o", "ic", "ky", "kx", "ii")
    #: Vector registers a tile may fill (of AArch64's 32; two are left to LLVM, as
    #: cpu.CpuInfo.tile_registers leaves them on ARM).
    tile_registers = 30
    #: Registers a step needs besides the accumulators and operands.
    temporaries = 0
    #: Accumulators per output block and pixel (one int32x4 register each).
    pairs = 1
    #: Of equal tiles, the one with more pixels (see :func:`register_tile`).
    prefer_pixels = False
    #: The most pixels the search may sample for a tile: about what the analytic tile fits in
    #: the registers at one output block (a larger tile spills, which only a measurement can
    #: weigh against its fewer weight loads).
    max_pixel_tile = 16

    def has_kernel(self, target: Any) -> bool:
        return neon_instruction(target) == self.instruction

    def _tensor_intrinsic(self, quads: bool) -> str:
        """The registered intrinsic the tile's step is tensorized with: the indexed sdot on 4
        adjacent pixels (``quads``), else the instruction's one-pixel step."""
        from edgecompile.schedules.int8.neon_intrinsics import (
            neon_intrinsic,
            sdot_indexed_intrinsic,
        )

        return sdot_indexed_intrinsic() if quads else neon_intrinsic(self.instruction)

    def _schedule(
        self, sch: Any, acc: Any, requantize: Any, lanes: int, knobs: Knobs = FIXED
    ) -> Any:
        """A register tile of output blocks × pixels of one row, accumulated over the input
        blocks and the window with one intrinsic per (block, pixel) (sdot at stride 1: per
        block and 4 pixels, :func:`.neon_intrinsics.sdot_indexed_intrinsic`), then requantized
        straight from the registers into the NCHW output (as the VNNI kernel). The tile's
        blocks and pixels are knobs; the instruction's own lanes (4 channels × 4 inputs, and
        the indexed sdot's 4 pixels) never split, so every point tensorizes alike."""
        from edgecompile.schedules.int8.neon_intrinsics import SDOT_PIXELS
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        sch.compute_inline(sch.get_sblock("int8_pad"))
        pack = sch.get_sblock("int8_pack")
        loops = sch.get_loops(acc)
        (n, ob, y, x), block_lanes, (ic, ky, kx, ii) = loops[:4], loops[4:-4], loops[-4:]
        out_blocks, out_w = int(sch.get(ob).extent), int(sch.get(x).extent)
        tile = functools.partial(
            register_tile,
            out_blocks,
            out_w,
            self.tile_registers,
            self.pairs,
            self.temporaries,
            self.prefer_pixels,
        )
        # sdot on 4 pixels whose inputs are 16 adjacent bytes: one load, the indexed form,
        # where a row has such tiles.
        quad_tile = (
            tile(pixels_per_load=SDOT_PIXELS)
            if self.instruction == "sdot" and _reads_adjacent_columns(sch, acc)
            else None
        )
        quads = quad_tile is not None
        ob_tile, x_tile = quad_tile or tile()
        ob_outer, ob_inner = knobs.split(sch, ob, ob_tile, OUT_BLOCKS_MAX_TILE, "block tile")
        if quads:
            # The indexed sdot's 4 pixels first, then the tile in whole quads of them.
            x_quads, pixels = sch.split(x, [None, SDOT_PIXELS])
            x_outer, x_inner = knobs.split(
                sch,
                x_quads,
                x_tile // SDOT_PIXELS,
                self.max_pixel_tile // SDOT_PIXELS,
                "pixel quad tile",
            )
            sch.reorder(
                n, ob_outer, y, x_outer, ic, ky, kx, ob_inner, x_inner, pixels, *block_lanes, ii
            )
        else:
            x_outer, x_inner = knobs.split(sch, x, x_tile, self.max_pixel_tile, "pixel tile")
            sch.reorder(n, ob_outer, y, x_outer, ic, ky, kx, ob_inner, x_inner, *block_lanes, ii)
        # The accumulators in a local buffer: registers across the whole reduction once
        # unrolled; requantized where the tile ends.
        tile = sch.cache_write(acc, 0, "local")
        sch.compute_inline(tile)
        # A residual add FuseOps put after the conv (:mod:`.add`) computed on the tile's
        # requantized values, as the VNNI kernel does: left as a loop of its own, LLVM
        # unrolled a whole row of it (56 pixels on rpi5) and spilled.
        _inline_requantized_readers(sch, requantize)
        # A design space keeps a sampled tile's unit loops: a point of 1 block or 1 pixel
        # replays the trace's loops one for one.
        if self.pairs > 1:  # in registers too, right after the tile
            sums = sch.get_sblock(PAIR_SUMS)
            sch.reverse_compute_at(sums, x_outer, preserve_unit_loops=knobs.tunable)
            sch.set_scope(sums, 0, "local")
        sch.reverse_compute_at(requantize, x_outer, preserve_unit_loops=knobs.tunable)
        sch.vectorize(sch.get_loops(requantize)[-1])
        sch.unroll(ob_inner)
        sch.unroll(x_inner)
        sch.parallel(sch.fuse(n, ob_outer, y))
        # The shift and pack of the input: one pass, its rows spread over the cores.
        pack_n, pack_c, pack_y, _, *pack_lanes = sch.get_loops(pack)
        sch.parallel(sch.fuse(pack_n, pack_c, pack_y))
        sch.vectorize(sch.fuse(*pack_lanes) if len(pack_lanes) > 1 else pack_lanes[0])
        sch.annotate(acc, SCHEDULED_BY_ATTR, self.schedule_name)
        # Last: parallel refuses a reduction whose init was split off, and the intrinsic
        # matches only the update block.
        init = sch.decompose_reduction(acc, ic)
        init_lanes = sch.get_loops(init)[-len(block_lanes) :]
        sch.vectorize(sch.fuse(*init_lanes) if len(init_lanes) > 1 else init_lanes[0])
        sch.tensorize(pixels if quads else block_lanes[0], self._tensor_intrinsic(quads))
        return sch


class Int8ConvSmull(Int8ConvSdot):
    """The same conv on a core without ``sdot`` (Cortex-A53/A72): ``smull`` and ``sadalp``
    into two accumulators per output channel (:data:`SMULL_PAIRS`)."""

    schedule_name = INT8_SMULL_SCHEDULE
    instruction = "smull"
    loops = ("n", "ob", "y", "x", "o", "p", "ic", "ky", "kx", "ii")
    #: Each step's two int16 products.
    temporaries = 2
    pairs = SMULL_PAIRS


class Int8ConvVmull(Int8ConvSmull):
    """The widening conv on 32-bit ARM (armv7, rpi3-armv7, rpi4-armv7): ``vmull.s8`` and
    ``vpadal.s16``, on its 16 vector registers."""

    schedule_name = INT8_VMULL_SCHEDULE
    instruction = "vmull"
    tile_registers = 14  # of 16, as on AArch64 two left to LLVM
    max_pixel_tile = 8
    # 3 blocks × 1 pixel of a 3×3 conv spilled the window's weights LLVM loads ahead (each
    # used once); 1 block × 3 pixels reuses each weight 3 times and did not.
    prefer_pixels = True


def neon_blocked_kind(plan: QuantizedConv, input_dtype: str) -> str | None:
    """Which of the channel-blocked kernels of :mod:`.compute` ``plan`` runs as on ARM:
    "depthwise" for a depthwise conv of a uint8 input (:class:`Int8DepthwiseNeon`), else None
    (a conv with a channel sum is NEON's own :func:`neon_integer_conv2d`)."""
    return "depthwise" if input_dtype == "uint8" and is_depthwise(plan) else None


def pack_neon_depthwise_weight(plan: QuantizedConv) -> tuple[np.ndarray, np.ndarray]:
    """The NEON depthwise conv's constants: :func:`.compute.pack_depthwise_weight`'s, its
    weight as int16 (``smlal`` multiplies int16 lanes: the weight widened once, here, and the
    input as :func:`.compute.blocked_integer_depthwise` packs it)."""
    weight, bias = pack_depthwise_weight(plan)
    return weight.astype(np.int16), bias


def depthwise_pixels(out_w: int, limit: int) -> int:
    """Pixels of a row the NEON depthwise conv accumulates together: the largest divisor of
    the row up to ``limit``."""
    return max(d for d in range(1, min(out_w, limit) + 1) if out_w % d == 0)


class Int8DepthwiseNeon(Int8DepthwiseBlocked):
    """The channel-blocked folded depthwise conv (:func:`.compute.blocked_integer_depthwise`)
    on 64-bit ARM NEON, its input packed as int16 and its weights int16
    (:func:`pack_neon_depthwise_weight`): a register tile of 4 channels (one int32x4
    accumulator per pixel) × a row of pixels, each tap one ``smlal`` per pixel, exact in
    int32; requantized from the registers into the output by the epilogue the x86 kernel
    uses."""

    schedule_name = INT8_NEON_DEPTHWISE_SCHEDULE
    #: The instructions (:func:`neon_instruction`) of the targets this rule is for.
    instructions = ("sdot", "smull")
    #: Pixels per tile, at most: a quarter of AArch64's 32 vector registers, the rest left to
    #: the taps' weights and inputs LLVM loads ahead (14 pixels spilled in the hot loop).
    max_pixels = 8

    def has_kernel(self, target: Any) -> bool:
        return neon_instruction(target) in self.instructions

    def _schedule(
        self, sch: Any, acc: Any, requantize: Any, lanes: int, knobs: Knobs = FIXED
    ) -> Any:
        from edgecompile.schedules.rules import SCHEDULED_BY_ATTR

        _inline_padding(sch)
        pack = sch.get_sblock("int8_pack")
        n, b, y, x, c, ky, kx = sch.get_loops(acc)
        x_tile = depthwise_pixels(int(sch.get(x).extent), self.max_pixels)
        # Pixels only: the 4 channels of an int32x4 accumulator are the instruction's.
        x_outer, x_inner = knobs.split(sch, x, x_tile, self.max_pixels, "pixel tile")
        c_outer, c_inner = sch.split(c, [None, DEPTHWISE_TILE_CHANNELS])
        sch.reorder(n, b, y, x_outer, c_outer, ky, kx, x_inner, c_inner)
        # As on x86: the tile's accumulators stay in registers, requantized where it ends.
        tile = sch.cache_write(acc, 0, "local")
        sch.compute_inline(tile)
        # A design space keeps a sampled tile's unit loops: a point of 1 pixel replays the
        # trace's loops one for one.
        sch.reverse_compute_at(requantize, c_outer, preserve_unit_loops=knobs.tunable)
        sch.vectorize(sch.get_loops(requantize)[-1])
        # The block's input packed (and widened) just before its rows are computed.
        sch.compute_at(pack, b)
        sch.unroll(ky)
        sch.unroll(kx)
        sch.unroll(x_inner)
        sch.vectorize(c_inner)
        sch.parallel(sch.fuse(n, b))
        sch.annotate(acc, SCHEDULED_BY_ATTR, self.schedule_name)
        # Last, as in Int8ConvSdot.
        init = sch.decompose_reduction(acc, ky)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch


class Int8DepthwiseVmlal(Int8DepthwiseNeon):
    """The same depthwise conv on 32-bit ARM: ``vmlal.s16``, on its 16 vector registers."""

    schedule_name = INT8_VMLAL_DEPTHWISE_SCHEDULE
    instructions = ("vmull",)
    # Of 16 registers: 7 or 8 pixels spilled in the tile's loop (around the hot one), 4 did not.
    max_pixels = 4
