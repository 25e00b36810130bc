"""Tensor-expression definitions of the channel-blocked (NCHW[x]c) convolutions, pools, the packed
classifier matmul, and the layout moves (packs, unpacks, channel concat).

The main blocks carry two block annotations that survive FuseOps/FuseTIR: which schedule
rule owns the block (:data:`SCHEDULE_ATTR`) and which heavy op of ``main`` it came from
(:data:`OP_INDEX_ATTR`), so the rule can find its block among fused epilogues and the build can
report which schedule ran for every convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

SCHEDULE_ATTR = "edgecompile.schedule"
OP_INDEX_ATTR = "edgecompile.op_index"
POINTWISE = "edgecompile.pointwise_nchwc"
DEPTHWISE = "edgecompile.depthwise_nchwc"
GROUPED = "edgecompile.grouped_nchwc"
DENSE = "edgecompile.conv_nchwc"
TRANSPOSED = "edgecompile.conv2d_transpose_nchwc"
MATMUL = "edgecompile.matmul_packed"
POOL = "edgecompile.pool_nchwc"
#: A grouped conv with few output channels per group, in NCHW, vectorized over output pixels.
GROUPED_PIXELS = "edgecompile.grouped_pixels"
#: Consecutive output blocks that read the same input channels (one row of the channel table):
#: the register tile may only span output blocks that share their broadcast inputs.
BLOCKS_PER_ROW_ATTR = "edgecompile.blocks_per_row"
#: Output channels per group of a :data:`GROUPED_PIXELS` conv: its register tile spans output
#: channels of one group only (they read the same input rows).
PER_GROUP_ATTR = "edgecompile.per_group"
#: 1 on a K×K conv whose weight is ``(CO/x, KH, KW, CI, x)``, the input lanes inside each tap
#: (:func:`dense_conv_nchwc` on a blocked input): its rule runs the window outside the lanes.
TAPS_OUTER_ATTR = "edgecompile.taps_outer"
#: Name prefix of the stage that applies a conv's pre-activation (:func:`with_prologue`): the
#: rules inline it into the stage that reads the input (the padded copy, or the conv itself).
PROLOGUE_STAGE = "prologue"
#: A transposed conv's strides ``[h, w]``: its rule splits each output axis into input position ×
#: phase (:func:`transposed_conv_nchwc`).
STRIDES_ATTR = "edgecompile.strides"
#: Output values per vector of the packed matmul (its weight's innermost axis).
VECTOR_LANES_ATTR = "edgecompile.vector_lanes"
#: Relax's ``OpPatternKind::kOpaque``, as the ``op_pattern`` of a PrimFunc FuseOps must not fuse.
OPAQUE_PATTERN = 8


def ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _attrs(schedule: str, op_index: int | None, **extra: Any) -> dict[str, Any]:
    """Block annotations; ``op_index`` None for an op that is not a heavy op of ``main`` (the
    global mean), which the report then does not list."""
    index = {} if op_index is None else {OP_INDEX_ATTR: op_index}
    return {SCHEDULE_ATTR: schedule, **index, **extra}


def pack(data: Any, block: int, prologue: Any = None) -> Any:
    """NCHW → NCHW[block]c, zero-filling the channels past ``C`` up to a multiple of ``block``.

    Zero padding keeps the padded lanes harmless downstream: the packed weights are zero there,
    so whatever the padded lanes hold after an epilogue is multiplied by zero by the next conv.
    ``prologue``: the next conv's pre-activation (:func:`with_prologue`), applied as the pack
    copies each value (a BN → ReLU before a pointwise conv costs no pass of its own).
    """
    from tvm import te, tirx

    batch, channels, height, width = (int(d) for d in data.shape)
    blocks = ceil_div(channels, block)

    def load(n: Any, channel: Any, h: Any, w: Any) -> Any:
        return _activated(data[n, channel, h, w], (channel,), prologue)

    def element(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        channel = cb * block + c
        if channels % block == 0:
            return load(n, channel, h, w)
        inside = channel < channels
        # The clamp keeps the load in bounds even where codegen evaluates both branches.
        return tirx.if_then_else(
            inside, load(n, tirx.min(channel, channels - 1), h, w), tirx.const(0, data.dtype)
        )

    return te.compute((batch, blocks, height, width, block), element, name="pack_nchwc")


def unpack(data: Any, channels: int) -> Any:
    """NCHW[x]c → NCHW, dropping the padded channels."""
    from tvm import te

    batch, _, height, width, block = (int(d) for d in data.shape)
    return te.compute(
        (batch, channels, height, width),
        lambda n, c, h, w: data[n, c // block, h, w, c % block],
        name="unpack_nchwc",
    )


def pack_gather(data: Any, logical_of_lane: Any, block: int) -> Any:
    """NCHW → NCHW[block]c in a permuted channel order: flat lane ``p`` holds channel
    ``logical_of_lane[p]``, or zero where that is negative (a padding lane)."""
    from tvm import te, tirx

    batch, channels, height, width = (int(d) for d in data.shape)
    blocks = int(logical_of_lane.shape[0]) // block

    def element(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        channel = logical_of_lane[cb * block + c]
        safe = tirx.max(tirx.min(channel, channels - 1), 0)
        return tirx.if_then_else(channel >= 0, data[n, safe, h, w], tirx.const(0, data.dtype))

    return te.compute((batch, blocks, height, width, block), element, name="pack_nchwc")


def unpack_gather(data: Any, lane_of_channel: Any) -> Any:
    """NCHW[x]c → NCHW for a value whose channels sit in a permuted order: channel ``c`` is
    lane ``lane_of_channel[c]`` (a flat index ``block * x + lane``)."""
    from tvm import te

    batch, _, height, width, block = (int(d) for d in data.shape)
    channels = int(lane_of_channel.shape[0])
    return te.compute(
        (batch, channels, height, width),
        lambda n, c, h, w: data[n, lane_of_channel[c] // block, h, w, lane_of_channel[c] % block],
        name="unpack_nchwc",
    )


def prelu_nchwc(data: Any, slope: Any) -> Any:
    """PReLU with a per-channel slope on ``(N, C/x, H, W, x)``; ``slope`` is ``(1, C/x, 1, 1, x)``
    (lanes packed like the data, zero in padding lanes, which then stay finite).

    One elementwise block with a select: FuseOps fuses it into the producing conv, whose rule
    inlines it into the register tile's write-back (TVM's ``nn.prelu`` takes one channel axis,
    which the blocked layout splits in two)."""
    from tvm import te, tirx

    def element(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        # Read three times, not bound once with a Let: with a Let, ESPNet v2's fused grouped
        # convs failed LLVM's verifier ("does not dominate all uses"); TIR's CSE shares them.
        value = data[n, cb, h, w, c]
        negative = value * slope[0, cb, 0, 0, c]
        return tirx.Select(value > tirx.const(0, data.dtype), value, negative)

    return te.compute(data.shape, element, name="prelu_nchwc")


def window_mean_nchwc(data: Any, rows: Any, cols: Any) -> Any:
    """An average over windows picked by tables on ``(N, C/x, H, W, x)``: output pixel
    ``(i, j)`` is the mean of the input at rows ``rows[i, :]`` × columns ``cols[j, :]``
    (``rows`` ``(OH, KH)``, ``cols`` ``(OW, KW)``, int32): torch's ``adaptive_avg_pool2d`` where
    the output size does not divide the input's (ESPNet v2's pyramid at scale 1.5). The window
    is a few terms, summed as separate loads, so the block stays elementwise: the blocked
    elementwise rule vectorizes it over the lanes, which share every table lookup."""
    from tvm import te, tirx

    batch, blocks, _, _, block = (int(d) for d in data.shape)
    out_h, k_h = (int(d) for d in rows.shape)
    out_w, k_w = (int(d) for d in cols.shape)

    def element(n: Any, cb: Any, i: Any, j: Any, c: Any) -> Any:
        total = None
        for a in range(k_h):
            for b in range(k_w):
                value = data[n, cb, rows[i, a], cols[j, b], c]
                total = value if total is None else total + value
        return total / tirx.const(k_h * k_w, data.dtype)

    return te.compute((batch, blocks, out_h, out_w, block), element, name="window_mean_nchwc")


def window_gather(data: Any, rows: Any, cols: Any, lane_of_channel: Any) -> Any:
    """The windows of :func:`window_mean_nchwc` gathered, not averaged, from
    ``(N, C/x, H, W, x)`` (channel ``c`` in lane ``lane_of_channel[c]``, as
    :func:`unpack_gather` reads) into NCHW-like ``(N, C, OH, KH, OW, KW)``: torch's
    ``adaptive_avg_pool2d`` with windows of several sizes (ESPNet v2's pyramid at scale 0.1),
    whose masked sums then run in NCHW. Read straight from the blocked tensor: the export's
    transpose to ``(H, W, N, C)`` first was an unpack of the whole input."""
    from tvm import te

    batch, _, _, _, block = (int(d) for d in data.shape)
    channels = int(lane_of_channel.shape[0])
    shape = (batch, channels, *(int(d) for d in rows.shape), *(int(d) for d in cols.shape))

    def element(n: Any, c: Any, i: Any, a: Any, j: Any, b: Any) -> Any:
        lane = lane_of_channel[c]
        return data[n, lane // block, rows[i, a], cols[j, b], lane % block]

    return te.compute(shape, element, name="window_gather")


def channel_affine_nchwc(data: Any, scale: Any, shift: Any) -> Any:
    """``data * scale + shift`` per channel on ``(N, C/x, H, W, x)``, the constants
    ``(1, C/x, 1, 1, x)``: an inference batch norm that could not be folded into a conv's
    weights (it follows a concat or a sum), as one multiply-add per vector."""
    from tvm import te

    return te.compute(
        data.shape,
        lambda n, cb, h, w, c: data[n, cb, h, w, c] * scale[0, cb, 0, 0, c] + shift[0, cb, 0, 0, c],
        name="batch_norm_nchwc",
    )


def pointwise_nchwc(
    data: Any, weight: Any, strides: Sequence[int], op_index: int, in_block_offset: int = 0
) -> Any:
    """1×1 convolution, data ``(N, CI/x, H, W, x)``, weight ``(CO/x, CI/x, x_in, x_out)``.

    The weight's innermost axis is the output-channel lane, so one vector load gives the
    weights of ``x`` output channels for one input channel: the kernel broadcasts one input
    value and does a vector FMA per output block. It reads the weight's ``CI/x`` input blocks
    from ``in_block_offset`` on: a conv on a channel slice reads its blocks in place.
    """
    from tvm import te

    batch, _, height, width, block = (int(d) for d in data.shape)
    out_blocks, in_blocks = int(weight.shape[0]), int(weight.shape[1])
    stride_h, stride_w = (int(s) for s in strides)
    out_h = (height - 1) // stride_h + 1
    out_w = (width - 1) // stride_w + 1
    cib = te.reduce_axis((0, in_blocks), "cib")
    ci = te.reduce_axis((0, block), "ci")
    # No "+ 0" term without an offset: the PrimFunc of every other conv stays the same
    # workload, so its tuning records still match.
    in_block = cib + in_block_offset if in_block_offset else cib
    return te.compute(
        (batch, out_blocks, out_h, out_w, block),
        lambda n, cob, h, w, co: te.sum(
            data[n, in_block, h * stride_h, w * stride_w, ci] * weight[cob, cib, ci, co],
            axis=[cib, ci],
        ),
        name="pointwise_nchwc",
        attrs=_attrs(POINTWISE, op_index),
    )


def depthwise_nchwc(
    data: Any,
    weight: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    op_index: int,
    relu_input: bool = False,
) -> Any:
    """Depthwise convolution, data ``(N, C/x, H, W, x)``, weight ``(C/x, KH, KW, x)``.

    The channel lane is innermost in both, so every stride and dilation is a plain vector load
    (in NCHW a stride-2 depthwise needs strided gathers, which made it ~75% slower).
    ``padding`` is ``(top, left, bottom, right)``; the padding stage is a separate block that
    the schedule inlines into the convolution as predicated loads. ``relu_input``: the conv
    reads ``max(data, 0)``, the ReLU applied in that stage (the padding stays zero).
    """
    from tvm import te

    batch, blocks, height, width, block = (int(d) for d in data.shape)
    kernel_h, kernel_w = int(weight.shape[1]), int(weight.shape[2])
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded_h, padded_w = height + top + bottom, width + left + right
    out_h = (padded_h - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (padded_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    source = _padded(data, padding, relu=relu_input)
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")
    return te.compute(
        (batch, blocks, out_h, out_w, block),
        lambda n, cb, h, w, c: te.sum(
            source[n, cb, h * stride_h + kh * dilation_h, w * stride_w + kw * dilation_w, c]
            * weight[cb, kh, kw, c],
            axis=[kh, kw],
        ),
        name="depthwise_nchwc",
        attrs=_attrs(DEPTHWISE, op_index),
    )


def _padded(data: Any, padding: Sequence[int], fill: Any = None, relu: bool = False) -> Any:
    """``data`` (NCHW or NCHW[x]c) padded spatially with ``fill`` (zero by default) as a
    separate stage the schedule inlines (named ``pad_*`` so the rule finds it); ``padding`` is
    ``(top, left, bottom, right)``. With ``relu``, the stage reads ``max(data, 0)`` (a stage
    even without padding)."""
    from tvm import te, tirx

    top, left, bottom, right = (int(p) for p in padding)
    if not (top or left or bottom or right or relu):
        return data
    shape = [int(d) for d in data.shape]
    height, width = shape[2], shape[3]
    shape[2] += top + bottom
    shape[3] += left + right
    fill = tirx.const(0, data.dtype) if fill is None else fill

    def inside(h: Any, w: Any) -> Any:
        return tirx.all(h >= top, h < top + height, w >= left, w < left + width)

    def read(*index: Any) -> Any:
        value = data[index]
        return tirx.max(value, tirx.const(0, data.dtype)) if relu else value

    if len(shape) == 5:

        def blocked(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
            return tirx.if_then_else(inside(h, w), read(n, cb, h - top, w - left, c), fill)

        return te.compute(shape, blocked, name="pad_nchwc")

    def plain(n: Any, c: Any, h: Any, w: Any) -> Any:
        return tirx.if_then_else(inside(h, w), read(n, c, h - top, w - left), fill)

    return te.compute(shape, plain, name="pad_nchw")


class AffineLanes(NamedTuple):
    """A grouped conv's channel table as a formula: ``table[row, r] = start + row * row_step +
    r * step`` (see :func:`affine_lanes`)."""

    start: int
    row_step: int
    step: int


def affine_lanes(table: np.ndarray) -> AffineLanes | None:
    """``table`` (rows × steps, int) as :class:`AffineLanes`, or None if it is no such formula."""
    rows, steps = table.shape
    start = int(table[0, 0])
    row_step = int(table[1, 0] - table[0, 0]) if rows > 1 else 0
    step = int(table[0, 1] - table[0, 0]) if steps > 1 else 1
    formula = start + np.arange(rows)[:, None] * row_step + np.arange(steps)[None, :] * step
    return AffineLanes(start, row_step, step) if np.array_equal(table, formula) else None


def _conv_nchwc(
    data: Any,
    weight: Any,
    channel: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    schedule: str,
    op_index: int,
    blocks_per_row: int,
    prologue: Any = None,
    taps_outer: bool = False,
) -> Any:
    """Blocked output ``(N, CO/x, OH, OW, x)`` of a K×K conv whose reduction step ``r`` of output
    block ``cob`` reads input channel ``channel(cob, r)`` (flat: ``block * x + lane`` for a blocked
    input, the NCHW channel for a plain one) as a broadcast scalar, against the weight vector
    ``weight[cob, r, kh, kw, :]`` of ``x`` output channels (``weight[cob, kh, kw, r, :]`` if
    ``taps_outer``). ``prologue``: the input's pre-activation (:func:`with_prologue`), applied
    as the conv reads it."""
    from tvm import te

    batch, _, height, width = (int(d) for d in data.shape[:4])
    if taps_outer:
        out_blocks, kernel_h, kernel_w, steps, block = (int(d) for d in weight.shape)
    else:
        out_blocks, steps, kernel_h, kernel_w, block = (int(d) for d in weight.shape)
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    source = _padded(with_prologue(data, prologue), padding)
    blocked = len(data.shape) == 5
    in_block = int(data.shape[4]) if blocked else 1
    r = te.reduce_axis((0, steps), "r")
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")

    def element(n: Any, cob: Any, h: Any, w: Any, co: Any) -> Any:
        flat = channel(cob, r)
        y, x = h * stride_h + kh * dilation_h, w * stride_w + kw * dilation_w
        value = (
            source[n, flat // in_block, y, x, flat % in_block] if blocked else source[n, flat, y, x]
        )
        tap = weight[cob, kh, kw, r, co] if taps_outer else weight[cob, r, kh, kw, co]
        return te.sum(value * tap, axis=[r, kh, kw])

    extra = {BLOCKS_PER_ROW_ATTR: blocks_per_row, **({TAPS_OUTER_ATTR: 1} if taps_outer else {})}
    return te.compute(
        (batch, out_blocks, out_h, out_w, block),
        element,
        name=schedule.split(".")[-1],
        attrs=_attrs(schedule, op_index, **extra),
    )


def dense_conv_nchwc(
    data: Any,
    weight: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    op_index: int,
) -> Any:
    """Dense (groups = 1) K×K convolution. Data ``(N, CI/x, H, W, x)`` or plain NCHW (the stem's
    3-channel image: packing it would blow 3 channels up to a whole block). Weight, ``CI``
    counting the input's lanes (padding lanes get zero weights) or its NCHW channels:
    ``(CO/x, KH, KW, CI, x)`` for blocked data: each tap's weights one contiguous run, read in
    order as the rule walks the window (with the lanes outside the window, each step jumped a
    whole window of weights: SqueezeNet's 3×3 expands ran 1-9% behind ONNX Runtime's, now
    within 3%); ``(CO/x, CI, KH, KW, x)`` for NCHW, where the lanes are planes apart and one
    plane at a time is the better walk."""
    return _conv_nchwc(
        data,
        weight,
        lambda cob, r: r,
        strides,
        padding,
        dilation,
        DENSE,
        op_index,
        int(weight.shape[0]),
        taps_outer=len(data.shape) == 5,
    )


def grouped_conv_nchwc(
    data: Any,
    weight: Any,
    table: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    blocks_per_row: int,
    op_index: int,
    prologue: Any = None,
) -> Any:
    """Grouped K×K convolution as a gather: ``table[cob // blocks_per_row, r]`` is the flat input
    lane of reduction step ``r`` (its group's channels, in whatever lanes a channel shuffle put
    them), weight ``(CO/x, S, KH, KW, x)`` with zeros where a lane's group does not read that
    channel. Reading the input through the table is what folds a preceding channel shuffle
    into this conv: the shuffle itself moves no data."""
    return _grouped(
        data,
        weight,
        lambda row, r: table[row, r],
        strides,
        padding,
        dilation,
        blocks_per_row,
        op_index,
        prologue,
    )


def grouped_conv_nchwc_affine(
    data: Any,
    weight: Any,
    start: int,
    row_step: int,
    step: int,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    blocks_per_row: int,
    op_index: int,
    prologue: Any = None,
) -> Any:
    """:func:`grouped_conv_nchwc` for a table that is a formula (:class:`AffineLanes`, passed
    as its three numbers): no table load per reduction step, and the input addresses advance
    by a constant stride, as in a pointwise conv. Any grouped conv not behind a shuffle."""
    return _grouped(
        data,
        weight,
        lambda row, r: start + row * row_step + r * step,
        strides,
        padding,
        dilation,
        blocks_per_row,
        op_index,
        prologue,
    )


def _grouped(
    data: Any,
    weight: Any,
    lane_of: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    blocks_per_row: int,
    op_index: int,
    prologue: Any = None,
) -> Any:
    from tvm import tirx

    lanes = int(data.shape[1]) * (int(data.shape[4]) if len(data.shape) == 5 else 1)

    def channel(cob: Any, r: Any) -> Any:
        # The clamp is a no-op on the lanes' values but bounds the region the conv reads, so
        # the schedule can copy each tile's padded window next to it (compute_at).
        return tirx.max(tirx.min(lane_of(cob // blocks_per_row, r), lanes - 1), 0)

    return _conv_nchwc(
        data,
        weight,
        channel,
        strides,
        padding,
        dilation,
        GROUPED,
        op_index,
        blocks_per_row,
        prologue,
    )


def with_prologue(data: Any, prologue: Any = None) -> Any:
    """``data`` with a conv's pre-activation applied per channel, ``max(x * scale + shift, 0)``
    (no max without ``relu``), as a stage the conv's rule inlines where the conv reads its
    input: CondenseNet's BN → ReLU before each conv then costs no pass over memory.

    ``prologue`` is ``(scale, shift, relu)`` or None (``data`` itself), ``scale`` and ``shift``
    of shape ``(C,)``: ``data`` is NCHW (a batch norm of a blocked value is blocked instead, and
    fused into its producer as an epilogue). It goes before the padding: a padded border is the
    activation's zero, not the pre-activation of a zero."""
    from tvm import te

    if prologue is None:
        return data
    return te.compute(
        data.shape,
        lambda n, c, h, w: _activated(data[n, c, h, w], (c,), prologue),
        name=f"{PROLOGUE_STAGE}_nchw",
    )


def _activated(value: Any, channel: tuple[Any, ...], prologue: Any) -> Any:
    """``value`` of ``channel`` (its index into the prologue's constants) after the prologue."""
    from tvm import tirx

    if prologue is None:
        return value
    scale, shift, relu = prologue
    value = value * scale[channel] + shift[channel]
    return tirx.max(value, tirx.const(0, scale.dtype)) if relu else value


def grouped_conv_pixels(
    data: Any,
    weight: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    op_index: int,
    prologue: Any = None,
    lane_of_channel: Any = None,
    blocked_output: int | None = None,
    slope: Any = None,
) -> Any:
    """Grouped convolution in NCHW with the output pixels as the vector: data ``(N, C, H, W)``,
    weight OIHW, output ``(N, CO, OH, OW)``.

    For groups with few output channels (CondenseNet's 3×3 convs: 1 or 2 per group) the blocked
    layout wastes most lanes (a vector of output channels spans several groups, each reading
    other inputs); along a row every output pixel of a channel reads the same weights, so a
    vector of pixels times a broadcast weight does only useful work. ``prologue``: the input's
    pre-activation (:func:`with_prologue`). ``lane_of_channel``: data is blocked
    ``(N, C/x, H, W, x)`` instead, channel ``c`` in flat lane ``lane_of_channel[c]``
    (:func:`unpacked_window`). ``blocked_output``: the lanes ``x`` of a result packed to
    ``(N, CO/x, OH, OW, x)`` in the plain channel order inside this kernel, with the PReLU of
    per-channel ``slope`` (if given) that follows the conv applied as it is packed
    (:func:`packed_pixels`)."""
    from tvm import te, tirx

    if lane_of_channel is not None:
        batch, _, height, width, _ = (int(d) for d in data.shape)
        channels = int(lane_of_channel.shape[0])
    else:
        batch, channels, height, width = (int(d) for d in data.shape)
    out_channels, per_group_in, kernel_h, kernel_w = (int(d) for d in weight.shape)
    per_group = out_channels // (channels // per_group_in)
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    if lane_of_channel is not None:
        source = unpacked_window(data, lane_of_channel, padding)
    else:
        source = _padded(with_prologue(data, prologue), padding)
    r = te.reduce_axis((0, per_group_in), "r")
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")

    def element(n: Any, co: Any, h: Any, w: Any) -> Any:
        # Clamped like the blocked gather's channel: bounds the region a tile reads.
        channel = tirx.min((co // per_group) * per_group_in + r, channels - 1)
        y, x = h * stride_h + kh * dilation_h, w * stride_w + kw * dilation_w
        return te.sum(source[n, channel, y, x] * weight[co, r, kh, kw], axis=[r, kh, kw])

    conv = te.compute(
        (batch, out_channels, out_h, out_w),
        element,
        name="grouped_pixels",
        attrs=_attrs(GROUPED_PIXELS, op_index, **{PER_GROUP_ATTR: per_group}),
    )
    return conv if blocked_output is None else packed_pixels(conv, blocked_output, slope)


#: The stage of :func:`packed_pixels` that writes the blocked result.
PIXELS_PACK_STAGE = "pixels_blocked"


def packed_pixels(conv: Any, block: int, slope: Any = None) -> Any:
    """A pixel conv's NCHW result as ``(N, C/x, H, W, x)`` (plain order, zero in padding lanes),
    with PReLU of per-channel ``slope`` ``(C,)`` if given: the conv's rule packs each output row
    while it is in cache, where a pack kernel of its own (with the PReLU ESPNet v2 puts after
    these convs) read the whole NCHW result back from memory (1.9% of espnet_v2_seg's time)."""
    from tvm import te, tirx

    batch, channels, height, width = (int(d) for d in conv.shape)

    def element(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        channel = cb * block + c
        if channels % block:
            # A padding lane reads the last channel and is zeroed by a multiply: under an
            # if_then_else on the lane, the simplifier dropped this clamp from the vector load,
            # which then read past the conv's row.
            channel = tirx.min(channel, channels - 1)
        value = conv[n, channel, h, w]
        if slope is not None:
            negative = value * slope[channel]
            value = tirx.Select(value > tirx.const(0, conv.dtype), value, negative)
        if channels % block == 0:
            return value
        return value * (cb * block + c < channels).astype(conv.dtype)

    shape = (batch, ceil_div(channels, block), height, width, block)
    return te.compute(shape, element, name=PIXELS_PACK_STAGE)


#: The stage of :func:`unpacked_window` that reads the blocked input.
UNPACK_WINDOW_STAGE = "unpack_window"


def unpacked_window(data: Any, lane_of_channel: Any, padding: Sequence[int]) -> Any:
    """A blocked ``(N, C/x, H, W, x)`` value as NCHW (channel ``c`` from flat lane
    ``lane_of_channel[c]``), padded like :func:`_padded`: the pixel conv's input unpacked in the
    conv's own kernel (its rule runs the unpack row by row, then copies each row of tiles'
    padded window from it as from an NCHW input), not by a kernel of its own."""
    from tvm import te

    batch, _, height, width, block = (int(d) for d in data.shape)
    channels = int(lane_of_channel.shape[0])

    def plain(n: Any, c: Any, h: Any, w: Any) -> Any:
        lane = lane_of_channel[c]
        return data[n, lane // block, h, w, lane % block]

    unpacked = te.compute((batch, channels, height, width), plain, name=UNPACK_WINDOW_STAGE)
    return _padded(unpacked, padding)


def transposed_taps(kernel: int, stride: int) -> int:
    """Kernel taps per output phase of a transposed conv along one axis: ``ceil(k / s)``."""
    return ceil_div(kernel, stride)


def transposed_conv_nchwc(
    data: Any,
    weight: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    out_size: Sequence[int],
    op_index: int,
) -> Any:
    """Transposed convolution (groups = 1, no dilation) as a sub-pixel conv, output
    ``(N, CO/x, OH, OW, x)``.

    Output row ``oh`` reads input rows ``q // s - t`` (``q = oh + top``) with kernel row
    ``q % s + t * s``, for ``t < ceil(k / s)``: each of the ``s × s`` output phases is a small dense
    conv over the input, with no multiply by the zeros that TVM's lowering inserts between the
    input pixels (3 of 4 at stride 2). The weight ``(CO/x, CI_lanes, s, s, T, T, x)`` holds the
    taps of each phase (zeros where ``k`` is not a multiple of ``s``); data is blocked or plain
    NCHW, read as broadcast scalars like :func:`dense_conv_nchwc`. ``padding`` is the transposed
    conv's own ``(top, left, bottom, right)``; ``out_size`` its ``(OH, OW)`` (with the output
    padding)."""
    from tvm import te, tirx

    batch, _, height, width = (int(d) for d in data.shape[:4])
    out_blocks, steps, stride_h, stride_w, taps_h, taps_w, block = (int(d) for d in weight.shape)
    top, left = int(padding[0]), int(padding[1])
    out_h, out_w = (int(d) for d in out_size)
    # Input rows read: from q // s - (T - 1) >= -(T - 1) to (OH - 1 + top) // s: pad both ends.
    bottom = max(0, (out_h - 1 + top) // stride_h + 1 - height)
    right = max(0, (out_w - 1 + left) // stride_w + 1 - width)
    source = _padded(data, (taps_h - 1, taps_w - 1, bottom, right))
    blocked = len(data.shape) == 5
    in_block = int(data.shape[4]) if blocked else 1
    r = te.reduce_axis((0, steps), "r")
    th = te.reduce_axis((0, taps_h), "th")
    tw = te.reduce_axis((0, taps_w), "tw")

    def element(n: Any, cob: Any, h: Any, w: Any, co: Any) -> Any:
        q_h, q_w = h + top, w + left
        y = tirx.floordiv(q_h, stride_h) - th + (taps_h - 1)
        x = tirx.floordiv(q_w, stride_w) - tw + (taps_w - 1)
        value = source[n, r // in_block, y, x, r % in_block] if blocked else source[n, r, y, x]
        tap = weight[cob, r, tirx.floormod(q_h, stride_h), tirx.floormod(q_w, stride_w), th, tw, co]
        return te.sum(value * tap, axis=[r, th, tw])

    return te.compute(
        (batch, out_blocks, out_h, out_w, block),
        element,
        name="conv2d_transpose_nchwc",
        attrs=_attrs(TRANSPOSED, op_index, **{STRIDES_ATTR: [stride_h, stride_w]}),
    )


def transposed_conv_nchw(
    data: Any,
    weight: Any,
    strides: Sequence[int],
    padding: Sequence[int],
    out_size: Sequence[int],
    channels: int,
    op_index: int,
) -> Any:
    """:func:`transposed_conv_nchwc` unpacked to NCHW in the same function, so the schedule
    unpacks each register tile as it writes it back (for a result of the model)."""
    conv = transposed_conv_nchwc(data, weight, strides, padding, out_size, op_index)
    return unpack(conv, channels)


def packed_matmul(data: Any, weight: Any, op_index: int) -> Any:
    """``(N, K) × (K, M)`` with the weight packed ``(M/v, K, v)``: for each input value, one
    contiguous vector of ``v`` outputs' weights (the classifier is a GEMV at batch 1, bound by
    streaming the weight, which this layout reads front to back)."""
    from tvm import te

    batch, depth = (int(d) for d in data.shape)
    blocks, _, lanes = (int(d) for d in weight.shape)
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (batch, blocks * lanes),
        lambda n, j: te.sum(data[n, k] * weight[j // lanes, k, j % lanes], axis=k),
        name="matmul_packed",
        attrs=_attrs(MATMUL, op_index, **{VECTOR_LANES_ATTR: lanes}),
    )


def _pooled_size(size: int, before: int, after: int, kernel: int, stride: int, ceil: bool) -> int:
    span = size + before + after - kernel
    if not ceil:
        return span // stride + 1
    count = -(-span // stride) + 1
    return count - 1 if (count - 1) * stride >= size + before else count


def pool_nchwc(
    data: Any,
    kind: str,
    pool_size: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[int],
    count_include_pad: bool,
    op_index: int | None,
    ceil_mode: bool = False,
) -> Any:
    """Max or average pooling of ``(N, C/x, H, W, x)`` (no dilation), the lanes innermost so
    every window element is one vector. ``padding`` is (top, left, bottom, right); an average
    that excludes the padding divides by the window's in-bounds size. ``ceil_mode`` (max only:
    torch's ceil-mode average counts windows differently) keeps a last, partial window as
    long as it starts inside the input or its top/left padding, as torch does."""
    from tvm import te, tirx

    batch, blocks, height, width, block = (int(d) for d in data.shape)
    kernel_h, kernel_w = (int(k) for k in pool_size)
    stride_h, stride_w = (int(s) for s in strides)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = _pooled_size(height, top, bottom, kernel_h, stride_h, ceil_mode)
    out_w = _pooled_size(width, left, right, kernel_w, stride_w, ceil_mode)
    # Partial windows of ceil mode read past the padding: pad those rows/columns too.
    bottom = max(bottom, (out_h - 1) * stride_h + kernel_h - height - top)
    right = max(right, (out_w - 1) * stride_w + kernel_w - width - left)
    fill = tirx.min_value(data.dtype) if kind == "max" else tirx.const(0, data.dtype)
    source = _padded(data, (top, left, bottom, right), fill)
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")
    reducer = te.max if kind == "max" else te.sum
    pooled = te.compute(
        (batch, blocks, out_h, out_w, block),
        lambda n, cb, h, w, c: reducer(
            source[n, cb, h * stride_h + kh, w * stride_w + kw, c], axis=[kh, kw]
        ),
        name="pool_nchwc",
        attrs=_attrs(POOL, op_index),
    )
    if kind == "max":
        return pooled

    def average(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        if count_include_pad:
            count = tirx.const(kernel_h * kernel_w, "int32")
        else:
            rows = tirx.min(h * stride_h - top + kernel_h, height) - tirx.max(h * stride_h - top, 0)
            cols = tirx.min(w * stride_w - left + kernel_w, width) - tirx.max(
                w * stride_w - left, 0
            )
            count = rows * cols
        return pooled[n, cb, h, w, c] / count.astype(data.dtype)

    return te.compute(pooled.shape, average, name="pool_average")


def concat_permute(
    part_shapes: Sequence[Sequence[int]],
    sources: Sequence[tuple[int, int] | None],
    dtype: str,
) -> Any:
    """A channel concat of blocked parts as a PrimFunc of whole-vector permutes: output lane
    ``p`` (flat: ``block * x + lane``) is lane ``sources[p] = (part, flat lane)`` of that part,
    or zero for None.

    Written in TIR rather than TE because the lane map is known at compile time: each output
    vector is one ``Shuffle`` of the few input vectors it draws from (a two-source ``vpermt2ps``
    per pair on AVX-512, ``tbl`` on NEON), where a TE gather looks the lanes up in a table per
    element and compiles to scalar loads: ShuffleNet v2's interleaving concat ran ~7x slower.
    """
    from tvm import tirx

    batch, _, height, width, block = (int(d) for d in part_shapes[0])
    index = "int64"
    parts = [
        tirx.decl_buffer([int(d) for d in shape], dtype, name=f"part{i}")
        for i, shape in enumerate(part_shapes)
    ]
    out = tirx.decl_buffer((batch, len(sources) // block, height, width, block), dtype, "concat")
    n, h, w = (tirx.Var(name, index) for name in ("n", "h", "w"))
    lanes = tirx.Ramp(tirx.const(0, index), tirx.const(1, index), block)
    stores = []
    for out_block in range(len(sources) // block):
        vectors: list[Any] = []
        position: dict[tuple[int, int] | None, int] = {}
        indices = []
        for source in sources[out_block * block : (out_block + 1) * block]:
            key = None if source is None else (source[0], source[1] // block)
            if key not in position:
                position[key] = len(vectors)
                if key is None:
                    vectors.append(tirx.Broadcast(tirx.const(0, dtype), block))
                else:
                    part, part_block = key
                    at = [n, tirx.const(part_block, index), h, w, lanes]
                    vectors.append(tirx.BufferLoad(parts[part], at))
            indices.append(position[key] * block + (0 if source is None else source[1] % block))
        if len(vectors) == 1 and indices == list(range(block)):
            value = vectors[0]
        else:
            value = tirx.Shuffle(vectors, [tirx.const(i, "int32") for i in indices])
        stores.append(tirx.BufferStore(out, value, [n, tirx.const(out_block, index), h, w, lanes]))
    body: Any = tirx.SeqStmt(stores) if len(stores) > 1 else stores[0]
    for var, extent, kind in (
        (w, width, tirx.ForKind.SERIAL),
        (h, height, tirx.ForKind.PARALLEL),
        (n, batch, tirx.ForKind.SERIAL),
    ):
        body = tirx.For(var, tirx.const(0, index), tirx.const(extent, index), kind, body)
    func = tirx.PrimFunc([*parts, out], body)
    # Opaque to FuseOps: with no root block it cannot be fused (FuseTIR refuses), and TVM's
    # own analysis calls it elementwise, which let ESPNet v2's concat of a residual sum and
    # its operand join the sum's group and fail the whole pipeline.
    return func.with_attr({"tirx.noalias": True, "op_pattern": OPAQUE_PATTERN})
