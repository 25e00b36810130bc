"""Idioms of the ONNX frontend's Relax that the layout pass recognises: ONNX ``Clip``'s
``call_tir`` and the NaN guards around its bounds, ShuffleNet's channel split (a channel
``strided_slice``) and channel shuffle (reshape → transpose → reshape), and torch's export of
``adaptive_avg_pool2d`` to a size that does not divide the input (transpose → gather of
constant windows → transpose, then a mean or masked sums: ESPNet v2's pyramid pools).
"""

from __future__ import annotations

from typing import Any, NamedTuple

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


def shared_relu_input(
    expr: Any, bindings: dict[Any, Any], use_counts: dict[Any, int]
) -> Any | None:
    """``x`` if ``expr`` is ``relu(x)``, read by one op only, while ``x`` has other readers:
    Xception's ReLU in front of each separable conv, whose input also feeds the residual
    branch. Such a ReLU cannot be its producer's epilogue (the un-activated value is read
    too), so it ran as a kernel of its own; its one reader can apply it as it loads. Else
    None."""
    value = bindings.get(expr)
    if not isinstance(value, relax.Call) or op_name(value) != "relax.nn.relu":
        return None
    source = value.args[0]
    if use_counts.get(expr) != 1 or use_counts.get(source, 0) < 2:
        return None
    return source


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


class WindowGather(NamedTuple):
    """The pixels of a 4-D ``(N, C, H, W)`` tensor picked by constant row and column tables
    into windows: ``out[n, c, i, a, j, b] = x[n, c, rows[i, a], cols[j, b]]``."""

    source: Any
    rows: np.ndarray  # (OH, KH) input row of each output row's window, int32
    cols: np.ndarray  # (OW, KW) input column of each output column's window, int32
    inner: tuple[Any, ...]  # the chain's vars before ``result``, read by nothing else
    result: Any
    averaged: bool = False  # ``result`` is the mean over each window, ``(N, C, OH, OW)``


#: Most terms a window mean sums as separate loads (torch's adaptive pools of ESPNet v2's
#: pyramid at scale 1.5 have windows of 2 × 2).
MAX_WINDOW_TERMS = 16


def window_chains(
    var: Any, call: Any, bindings: dict[Any, Any], readers: dict[Any, list[Any]]
) -> list[WindowGather] | None:
    """One :class:`WindowGather` per gather if ``var = call`` starts how torch's ONNX export of
    ``adaptive_avg_pool2d`` at a size that does not divide the input (ESPNet v2's pyramid at
    scales 1.5 and 0.1) picks its windows: ``permute_dims(x, [2, 3, 0, 1])`` → ``gather_nd``
    of constant ``(OH, KH, OW, KW, 2)`` indices (one or several, from the same transpose) →
    ``permute_dims([4, 5, 0, 1, 2, 3])`` each. A chain whose ``mean`` over the two window axes
    reads it alone (every window of one size: scale 1.5; at most :data:`MAX_WINDOW_TERMS`
    pixels) ends at that mean, ``averaged``. The intermediates may be read by nothing else
    than the chains, the first one also by ``shape_of`` (which the frontend's index
    normalization reads: the indices are normalized only where negative, and these never
    are). Rows must depend only on the output row and columns only on the output column, as
    an adaptive pool's do; else None."""
    source_shape = static_shape(call.args[0]) if op_name(call) == "relax.permute_dims" else None
    if source_shape is None or len(source_shape) != 4 or _axes(call) != [2, 3, 0, 1]:
        return None
    chain_readers = [r for r in readers.get(var, []) if op_name(r) != "relax.shape_of"]
    if not chain_readers:
        return None
    chains = []
    for gather in chain_readers:
        chain = _window_gather(var, gather, bindings, readers, source_shape)
        if chain is None:
            return None
        chains.append(_window_mean(chain, bindings, readers) or chain)
    return chains


