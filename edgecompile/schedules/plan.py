"""What the layout pass decides before it rewrites anything: which of our schedules can run each
conv (and why none can), whether a grouped conv is worth blocking, and the lane order a
concat should take so that the channel slices reading it fill whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvm import relax

from edgecompile.schedules import compute
from edgecompile.schedules.analysis import (
    all_readers,
    bindings_of,
    dtype_of,
    is_const,
    op_name,
    static_shape,
    uses,
)
from edgecompile.schedules.channels import ChannelOrder, grouped_layout, split_order, unshuffled
from edgecompile.schedules.grouped_uses import ANY_ORDER, GroupedOutputUse
from edgecompile.schedules.patterns import channel_slice, shuffle_chain

# A grouped conv computing more than this many lane multiply-adds per useful one (tiny groups
# in wide blocks, e.g. 2 output channels per group in 16 lanes) runs in NCHW with pixels as the
# vector instead (:data:`~edgecompile.schedules.compute.GROUPED_PIXELS`). Measured on AVX-512,
# CondenseNet's 3×3 convs: at 4 output channels per group (4x) pixels were 1.8-2.7x faster, at
# 8 (2x) the blocked conv was 1.4x faster.
MAX_GROUPED_WASTE = 3.0
#: The same bound for a 1×1 grouped conv: with no window to reuse, the pixel form gains less,
#: and its input usually comes blocked (an unpack before it, a pack after). ESPNet v2 x0.5 (1×1
#: convs of 4 output channels per group) ran 1.26 ms with 4 vs 1.65 ms with 3 (1 thread, AVX-512);
#: CondenseNet-74 c4_g4 (3×3) kept 3: 28.5 ms vs 32.5 ms with 4.
MAX_POINTWISE_GROUPED_WASTE = 4.0
#: The bound for a 1×1 grouped conv a channel shuffle reads (ShuffleNet v1's first conv of a
#: unit): over pixels it writes NCHW, so the shuffle becomes a transpose kernel and the depthwise
#: conv after it needs a pack (and the conv's blocked input an unpack first): four kernels of
#: glue for a conv of a few microseconds. shufflenet_v1_g8_x0_25's 96→24 convs (5.3x blocked):
#: the model in 0.89x the time with them blocked (1 thread, AVX-512, thread CPU time).
MAX_SHUFFLED_POINTWISE_WASTE = 8.0
#: What a value a :data:`~edgecompile.schedules.compute.GROUPED_PIXELS` conv computes is, for
#: an op after it that reads NCHW (the coverage check lists it as a known gap).
PIXELS_OUTPUT = "a grouped conv vectorized over pixels writes NCHW"

# Reasons the pass gives for a pool it leaves to TVM (the manifest's ``fallback``; the coverage
# check, :mod:`edgecompile.schedules.coverage`, tells the accepted ones by these words).
#: A pool whose input is in NCHW: then why it is (:func:`no_blocked_form`, :data:`MODEL_INPUT`,
#: or the reason of the conv that stayed in NCHW).
PLAIN_INPUT = "its input is in NCHW: "
MODEL_INPUT = "the model's input"
#: Pools our compute does not implement: TVM's pool runs them on the blocked layout.
CEIL_MODE_AVERAGE = "average pool in ceil mode: TVM's pool, on the blocked layout"
DILATED_POOL = "dilated pool: TVM's pool, on the blocked layout"
POOL_VARIANTS = (CEIL_MODE_AVERAGE, DILATED_POOL)


def no_blocked_form(op: str) -> str:
    """Why a value is in NCHW: the op computing it is one the pass never blocks."""
    return f"{op} has no blocked form"


@dataclass(frozen=True)
class ConvPlan:
    """How one heavy op of ``main`` (a conv2d, the classifier's matmul, a pool) is compiled:
    ``schedule`` is None when TVM's default stays, and ``reason`` says why."""

    op_index: int
    schedule: str | None
    reason: str = ""


@dataclass
class LayoutLog:
    """What the pass decided, per heavy-op index of ``main``."""

    plans: dict[int, ConvPlan] = field(default_factory=dict)


def classify_conv(call: Any) -> tuple[str | None, str]:
    """(schedule, reason): which of our schedules can run this conv2d, or None and why not."""
    attrs = call.attrs
    data, weight = call.args[0], call.args[1]
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None, "layout is not NCHW/OIHW"
    if dtype_of(data) != "float32" or dtype_of(weight) != "float32" or dtype_of(call) != "float32":
        return None, "not float32"
    data_shape, weight_shape = static_shape(data), static_shape(weight)
    if data_shape is None or weight_shape is None or len(data_shape) != 4:
        return None, "dynamic shape"
    if not is_const(weight):
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


#: Why a transposed conv keeps TVM's lowering although its class is claimed: the sub-pixel
#: compute covers groups = 1 without dilation only (ESPNet's decoder; the coverage check keeps
#: these as a known gap).
TRANSPOSED_UNSUPPORTED = "transposed conv with groups or dilation: no blocked form yet"


def classify_transposed_conv(call: Any) -> tuple[str | None, str]:
    """(schedule, reason): our sub-pixel schedule for this conv2d_transpose, or None and why
    not."""
    attrs = call.attrs
    data, weight = call.args[0], call.args[1]
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "IOHW", "NCHW"):
        return None, "layout is not NCHW/IOHW"
    if dtype_of(data) != "float32" or dtype_of(weight) != "float32" or dtype_of(call) != "float32":
        return None, "not float32"
    shapes = static_shape(data), static_shape(weight), static_shape(call)
    if any(shape is None or len(shape) != 4 for shape in shapes):
        return None, "dynamic shape"
    if not is_const(weight):
        return None, "weights are not constants"
    if int(attrs.groups) != 1 or any(int(d) != 1 for d in attrs.dilation):
        return None, TRANSPOSED_UNSUPPORTED
    return compute.TRANSPOSED, ""


