"""Idioms of the ONNX frontend's Relax that the layout pass recognises: ONNX ``Clip``'s
``call_tir`` and the NaN guards around its bounds, ShuffleNet's channel split (a channel
``strided_slice``) and channel shuffle (reshape → transpose → reshape).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import ir, relax, tirx

from edgecompile.schedules.analysis import (
    const_value,
    is_const,
    op_name,
    root_children,
    static_int,
    static_shape,
)


def scalar_clip_op(func: Any) -> tuple[str, float | None] | None:
    """``("relax.maximum" | "relax.minimum", constant)`` if ``func`` is ONNX Clip's lowering.

    TVM's ONNX frontend lowers ``Clip`` to ``call_tir`` of a PrimFunc computing
    ``out[i] = max(x[i], bound[()])`` (bound a 0-d tensor argument; ``constant`` is None) or,
    for opset < 11, ``max(x[i], 0.0f)`` (``constant`` is the float). Recognising it keeps ReLU6
    in the blocked layout, where it fuses into the conv as an epilogue.
    """
    if not isinstance(func, tirx.PrimFunc) or len(func.params) not in (2, 3):
        return None
    found = root_children(func)
    if found is None:  # no root block or not schedulable: not the frontend's Clip
        return None
    sch, blocks = found
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
    if is_const(expr):
        value = const_value(expr)
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
    name = op_name(expr)
    if name == "relax.isnan" and len(args) == 1:
        return np.isnan(args[0])
    if name == "relax.where" and len(args) == 3:
        return np.where(*args).astype(args[1].dtype)
    return None


def channel_slice(call: Any) -> tuple[int, int] | None:
    """``(begin, end)`` if ``call`` is a unit-stride ``strided_slice`` of a 4-D tensor along the
    channel axis only (ShuffleNet v2's channel split), with ``end`` clamped; else None."""
    if op_name(call) != "relax.strided_slice" or len(call.args) < 4:
        return None
    shape = static_shape(call.args[0])
    if shape is None or len(shape) != 4:
        return None
    fields = [getattr(arg, "fields", None) for arg in call.args[1:]]
    if any(f is None or len(f) != 1 for f in fields):
        return None
    values = [static_int(f[0]) for f in fields]  # type: ignore[index]
    if any(v is None for v in values):
        return None
    axis, begin, end, *stride = values
    if axis % 4 != 1 or (stride and stride[0] != 1):  # type: ignore[operator]
        return None
    channels = shape[1]
    begin = min(max(begin + channels if begin < 0 else begin, 0), channels)  # type: ignore[operator]
    end = min(max(end + channels if end < 0 else end, 0), channels)  # type: ignore[operator]
    return (begin, end) if begin < end else None


def shuffle_chain(
    var: Any, call: Any, use_counts: dict[Any, int], readers: dict[Any, Any]
) -> tuple[int, tuple[Any, ...]] | None:
    """``(groups, (split, permuted, merged))`` if ``var = call`` starts a channel shuffle:
    ``reshape(x, (N, g, C/g, H, W)) → permute_dims(0, 2, 1, 3, 4) → reshape(x's shape)``
    whose intermediates have no other reader; else None."""
    if op_name(call) != "relax.reshape":
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
    if permute is None or op_name(permute.value) != "relax.permute_dims":
        return None
    if [int(a) for a in permute.value.attrs.axes] != [0, 2, 1, 3, 4]:
        return None
    if use_counts.get(permute.var) != 1:
        return None
    merge = readers.get(permute.var)
    if merge is None or op_name(merge.value) != "relax.reshape":
        return None
    if static_shape(merge.var) != source_shape:
        return None
    return groups, (var, permute.var, merge.var)


def pre_activation(
    expr: Any, bindings: dict[Any, Any], use_counts: dict[Any, int]
) -> tuple[Any, Any, bool] | None:
    """``(source, batch_norm call, relu)`` if ``expr`` is ``relu(batch_norm(source)[0])`` or
    ``batch_norm(source)[0]`` (an inference batch norm over the channel axis) and each value
    between ``source`` and ``expr`` is read only by the next: DenseNet's and CondenseNet's
    pre-activation in front of a conv. Else None."""
    relu = False
    value = bindings.get(expr)
    if isinstance(value, relax.Call) and op_name(value) == "relax.nn.relu":
        if use_counts.get(expr) != 1:
            return None
        relu, expr = True, value.args[0]
        value = bindings.get(expr)
    if not isinstance(value, relax.TupleGetItem) or int(value.index) != 0:
        return None
    if use_counts.get(expr) != 1:
        return None
    norm = bindings.get(value.tuple_value)
    if not isinstance(norm, relax.Call) or op_name(norm) != "relax.nn.batch_norm":
        return None
    if norm.attrs.training or int(norm.attrs.axis) % 4 != 1:
        return None
    return norm.args[0], norm, relu


def reshaped_constant(expr: Any, bindings: dict[Any, Any]) -> np.ndarray | None:
    """The value of ``expr`` if it is a constant or a ``reshape`` of one, else None.

    The ONNX frontend passes PReLU's slope (exported as ``(C, 1, 1)``) through
    ``reshape(const, (C,))``, which FoldConstant only folds after the layout pass."""
    if isinstance(expr, relax.Var):
        bound = bindings.get(expr)
        if not isinstance(bound, relax.Call) or op_name(bound) != "relax.reshape":
            return None
        expr = bound.args[0]
    return const_value(expr) if is_const(expr) else None
