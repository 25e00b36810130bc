"""A QDQ model's glue between integer kernels kept in integers: data movement (reshape,
transpose, slice, concat) and max pools run on the quantized tensors, not on fp32 between a
``dequantize`` and a ``quantize``.

ONNX Runtime's quantizer gives a Reshape, Transpose, Slice or MaxPool the same quantization
parameters on both sides, so in the imported graph such an op reads ``dequantize(q, s, zp)`` and
its result is ``quantize``-d with ``(s, zp)`` again. With a scale above zero, dequantizing is a
monotone map applied per element, so moving values and taking their maximum commute with it:

    op(dequantize(q, s, zp)) == dequantize(op(q), s, zp)        (exactly, in float32)

and ``quantize(dequantize(q, s, zp), s, zp) == q`` (``(q - zp)·s / s`` rounds back to ``q``).
The pass sinks each ``dequantize`` below such ops, which then run on the integers, and drops a
``quantize`` that undoes a ``dequantize`` with the same parameters. A max pool's padding holds
the dtype's lowest integer, below every real value as fp32's ``-inf`` is.

A concat whose inputs have different parameters (ShuffleNet v2's branches, SqueezeNet's fire
modules) is concatenated in integers when every reader quantizes it with one set ``(s, zp)``:
each input with other parameters is requantized to them first, ``quantize(dequantize(x))``,
the arithmetic the fp32 glue did on the concat's output (an elementwise kernel TVM fuses into
the input's producer). SqueezeNet's concat of two integer convs' outputs then runs no kernel at
all (:mod:`..concat_in_place`), its max pools read uint8, and ShuffleNet v2's split, concat and
channel shuffle move bytes instead of converting each value twice.

Runs before the folding pass (:mod:`.folding`), which then finds each conv's input as
``dequantize`` of an integer tensor, as before. A pool keeps its place among ``main``'s heavy
ops (the report's layer numbers): its binding is replaced, not added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecompile.schedules.int8.graph import Int8Log, glue_verdict

#: Ops that only move values (or take a maximum of them): they commute with a per-tensor
#: dequantize whose scale is above zero.
_MOVEMENT_OPS = frozenset(
    {
        "relax.reshape",
        "relax.permute_dims",
        "relax.strided_slice",
        "relax.squeeze",
        "relax.expand_dims",
        "relax.flatten",
        "relax.nn.max_pool2d",
    }
)
_CONCAT = "relax.concat"
#: Why a concat stays fp32 (`build --explain`): no one scale to assemble it in.
CONCAT_SCALES_DIFFER = "inputs' scales differ, readers quantize it differently"
_MAX_POOL = "relax.nn.max_pool2d"
_QUANTIZE = "relax.quantize"
_DEQUANTIZE = "relax.dequantize"


@dataclass(frozen=True)
class _Dequantized:
    """A var bound to ``dequantize(integers, scale, zero_point)`` with per-tensor parameters."""

    integers: Any  # the quantized tensor (a var of the rewritten function)
    scale: float
    zero_point: int
    dtype: str  # the integers' dtype
    scale_expr: Any
    zero_point_expr: Any

    def same_parameters(self, scale: float, zero_point: int, dtype: str) -> bool:
        return (self.scale, self.zero_point, self.dtype) == (scale, zero_point, dtype)


def integer_glue(log: Int8Log | None = None) -> Any:
    """The Relax pass (see the module docstring); a model without ``quantize`` is left as is.
    ``log``: gets each max pool's and concat's verdict (int8, or why it stays fp32)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.Int8Glue")
    def transform(module: Any, _context: Any) -> Any:
        from tvm import relax

        from edgecompile.schedules.analysis import bindings_of, has_main

        if not has_main(module):
            return module
        values = bindings_of(module["main"]).values()
        if not any(_op(value) == _QUANTIZE for value in values):
            return module
        # The fp32 ops left dead (here, and the residual adds' in .add) go now: the folding
        # pass asks who reads each integer tensor, and a dead reader would keep it NCHW.
        return relax.transform.DeadCodeElimination()(_rewrite(module, log))

    return transform