def grouped_schedule(call: Any, block: int, use: GroupedOutputUse = ANY_ORDER) -> str:
    """Which schedule runs a grouped conv for this block width: the blocked one, or, where
    blocks would compute more than :data:`MAX_GROUPED_WASTE` times its multiply-adds (few
    output channels per group: CondenseNet's 3×3 convs), the one vectorized over pixels.
    ``use``: what reads its output (the lane order it must keep, a shuffle after it)."""
    out_channels, in_per_group, *window = static_shape(call.args[1])  # type: ignore[misc]
    groups = int(call.attrs.groups)
    layout = grouped_layout(
        out_channels,
        groups,
        in_per_group,
        block,
        plain_order=use.plain_order,
        taps=window[0] * window[1],
    )
    if window != [1, 1]:
        bound = MAX_GROUPED_WASTE
    else:
        bound = MAX_SHUFFLED_POINTWISE_WASTE if use.shuffled else MAX_POINTWISE_GROUPED_WASTE
    return compute.GROUPED_PIXELS if layout.waste > bound else compute.GROUPED


def planned_concat_orders(main: Any, block: int) -> dict[Any, ChannelOrder]:
    """Concat var → the lane order its result should take, for a concat whose result (or its
    channel shuffle, ShuffleNet v2's unit) is only read through channel slices: the order that
    puts every slice in whole blocks of its own, so the next unit's split moves no data and
    its 1×1 conv reduces over exactly its half's blocks. The concat is a lane gather anyway
    (its parts are not whole blocks), so choosing its order is free."""
    use_counts, readers = uses(main)
    readers_of = all_readers(main)
    bindings = bindings_of(main)
    orders = {}
    for var, value in bindings.items():
        if not isinstance(value, relax.Call) or op_name(value) != "relax.concat":
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
        calls = readers_of.get(read, [])
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
