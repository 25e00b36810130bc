"""The TE compute of a folded conv, NCHW (the arithmetic of ONNX Runtime's QLinearConv):

    acc[n, o, y, x] = bias_q[o] + Σ (x_q - x_zp) · w_q          (int32)
    y_q = clamp(round_half_even(float32(acc) · m[o]), lo - y_zp, hi - y_zp) + y_zp

with ``m[o] = x_scale · w_scale[o] / y_scale`` in float32, as MLAS's ``MlasRequantizeOutput``
requantizes, so our outputs match ORT's integer kernels rather than its fp32 reference. A ReLU
or Clip narrows the clamp (``lo``/``hi``). The padding holds the input's zero point: a real 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecompile.schedules.int8.graph import QuantizedConv


def integer_conv2d(data: Any, weight: Any, bias: Any, multiplier: Any, plan: QuantizedConv) -> Any:
    """The TE compute of a folded conv (see the module docstring for the arithmetic)."""
    from tvm import te, tirx, topi

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    batch, _, height, width = (int(d) for d in data.shape)
    out_channels, group_channels, kernel_h, kernel_w = (int(d) for d in weight.shape)
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    per_group = out_channels // plan.groups
    padded = topi.nn.pad(
        data,
        [0, 0, top, left],
        [0, 0, bottom, right],
        pad_value=plan.data_zero_point,  # a real zero
        name="int8_pad",
    )
    channel = te.reduce_axis((0, group_channels), name="ic")
    ky = te.reduce_axis((0, kernel_h), name="ky")
    kx = te.reduce_axis((0, kernel_w), name="kx")
    zero_point = tirx.const(plan.data_zero_point, "int32")
    acc = te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, o, y, x: te.sum(
            (
                padded[
                    n,
                    o // per_group * group_channels + channel,
                    y * stride_h + ky * dilation_h,
                    x * stride_w + kx * dilation_w,
                ].astype("int32")
                - zero_point
            )
            * weight[o, channel, ky, kx].astype("int32"),
            axis=[channel, ky, kx],
        ),
        name="int8_acc",
        # Which layer this is, through fusion (pipeline.detach_op_indices takes it off): two
        # identical convs would otherwise share one kernel and the report lose one of them.
        attrs={OP_INDEX_ATTR: plan.op_index},
    )
    return te.compute(
        acc.shape,
        lambda n, o, y, x: _requantize(acc[n, o, y, x] + bias[o], multiplier[o], plan),
        name="int8_requantize",
    )


#: Output channels per block of the blocked conv: the int32 lanes of one 512-bit register, the
#: width of AVX-512 VNNI's ``vpdpbusd`` (u8 × s8, 4 products summed into each int32 lane).
OUT_BLOCK = 16
#: Input channels summed per int32 lane by one ``vpdpbusd``.
IN_BLOCK = 4


def pack_weight(plan: QuantizedConv) -> tuple[np.ndarray, np.ndarray]:
    """The blocked conv's constants: the weight as ``[O/16, C/4, KH, KW, 16, 4]`` (zero-padded
    to whole blocks) and the int32 bias with the input zero point folded in.

    ``vpdpbusd`` multiplies the raw uint8 input, so ``Σ (x - zp)·w = Σ x·w - zp·Σ w``: the
    padding holds ``zp`` too, so every output sees the whole window and ``zp·Σ w[o]`` is one
    constant per output channel, taken off the bias once here.
    """
    out_channels, in_channels, kernel_h, kernel_w = plan.weight.shape
    out_blocks, in_blocks = -(-out_channels // OUT_BLOCK), -(-in_channels // IN_BLOCK)
    padded = np.zeros((out_blocks * OUT_BLOCK, in_blocks * IN_BLOCK, kernel_h, kernel_w), np.int8)
    padded[:out_channels, :in_channels] = plan.weight
    blocked = padded.reshape(out_blocks, OUT_BLOCK, in_blocks, IN_BLOCK, kernel_h, kernel_w)
    blocked = np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))
    weight_sums = plan.weight.astype(np.int64).sum(axis=(1, 2, 3))
    bias = plan.bias.astype(np.int64) - plan.data_zero_point * weight_sums
    return blocked, bias.astype(np.int32)


def blocked_integer_conv2d(
    data: Any, weight: Any, bias: Any, multiplier: Any, plan: QuantizedConv
) -> Any:
    """The folded conv (groups 1, uint8 input) with blocked channels, VNNI's operand order:
    the input packed to ``[N, C/4, H, W, 4]`` in the kernel, the weight pre-packed by
    :func:`pack_weight`, int32 accumulators ``[N, O/16, OH, OW, 16]``, the output NCHW again
    (its neighbours stay NCHW). Same integers as :func:`integer_conv2d`."""
    from tvm import te, topi

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    batch, in_channels, height, width = (int(d) for d in data.shape)
    out_blocks, in_blocks, kernel_h, kernel_w, _, _ = (int(d) for d in weight.shape)
    out_channels = int(multiplier.shape[0])
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    padded = topi.nn.pad(
        data,
        [0, 0, top, left],
        [0, in_blocks * IN_BLOCK - in_channels, bottom, right],
        pad_value=plan.data_zero_point,  # a real zero; its products leave the bias (pack_weight)
        name="int8_pad",
    )
    packed = te.compute(
        (batch, in_blocks, height + top + bottom, width + left + right, IN_BLOCK),
        lambda n, c, y, x, i: padded[n, c * IN_BLOCK + i, y, x],
        name="int8_pack",
    )
    channel = te.reduce_axis((0, in_blocks), name="ic")
    ky = te.reduce_axis((0, kernel_h), name="ky")
    kx = te.reduce_axis((0, kernel_w), name="kx")
    lane = te.reduce_axis((0, IN_BLOCK), name="ii")
    acc = te.compute(
        (batch, out_blocks, out_h, out_w, OUT_BLOCK),
        lambda n, ob, y, x, o: te.sum(
            packed[
                n, channel, y * stride_h + ky * dilation_h, x * stride_w + kx * dilation_w, lane
            ].astype("int32")
            * weight[ob, channel, ky, kx, o, lane].astype("int32"),
            axis=[channel, ky, kx, lane],
        ),
        name="int8_acc",
        attrs={OP_INDEX_ATTR: plan.op_index},  # as in integer_conv2d
    )
    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, o, y, x: _requantize(
            acc[n, o // OUT_BLOCK, y, x, o % OUT_BLOCK] + bias[o], multiplier[o], plan
        ),
        name="int8_requantize",
    )


def _requantize(acc: Any, multiplier: Any, plan: QuantizedConv) -> Any:
    """One int32 accumulator (bias added) to the output dtype, in MLAS's order: clamp, then
    round half to even (llvm.nearbyint), then add the zero point; no float add after the
    multiply that LLVM could fuse into an FMA."""
    from tvm import tirx

    out_zp = plan.out_zero_point
    low = tirx.const(float(plan.low - out_zp), "float32")
    high = tirx.const(float(plan.high - out_zp), "float32")
    clamped = tirx.max(tirx.min(acc.astype("float32") * multiplier, high), low)
    return (tirx.round(clamped).astype("int32") + out_zp).astype(plan.out_dtype)
