"""Relax pass: run convolutions (pointwise, depthwise, grouped, dense K×K), the elementwise ops,
pools, channel concats and ShuffleNet's channel shuffles between them in the channel-blocked
NCHW[x]c layout; and the classifier's matmul on a pre-packed weight.

Why our own pass and not ``relax.transform.ConvertLayout``: in TVM 0.27 ConvertLayout skips every
conv whose channel count is not a multiple of the block (MobileNetV2's 24, ShuffleNetV2's 58 on
AVX-512), stops at the ``call_tir`` that the ONNX frontend emits for ``Clip`` (so MobileNetV2 got
a layout_transform pair around every conv), and converts dense/grouped convs too, which TOPI then
cannot legalize. Here only the convs we schedule are converted, channels are zero-padded up to
the block, ONNX's Clip is recognised, and weights are packed in numpy at compile time.

Values stay blocked while their consumers are blocked convs or whitelisted ops; an NCHW copy
(``unpack``) is emitted lazily, once, just before the first consumer that needs it.

A blocked value carries a :class:`ChannelOrder` (which lane holds which channel): packs make the
plain order, a grouped conv may pad each group to whole blocks, and a channel shuffle only
permutes the order, so it costs no pass over memory: consumers read through the order (weights
packed by lane; a grouped conv gathers its group's channels through a table). A channel slice
(ShuffleNet v2's split) is likewise a subset of the lanes of the same tensor; the concat that
feeds a shuffle and split picks its lane order so that each half of the split fills whole blocks
of its own, which a 1×1 conv reads in place (:func:`planned_concat_orders`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecompile.schedules import compute
from edgecompile.schedules.compute import ceil_div
from edgecompile.schedules.cpu import CpuInfo

CONV2D = "relax.nn.conv2d"
MATMUL = "relax.matmul"
# Elementwise ops that map finite values to finite values: the padded channels may hold any
# finite garbage after them, which the next conv's zero weights cancel.
_UNARY = frozenset(
    {
        "relax.nn.relu",
        "relax.clip",
        "relax.sigmoid",
        "relax.tanh",
        "relax.nn.silu",
        "relax.nn.leakyrelu",
    }
)
_BINARY = frozenset(
    {"relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum"}
)
_DIVIDE = "relax.divide"
_POOLS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})
# A grouped conv computing more than this many lane multiply-adds per useful one (tiny groups
# in wide blocks, e.g. 2 output channels per group in 16 lanes) stays in NCHW.
MAX_GROUPED_WASTE = 4.0


@dataclass(frozen=True)
class ConvPlan:
    """How one conv2d of ``main`` is compiled: ``schedule`` is None when TVM's default stays."""

    op_index: int
    schedule: str | None
    reason: str = ""


