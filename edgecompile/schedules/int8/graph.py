"""Reading a QDQ model's imported graph: which ``dequantize → conv2d (+ bias) (+ ReLU/Clip) →
quantize`` chains can become one integer conv (:class:`QuantizedConv`: the integers and scales
the kernel needs), and why the others cannot (:class:`Int8Log`).

TVM's ONNX frontend imports ``QuantizeLinear``/``DequantizeLinear`` as ``R.quantize`` /
``R.dequantize`` with constant scale and zero point (scalars per tensor; per output channel,
axis 0, for the weights), the weights and the int32 bias as constants behind a ``dequantize``,
ONNX Clip as ``call_tir`` of max/min with a guarded bound (:mod:`..patterns` reads those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Relative tolerance for "the bias scale is input scale × weight scale".
_SCALE_RTOL = 1e-5


@dataclass
class Int8Log:
    """Per conv (heavy-op index of ``main``): folded, or kept in fp32 and why; the glue's and
    residual adds' verdicts too (:mod:`.glue`, :mod:`.add`), for ``build --explain``."""

    folded: set[int] = field(default_factory=set)
    kept: dict[int, str] = field(default_factory=dict)
    #: Folded convs whose output stays in the blocked uint8 layout for the folded kernels
    #: that read it (:mod:`.layouts`); the others write NCHW.
    blocked_outputs: set[int] = field(default_factory=set)
    #: Max pools the glue pass (:mod:`.glue`) moved onto the integers (a pool it could not
    #: move has its reason in ``kept``).
    moved: set[int] = field(default_factory=set)
    #: The verdicts of the integer passes' ops that are no heavy op (concats, residual adds),
    #: by binding name: :func:`glue_verdict`'s entries (a pass run twice overwrites its own).
    glue: dict[str, dict[str, Any]] = field(default_factory=dict)


def glue_verdict(
    op: str, after: int, shapes: list[list[int]], reason: str | None = None
) -> dict[str, Any]:
    """One concat's or add's entry in :attr:`Int8Log.glue`, as ``build --explain`` reads it from
    the manifest: ``after``, the heavy op it follows (-1: none); ``int8``, or ``int8_fallback``
    with the reason it stays fp32."""
    verdict: dict[str, Any] = {"op": op, "after": after, "shapes": shapes}
    verdict.update({"int8": True} if reason is None else {"int8_fallback": reason})
    return verdict


@dataclass(frozen=True)
class QuantizedConv:
    """One foldable chain, read off the imported graph: everything the integer kernel needs."""

    data: Any  # the relax var holding the quantized input (uint8/int8)
    data_zero_point: int
    weight: np.ndarray  # int8, OIHW
    bias: np.ndarray  # int32, one per output channel (zeros without a bias)
    multiplier: np.ndarray  # float32 per output channel: x_scale * w_scale / y_scale
    out_zero_point: int
    out_dtype: str
    low: int  # the output clamp, in quantized units (ReLU/Clip and the dtype's range)
    high: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    op_index: int  # among main's heavy ops: the report's name for the layer
    #: A classifier ``matmul(x [N, K], w.T)``: run as a 1×1 conv on ``x`` as ``[N, K, 1, 1]``
    #: (``weight`` is then ``[O, K, 1, 1]``).
    matmul: bool = False
    #: The fp32 conv's (or matmul's) binding var, dead once folded: how a producer's
    #: consumers are recognized as folded convs (:mod:`.layouts`).
    conv: Any = None


class NotFoldable(Exception):
    """The chain at a ``quantize`` cannot become an integer conv; the message says why."""


def find_quantized_convs(module: Any, log: Int8Log) -> dict[Any, QuantizedConv]:
    """``quantize`` binding var in ``module``'s ``main`` → the conv it folds; ``log`` gets
    every conv's verdict (none for a model without ``quantize``: an fp32 model)."""
    from edgecompile.schedules.analysis import CONV2D, MATMUL, bindings_of, heavy_op_indices

    values = bindings_of(module["main"])
    plans: dict[Any, QuantizedConv] = {}
    if not any(_is_call(value, "relax.quantize") for value in values.values()):
        return plans
    conv_index = heavy_op_indices(module, frozenset({CONV2D, MATMUL}))
    for var, value in values.items():
        if not _is_call(value, "relax.quantize"):
            continue
        chain = _chain_behind(value.args[0], values, module)
        if chain is None:
            continue
        conv_var = chain.conv
        try:
            plans[var] = _match(value, chain, values, conv_index[conv_var])
        except NotFoldable as reason:
            log.kept.setdefault(conv_index[conv_var], str(reason))
        else:
            log.folded.add(conv_index[conv_var])
            log.kept.pop(conv_index[conv_var], None)
    for index in conv_index.values():
        if index not in log.folded:
            log.kept.setdefault(index, "its output is not quantized (no quantize after it)")
    return plans


def _is_call(expr: Any, name: str) -> bool:
    from tvm import relax

    return isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == name


def _producer(expr: Any, values: dict[Any, Any]) -> Any:
    return values.get(expr, expr)


