"""A QDQ model's residual add, ``quantize(dequantize(a) + dequantize(b))``, computed on the
integers the way ONNX Runtime computes it, so an int8 build stays within its steps of ORT's.

ORT fuses that chain into ``QLinearAdd``, and MLAS's x86 kernel (AVX2 and up) does not
dequantize, add and divide by the output scale as the fp32 chain does: it multiplies each
input by the ratio of its scale to the output's and adds a precomputed offset, with FMAs:

    r_a = s_a / s_c,  r_b = s_b / s_c                         (float32)
    fixed = z_c - (r_a · z_a + r_b · z_b)                    (float32, the product sum fused)
    c = saturate(round_half_even(fma(a, r_a, fma(b, r_b, fixed))))

Both are within half a step of the real sum, but they round differently when it lies near a
half step: in mnasnet_a1 the first layer where our build and ORT's differ was a residual add
(1 of 15 680 values, then 10 of the next add's), and through the squeeze-excite gates after it
(a sigmoid turns one step of its input into up to ~70 steps of its output) that grew to 3
output steps. Computed ORT's way, with ``llvm.fma`` so no target's contraction choice changes
the rounding, the adds match ORT's exactly. (MLAS on ARM uses a fixed-point variant of the
same sum; the host's ORT is what builds are verified against.)

A target without FMA (32-bit ARM before VFPv4, the ``armv7`` preset; x86-64-v2) has no
instruction for ``llvm.fma``: LLVM calls libm's ``fmaf`` for each element (64 call sites in
mobilenet_v2's armv7 int8 build, and the calls' saved registers made 6 of its fused conv + add
kernels spill). There each product-sum is computed in float64 and rounded once to float32
instead: an 8-bit integer times a float32 ratio is exact in float64, and where the sum with the
float32 addend is exact too, rounding it once to float32 is exactly the fma's result. Whether
every sum is exact depends only on the add's constants and the 384 input values (uint8 and
int8), so it is checked for all of them when the add is folded
(:meth:`QuantizedAdd.exact_in_float64`); an add where some sum is not keeps ``llvm.fma``.

Only a same-shape add of two per-tensor quantized uint8/int8 tensors whose result nothing but
one ``quantize`` reads (the chain ORT fuses) becomes integer; any other add stays fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgecompile.schedules.int8.graph import Int8Log, glue_verdict

#: The PrimFunc name hint of an integer add (``add`` in it: a profile names it by it).
ADD_KERNEL_NAME = "int8_add"
#: The PrimFunc attribute holding an integer add's constants (:meth:`QuantizedAdd.of_func`):
#: how the folding pass computes the same add on the blocked layout (:mod:`.layouts`).
ADD_ATTR = "edgecompile.int8_add"


@dataclass(frozen=True)
class QuantizedAdd:
    """The constants of one integer add (see the module docstring)."""

    ratio_a: np.float32
    ratio_b: np.float32
    fixed: np.float32
    out_dtype: str
    #: Each product-sum in float64, rounded once to float32, instead of ``llvm.fma`` (a target
    #: without FMA, where :meth:`exact_in_float64`): the same results without libm's ``fmaf``.
    in_float64: bool = False

    @classmethod
    def of(
        cls,
        a: tuple[float, int],
        b: tuple[float, int],
        out: tuple[float, int],
        out_dtype: str,
    ) -> QuantizedAdd:
        """From each input's and the output's ``(scale, zero point)``, as MLAS computes them."""
        (scale_a, zero_a), (scale_b, zero_b), (scale_c, zero_c) = a, b, out
        ratio_a = np.float32(scale_a) / np.float32(scale_c)
        ratio_b = np.float32(scale_b) / np.float32(scale_c)
        # r_a·z_a + r_b·z_b with its first product fused (what the compiler made of MLAS's
        # scalar line; the other grouping missed ORT by a step in mnasnet_a1): summed in
        # float64, where these products are exact, and rounded once to float32.
        product_b = np.float32(np.float64(ratio_b) * zero_b)
        offset = np.float32(np.float64(ratio_a) * zero_a + np.float64(product_b))
        return cls(ratio_a, ratio_b, np.float32(np.float32(zero_c) - offset), out_dtype)

    @classmethod
    def of_func(cls, func: Any) -> QuantizedAdd | None:
        """The constants :func:`integer_adds` put on an integer add's PrimFunc, if it is one."""
        attrs = getattr(func, "attrs", None)
        if attrs is None or ADD_ATTR not in attrs:
            return None
        ratio_a, ratio_b, fixed, out_dtype, in_float64 = attrs[ADD_ATTR]
        values = (np.float32(float(v)) for v in (ratio_a, ratio_b, fixed))
        return cls(*values, str(out_dtype), bool(in_float64))

    def for_target(self, fma: bool) -> QuantizedAdd:
        """The add as a target computes it: with ``llvm.fma`` where it has FMA (``fma``) or a
        sum is inexact in float64, else in float64 (the module docstring)."""
        return replace(self, in_float64=not fma and self.exact_in_float64())

    def exact_in_float64(self) -> bool:
        """Whether both product-sums are exact in float64 for every pair of uint8/int8 inputs,
        so rounding each once to float32 gives the fma's result. The products are (8-bit
        integer × 24-bit significand); a sum is inexact only where its addend and product lie
        some 2^20 apart in magnitude."""
        values = np.arange(-128, 256, dtype=np.float64)  # every uint8 and every int8
        products_b = values * np.float64(self.ratio_b)
        if not _sums_exact(products_b, np.full_like(products_b, self.fixed)):
            return False
        inner = (products_b + np.float64(self.fixed)).astype(np.float32).astype(np.float64)
        products_a = values[:, None] * np.float64(self.ratio_a)
        return _sums_exact(*np.broadcast_arrays(products_a, inner[None, :]))

    def reference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The same arithmetic in numpy, each fma done in float64 and rounded once to float32
        (exact unless the two scale ratios are some 2^20 apart)."""
        inner = (b.astype(np.float64) * self.ratio_b + self.fixed).astype(np.float32)
        total = (a.astype(np.float64) * self.ratio_a + inner).astype(np.float32)
        info = np.iinfo(self.out_dtype)
        return np.clip(np.rint(total), info.min, info.max).astype(self.out_dtype)


def _sums_exact(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether every ``x + y`` is exact in float64: Knuth's two-sum recovers each sum's
    rounding error exactly (round to nearest, no overflow), and it must be 0."""
    total = x + y
    y_part = total - x
    error = (x - (total - y_part)) + (y - y_part)
    return bool(np.all(np.isfinite(total)) and np.all(error == 0))


