"""The TE compute of a folded conv, NCHW (the arithmetic of ONNX Runtime's QLinearConv):

    acc[n, o, y, x] = bias_q[o] + Σ (x_q - x_zp) · w_q          (int32)
    y_q = clamp(round_half_even(float32(acc) · m[o]), lo - y_zp, hi - y_zp) + y_zp

with ``m[o] = x_scale · w_scale[o] / y_scale`` in float32, as MLAS's ``MlasRequantizeOutput``
requantizes, so our outputs match ORT's integer kernels rather than its fp32 reference. A ReLU
or Clip narrows the clamp (``lo``/``hi``). The padding holds the input's zero point: a real 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecompile.schedules.int8.graph import QuantizedConv


def integer_conv2d(data: Any, weight: Any, bias: Any, multiplier: Any, plan: QuantizedConv) -> Any:
    """The TE compute of a folded conv (see the module docstring for the arithmetic)."""
    from tvm import te, tirx

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    batch, _, height, width = (int(d) for d in data.shape)
    out_channels, group_channels, kernel_h, kernel_w = (int(d) for d in weight.shape)
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h, out_w = output_size(plan, height, width, kernel_h, kernel_w)
    per_group = out_channels // plan.groups
    padded = pad_with_zero_point(data, plan)
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


def output_size(
    plan: QuantizedConv, height: int, width: int, kernel_h: int, kernel_w: int
) -> tuple[int, int]:
    """The conv's output height and width, from its input's and its kernel's."""
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    return out_h, out_w


def pad_with_zero_point(data: Any, plan: QuantizedConv, extra_channels: int = 0) -> Any:
    """``data`` (NCHW, or blocked ``[N, C/b, H, W, b]``) with the conv's padding around its
    rows and columns, and an NCHW input's ``extra_channels`` (up to whole blocks) after its
    channels, all holding the input's zero point: a real zero, whose products a blocked
    kernel's bias has taken off."""
    from tvm import topi

    top, left, bottom, right = plan.padding
    if len(data.shape) == 5:
        before, after = [0, 0, top, left, 0], [0, 0, bottom, right, 0]
    else:
        before, after = [0, 0, top, left], [0, extra_channels, bottom, right]
    return topi.nn.pad(data, before, after, pad_value=plan.data_zero_point, name="int8_pad")


def blocked_weight(weight: np.ndarray, out_block: int, in_block: int) -> np.ndarray:
    """An int8 ``[O, C, KH, KW]`` weight as ``[O/ob, C/ib, KH, KW, ob, ib]``, zero-padded to
    whole blocks: the operand order of a dot product of ``ib`` inputs into ``ob`` lanes."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    out_blocks, in_blocks = -(-out_channels // out_block), -(-in_channels // in_block)
    padded = np.zeros((out_blocks * out_block, in_blocks * in_block, kernel_h, kernel_w), np.int8)
    padded[:out_channels, :in_channels] = weight
    blocked = padded.reshape(out_blocks, out_block, in_blocks, in_block, kernel_h, kernel_w)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))


def bias_less_input_offset(plan: QuantizedConv, offset: int) -> np.ndarray:
    """The int32 bias of a kernel that multiplies its raw inputs, each ``offset`` above
    ``x - zp``: ``Σ (x - zp)·w = Σ x·w - offset·Σ w``, and as the padding holds the zero point
    too, every output sees the whole window, so ``offset·Σ w[o]`` is one constant per output
    channel, taken off the bias once here."""
    weight_sums = plan.weight.astype(np.int64).sum(axis=(1, 2, 3))
    return (plan.bias.astype(np.int64) - offset * weight_sums).astype(np.int32)


#: Output channels per block of the blocked conv: the int32 lanes of one 512-bit register, the
#: width of AVX-512 VNNI's ``vpdpbusd`` (u8 × s8, 4 products summed into each int32 lane).
OUT_BLOCK = 16
#: Input channels summed per int32 lane by one ``vpdpbusd``.
IN_BLOCK = 4
#: Input channels summed per int32 lane by AVX2's ``vpmaddwd`` (s16 × s16 pairs into s32,
#: exact): the blocked conv on AVX2 without VNNI, its weights int16 (:func:`pack_weight`).
AVX2_IN_BLOCK = 2


def pack_weight(plan: QuantizedConv, in_block: int = IN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The blocked conv's constants: the weight as ``[O/16, C/in_block, KH, KW, 16, in_block]``
    (zero-padded to whole blocks) and the int32 bias with the input zero point folded in.

    ``in_block`` 4: int8, VNNI's ``vpdpbusd`` operand; 2 (:data:`AVX2_IN_BLOCK`): int16, two
    output channels' pairs one after the other as ``vpmaddwd`` multiplies them (AVX2's
    ``vpmaddubsw`` would take int8 but saturates its int16 pair sums: 255·127·2 > 32767).

    Both multiply the raw uint8 input, so ``Σ (x - zp)·w = Σ x·w - zp·Σ w``: the padding holds
    ``zp`` too, so every output sees the whole window and ``zp·Σ w[o]`` is one constant per
    output channel, taken off the bias once here.
    """
    blocked = blocked_weight(plan.weight, OUT_BLOCK, in_block)
    if in_block == AVX2_IN_BLOCK:
        blocked = blocked.astype(np.int16)
    return blocked, bias_less_input_offset(plan, plan.data_zero_point)


