"""Round half to even in float32 arithmetic where the target has no rounding instruction.

TVM lowers ``round`` (round half to even: the int8 requantization's rounding, as ONNX Runtime's
QLinearConv/QuantizeLinear round) to ``llvm.nearbyint``. ARMv8 has an instruction for it
(``frintn``; ``vrintn`` in 32-bit mode), x86 ``roundps``; a 32-bit ARM core before ARMv8 (the
``armv7`` preset: ``mcpu=generic``, no ``fp-armv8``) has none, and LLVM calls libm's
``nearbyintf`` once per lane: every vector requantization split into scalar calls (mobilenet_v2
int8: 325 call sites).

:func:`round_without_libm` rewrites each float32 ``round`` of such a target, before the
intrinsics are lowered, into the classic add-and-subtract of 2^23: for ``|x| < 2^23``,
``(|x| + 2^23) - 2^23`` is ``|x|`` rounded to an integer in the float unit's rounding mode,
round to nearest, ties to even (the only mode ARMv7's NEON has, and the default of its VFP
and of every libm caller); the sign is copied back (so ``-0.5`` gives ``-0``, as
``nearbyintf``); ``|x| >= 2^23`` (already an integer), infinities and NaN pass through
unchanged. Exactly ``nearbyintf``'s result, in 5 vector instructions (abs, add, sub, bit
select, compare) instead of 4 calls. LLVM keeps the add and subtract: TVM compiles without
fast-math, which could fold them.
"""

from __future__ import annotations

from typing import Any

#: 2^23: the float32 whose spacing is 1, so adding it rounds any smaller magnitude to an integer.
_TWO_TO_23 = float(2**23)


def needs_round_without_libm(target: Any) -> bool:
    """Whether ``target`` is 32-bit ARM without ARMv8's rounding instructions (``fp-armv8``),
    where ``round`` would be a libm call per element."""
    from tvm.target.codegen import target_has_features

    from edgecompile.schedules.cpu import cpu_info

    arch = cpu_info(target).arch
    return arch.startswith(("arm", "thumb")) and not target_has_features("fp-armv8", target)


def round_half_even(value: Any) -> Any:
    """``value`` (float32, scalar or vector) rounded half to even with adds, an absolute value
    and a select: what ``round`` computes, without a call (the module docstring)."""
    import tvm
    from tvm import tirx

    # LLVM's intrinsics, called directly: the rewrite runs after vectorization, and TVM's own
    # copysign op then reaches the code generator unlowered.
    dtype = str(value.ty)
    lanes = tvm.DataType(dtype).lanes

    def constant(number: float) -> Any:
        scalar = tirx.const(number, "float32")
        return tirx.Broadcast(scalar, lanes) if lanes > 1 else scalar

    shift = constant(_TWO_TO_23)
    magnitude = tirx.call_llvm_pure_intrin(dtype, "llvm.fabs", value)
    # The add as llvm.fma(|x|, 1, 2^23) (LLVM makes it one exact add): TVM's simplifier would
    # cancel a plain (|x| + c) - c, which LLVM without fast-math keeps.
    shifted = tirx.call_llvm_pure_intrin(dtype, "llvm.fma", magnitude, constant(1.0), shift)
    rounded = tirx.call_llvm_pure_intrin(dtype, "llvm.copysign", shifted - shift, value)
    return tirx.Select(magnitude < shift, rounded, value)


def rewrite_rounds(func: Any) -> Any:
    """``func`` with every float32 ``round`` computed by :func:`round_half_even`."""
    import tvm
    import tvm_ffi

    round_op = tvm.ir.Op.get("tirx.round")

    def rewrite(node: Any) -> Any:
        if node.op.same_as(round_op) and str(node.ty).startswith("float32"):
            (value,) = node.args
            return round_half_even(value)
        return node

    return func.with_body(tvm_ffi.structural_map(func.body, [(tvm.ir.Call, rewrite)]))


def round_without_libm() -> Any:
    """The TIR pass: :func:`rewrite_rounds` on every function whose target
    :func:`needs_round_without_libm`; the rest untouched."""
    from tvm import tirx

    @tirx.transform.prim_func_pass(opt_level=0, name="edgecompile.RoundWithoutLibm")
    def _pass(func: Any, _mod: Any, _ctx: Any) -> Any:
        target = func.attrs.get("target") if func.attrs is not None else None
        if target is None or not needs_round_without_libm(target):
            return func
        return rewrite_rounds(func)

    return _pass