@dataclass(frozen=True, eq=False)
class ChannelOrder:
    """Which lane of a blocked tensor holds each logical channel: ``lanes[c]`` is the flat lane
    ``block * x + lane`` of channel ``c``, out of ``total`` lanes (the rest are padding).

    The identity (channel ``c`` in lane ``c``, padding at the end) is what a pack makes. A
    grouped conv may pad each group to whole blocks, and a channel shuffle only permutes
    ``lanes``: the data stays where it is and every consumer reads through the order (weights
    packed by lane, a grouped conv's channel table), so the shuffle moves no memory.
    """

    lanes: np.ndarray
    total: int

    @staticmethod
    def identity(channels: int, block: int) -> ChannelOrder:
        return ChannelOrder(np.arange(channels), ceil_div(channels, block) * block)

    def is_identity(self, block: int) -> bool:
        identity = ChannelOrder.identity(len(self.lanes), block)
        return self.same(identity)

    def same(self, other: ChannelOrder) -> bool:
        return self.total == other.total and np.array_equal(self.lanes, other.lanes)

    def channel_of_lane(self) -> np.ndarray:
        """Inverse: the logical channel in each lane, -1 for padding lanes."""
        inverse = np.full(self.total, -1, dtype=np.int64)
        inverse[self.lanes] = np.arange(len(self.lanes))
        return inverse

    def block_span(self, block: int) -> tuple[int, int]:
        """``(first, end)``: the range of blocks holding this order's channels. Narrower than
        all ``total // block`` blocks for a channel slice of a wider tensor."""
        if len(self.lanes) == 0:
            return 0, 0
        return int(self.lanes.min()) // block, int(self.lanes.max()) // block + 1

    def within(self, first: int, end: int, block: int) -> ChannelOrder:
        """The same channels seen from a view of blocks ``[first, end)`` only."""
        return ChannelOrder(self.lanes - first * block, (end - first) * block)

    def sliced(self, begin: int, end: int) -> ChannelOrder:
        """Channels ``begin:end``: the same lanes of the same tensor, so slicing moves no data
        (the lanes left out still hold other channels; every consumer reads through the
        order, and convs give them zero weights)."""
        return ChannelOrder(self.lanes[begin:end], self.total)

    def shuffled(self, groups: int) -> ChannelOrder:
        """The order after ShuffleNet's channel shuffle (reshape to ``(g, C/g)``, transpose,
        flatten): shuffled channel ``k`` is channel ``(k % g) * (C/g) + k // g``."""
        channels = len(self.lanes)
        per_group = channels // groups
        shuffled = np.arange(channels)
        return ChannelOrder(
            self.lanes[(shuffled % groups) * per_group + shuffled // groups], self.total
        )


@dataclass
class _Blocked:
    """A value available in NCHW[x]c: the blocked var, its logical NCHW shape, and which lane
    holds which channel."""

    var: Any
    shape: tuple[int, int, int, int]
    order: ChannelOrder

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass(frozen=True, eq=False)
class GroupedLayout:
    """How a grouped conv maps onto blocks: where its output channels go, which input channels
    each row of its channel table reads (-1: none; the weight is zero there), how many
    consecutive output blocks share a row, and the lane multiply-adds computed per useful one."""

    out_order: ChannelOrder
    rows: np.ndarray
    blocks_per_row: int
    waste: float


def grouped_layout(out_channels: int, groups: int, in_per_group: int, block: int) -> GroupedLayout:
    """The cheaper of two ways to give every output block one set of broadcast inputs.

    Output lanes must share their input channels (one broadcast feeds a whole vector of output
    channels). When a group's output channels are a whole number of blocks that is free. Else
    either (a) keep the channels in order and let a block read the union of the groups it
    straddles (zero weights for the other groups' lanes), or (b) pad every group to whole
    blocks, so the output carries padding lanes in the middle. Cost = output blocks × table
    width; ties keep the plain order, which every consumer reads without help.
    """
    per_group = out_channels // groups
    group_inputs = np.arange(groups * in_per_group).reshape(groups, in_per_group)
    if per_group % block == 0:
        return GroupedLayout(
            ChannelOrder.identity(out_channels, block), group_inputs, per_group // block, 1.0
        )
    out_blocks = ceil_div(out_channels, block)
    windows = []
    for index in range(out_blocks):
        first = index * block // per_group
        last = (min(out_channels, index * block + block) - 1) // per_group
        windows.append(np.arange(first * in_per_group, (last + 1) * in_per_group))
    width = max(len(window) for window in windows)
    rows = np.full((out_blocks, width), -1, dtype=np.int64)
    for index, window in enumerate(windows):
        rows[index, : len(window)] = window
    in_order = GroupedLayout(ChannelOrder.identity(out_channels, block), rows, 1, 0.0)
    blocks_per_group = ceil_div(per_group, block)
    lanes = (np.arange(out_channels) // per_group) * blocks_per_group * block + np.arange(
        out_channels
    ) % per_group
    padded = GroupedLayout(
        ChannelOrder(lanes, groups * blocks_per_group * block), group_inputs, blocks_per_group, 0.0
    )
    useful = out_channels * in_per_group
    best = min((in_order, padded), key=lambda layout: layout.out_order.total * layout.rows.shape[1])
    return GroupedLayout(
        best.out_order,
        best.rows,
        best.blocks_per_row,
        best.out_order.total * best.rows.shape[1] / useful,
    )


@dataclass(frozen=True)
class _Pack:
    """An operand to pack, once the op is known to be blockable (so no pack is wasted)."""

    arg: Any


@dataclass
class LayoutLog:
    """What the pass decided, per conv2d heavy-op index of ``main``."""

    plans: dict[int, ConvPlan] = field(default_factory=dict)


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed Relax expression, or None."""
    from tvm import tirx

    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    dims = getattr(shape, "values", shape)
    try:
        if not all(isinstance(d, tirx.IntImm | int) for d in dims):
            return None
        return tuple(int(d) for d in dims)
    except TypeError:
        return None


def _nchw_shape(expr: Any) -> tuple[int, int, int, int]:
    shape = static_shape(expr)
    assert shape is not None and len(shape) == 4, shape
    return shape  # type: ignore[return-value]


def _broadcasts(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """``shape`` (NCHW) broadcasts to ``out_shape`` without changing its rank."""
    if len(shape) != len(out_shape):
        return False
    return all(s in (1, o) for s, o in zip(shape, out_shape, strict=True))


def _dtype(expr: Any) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _op_name(call: Any) -> str:
    return str(getattr(call.op, "name", ""))


def classify_conv(call: Any) -> tuple[str | None, str]:
    """(schedule, reason): which of our schedules can run this conv2d, or None and why not."""
    attrs = call.attrs
    data, weight = call.args[0], call.args[1]
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None, "layout is not NCHW/OIHW"
    if _dtype(data) != "float32" or _dtype(weight) != "float32" or _dtype(call) != "float32":
        return None, "not float32"
    data_shape, weight_shape = static_shape(data), static_shape(weight)
    if data_shape is None or weight_shape is None or len(data_shape) != 4:
        return None, "dynamic shape"
    if not _is_const(weight):
        return None, "weights are not constants"
    groups = int(attrs.groups)
    out_channels, in_per_group, kernel_h, kernel_w = weight_shape
    if groups == 1 and (kernel_h, kernel_w) == (1, 1) and not any(int(p) for p in attrs.padding):
        return compute.POINTWISE, ""
    if groups == data_shape[1] == out_channels and in_per_group == 1:
        return compute.DEPTHWISE, ""
    if groups == 1:
        return compute.DENSE, ""
    return compute.GROUPED, ""


def grouped_fallback(call: Any, block: int) -> str:
    """Why a grouped conv stays in NCHW for this block width, or "" if it is blocked."""
    out_channels, in_per_group = static_shape(call.args[1])[:2]  # type: ignore[index]
    groups = int(call.attrs.groups)
    layout = grouped_layout(out_channels, groups, in_per_group, block)
    if layout.waste > MAX_GROUPED_WASTE:
        return (
            f"grouped conv with {out_channels // groups} output channels per group would "
            f"compute {layout.waste:.1f}x its multiply-adds in {block}-lane blocks"
        )
    return ""


def _is_const(expr: Any) -> bool:
    from tvm import ir

    return isinstance(expr, ir.expr.GenericConst)


def _const_value(expr: Any) -> np.ndarray:
    return expr.value.numpy()


def pack_pointwise_weight(
    weight: np.ndarray, block: int, in_order: ChannelOrder | None = None
) -> np.ndarray:
    """OIHW (1×1) → ``(CO/x, CI/x, x_in, x_out)``, zero-padding both channel counts; input rows
    follow ``in_order`` (the lanes the input's channels sit in)."""
    out_c, in_c = weight.shape[:2]
    in_order = in_order or ChannelOrder.identity(in_c, block)
    out_b, in_b = ceil_div(out_c, block), in_order.total // block
    padded = np.zeros((out_b * block, in_b * block), dtype=weight.dtype)
    padded[:out_c, in_order.lanes] = weight[:, :, 0, 0]
    return np.ascontiguousarray(padded.reshape(out_b, block, in_b, block).transpose(0, 2, 3, 1))


def pack_depthwise_weight(
    weight: np.ndarray, block: int, order: ChannelOrder | None = None
) -> np.ndarray:
    """``(C, 1, KH, KW)`` → ``(C/x, KH, KW, x)``, zero-padding the channels; lanes follow
    ``order`` (a depthwise conv keeps its input's channel order)."""
    channels, _, kernel_h, kernel_w = weight.shape
    order = order or ChannelOrder.identity(channels, block)
    blocks = order.total // block
    padded = np.zeros((blocks * block, kernel_h, kernel_w), dtype=weight.dtype)
    padded[order.lanes] = weight[:, 0]
    return np.ascontiguousarray(
        padded.reshape(blocks, block, kernel_h, kernel_w).transpose(0, 2, 3, 1)
    )


def _blocked_output(weight: np.ndarray, out_order: ChannelOrder, block: int) -> np.ndarray:
    """``(CO_lanes, S, KH, KW)`` → ``(CO/x, S, KH, KW, x)``: output channels placed by lane."""
    lanes = np.zeros((out_order.total, *weight.shape[1:]), dtype=weight.dtype)
    lanes[out_order.lanes] = weight
    blocks = out_order.total // block
    return np.ascontiguousarray(
        lanes.reshape(blocks, block, *weight.shape[1:]).transpose(0, 2, 3, 4, 1)
    )


def pack_dense_weight(weight: np.ndarray, block: int, in_order: ChannelOrder) -> np.ndarray:
    """OIHW → ``(CO/x, CI_lanes, KH, KW, x)``: one reduction step per input lane (zero weights
    in padding lanes), output channels in order."""
    out_c, _, kernel_h, kernel_w = weight.shape
    steps = np.zeros((out_c, in_order.total, kernel_h, kernel_w), dtype=weight.dtype)
    steps[:, in_order.lanes] = weight
    return _blocked_output(steps, ChannelOrder.identity(out_c, block), block)


def pack_grouped_weight(
    weight: np.ndarray, block: int, groups: int, layout: GroupedLayout
) -> np.ndarray:
    """OIHW (``I`` per group) → ``(CO/x, S, KH, KW, x)`` for :func:`grouped_layout`'s table:
    step ``r`` of output block ``cob`` multiplies input channel ``rows[cob // share, r]``, by
    the weight of each lane's output channel where that channel is in the lane's group."""
    out_c, in_per_group = weight.shape[:2]
    per_group = out_c // groups
    out_blocks = layout.out_order.total // block
    row_of_block = np.arange(out_blocks) // layout.blocks_per_row
    inputs = layout.rows[row_of_block]  # (CO/x, S)
    outputs = np.arange(out_c)
    input_of = inputs[layout.out_order.lanes // block]  # (CO, S): the row each output reads
    member = (input_of >= 0) & (input_of // in_per_group == (outputs // per_group)[:, None])
    local = np.where(member, input_of - (outputs // per_group)[:, None] * in_per_group, 0)
    steps = weight[outputs[:, None], local] * member[:, :, None, None]
    return _blocked_output(steps.astype(weight.dtype), layout.out_order, block)


def channel_table(layout: GroupedLayout, in_order: ChannelOrder) -> np.ndarray:
    """The grouped conv's int32 table: the input lane of each row's reduction steps (lane 0
    for an empty step, whose weights are zero)."""
    lanes = np.where(layout.rows >= 0, in_order.lanes[np.maximum(layout.rows, 0)], 0)
    return lanes.astype("int32")


def pack_channel_constant(
    value: np.ndarray, channels: int, block: int, order: ChannelOrder | None = None
) -> np.ndarray | None:
    """A per-channel constant of shape ``(C,1,1)`` or ``(1,C,1,1)`` → ``(1, C/x, 1, 1, x)``."""
    if value.ndim not in (3, 4) or value.size != channels:
        return None
    if value.shape[-3] != channels:
        return None
    order = order or ChannelOrder.identity(channels, block)
    padded = np.zeros(order.total, dtype=value.dtype)
    padded[order.lanes] = value.reshape(-1)
    return padded.reshape(1, order.total // block, 1, 1, block)


def scalar_clip_op(func: Any) -> tuple[str, float | None] | None:
    """``("relax.maximum" | "relax.minimum", constant)`` if ``func`` is ONNX Clip's lowering.

    TVM's ONNX frontend lowers ``Clip`` to ``call_tir`` of a PrimFunc computing
    ``out[i] = max(x[i], bound[()])`` (bound a 0-d tensor argument; ``constant`` is None) or,
    for opset < 11, ``max(x[i], 0.0f)`` (``constant`` is the float). Recognising it keeps ReLU6
    in the blocked layout, where it fuses into the conv as an epilogue.
    """
    from tvm import ir, s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or len(func.params) not in (2, 3):
        return None
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # no root block or not schedulable: not the frontend's Clip
        return None
    if len(blocks) != 1:
        return None
    body = sch.get(blocks[0]).body
    if not isinstance(body, tirx.BufferStore):
        return None
    value = body.value
    kinds = {tirx.Max: "relax.maximum", tirx.Min: "relax.minimum"}
    op = next((name for kind, name in kinds.items() if isinstance(value, kind)), None)
    first, second = getattr(value, "a", None), getattr(value, "b", None)
    if op is None or not isinstance(first, ir.TensorLoad):
        return None
    if len(first.indices) != len(body.indices) or not all(
        a.same_as(b) for a, b in zip(first.indices, body.indices, strict=True)
    ):
        return None
    if isinstance(second, ir.TensorLoad) and len(second.indices) == 0:
        return (op, None) if len(func.params) == 3 else None
    if isinstance(second, tirx.FloatImm):
        return (op, float(second.value)) if len(func.params) == 2 else None
    return None


def fold_scalar(expr: Any, bindings: dict[Any, Any], depth: int = 4) -> np.ndarray | None:
    """Evaluate a 0-d constant expression built from ``isnan``/``where`` in numpy, or None.

    The ONNX frontend guards every Clip bound as ``where(isnan(b), ∓inf, b)``. Folding those
    here spares FoldConstant from compiling one tiny LLVM function per bound (about 140 for
    MobileNetV2, ~3.5 s of its build).
    """
    from tvm import relax

    if _is_const(expr):
        value = _const_value(expr)
        return value if value.ndim == 0 else None
    if depth == 0:
        return None
    if isinstance(expr, relax.Var):
        bound = bindings.get(expr)
        return None if bound is None else fold_scalar(bound, bindings, depth - 1)
    if not isinstance(expr, relax.Call):
        return None
    args = [fold_scalar(arg, bindings, depth - 1) for arg in expr.args]
    if any(arg is None for arg in args):
        return None
    name = _op_name(expr)
    if name == "relax.isnan" and len(args) == 1:
        return np.isnan(args[0])
    if name == "relax.where" and len(args) == 3:
        return np.where(*args).astype(args[1].dtype)
    return None


def _static_int(expr: Any) -> int | None:
    """A Python int from an IntImm or a PrimValue holding one, else None."""
    value = getattr(expr, "value", None)
    if value is not None and not isinstance(value, int):
        value = getattr(value, "value", None)
    return value if isinstance(value, int) else None


def channel_slice(call: Any) -> tuple[int, int] | None:
    """``(begin, end)`` if ``call`` is a unit-stride ``strided_slice`` of a 4-D tensor along the
    channel axis only (ShuffleNet v2's channel split), with ``end`` clamped; else None."""
    if _op_name(call) != "relax.strided_slice" or len(call.args) < 4:
        return None
    shape = static_shape(call.args[0])
    if shape is None or len(shape) != 4:
        return None
    fields = [getattr(arg, "fields", None) for arg in call.args[1:]]
    if any(f is None or len(f) != 1 for f in fields):
        return None
    values = [_static_int(f[0]) for f in fields]  # type: ignore[index]
    if any(v is None for v in values):
        return None
    axis, begin, end, *stride = values
    if axis % 4 != 1 or (stride and stride[0] != 1):  # type: ignore[operator]
        return None
    channels = shape[1]
    begin = min(max(begin + channels if begin < 0 else begin, 0), channels)  # type: ignore[operator]
    end = min(max(end + channels if end < 0 else end, 0), channels)  # type: ignore[operator]
    return (begin, end) if begin < end else None


def split_order(channels: int, ranges: list[tuple[int, int]], block: int) -> ChannelOrder | None:
    """Lanes for a tensor that is only read in the channel ``ranges`` (disjoint slices): every
    range, and every stretch between them, starts on a block of its own, so each slice is a run
    of whole blocks that a conv reads alone. None for overlapping ranges."""
    cuts = sorted({0, channels, *(b for r in ranges for b in r)})
    ordered = sorted(ranges)
    if any(a[1] > b[0] for a, b in itertools.pairwise(ordered)):
        return None
    lanes = np.zeros(channels, dtype=np.int64)
    base = 0
    for first, end in itertools.pairwise(cuts):
        lanes[first:end] = base + np.arange(end - first)
        base += ceil_div(end - first, block) * block
    return ChannelOrder(lanes, base)


def unshuffled(order: ChannelOrder, groups: int) -> ChannelOrder:
    """The order a tensor needs so that after ShuffleNet's channel shuffle its channels sit in
    ``order`` (the inverse of :meth:`ChannelOrder.shuffled`): channel ``j`` becomes shuffled
    channel ``(j % (C/g)) * g + j // (C/g)``."""
    channels = len(order.lanes)
    per_group = channels // groups
    source = np.arange(channels)
    return ChannelOrder(
        order.lanes[(source % per_group) * groups + source // per_group], order.total
    )


def shuffle_chain(
    var: Any, call: Any, use_counts: dict[Any, int], readers: dict[Any, Any]
) -> tuple[int, tuple[Any, ...]] | None:
    """``(groups, (split, permuted, merged))`` if ``var = call`` starts a channel shuffle:
    ``reshape(x, (N, g, C/g, H, W)) → permute_dims(0, 2, 1, 3, 4) → reshape(x's shape)``
    whose intermediates have no other reader; else None."""
    if _op_name(call) != "relax.reshape":
        return None
    source_shape = static_shape(call.args[0])
    split = static_shape(var)
    if source_shape is None or len(source_shape) != 4:
        return None
    if split is None or len(split) != 5 or use_counts.get(var) != 1:
        return None
    batch, groups, per_group, height, width = split
    if (batch, groups * per_group, height, width) != source_shape:
        return None
    permute = readers.get(var)
    if permute is None or _op_name(permute.value) != "relax.permute_dims":
        return None
    if [int(a) for a in permute.value.attrs.axes] != [0, 2, 1, 3, 4]:
        return None
    if use_counts.get(permute.var) != 1:
        return None
    merge = readers.get(permute.var)
    if merge is None or _op_name(merge.value) != "relax.reshape":
        return None
    if static_shape(merge.var) != source_shape:
        return None
    return groups, (var, permute.var, merge.var)


def planned_concat_orders(main: Any, block: int) -> dict[Any, ChannelOrder]:
    """Concat var → the lane order its result should take, for a concat whose result (or its
    channel shuffle, ShuffleNet v2's unit) is only read through channel slices: the order that
    puts every slice in whole blocks of its own, so the next unit's split moves no data and
    its 1×1 conv reduces over exactly its half's blocks. The concat is a lane gather anyway
    (its parts are not whole blocks), so choosing its order is free."""
    from tvm import relax

    use_counts, readers = _uses(main)
    all_readers = _all_readers(main)
    bindings = {b.var: b.value for blk in main.body.blocks for b in blk.bindings}
    orders = {}
    for var, value in bindings.items():
        if not isinstance(value, relax.Call) or _op_name(value) != "relax.concat":
            continue
        shape = static_shape(var)
        if shape is None or len(shape) != 4 or int(value.attrs.axis) % 4 != 1:
            continue
        read, groups = var, 0
        reader = readers.get(var)
        if use_counts.get(var) == 1 and reader is not None:
            chain = shuffle_chain(reader.var, reader.value, use_counts, readers)
            if chain is not None:
                groups, (_, _, read) = chain
        calls = all_readers.get(read, [])
        if not calls or len(calls) != use_counts.get(read):  # read by a tuple, or returned
            continue
        slices = [None if call is None else channel_slice(call) for call in calls]
        if any(s is None for s in slices):
            continue
        order = split_order(shape[1], slices, block)  # type: ignore[arg-type]
        if order is None:
            continue
        orders[var] = unshuffled(order, groups) if groups else order
    return orders


def heavy_op_indices(module: Any, names: frozenset[str]) -> dict[Any, int]:
    """Binding var of each op named in ``names`` in ``main`` → its index among
    ``heavy_ops(module)`` (which walks the same bindings, counting the ops it knows)."""
    from tvm import relax

    from edgecompile.importer import HEAVY_OPS

    indices, count = {}, 0
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or _op_name(value) not in HEAVY_OPS:
                continue
            if _op_name(value) in names:
                indices[binding.var] = count
            count += 1
    return indices


def gemv_lanes(out_features: int, lanes: int) -> int:
    """Outputs per vector of the packed matmul: the widest power of two up to the target's
    lanes that divides the output count (1000 classes: 8), so no vector needs a tail."""
    width = lanes
    while out_features % width:
        width //= 2
    return width


def pack_matmul_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """``(K, M)`` → ``(M/v, K, v)``."""
    depth, out_features = weight.shape
    blocks = out_features // lanes
    return np.ascontiguousarray(weight.reshape(depth, blocks, lanes).transpose(1, 0, 2))


def _uses(main: Any) -> tuple[dict[Any, int], dict[Any, Any]]:
    """How often each var of ``main`` is read, and the binding value reading it (the last one)."""
    from tvm import relax

    counts: dict[Any, int] = {}
    readers: dict[Any, Any] = {}

    def visit(expr: Any, reader: Any) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1
            readers[expr] = reader
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                visit(arg, reader)
        elif isinstance(expr, relax.Tuple):
            for item in expr.fields:
                visit(item, reader)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value, reader)

    for block in main.body.blocks:
        for binding in block.bindings:
            visit(binding.value, binding)
    visit(main.body.body, None)
    return counts, readers


def _all_readers(main: Any) -> dict[Any, list[Any]]:
    """Every binding value (Call) of ``main`` that reads each var directly as an argument."""
    from tvm import relax

    found: dict[Any, list[Any]] = {}
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            for arg in value.args:
                items = arg.fields if isinstance(arg, relax.Tuple) else [arg]
                for item in items:
                    if isinstance(item, relax.Var):
                        found.setdefault(item, []).append(value)
    # A var also returned by main is read in NCHW: not only through slices.
    for item in getattr(main.body.body, "fields", [main.body.body]):
        if isinstance(item, relax.Var):
            found.setdefault(item, []).append(None)
    return found


def make_mutator() -> type:
    """Build the mutator class lazily: ``@relax.expr_functor.mutator`` needs TVM imported."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class BlockedLayoutMutator(relax.PyExprMutator):
        def __init__(
            self, mod: Any, cpu: CpuInfo, conv_indices: dict[Any, int], log: LayoutLog
        ) -> None:
            super().__init__(mod)
            self.mod = mod
            self.block = cpu.lanes
            self.conv_indices = conv_indices
            self.log = log
            self.blocked: dict[Any, _Blocked] = {}
            self.materialized: set[Any] = set()
            self.bindings = {
                binding.var: binding.value
                for block in mod["main"].body.blocks
                for binding in block.bindings
            }
            self.use_counts, self.readers = _uses(mod["main"])
            self.matmul_indices = heavy_op_indices(mod, frozenset({MATMUL}))
            self.pool_indices = heavy_op_indices(mod, _POOLS)
            # Channel shuffles folded into the channel order: the reshape/transpose bindings
            # inside one are dropped, its result maps to (source var, groups).
            self.shuffle_inner: set[Any] = set()
            self.shuffles: dict[Any, tuple[Any, int]] = {}
            self.concat_orders = planned_concat_orders(mod["main"], self.block)

        # -- uses of blocked values by ops that need NCHW ------------------------------------
        def _unpack(self, entry: _Blocked) -> Any:
            if entry.order.is_identity(self.block):
                return self.builder_.call_te(
                    compute.unpack, entry.var, entry.channels, primfunc_name_hint="unpack_nchwc"
                )
            lanes = relax.const(entry.order.lanes.astype("int32"))
            return self.builder_.call_te(
                compute.unpack_gather, entry.var, lanes, primfunc_name_hint="unpack_nchwc"
            )

        def _plain(self, var: Any) -> None:
            entry = self.blocked.get(var)
            if entry is None or var in self.materialized:
                return
            self.materialized.add(var)
            self.set_var_remap(var, self.builder_.emit(self._unpack(entry), var.name))

        def visit_dataflow_var_(self, var: Any) -> Any:
            self._plain(var)
            return super().visit_dataflow_var_(var)

        def visit_var_(self, var: Any) -> Any:
            self._plain(var)
            return super().visit_var_(var)

        # -- bindings -------------------------------------------------------------------------
        def visit_var_binding_(self, binding: Any) -> None:
            if binding.var in self.shuffle_inner:
                return
            value = binding.value
            result = None
            if binding.var in self.shuffles:
                source, groups = self.shuffles[binding.var]
                entry = self.blocked[source]
                self._register(binding.var, entry.var, entry.order.shuffled(groups))
                return
            if isinstance(value, relax.Call) and self.builder_.current_block_is_dataflow():
                if _op_name(value) == MATMUL and self._matmul(binding.var, value):
                    return
                self._find_shuffle(binding.var, value)
                if binding.var in self.shuffle_inner:
                    return
                if self._slice(binding.var, value):
                    return
                result = self._rewrite(binding.var, value)
            if result is None:
                super().visit_var_binding_(binding)
                return
            expr, order = result
            var = self.builder_.emit(expr, binding.var.name + "_nchwc")
            self._register(binding.var, var, order)

        def _slice(self, var: Any, call: Any) -> bool:
            """A channel slice of a blocked value is the same tensor seen through a subset of
            its lanes (:meth:`ChannelOrder.sliced`): no data moves."""
            entry = self.blocked.get(call.args[0])
            span = channel_slice(call)
            if entry is None or span is None:
                return False
            self._register(var, entry.var, entry.order.sliced(*span))
            return True

        def _register(self, original: Any, var: Any, order: ChannelOrder) -> None:
            entry = _Blocked(var, _nchw_shape(original), order)
            self.blocked[original] = entry
            if not isinstance(original, relax.DataflowVar):
                # A dataflow block output: it must exist (in NCHW) under a non-dataflow var.
                self.materialized.add(original)
                self.set_var_remap(original, self.builder_.emit_output(self._unpack(entry)))

        def _matmul(self, var: Any, call: Any) -> bool:
            """Emit our packed matmul for ``x @ W`` with a constant ``W`` (or ``permute_dims``
            of one, as ONNX's Gemm arrives); False to keep TVM's."""
            index = self.matmul_indices.get(var)
            data, weight = call.args
            data_shape, out_shape = static_shape(data), static_shape(var)
            if weight in self.bindings and _op_name(self.bindings[weight]) == "relax.permute_dims":
                permute = self.bindings[weight]
                axes = [int(a) for a in permute.attrs.axes] if permute.attrs.axes else [1, 0]
                if axes != [1, 0] or not _is_const(permute.args[0]):
                    return False
                matrix = _const_value(permute.args[0]).T
            elif _is_const(weight):
                matrix = _const_value(weight)
            else:
                return False
            if (
                index is None
                or data_shape is None
                or len(data_shape) != 2
                or matrix.ndim != 2
                or out_shape != (data_shape[0], matrix.shape[1])
                or {_dtype(data), str(matrix.dtype), _dtype(var)} != {"float32"}
            ):
                return False
            lanes = gemv_lanes(matrix.shape[1], self.block)
            self.log.plans[index] = ConvPlan(index, compute.MATMUL)
            expr = self.builder_.call_te(
                compute.packed_matmul,
                self.visit_expr(data),
                relax.const(pack_matmul_weight(np.ascontiguousarray(matrix), lanes)),
                index,
                primfunc_name_hint="matmul_packed",
            )
            if isinstance(var, relax.DataflowVar):
                self.set_var_remap(var, self.builder_.emit(expr, var.name))
            else:
                self.set_var_remap(var, self.builder_.emit_output(expr, var.name))
            return True

        def _find_shuffle(self, var: Any, call: Any) -> None:
            """Spot a channel shuffle (:func:`shuffle_chain`) of a blocked value."""
            if _op_name(call) != "relax.reshape" or call.args[0] not in self.blocked:
                return
            chain = shuffle_chain(var, call, self.use_counts, self.readers)
            if chain is None:
                return
            groups, (split, permuted, merged) = chain
            self.shuffle_inner.update((split, permuted))
            self.shuffles[merged] = (call.args[0], groups)

        def _rewrite(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
            """The blocked replacement of ``var = call`` and its channel order, or None to
            keep the NCHW op."""
            name = _op_name(call)
            if name == CONV2D:
                return self._conv(var, call)
            if name in _UNARY:
                return self._unary(call)
            if name in _BINARY or name == _DIVIDE:
                return self._binary(call, name)
            if name == "relax.call_tir":
                return self._call_tir(call)
            if name == "relax.mean":
                return self._global_mean(call)
            if name == "relax.concat":
                return self._concat(var, call)
            if name in _POOLS:
                return self._pool(var, call)
            return None

        def _global_mean(self, call: Any) -> tuple[Any, ChannelOrder] | None:
            """Global average pool over H, W stays blocked: the unpack after it is tiny."""
            entry = self.blocked.get(call.args[0])
            if entry is None or not call.attrs.keepdims or call.attrs.axis is None:
                return None
            if sorted(int(a) % 4 for a in call.attrs.axis) != [2, 3]:
                return None
            _, _, height, width = entry.shape
            expr = self.builder_.call_te(
                compute.pool_nchwc,
                entry.var,
                "avg",
                [height, width],
                [1, 1],
                [0, 0, 0, 0],
                True,
                None,
                primfunc_name_hint="mean_nchwc",
            )
            return expr, entry.order

        def _concat(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
            """Channel concat of blocked values: a copy of whole blocks where every part fills
            whole blocks, else a lane gather into the plain channel order or, when the result
            is only read through channel slices, the order :func:`planned_concat_orders`
            chose."""
            parts = getattr(call.args[0], "fields", None)
            if not parts or int(call.attrs.axis) % 4 != 1:
                return None
            shapes = [static_shape(part) for part in parts]
            if any(shape is None or len(shape) != 4 for shape in shapes):
                return None
            if len({(shape[0], *shape[2:]) for shape in shapes if shape}) != 1:
                return None
            # Only when every part is blocked already: packing an NCHW part would add a pass
            # (CondenseNet concatenates its NCHW features with each new layer's output).
            if not all(part in self.blocked for part in parts):
                return None
            entries = [self.blocked[part] for part in parts]
            channels = sum(entry.channels for entry in entries)
            identity = ChannelOrder.identity(channels, self.block)
            order = self.concat_orders.get(var, identity)
            whole_blocks = order.same(identity) and all(
                entry.order.is_identity(self.block) and entry.channels % self.block == 0
                for entry in entries
            )
            if whole_blocks:
                return relax.op.concat([entry.var for entry in entries], axis=1), order
            # Output lane → (part, lane of that part): the concat is a permute of whole vectors.
            sources = [
                (i, int(lane)) for i, entry in enumerate(entries) for lane in entry.order.lanes
            ]
            by_lane: list[tuple[int, int] | None] = [None] * order.total
            for channel, lane in enumerate(order.lanes):
                by_lane[int(lane)] = sources[channel]
            func = compute.concat_permute(
                [static_shape(entry.var) for entry in entries], by_lane, _dtype(call)
            )
            callee = self.builder_.add_func(func, "concat_nchwc")
            shape = (*entries[0].shape[:1], order.total // self.block, *entries[0].shape[2:])
            out_type = relax.TensorType([*shape, self.block], _dtype(call))
            expr = relax.call_tir(callee, relax.Tuple([entry.var for entry in entries]), out_type)
            return expr, order

        def _pool(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
            """Max/average pooling in NCHW[x]c: ours without dilation (and for max also in
            ceil mode), else TVM's pool, which takes the blocked layout as is."""
            entry = self.blocked.get(call.args[0])
            attrs = call.attrs
            if entry is None or (attrs.layout, attrs.out_layout) != ("NCHW", "NCHW"):
                return None
            pads = [int(d) for d in attrs.padding]
            pads = pads * 2 if len(pads) == 2 else pads
            average = _op_name(call) == "relax.nn.avg_pool2d"
            include_pad = bool(attrs.count_include_pad) if average else True
            ours = not (attrs.ceil_mode and average)
            if ours and all(int(d) == 1 for d in attrs.dilation):
                expr = self.builder_.call_te(
                    compute.pool_nchwc,
                    entry.var,
                    "avg" if average else "max",
                    [int(d) for d in attrs.pool_size],
                    [int(d) for d in attrs.strides],
                    pads,
                    include_pad,
                    self.pool_indices.get(var),
                    bool(attrs.ceil_mode),
                    primfunc_name_hint="pool_nchwc",
                )
                return expr, entry.order
            blocked = f"NCHW{self.block}c"
            options = {
                "pool_size": [int(d) for d in attrs.pool_size],
                "strides": [int(d) for d in attrs.strides],
                "padding": pads,
                "dilation": [int(d) for d in attrs.dilation],
                "ceil_mode": bool(attrs.ceil_mode),
                "layout": blocked,
                "out_layout": blocked,
            }
            if average:
                return relax.op.nn.avg_pool2d(
                    entry.var, count_include_pad=include_pad, **options
                ), entry.order
            return relax.op.nn.max_pool2d(entry.var, **options), entry.order

        def _blocked_input(self, expr: Any) -> _Blocked:
            """The NCHW[x]c version of ``expr``: reuse it if blocked, else emit a pack (once)."""
            entry = self.blocked.get(expr)
            if entry is not None:
                return entry
            plain = self.visit_expr(expr)
            call = self.builder_.call_te(
                compute.pack, plain, self.block, primfunc_name_hint="pack_nchwc"
            )
            packed = self.builder_.emit(call, "packed")
            entry = _Blocked(
                packed,
                _nchw_shape(expr),
                ChannelOrder.identity(_nchw_shape(expr)[1], self.block),
            )
            if isinstance(expr, relax.Var):  # later consumers (a skip connection) reuse it
                self.blocked[expr] = entry
                self.materialized.add(expr)  # its NCHW form is the original var itself
            return entry

        def _packed_as(self, expr: Any, order: ChannelOrder) -> Any:
            """``expr`` (NCHW) packed into ``order``'s lanes."""
            if order.is_identity(self.block):
                return self._blocked_input(expr).var
            channel_of_lane = relax.const(order.channel_of_lane().astype("int32"))
            call = self.builder_.call_te(
                compute.pack_gather,
                self.visit_expr(expr),
                channel_of_lane,
                self.block,
                primfunc_name_hint="pack_nchwc",
            )
            return self.builder_.emit(call, "packed")

        def _conv_input(self, expr: Any) -> tuple[Any, ChannelOrder]:
            """Input of a K×K conv: blocked if it already is, else plain NCHW (its channels are
            read as broadcast scalars, for which NCHW is as good; a pack would be a copy)."""
            entry = self.blocked.get(expr)
            if entry is not None:
                return entry.var, entry.order
            channels = _nchw_shape(expr)[1]
            return self.visit_expr(expr), ChannelOrder(np.arange(channels), channels)

        def _conv(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
            index = self.conv_indices.get(var)
            schedule, reason = classify_conv(call)
            if schedule == compute.GROUPED:
                reason = grouped_fallback(call, self.block)
                schedule = None if reason else schedule
            if index is not None:
                self.log.plans[index] = ConvPlan(index, schedule, reason)
            if schedule is None or index is None:
                return None
            attrs = call.attrs
            weight = _const_value(call.args[1])
            strides = [int(s) for s in attrs.strides]
            pads = [int(p) for p in attrs.padding]
            pads = pads * 2 if len(pads) == 2 else pads
            dilation = [int(d) for d in attrs.dilation]
            if schedule == compute.POINTWISE:
                entry = self._blocked_input(call.args[0])
                # A channel slice reads only the blocks its lanes occupy, not the whole tensor.
                first, end = entry.order.block_span(self.block)
                in_order = entry.order.within(first, end, self.block)
                packed = relax.const(pack_pointwise_weight(weight, self.block, in_order))
                expr = self.builder_.call_te(
                    compute.pointwise_nchwc,
                    entry.var,
                    packed,
                    strides,
                    index,
                    first,
                    primfunc_name_hint="pointwise_nchwc",
                )
                return expr, ChannelOrder.identity(weight.shape[0], self.block)
            if schedule == compute.DEPTHWISE:
                entry = self._blocked_input(call.args[0])
                packed = relax.const(pack_depthwise_weight(weight, self.block, entry.order))
                expr = self.builder_.call_te(
                    compute.depthwise_nchwc,
                    entry.var,
                    packed,
                    strides,
                    pads,
                    dilation,
                    index,
                    primfunc_name_hint="depthwise_nchwc",
                )
                return expr, entry.order
            data, in_order = self._conv_input(call.args[0])
            if schedule == compute.DENSE:
                packed = relax.const(pack_dense_weight(weight, self.block, in_order))
                expr = self.builder_.call_te(
                    compute.dense_conv_nchwc,
                    data,
                    packed,
                    strides,
                    pads,
                    dilation,
                    index,
                    primfunc_name_hint="conv_nchwc",
                )
                return expr, ChannelOrder.identity(weight.shape[0], self.block)
            groups = int(attrs.groups)
            layout = grouped_layout(weight.shape[0], groups, weight.shape[1], self.block)
            table = channel_table(layout, in_order)
            affine = compute.affine_lanes(table)
            expr = self.builder_.call_te(
                compute.grouped_conv_nchwc if affine is None else compute.grouped_conv_nchwc_affine,
                data,
                relax.const(pack_grouped_weight(weight, self.block, groups, layout)),
                *([relax.const(table)] if affine is None else affine),
                strides,
                pads,
                dilation,
                layout.blocks_per_row,
                index,
                primfunc_name_hint="grouped_nchwc",
            )
            return expr, layout.out_order

        def _unary(self, call: Any) -> tuple[Any, ChannelOrder] | None:
            entry = self.blocked.get(call.args[0])
            if entry is None:
                return None
            rest = [self.visit_expr(arg) for arg in call.args[1:]]
            return relax.Call(call.op, [entry.var, *rest], call.attrs), entry.order

        def _binary(self, call: Any, name: str) -> tuple[Any, ChannelOrder] | None:
            lhs, rhs = call.args
            out_shape = static_shape(call)
            blocked = [self.blocked[arg] for arg in (lhs, rhs) if arg in self.blocked]
            if not blocked:
                return None
            if out_shape is None or len(out_shape) != 4:
                return None
            order = blocked[0].order
            operands = []
            for position, arg in enumerate((lhs, rhs)):
                divisor = name == _DIVIDE and position == 1
                operand = self._binary_operand(arg, out_shape, order, divisor=divisor)
                if operand is None:
                    return None
                operands.append(operand)
            # Packs are emitted only once both operands are known to be blockable.
            resolved = [
                self._packed_as(op.arg, order) if isinstance(op, _Pack) else op for op in operands
            ]
            return relax.Call(call.op, resolved, call.attrs), order

        def _binary_operand(
            self, arg: Any, out_shape: tuple[int, ...], order: ChannelOrder, divisor: bool
        ) -> Any:
            """The blocked form of one operand: an Expr, a :class:`_Pack` to emit, or None."""
            channels = out_shape[1]
            entry = self.blocked.get(arg)
            if entry is not None:
                # A blocked operand must carry the output's channels in its lanes, in the same
                # order: broadcasting a one-channel tensor would broadcast lanes, not channels.
                if (
                    entry.channels == channels
                    and _broadcasts(entry.shape, out_shape)
                    and entry.order.same(order)
                ):
                    return entry.var
                return None
            shape = static_shape(arg)
            if shape is None:
                return None
            if all(d == 1 for d in shape):  # a scalar broadcast
                if divisor and not (_is_const(arg) and np.all(_const_value(arg) != 0)):
                    return None
                return self.visit_expr(arg)
            if divisor:  # padded lanes would divide by zero and poison the next conv
                return None
            if _is_const(arg):
                packed = pack_channel_constant(_const_value(arg), channels, self.block, order)
                return None if packed is None else relax.const(packed)
            if len(shape) == 4 and shape[1] == channels and _broadcasts(shape, out_shape):
                return _Pack(arg)
            return None

        def _call_tir(self, call: Any) -> tuple[Any, ChannelOrder] | None:
            callee, args = call.args[0], getattr(call.args[1], "fields", None)
            if not args or not isinstance(callee, tvm.ir.GlobalVar):
                return None
            entry = self.blocked.get(args[0])
            if entry is None or callee not in self.mod.get_global_vars():
                return None
            match = scalar_clip_op(self.mod[callee])
            if match is None:
                return None
            op, constant = match
            if constant is None:
                folded = fold_scalar(args[1], self.bindings)
                if folded is None:
                    bound = self.visit_expr(args[1])
                else:
                    bound = relax.const(folded, _dtype(args[1]))
            else:
                bound = relax.const(constant, _dtype(args[0]))
            return relax.Call(tvm.ir.Op.get(op), [entry.var, bound]), entry.order

    return BlockedLayoutMutator