@dataclass(frozen=True)
class Layouts:
    """How a blocked kernel's input and output are laid out: NCHW (its neighbours are fp32
    glue or NCHW kernels), or the blocked uint8 activation ``[N, C/16, H, W, 16]`` that
    consecutive blocked kernels hand each other (:mod:`.layouts` decides), with no unpack and
    repack between them. Lanes past the real channels hold whatever the producer computed;
    every consumer's weights for them are zero."""

    blocked_input: bool = False
    blocked_output: bool = False


NCHW = Layouts()


def blocked_integer_conv2d(
    data: Any,
    weight: Any,
    bias: Any,
    multiplier: Any,
    plan: QuantizedConv,
    layouts: Layouts = NCHW,
) -> Any:
    """The folded conv (groups 1, uint8 input) with blocked channels, the dot product's
    operand order: the input read in groups of the weight's last axis (4 channels for VNNI, 2
    for AVX2; an NCHW input packed to ``[N, C/g, H, W, g]`` in the kernel; a blocked one read
    in place, or with its padding added), the weight pre-packed by :func:`pack_weight`, int32
    accumulators ``[N, O/16, OH, OW, 16]``, the output NCHW or blocked (``layouts``). Same
    integers as :func:`integer_conv2d`."""
    from tvm import te

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    in_channels = plan.weight.shape[1]
    batch, height, width = (int(data.shape[i]) for i in (0, 2, 3))
    out_blocks, in_blocks, kernel_h, kernel_w, _, in_block = (int(d) for d in weight.shape)
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h, out_w = output_size(plan, height, width, kernel_h, kernel_w)
    padded_shape = (batch, in_blocks, height + top + bottom, width + left + right, in_block)
    # AVX2's vpmaddwd multiplies int16: the input widened once, as it is packed, so each
    # pair of inputs is one broadcast load in the hot loop, not a load, widen and broadcast.
    packed_dtype = "int16" if weight.dtype == "int16" else data.dtype
    if not layouts.blocked_input:
        padded = pad_with_zero_point(data, plan, in_blocks * in_block - in_channels)
        source = te.compute(
            padded_shape,
            lambda n, c, y, x, i: padded[n, c * in_block + i, y, x].astype(packed_dtype),
            name="int8_pack",
        )
    elif any(plan.padding) or packed_dtype != data.dtype:
        padded = pad_with_zero_point(data, plan)
        groups = _channel_groups(padded, in_block)
        source = te.compute(
            padded_shape, lambda *i: groups(*i).astype(packed_dtype), name="int8_pack"
        )
    else:  # read in place: a group of channels is adjacent bytes of a 16-channel block
        source = _ChannelGroups(data, in_block)
    channel = te.reduce_axis((0, in_blocks), name="ic")
    ky = te.reduce_axis((0, kernel_h), name="ky")
    kx = te.reduce_axis((0, kernel_w), name="kx")
    lane = te.reduce_axis((0, in_block), name="ii")
    acc = te.compute(
        (batch, out_blocks, out_h, out_w, OUT_BLOCK),
        lambda n, ob, y, x, o: te.sum(
            source[
                n, channel, y * stride_h + ky * dilation_h, x * stride_w + kx * dilation_w, lane
            ].astype("int32")
            * weight[ob, channel, ky, kx, o, lane].astype("int32"),
            axis=[channel, ky, kx, lane],
        ),
        name="int8_acc",
        attrs={OP_INDEX_ATTR: plan.op_index},  # as in integer_conv2d
    )
    return _requantize_blocked(acc, bias, multiplier, plan, layouts)