def integer_add(a: Any, b: Any, add: QuantizedAdd) -> Any:
    """The TE compute of one integer add (same shapes, either integer dtype)."""
    from tvm import te, tirx

    info = np.iinfo(add.out_dtype)
    ratio_a = tirx.const(float(add.ratio_a), "float32")
    ratio_b = tirx.const(float(add.ratio_b), "float32")
    fixed = tirx.const(float(add.fixed), "float32")
    low = tirx.const(float(info.min), "float32")
    high = tirx.const(float(info.max), "float32")

    def fma(x: Any, y: Any, z: Any) -> Any:
        """``x · y + z`` (``x`` an integer) rounded once to float32."""
        if add.in_float64:  # exact in float64 (QuantizedAdd.exact_in_float64): one rounding
            wide = x.astype("float64") * y.astype("float64") + z.astype("float64")
            return wide.astype("float32")
        return tirx.call_llvm_pure_intrin("float32", "llvm.fma.f32", x.astype("float32"), y, z)

    def element(*index: Any) -> Any:
        total = fma(a(*index), ratio_a, fma(b(*index), ratio_b, fixed))
        clamped = tirx.max(tirx.min(tirx.round(total), high), low)
        return clamped.astype("int32").astype(add.out_dtype)

    return te.compute(a.shape, element, name="int8_add")


def integer_adds(log: Int8Log | None = None, target: Any = None) -> Any:
    """The Relax pass: each ``quantize(add(dequantize(a), dequantize(b)))`` ORT would fuse
    becomes a call to :func:`integer_add`; a model without ``quantize`` is left as is.
    ``log``: gets each add of a dequantized tensor's verdict (int8, or why it stays fp32).
    ``target``: without FMA, the adds computed in float64 (:meth:`QuantizedAdd.for_target`);
    None: with ``llvm.fma``."""
    import tvm

    from edgecompile.schedules.cpu import cpu_info

    fma = target is None or cpu_info(target).fma

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.Int8Adds")
    def transform(module: Any, _context: Any) -> Any:
        from edgecompile.schedules.analysis import has_main

        if not has_main(module):
            return module
        found = {
            var: (a, b, add.for_target(fma))
            for var, (a, b, add) in _quantized_adds(module["main"], log).items()
        }
        return _rewrite(module, found) if found else module

    return transform


def _op(expr: Any) -> str | None:
    from tvm import relax

    return getattr(expr.op, "name", None) if isinstance(expr, relax.Call) else None


def _per_tensor(call: Any) -> tuple[float, int] | None:
    """A quantize's or dequantize's ``(scale, zero point)`` if constant scalars."""
    from edgecompile.schedules.analysis import const_value, is_const

    scale, zero_point = call.args[1], call.args[2]
    if not (is_const(scale) and is_const(zero_point)):
        return None
    scale_value, zero_value = const_value(scale), const_value(zero_point)
    if scale_value.size != 1 or zero_value.size != 1:
        return None
    return float(np.float32(scale_value.reshape(()))), int(zero_value.reshape(()))