@dataclass(frozen=True)
class _Chain:
    """What sits between a conv and the ``quantize`` after it."""

    conv: Any  # the conv's binding var
    bias: Any  # the added bias expression, or None
    low: float  # the activation's bounds in real units (-inf/inf: none)
    high: float


def _chain_behind(expr: Any, values: dict[Any, Any], module: Any) -> _Chain | None:
    """The conv a ``quantize``'s input comes from through ReLU/Clip and one bias add (None:
    this quantize ends no conv)."""
    low, high, bias = -np.inf, np.inf, None
    for _ in range(4):  # conv → add → (max → min | relu | clip): at most three steps
        value = values.get(expr)
        if value is None:
            return None
        if _is_call(value, "relax.nn.conv2d") or _is_call(value, "relax.matmul"):
            return _Chain(expr, bias, low, high)
        if _is_call(value, "relax.add") and bias is None:
            expr, bias = value.args[0], value.args[1]
            continue
        if bias is not None:  # an activation before the bias add: not a conv's epilogue
            return None
        step = _activation(value, values, module)
        if step is None:
            return None
        expr, step_low, step_high = step
        low, high = max(low, step_low), min(high, step_high)
    return None


def _activation(value: Any, values: dict[Any, Any], module: Any) -> tuple[Any, float, float] | None:
    """``(input, low, high)`` if ``value`` is a ReLU or (one side of) a Clip, else None."""
    from edgecompile.schedules.patterns import fold_scalar, scalar_clip_op

    if _is_call(value, "relax.nn.relu"):
        return value.args[0], 0.0, np.inf
    if _is_call(value, "relax.clip"):
        return value.args[0], _scalar(value.args[1]), _scalar(value.args[2])
    if not _is_call(value, "relax.call_tir") or module is None:
        return None
    # ONNX Clip, as the frontend imports it: call_tir of max(x, bound), then of min(x, bound).
    found = scalar_clip_op(module[value.args[0]])
    if found is None:
        return None
    op, constant = found
    operands = value.args[1].fields
    bound = constant if constant is not None else fold_scalar(operands[1], values)
    if bound is None:
        return None
    if op == "relax.maximum":
        return operands[0], float(bound), np.inf
    return operands[0], -np.inf, float(bound)


def _match(quantize: Any, chain: _Chain, values: dict[Any, Any], op_index: int) -> QuantizedConv:
    from edgecompile.schedules.analysis import dtype_of

    out_scale, out_zp = _scalar(quantize.args[1]), int(_scalar(quantize.args[2]))
    out_dtype = str(quantize.attrs.out_dtype)
    if out_dtype not in ("uint8", "int8"):
        raise NotFoldable(f"the output is quantized to {out_dtype}, not uint8/int8")
    info = np.iinfo(out_dtype)
    # The activation's bounds in quantized units: rounding is monotone, so clamping after
    # rounding equals rounding after clamping.
    low, high = int(info.min), int(info.max)
    if chain.low > -np.inf:
        low = max(low, int(np.rint(np.float32(chain.low) / np.float32(out_scale))) + out_zp)
    if chain.high < np.inf:
        high = min(high, int(np.rint(np.float32(chain.high) / np.float32(out_scale))) + out_zp)
    if low > high:
        raise NotFoldable("its activation's range is empty once quantized")
    bias_expr = chain.bias
    conv = values[chain.conv]
    matmul = _is_call(conv, "relax.matmul")
    if matmul:
        weight_expr = _transposed_weight(conv, values)
    else:
        attrs = conv.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout)) != ("NCHW", "OIHW"):
            raise NotFoldable(f"layout {attrs.data_layout}/{attrs.kernel_layout}, not NCHW/OIHW")
        weight_expr = conv.args[1]

    data = _producer(conv.args[0], values)
    if not _is_call(data, "relax.dequantize"):
        raise NotFoldable("its input is not a dequantized tensor")
    if dtype_of(data.args[0]) not in ("uint8", "int8"):
        raise NotFoldable(f"its input is {dtype_of(data.args[0])}, not uint8/int8")
    data_scale, data_zp = _scalar(data.args[1]), int(_scalar(data.args[2]))

    weight = _producer(weight_expr, values)
    if not _is_call(weight, "relax.dequantize"):
        raise NotFoldable("its weight is not a dequantized constant")
    weight_q = _constant(weight.args[0], "its weight")
    if weight_q.dtype != np.int8:
        raise NotFoldable(f"its weight is {weight_q.dtype}, not int8")
    channels = weight_q.shape[0]
    weight_scale = _per_channel(weight.args[1], channels, "weight scale")
    if np.any(_per_channel(weight.args[2], channels, "weight zero point") != 0):
        raise NotFoldable("its weight zero point is not 0 (asymmetric weights)")
    if int(weight.attrs.axis) != 0 and _constant(weight.args[1], "weight scale").size > 1:
        raise NotFoldable(f"its weight is quantized along axis {weight.attrs.axis}, not 0")

    product_scale = np.float32(data_scale) * weight_scale.astype(np.float32)
    bias = np.zeros(channels, np.int32)
    if bias_expr is not None:
        bias = _quantized_bias(_producer(bias_expr, values), values, product_scale)
    multiplier = (product_scale / np.float32(out_scale)).astype(np.float32)
    if matmul:
        return QuantizedConv(
            data=data.args[0],
            data_zero_point=data_zp,
            weight=weight_q.reshape(*weight_q.shape, 1, 1),
            bias=bias,
            multiplier=multiplier,
            out_zero_point=out_zp,
            out_dtype=out_dtype,
            low=low,
            high=high,
            strides=(1, 1),
            padding=(0, 0, 0, 0),
            dilation=(1, 1),
            groups=1,
            op_index=op_index,
            matmul=True,
            conv=chain.conv,
        )
    return QuantizedConv(
        data=data.args[0],
        data_zero_point=data_zp,
        weight=weight_q,
        bias=bias,
        multiplier=multiplier,
        out_zero_point=out_zp,
        out_dtype=out_dtype,
        low=low,
        high=high,
        strides=tuple(int(s) for s in attrs.strides),
        padding=tuple(int(p) for p in attrs.padding),
        dilation=tuple(int(d) for d in attrs.dilation),
        groups=int(attrs.groups),
        op_index=op_index,
        conv=chain.conv,
    )