def _window_gather(
    var: Any,
    gather: Any,
    bindings: dict[Any, Any],
    readers: dict[Any, list[Any]],
    source_shape: tuple[int, ...],
) -> WindowGather | None:
    if op_name(gather) != "relax.gather_nd" or int(gather.attrs.batch_dims) != 0:
        return None
    if not gather.args[0].same_as(var):
        return None
    indices = _gather_indices(gather.args[1], bindings, source_shape[2:])
    if indices is None or indices.ndim != 5 or indices.shape[-1] != 2:
        return None
    rows, cols = indices[:, :, :1, :1, 0], indices[:1, :1, :, :, 1]
    if not (np.all(indices[..., 0] == rows) and np.all(indices[..., 1] == cols)):
        return None
    gather_var = _binding_var(gather, bindings)
    permute = _only_reader(gather_var, readers)
    if permute is None or op_name(permute) != "relax.permute_dims":
        return None
    if _axes(permute) != [4, 5, 0, 1, 2, 3]:
        return None
    source = bindings[var].args[0]
    rows, cols = rows[:, :, 0, 0].astype("int32"), cols[0, 0].astype("int32")
    return WindowGather(source, rows, cols, (var, gather_var), _binding_var(permute, bindings))


def _window_mean(
    chain: WindowGather, bindings: dict[Any, Any], readers: dict[Any, list[Any]]
) -> WindowGather | None:
    """``chain`` extended to the ``mean`` over its two window axes that reads it alone."""
    if chain.rows.shape[1] * chain.cols.shape[1] > MAX_WINDOW_TERMS:
        return None
    mean = _only_reader(chain.result, readers)
    if mean is None or op_name(mean) != "relax.mean" or mean.attrs.keepdims:
        return None
    if sorted(int(a) % 6 for a in mean.attrs.axis) != [3, 5]:
        return None
    inner = (*chain.inner, chain.result)
    return chain._replace(inner=inner, result=_binding_var(mean, bindings), averaged=True)


def _constant_tensor(expr: Any, bindings: dict[Any, Any], depth: int = 4) -> np.ndarray | None:
    """The value of a constant, or of ``concat`` / ``expand_dims`` / ``broadcast_to`` of
    constants (how the importer builds large index tensors: ESPNet v2's pyramid pool indices
    at 512 × 1024 arrive as two broadcast grids joined on a last axis), in numpy; else None."""
    if is_const(expr):
        return const_value(expr)
    value = bindings.get(expr) if isinstance(expr, relax.Var) else None
    if depth == 0 or not isinstance(value, relax.Call):
        return None
    name = op_name(value)
    if name == "relax.concat":
        parts = [_constant_tensor(part, bindings, depth - 1) for part in value.args[0].fields]
        if any(part is None for part in parts):
            return None
        return np.concatenate(parts, axis=int(value.attrs.axis))  # type: ignore[arg-type]
    inner = _constant_tensor(value.args[0], bindings, depth - 1)
    shape = static_shape(expr)
    if inner is None or shape is None:
        return None
    if name == "relax.expand_dims" or name == "relax.broadcast_to":
        try:
            if name == "relax.expand_dims":
                return inner.reshape(shape)  # inserting unit axes keeps the element order
            return np.broadcast_to(inner, shape)
        except ValueError:
            return None
    return None


def _axes(call: Any) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def _binding_var(value: Any, bindings: dict[Any, Any]) -> Any:
    return next(var for var, bound in bindings.items() if bound.same_as(value))


def _only_reader(var: Any, readers: dict[Any, list[Any]]) -> Any | None:
    found = readers.get(var, [])
    return found[0] if len(found) == 1 and found[0] is not None else None


def _gather_indices(
    expr: Any, bindings: dict[Any, Any], bounds: tuple[int, ...]
) -> np.ndarray | None:
    """The constant indices of a ``gather_nd``, as the ONNX frontend passes them:
    ``where(less(k, 0), add(k, shape), k)`` of a constant ``k`` (or ``k`` itself; ``k`` as
    :func:`_constant_tensor` reads it), when every
    index of ``k`` is already within ``bounds``, so the normalization picks ``k`` everywhere."""
    value = bindings.get(expr) if isinstance(expr, relax.Var) else None
    if value is not None and op_name(value) == "relax.where":
        condition, _, otherwise = value.args
        test = bindings.get(condition)
        if test is None or op_name(test) != "relax.less":
            return None
        if not test.args[0].same_as(otherwise) or not is_const(test.args[1]):
            return None
        if np.any(const_value(test.args[1]) != 0):
            return None
        expr = otherwise
    indices = _constant_tensor(expr, bindings)
    if indices is None:
        return None
    if indices.dtype.kind not in "iu" or indices.ndim < 1 or indices.shape[-1] != len(bounds):
        return None
    if np.any(indices < 0) or np.any(indices >= np.array(bounds)):
        return None
    return indices