class _ChannelGroups:
    """A blocked ``[N, C/16, H, W, 16]`` tensor indexed as ``[N, C/g, H, W, g]``."""

    def __init__(self, blocked: Any, group: int) -> None:
        self.blocked, self.group = blocked, group

    def __getitem__(self, index: tuple[Any, ...]) -> Any:
        return _channel_groups(self.blocked, self.group)(*index)


def _channel_groups(blocked: Any, group: int) -> Any:
    groups = OUT_BLOCK // group
    return lambda n, c, y, x, i: blocked[n, c // groups, y, x, c % groups * group + i]


def _requantize_blocked(
    acc: Any, bias: Any, multiplier: Any, plan: QuantizedConv, layouts: Layouts
) -> Any:
    """The int32 accumulators ``[N, O/16, OH, OW, 16]`` requantized into the output: blocked
    (``bias``/``multiplier`` then cover whole blocks), or NCHW (one per real channel)."""
    from tvm import te

    if layouts.blocked_output:
        return te.compute(
            acc.shape,
            lambda n, b, y, x, c: _requantize(
                acc[n, b, y, x, c] + bias[b * OUT_BLOCK + c], multiplier[b * OUT_BLOCK + c], plan
            ),
            name="int8_requantize",
        )
    batch, _, out_h, out_w, _ = acc.shape
    return te.compute(
        (batch, int(multiplier.shape[0]), out_h, out_w),
        lambda n, o, y, x: _requantize(
            acc[n, o // OUT_BLOCK, y, x, o % OUT_BLOCK] + bias[o], multiplier[o], plan
        ),
        name="int8_requantize",
    )


def unpack_blocked(data: Any, channels: int) -> Any:
    """A blocked ``[N, C/16, H, W, 16]`` activation as NCHW: what the folding pass hands the
    dead fp32 chains that read a blocked output (DeadCodeElimination removes it with them), so
    they keep reading a folded kernel's NCHW output, as without the blocked layout."""
    from tvm import te

    batch, _, height, width, _ = (int(d) for d in data.shape)
    return te.compute(
        (batch, channels, height, width),
        lambda n, c, y, x: data[n, c // OUT_BLOCK, y, x, c % OUT_BLOCK],
        name="int8_unpack",
    )


def whole_blocks(values: np.ndarray) -> np.ndarray:
    """A per-channel constant (bias, multiplier) padded with zeros to whole blocks, for a
    kernel that writes the blocked layout: its part block's extra lanes requantize to the zero
    point."""
    padded = np.zeros(-(-values.size // OUT_BLOCK) * OUT_BLOCK, values.dtype)
    padded[: values.size] = values
    return padded


def is_depthwise(plan: QuantizedConv) -> bool:
    """One input channel per output channel (no channel multiplier): what
    :func:`blocked_integer_depthwise` computes."""
    out_channels, group_channels = plan.weight.shape[:2]
    return group_channels == 1 and plan.groups == out_channels > 1


def pack_depthwise_weight(plan: QuantizedConv) -> tuple[np.ndarray, np.ndarray]:
    """The blocked depthwise conv's constants: the weight as int32 ``[C/16, KH, KW, 16]``
    (zero-padded to whole blocks; int32 already, so each tap is one ``vpmulld`` with a memory
    operand and no widening in the kernel) and the int32 bias with the input zero point folded
    in, as :func:`pack_weight` folds it (the padding holds the zero point too)."""
    channels, _, kernel_h, kernel_w = plan.weight.shape
    blocks = -(-channels // OUT_BLOCK)
    padded = np.zeros((blocks * OUT_BLOCK, kernel_h, kernel_w), np.int32)
    padded[:channels] = plan.weight[:, 0]
    blocked = padded.reshape(blocks, OUT_BLOCK, kernel_h, kernel_w).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(blocked), bias_less_input_offset(plan, plan.data_zero_point)


#: The depthwise conv's accumulation block (named apart from the convs' ``int8_acc``: both
#: have seven loops, and each rule must find only its own kernel).
DEPTHWISE_ACC = "int8_depthwise_acc"


def blocked_integer_depthwise(
    data: Any,
    weight: Any,
    bias: Any,
    multiplier: Any,
    plan: QuantizedConv,
    layouts: Layouts = NCHW,
) -> Any:
    """The folded depthwise conv (uint8 input) with 16 channels per block, one int32 vector
    lane each: the input as ``[N, C/16, H, W, 16]`` with its padding (an NCHW input packed so
    in the kernel), the weight pre-packed by :func:`pack_depthwise_weight`, int32 accumulators
    ``[N, C/16, OH, OW, 16]`` (each tap a widened uint8 load times the tap's weights, exact in
    int32), the output NCHW or blocked (``layouts``). Same integers as
    :func:`integer_conv2d`."""
    from tvm import te

    from edgecompile.schedules.compute import OP_INDEX_ATTR

    channels = plan.weight.shape[0]
    batch, height, width = (int(data.shape[i]) for i in (0, 2, 3))
    blocks, kernel_h, kernel_w, _ = (int(d) for d in weight.shape)
    top, left, bottom, right = plan.padding
    stride_h, stride_w = plan.strides
    dilation_h, dilation_w = plan.dilation
    out_h, out_w = output_size(plan, height, width, kernel_h, kernel_w)
    packed_shape = (batch, blocks, height + top + bottom, width + left + right, OUT_BLOCK)
    # NEON's int16 weights (.neon): the input widened once, as it is packed, so each tap is
    # one int16 multiply-accumulate (smlal, vmlal.s16): from uint8, AArch64 widened every load
    # in the hot loop and 32-bit ARM widened to int32 and multiplied there (vmla.i32).
    packed_dtype = "int16" if weight.dtype == "int16" else data.dtype
    if layouts.blocked_input:
        padded = pad_with_zero_point(data, plan)
        packed = te.compute(
            packed_shape, lambda *i: padded[i].astype(packed_dtype), name="int8_pack"
        )
    else:
        padded = pad_with_zero_point(data, plan, blocks * OUT_BLOCK - channels)
        packed = te.compute(
            packed_shape,
            lambda n, b, y, x, c: padded[n, b * OUT_BLOCK + c, y, x].astype(packed_dtype),
            name="int8_pack",
        )
    ky = te.reduce_axis((0, kernel_h), name="ky")
    kx = te.reduce_axis((0, kernel_w), name="kx")
    acc = te.compute(
        (batch, blocks, out_h, out_w, OUT_BLOCK),
        lambda n, b, y, x, c: te.sum(
            packed[n, b, y * stride_h + ky * dilation_h, x * stride_w + kx * dilation_w, c].astype(
                "int32"
            )
            * weight[b, ky, kx, c].astype("int32"),  # int16 on NEON, int32 on x86
            axis=[ky, kx],
        ),
        name=DEPTHWISE_ACC,
        attrs={OP_INDEX_ATTR: plan.op_index},  # as in integer_conv2d
    )
    return _requantize_blocked(acc, bias, multiplier, plan, layouts)


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
