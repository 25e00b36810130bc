"""Tensor-expression definitions of the channel-blocked (NCHW[x]c) convolutions and layout moves.

The convolution blocks carry two block annotations that survive FuseOps/FuseTIR: which schedule
rule owns the block (:data:`SCHEDULE_ATTR`) and which heavy op of ``main`` it came from
(:data:`OP_INDEX_ATTR`), so the rule can find its block among fused epilogues and the build can
report which schedule ran for every convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SCHEDULE_ATTR = "edgecompile.schedule"
OP_INDEX_ATTR = "edgecompile.op_index"
POINTWISE = "edgecompile.pointwise_nchwc"
DEPTHWISE = "edgecompile.depthwise_nchwc"


def ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _attrs(schedule: str, op_index: int) -> dict[str, Any]:
    return {SCHEDULE_ATTR: schedule, OP_INDEX_ATTR: op_index}


def pack(data: Any, block: int) -> Any:
    """NCHW → NCHW[block]c, zero-filling the channels past ``C`` up to a multiple of ``block``.

    Zero padding keeps the padded lanes harmless downstream: the packed weights are zero there,
    so whatever the padded lanes hold after an epilogue is multiplied by zero by the next conv.
    """
    from tvm import te, tirx

    batch, channels, height, width = (int(d) for d in data.shape)
    blocks = ceil_div(channels, block)

    def element(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
        channel = cb * block + c
        if channels % block == 0:
            return data[n, channel, h, w]
        inside = channel < channels
        # The clamp keeps the load in bounds even where codegen evaluates both branches.
        return tirx.if_then_else(
            inside, data[n, tirx.min(channel, channels - 1), h, w], tirx.const(0, data.dtype)
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


def pointwise_nchwc(data: Any, weight: Any, strides: Sequence[int], op_index: int) -> Any:
    """1×1 convolution, data ``(N, CI/x, H, W, x)``, weight ``(CO/x, CI/x, x_in, x_out)``.

    The weight's innermost axis is the output-channel lane, so one vector load gives the
    weights of ``x`` output channels for one input channel: the kernel broadcasts one input
    value and does a vector FMA per output block.
    """
    from tvm import te

    batch, in_blocks, height, width, block = (int(d) for d in data.shape)
    out_blocks = int(weight.shape[0])
    stride_h, stride_w = (int(s) for s in strides)
    out_h = (height - 1) // stride_h + 1
    out_w = (width - 1) // stride_w + 1
    cib = te.reduce_axis((0, in_blocks), "cib")
    ci = te.reduce_axis((0, block), "ci")
    return te.compute(
        (batch, out_blocks, out_h, out_w, block),
        lambda n, cob, h, w, co: te.sum(
            data[n, cib, h * stride_h, w * stride_w, ci] * weight[cob, cib, ci, co],
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
) -> Any:
    """Depthwise convolution, data ``(N, C/x, H, W, x)``, weight ``(C/x, KH, KW, x)``.

    The channel lane is innermost in both, so every stride and dilation is a plain vector load
    (in NCHW a stride-2 depthwise needs strided gathers, which made it ~75% slower).
    ``padding`` is ``(top, left, bottom, right)``; the padding stage is a separate block that
    the schedule inlines into the convolution as predicated loads.
    """
    from tvm import te, tirx

    batch, blocks, height, width, block = (int(d) for d in data.shape)
    kernel_h, kernel_w = int(weight.shape[1]), int(weight.shape[2])
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded_h, padded_w = height + top + bottom, width + left + right
    out_h = (padded_h - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (padded_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    source = data
    if top or left or bottom or right:
        zero = tirx.const(0, data.dtype)

        def padded(n: Any, cb: Any, h: Any, w: Any, c: Any) -> Any:
            inside = tirx.all(h >= top, h < top + height, w >= left, w < left + width)
            return tirx.if_then_else(inside, data[n, cb, h - top, w - left, c], zero)

        source = te.compute((batch, blocks, padded_h, padded_w, block), padded, name="pad_nchwc")
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
