"""The TE compute of a folded conv, NCHW (the arithmetic of ONNX Runtime's QLinearConv):

    acc[n, o, y, x] = bias_q[o] + Σ (x_q - x_zp) · w_q          (int32)
    y_q = clamp(round_half_even(float32(acc) · m[o]), lo - y_zp, hi - y_zp) + y_zp

with ``m[o] = x_scale · w_scale[o] / y_scale`` in float32, as MLAS's ``MlasRequantizeOutput``
requantizes, so our outputs match ORT's integer kernels rather than its fp32 reference. A ReLU
or Clip narrows the clamp (``lo``/``hi``). The padding holds the input's zero point: a real 0.
"""

from __future__ import annotations

from typing import Any

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
    out_zp = plan.out_zero_point
    low = tirx.const(float(plan.low - out_zp), "float32")
    high = tirx.const(float(plan.high - out_zp), "float32")

    def requantize(n: Any, o: Any, y: Any, x: Any) -> Any:
        # Clamp, then round half to even (llvm.nearbyint), then add the zero point: MLAS's
        # order, and no float add after the multiply that LLVM could fuse into an FMA.
        scaled = (acc[n, o, y, x] + bias[o]).astype("float32") * multiplier[o]
        clamped = tirx.max(tirx.min(scaled, high), low)
        return (tirx.round(clamped).astype("int32") + out_zp).astype(plan.out_dtype)

    return te.compute(acc.shape, requantize, name="int8_requantize")
