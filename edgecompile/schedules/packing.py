"""Weights and per-channel constants packed in numpy at compile time, for the blocked computes
of :mod:`edgecompile.schedules.compute`: each conv's weight in the layout its kernel reads as
vectors (output channels placed by lane, input rows following the input's
:class:`~edgecompile.schedules.channels.ChannelOrder`), and the classifier's matmul weight.
"""

from __future__ import annotations

import numpy as np

from edgecompile.schedules.channels import ChannelOrder, GroupedLayout
from edgecompile.schedules.compute import ceil_div, transposed_taps


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


def pack_dense_weight(
    weight: np.ndarray, block: int, in_order: ChannelOrder, *, taps_outer: bool = False
) -> np.ndarray:
    """OIHW → ``(CO/x, CI_lanes, KH, KW, x)``: one reduction step per input lane (zero weights
    in padding lanes), output channels in order; ``(CO/x, KH, KW, CI_lanes, x)`` if
    ``taps_outer`` (a blocked input: :func:`~edgecompile.schedules.compute.dense_conv_nchwc`)."""
    out_c, _, kernel_h, kernel_w = weight.shape
    steps = np.zeros((out_c, in_order.total, kernel_h, kernel_w), dtype=weight.dtype)
    steps[:, in_order.lanes] = weight
    packed = _blocked_output(steps, ChannelOrder.identity(out_c, block), block)
    return np.ascontiguousarray(packed.transpose(0, 2, 3, 1, 4)) if taps_outer else packed


def pack_transposed_weight(
    weight: np.ndarray, block: int, in_order: ChannelOrder, strides: tuple[int, int]
) -> np.ndarray:
    """IOHW (a transposed conv's, groups = 1) → ``(CO/x, CI_lanes, s_h, s_w, T_h, T_w, x)``: for
    output phase ``(p_h, p_w)`` and tap ``(t_h, t_w)``, kernel element ``(p_h + t_h s_h,
    p_w + t_w s_w)`` (zero past the kernel), one reduction step per input lane (see
    :func:`~edgecompile.schedules.compute.transposed_conv_nchwc`)."""
    _, out_c, kernel_h, kernel_w = weight.shape
    stride_h, stride_w = strides
    taps_h, taps_w = transposed_taps(kernel_h, stride_h), transposed_taps(kernel_w, stride_w)
    out_b = ceil_div(out_c, block)
    phases = np.zeros(
        (out_b * block, in_order.total, stride_h, stride_w, taps_h, taps_w), dtype=weight.dtype
    )
    for p_h, t_h, p_w, t_w in np.ndindex(stride_h, taps_h, stride_w, taps_w):
        row, col = p_h + t_h * stride_h, p_w + t_w * stride_w
        if row < kernel_h and col < kernel_w:
            phases[:out_c, in_order.lanes, p_h, p_w, t_h, t_w] = weight[:, :, row, col].T
    blocked = phases.reshape(out_b, block, *phases.shape[1:])
    return np.ascontiguousarray(blocked.transpose(0, 2, 3, 4, 5, 6, 1))


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


def batch_norm_affine(
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    epsilon: float,
    scale: bool = True,
    center: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """An inference batch norm as ``x * scale + shift`` per channel (float64 arithmetic, cast
    back to the parameters' dtype): what TOPI computes as ``(x - mean) / sqrt(var + eps) * gamma
    + beta``, with ``gamma``/``beta`` dropped when ``scale``/``center`` is off."""
    inverse = 1.0 / np.sqrt(variance.astype("float64") + epsilon)
    factor = inverse * gamma.astype("float64") if scale else inverse
    shift = -mean.astype("float64") * factor + (beta.astype("float64") if center else 0.0)
    return factor.astype(gamma.dtype), shift.astype(gamma.dtype)


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