def _transposed_weight(matmul: Any, values: dict[Any, Any]) -> Any:
    """The ``[O, K]`` weight of ``matmul(x [N, K], permute_dims(w))``, as ONNX Gemm (transB)
    imports; anything else is not a classifier this kernel runs."""
    from edgecompile.schedules.analysis import static_shape

    data_shape = static_shape(matmul.args[0])
    if data_shape is None or len(data_shape) != 2:
        raise NotFoldable("its input is not a [batch, features] matrix")
    transposed = _producer(matmul.args[1], values)
    if not _is_call(transposed, "relax.permute_dims") or [
        int(a) for a in (transposed.attrs.axes or [1, 0])
    ] != [1, 0]:
        raise NotFoldable("its weight is not a transposed [out, in] matrix")
    return transposed.args[0]


def _quantized_bias(expr: Any, values: dict[Any, Any], product_scale: np.ndarray) -> np.ndarray:
    """The int32 bias of a QDQ conv: ``reshape(dequantize(b_q int32, x_scale·w_scale, 0))``."""
    if _is_call(expr, "relax.reshape"):
        expr = _producer(expr.args[0], values)
    if not _is_call(expr, "relax.dequantize"):
        raise NotFoldable("its bias is not a dequantized int32 constant")
    bias = _constant(expr.args[0], "its bias")
    if bias.dtype != np.int32 or bias.size != product_scale.size:
        raise NotFoldable(f"its bias is {bias.dtype} of {bias.size}, not int32 per channel")
    scale = _per_channel(expr.args[1], bias.size, "bias scale")
    if np.any(_per_channel(expr.args[2], bias.size, "bias zero point") != 0):
        raise NotFoldable("its bias zero point is not 0")
    if not np.allclose(scale, product_scale, rtol=_SCALE_RTOL, atol=0):
        raise NotFoldable("its bias scale is not input scale × weight scale")
    return bias.reshape(-1).astype(np.int32)


def _constant(expr: Any, what: str) -> np.ndarray:
    from edgecompile.schedules.analysis import const_value, is_const

    if is_const(expr):
        return const_value(expr)
    value = getattr(expr, "value", None)  # a clip bound: a float immediate or a PrimValue
    value = getattr(value, "value", value)
    if isinstance(value, int | float):
        return np.asarray(value)
    raise NotFoldable(f"{what} is not a constant")


def _scalar(expr: Any) -> float:
    value = _constant(expr, "a quantization parameter")
    if value.size != 1:
        raise NotFoldable("the activation is quantized per channel, not per tensor")
    return value.reshape(()).item()


def _per_channel(expr: Any, channels: int, what: str) -> np.ndarray:
    value = _constant(expr, what).reshape(-1)
    if value.size not in (1, channels):
        raise NotFoldable(f"the {what} has {value.size} values for {channels} channels")
    return np.broadcast_to(value, (channels,))


#: How far an int8 build may be from ONNX Runtime on the same QDQ model, in output
#: quantization steps: its integer kernels and ours round the same way, but the layers left in
#: fp32 (and a float sum's order) may move a value across a rounding boundary.
VERIFY_STEPS = 2.0


def output_steps(module: Any) -> list[float] | None:
    """The quantization step (the final ``dequantize``'s scale) of each output of ``main``, or
    None when some output is not dequantized per tensor: not a QDQ model's output."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of, has_main

    if not has_main(module):
        return None
    main = module["main"]
    values = bindings_of(main)
    result = main.body.body
    steps = []
    for output in result.fields if isinstance(result, relax.Tuple) else [result]:
        value = values.get(output)
        if not _is_call(value, "relax.dequantize"):
            return None
        try:
            steps.append(float(_scalar(value.args[1])))
        except NotFoldable:
            return None
    return steps
