"""Read-only questions about the IR, asked by the layout pass, the schedule rules, the pipeline
and tuning alike (in the spirit of ``tvm.s_tir.dlight.analysis``): written once here.

TIR: does a PrimFunc have the root block that TE / LegalizeOps give every function they make
(finished TIR, like our lane-permuting concat, has none), which blocks sit under it, every block
of a body. Relax: static shapes and dtypes, constants, op names, who reads a var, and the index
of a binding among ``main``'s heavy ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from tvm import ir, relax, s_tir, tirx

CONV2D = "relax.nn.conv2d"
CONV2D_TRANSPOSE = "relax.nn.conv2d_transpose"
MATMUL = "relax.matmul"
#: The name TE and LegalizeOps give the block that holds a PrimFunc's whole body.
ROOT = "root"

# -- TIR --------------------------------------------------------------------------------------


def root_block(sch: Any) -> Any | None:
    """The root block of ``sch``'s ``main``, or None if there is none (finished TIR: not made by
    TE or LegalizeOps, so no kernel a rule of ours or MetaSchedule can schedule)."""
    try:
        return sch.get_sblock(ROOT)
    except Exception:  # ScheduleError: no block named root
        return None


def _schedule(func: Any) -> Any | None:
    try:
        return s_tir.Schedule(func)
    except Exception:  # not schedulable at all
        return None


def has_root_block(func: Any) -> bool:
    """Whether ``func`` (a PrimFunc, or an IRModule whose ``main`` is one) has a root block.

    Probes a throwaway schedule: a caller's own schedule keeps a trace without the probe.
    """
    sch = _schedule(func)
    return sch is not None and root_block(sch) is not None


def root_children(func: Any) -> tuple[Any, list[Any]] | None:
    """A schedule of ``func`` and the blocks directly under its root, or None when ``func`` is
    not schedulable or has no root block."""
    sch = _schedule(func)
    root = None if sch is None else root_block(sch)
    return None if root is None else (sch, list(sch.get_child_blocks(root)))


def child_blocks(sch: Any) -> list[Any]:
    """The blocks directly under the root of ``sch``'s ``main`` (none without a root block)."""
    root = root_block(sch)
    return [] if root is None else list(sch.get_child_blocks(root))


def sblocks(stmt: Any) -> Iterator[Any]:
    """Every SBlock under ``stmt`` (TVM 0.27 has no Python post-order visitor for TIR)."""
    if stmt is None:
        return
    if isinstance(stmt, s_tir.SBlock):
        yield stmt
    for child_field in ("block", "body", "init", "then_case", "else_case"):
        child = getattr(stmt, child_field, None)
        if child is not None and hasattr(child, "same_as"):
            yield from sblocks(child)
    for child in getattr(stmt, "seq", None) or ():
        yield from sblocks(child)


def prim_funcs(module: Any) -> list[tuple[Any, Any]]:
    """``(global var, PrimFunc)`` of every PrimFunc of ``module`` (a copy: safe to update)."""
    return [
        (gvar, func) for gvar, func in module.functions_items() if isinstance(func, tirx.PrimFunc)
    ]


# -- Relax ------------------------------------------------------------------------------------


def has_main(module: Any) -> bool:
    return "main" in [gvar.name_hint for gvar in module.get_global_vars()]


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed Relax expression, or None."""
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


def nchw_shape(expr: Any) -> tuple[int, int, int, int]:
    shape = static_shape(expr)
    assert shape is not None and len(shape) == 4, shape
    return shape  # type: ignore[return-value]


def broadcasts(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """``shape`` (NCHW) broadcasts to ``out_shape`` without changing its rank."""
    if len(shape) != len(out_shape):
        return False
    return all(s in (1, o) for s, o in zip(shape, out_shape, strict=True))


def dtype_of(expr: Any) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def op_name(call: Any) -> str:
    return str(getattr(call.op, "name", ""))


def is_const(expr: Any) -> bool:
    return isinstance(expr, ir.expr.GenericConst)


def const_value(expr: Any) -> np.ndarray:
    return expr.value.numpy()


def static_int(expr: Any) -> int | None:
    """A Python int from an IntImm or a PrimValue holding one, else None."""
    value = getattr(expr, "value", None)
    if value is not None and not isinstance(value, int):
        value = getattr(value, "value", None)
    return value if isinstance(value, int) else None


def called_kernels(module: Any) -> list[str]:
    """Names of the functions ``main`` calls (its kernels, after fusion), in call order."""
    names: list[str] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, ir.GlobalVar):
            names.append(expr.op.name_hint)

    relax.analysis.post_order_visit(module["main"], visit)
    return names


def bindings_of(main: Any) -> dict[Any, Any]:
    """Binding var → bound value, over every block of ``main``."""
    return {binding.var: binding.value for block in main.body.blocks for binding in block.bindings}


def uses(main: Any) -> tuple[dict[Any, int], dict[Any, Any]]:
    """How often each var of ``main`` is read, and the binding value reading it (the last one)."""
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


def all_readers(main: Any) -> dict[Any, list[Any]]:
    """Every binding value (Call) of ``main`` that reads each var directly as an argument."""
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


def heavy_op_indices(module: Any, names: frozenset[str]) -> dict[Any, int]:
    """Binding var of each op named in ``names`` in ``main`` → its index among
    ``heavy_ops(module)`` (which walks the same bindings, counting the ops it knows)."""
    from edgecompile.importer import HEAVY_OPS

    indices, count = {}, 0
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or op_name(value) not in HEAVY_OPS:
                continue
            if op_name(value) in names:
                indices[binding.var] = count
            count += 1
    return indices


def conv_indices(module: Any) -> dict[Any, int]:
    """Binding var of each conv2d in ``main`` → its index among ``heavy_ops(module)``; empty
    for a module without ``main``."""
    return heavy_op_indices(module, frozenset({CONV2D})) if has_main(module) else {}


def transposed_conv_indices(module: Any) -> dict[Any, int]:
    """:func:`conv_indices` for the conv2d_transpose ops of ``main``."""
    return heavy_op_indices(module, frozenset({CONV2D_TRANSPOSE})) if has_main(module) else {}