#: Why an add of a dequantized tensor stays fp32, one line per cause (`build --explain`).
NOT_QUANTIZED = "its sum is not quantized"
SUM_READ_ELSEWHERE = "its fp32 sum is read by more than its quantize"
FP32_INPUT = "an input is not dequantized from integers"
NOT_8_BIT = "an input is not uint8/int8"
BROADCAST = "a broadcast add (shapes differ)"
NOT_PER_TENSOR = "scales not per-tensor constants above 0"


def _quantized_adds(
    main: Any, log: Int8Log | None = None
) -> dict[Any, tuple[Any, Any, QuantizedAdd]]:
    """``quantize`` var → (integers a, integers b, constants) for each add that folds; ``log``
    gets every add of a dequantized tensor's verdict."""
    from edgecompile.schedules.analysis import bindings_of, dtype_of, static_shape, uses

    values = bindings_of(main)
    # Every read counts (a tuple of outputs too): the add's sum must be read by its quantize only.
    read_count, _ = uses(main)
    found = {}
    kept: dict[Any, str] = {}  # add var → why it stays fp32
    for var, value in values.items():
        if _op(value) != "relax.quantize" or str(value.attrs.out_dtype) not in ("uint8", "int8"):
            continue
        add = values.get(value.args[0])
        if _op(add) != "relax.add":
            continue
        if read_count.get(value.args[0], 0) != 1:
            kept[value.args[0]] = SUM_READ_ELSEWHERE
            continue
        inputs = [values.get(arg) for arg in add.args]
        if any(_op(dequantize) != "relax.dequantize" for dequantize in inputs):
            kept[value.args[0]] = FP32_INPUT
            continue
        integers = [dequantize.args[0] for dequantize in inputs]
        if any(dtype_of(x) not in ("uint8", "int8") for x in integers):
            kept[value.args[0]] = NOT_8_BIT
            continue
        shapes = [static_shape(x) for x in integers]
        if shapes[0] is None or shapes[0] != shapes[1]:
            # ORT's scalar variants round alike, but no model here needs them.
            kept[value.args[0]] = BROADCAST
            continue
        parameters = [_per_tensor(call) for call in (*inputs, value)]
        if any(p is None or not p[0] > 0 for p in parameters):
            kept[value.args[0]] = NOT_PER_TENSOR
            continue
        out_dtype = str(value.attrs.out_dtype)
        found[var] = (*integers, QuantizedAdd.of(*parameters, out_dtype))
    if log is not None:
        folded = {values[var].args[0] for var in found}
        _note_verdicts(values, folded, kept, log)
    return found


def _note_verdicts(
    values: dict[Any, Any], folded: set[Any], kept: dict[Any, str], log: Int8Log
) -> None:
    """Each add reading a dequantized (non-constant) tensor: int8, or why not, under the heavy
    op it follows (an add is no heavy op; a conv's bias add reads a constant, and is left out)."""
    from edgecompile.importer import HEAVY_OPS
    from edgecompile.schedules.analysis import is_const, static_shape

    heavy_index = -1
    for position, (var, value) in enumerate(values.items()):
        if _op(value) in HEAVY_OPS:
            heavy_index += 1
        if _op(value) != "relax.add":
            continue
        sources = [values.get(arg) for arg in value.args]
        if not any(
            _op(source) == "relax.dequantize" and not is_const(source.args[0]) for source in sources
        ):
            continue
        reason = None if var in folded else kept.get(var, NOT_QUANTIZED)
        shapes = [list(static_shape(arg) or ()) for arg in value.args]
        log.glue[f"add:{position}"] = glue_verdict("add", heavy_index, shapes, reason)


def _rewrite(module: Any, found: dict[Any, tuple[Any, Any, QuantizedAdd]]) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Adds(relax.PyExprMutator):
        def visit_var_binding_(self, binding: Any) -> None:
            plan = found.get(binding.var)
            if plan is None:
                super().visit_var_binding_(binding)
                return
            a, b, add = plan
            call = self.builder_.call_te(
                lambda x, y: integer_add(x, y, add),
                self.visit_expr(a),
                self.visit_expr(b),
                primfunc_name_hint=ADD_KERNEL_NAME,
            )
            constants[call.args[0]] = add
            if isinstance(binding.var, relax.DataflowVar):
                new_var = self.builder_.emit(call)
            else:
                new_var = self.builder_.emit_output(call)
            self.set_var_remap(binding.var, new_var)

    constants: dict[Any, QuantizedAdd] = {}
    adds = Adds(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            adds.builder_.update_func(gvar, adds.visit_expr(func))
    # The fp32 add and its dequantizes are left dead: DeadCodeElimination removes them.
    result = adds.builder_.get()
    for gvar, add in constants.items():
        values = [
            float(add.ratio_a),
            float(add.ratio_b),
            float(add.fixed),
            add.out_dtype,
            add.in_float64,
        ]
        result[gvar] = result[gvar].with_attr(ADD_ATTR, values)
    return result