def _op(expr: Any) -> str | None:
    from tvm import relax

    if not isinstance(expr, relax.Call):
        return None
    return getattr(expr.op, "name", None)


def _parameters(call: Any) -> tuple[float, int] | None:
    """A quantize's or dequantize's per-tensor ``(scale, zero point)``; None when they are not
    constant scalars (per-channel weights) or the scale is not above zero."""
    from edgecompile.schedules.analysis import const_value, is_const

    scale, zero_point = call.args[1], call.args[2]
    if not (is_const(scale) and is_const(zero_point)):
        return None
    scale_value, zero_value = const_value(scale), const_value(zero_point)
    if scale_value.size != 1 or zero_value.size != 1:
        return None
    scale_float = float(np.float32(scale_value.reshape(())))
    if not scale_float > 0:  # a scale of 0 (or below) would not keep the order of values
        return None
    return scale_float, int(zero_value.reshape(()))


def _rewrite(module: Any, log: Int8Log | None = None) -> Any:
    from tvm import relax

    from edgecompile.importer import HEAVY_OPS
    from edgecompile.schedules.analysis import all_readers, dtype_of, is_const, static_shape

    readers = all_readers(module["main"])

    def quantized_alike(var: Any) -> tuple[float, int, str] | None:
        """The one ``(scale, zero point, dtype)`` every reader of ``var`` quantizes it with."""
        found = set()
        for reader in readers.get(var, []):
            if _op(reader) != _QUANTIZE:
                return None
            parameters = _parameters(reader)
            if parameters is None:
                return None
            found.add((*parameters, str(reader.attrs.out_dtype)))
        return found.pop() if len(found) == 1 else None

    @relax.expr_functor.mutator
    class Glue(relax.PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.dequantized: dict[Any, _Dequantized] = {}
            # Where the binding is: the last heavy op before it (its layer in `--explain`).
            self.heavy_index, self.position = -1, 0
            self.kept_reason = ""  # why the last concat stays fp32

        def visit_var_binding_(self, binding: Any) -> None:
            value = self.visit_expr(binding.value)
            op = _op(value)
            self.position += 1
            if op in HEAVY_OPS:
                self.heavy_index += 1
            if op == _DEQUANTIZE and not is_const(value.args[0]):
                self._dequantize(binding, value)
                return
            rewritten = (
                (op == _QUANTIZE and self._undo(binding, value))
                or (op in _MOVEMENT_OPS and self._move(binding, value))
                or (op == _CONCAT and self._concat(binding, value))
            )
            if log is not None and op in (_MAX_POOL, _CONCAT):
                self._note_verdict(op, value, bool(rewritten))
            if not rewritten:
                self._emit_as(binding, value)

        def _note_verdict(self, op: str, value: Any, rewritten: bool) -> None:
            """The verdict `build --explain` shows: a max pool's by its heavy-op index, as a
            folded conv's; a concat's (no heavy op) under the heavy op it follows."""
            assert log is not None
            if op == _MAX_POOL:
                if rewritten:
                    log.moved.add(self.heavy_index)
                    log.kept.pop(self.heavy_index, None)
                else:
                    log.kept[self.heavy_index] = "its input is not dequantized from integers"
                return
            parts = getattr(value.args[0], "fields", [])
            shapes = [list(static_shape(part) or ()) for part in parts]
            reason = None if rewritten else self.kept_reason
            verdict = glue_verdict("concat", self.heavy_index, shapes, reason)
            log.glue[f"concat:{self.position}"] = verdict

        def _emit_as(self, binding: Any, value: Any) -> Any:
            var = binding.var
            if isinstance(var, relax.DataflowVar):
                new_var = self.builder_.emit(value, var.name)
            else:  # an output of the dataflow block
                new_var = self.builder_.emit_output(value, var.name)
            self.set_var_remap(var, new_var)
            return new_var

        def _dequantize(self, binding: Any, value: Any) -> None:
            new_var = self._emit_as(binding, value)
            parameters = _parameters(value)
            if parameters is not None:
                self.dequantized[new_var] = _Dequantized(
                    value.args[0], *parameters, dtype_of(value.args[0]), *value.args[1:3]
                )

        def _undo(self, binding: Any, value: Any) -> bool:
            """``quantize(dequantize(q, s, zp), s, zp)``: ``q`` itself."""
            source = self.dequantized.get(value.args[0])
            parameters = _parameters(value)
            if source is None or parameters is None:
                return False
            if not source.same_parameters(*parameters, str(value.attrs.out_dtype)):
                return False
            if isinstance(binding.var, relax.DataflowVar):
                self.set_var_remap(binding.var, source.integers)
            else:  # read after the dataflow block: a var of its own, bound to the integers
                self._emit_as(binding, source.integers)
            return True

        def _move(self, binding: Any, value: Any) -> bool:
            source = self.dequantized.get(value.args[0])
            if source is None:
                return False
            moved = relax.Call(value.op, [source.integers, *value.args[1:]], value.attrs)
            integers = self.builder_.emit(moved, binding.var.name + "_int")
            self._redequantize(binding, integers, source)
            return True

        def _concat(self, binding: Any, value: Any) -> bool:
            parts = value.args[0]
            self.kept_reason = "an input is not dequantized from integers"
            if not isinstance(parts, relax.Tuple):
                return False
            sources = [self.dequantized.get(part) for part in parts.fields]
            if any(source is None for source in sources):
                return False
            first = sources[0]
            if all(s.same_parameters(first.scale, first.zero_point, first.dtype) for s in sources):
                target = first
            else:
                target = self._concat_target(binding, sources)
                if target is None:
                    self.kept_reason = CONCAT_SCALES_DIFFER
                    return False
            inputs = [self._requantized(source, target) for source in sources]
            concat = relax.Call(value.op, [relax.Tuple(inputs)], value.attrs)
            integers = self.builder_.emit(concat, binding.var.name + "_int")
            self._redequantize(binding, integers, target)
            return True

        def _concat_target(self, binding: Any, sources: list[_Dequantized]) -> Any:
            """The parameters a concat of differently quantized inputs is assembled in: the
            ones its every reader quantizes it with (then only they see it), else None."""
            wanted = quantized_alike(binding.var)
            if wanted is None or wanted[2] not in ("uint8", "int8"):
                return None
            reader = readers[binding.var][0]
            return _Dequantized(None, *wanted, *reader.args[1:3])

        def _requantized(self, source: _Dequantized, target: _Dequantized) -> Any:
            if source.same_parameters(target.scale, target.zero_point, target.dtype):
                return source.integers
            real = self.builder_.emit(
                relax.op.dequantize(
                    source.integers, source.scale_expr, source.zero_point_expr, axis=-1
                )
            )
            return self.builder_.emit(
                relax.op.quantize(
                    real, target.scale_expr, target.zero_point_expr, axis=-1, out_dtype=target.dtype
                )
            )

        def _redequantize(self, binding: Any, integers: Any, parameters: _Dequantized) -> None:
            """Bind ``binding``'s var to ``dequantize(integers)``: what its fp32 readers read
            (the quantize after it undoes it, and DeadCodeElimination removes it)."""
            real = relax.op.dequantize(
                integers, parameters.scale_expr, parameters.zero_point_expr, axis=-1
            )
            new_var = self._emit_as(binding, real)
            self.dequantized[new_var] = _Dequantized(
                integers,
                parameters.scale,
                parameters.zero_point,
                parameters.dtype,
                parameters.scale_expr,
                parameters.zero_point_expr,
            )

    glue = Glue(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            glue.builder_.update_func(gvar, glue.visit_expr(func))
    return glue.builder_.get()
