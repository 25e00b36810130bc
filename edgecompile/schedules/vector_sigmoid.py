"""Sigmoid (and SiLU) legalized to arithmetic a vector unit runs: a polynomial ``exp``.

TVM legalizes ``relax.sigmoid`` to ``tir.sigmoid``, which lowers to ``1 / (1 + exp(-x))`` with
LLVM's ``exp``: no target has a vector ``exp`` instruction, so a vectorized gate becomes one
``expf`` library call per lane, and every vector register live across the calls is saved to the
stack and reloaded around each of them (MnasNet's squeeze-excite gates spilled so on every
board and stand-in, ``benchmarks/spills.py``). Here ``exp`` is Cephes' single-precision
``expf``: ``2^n · p(f)`` with ``f`` reduced by ``n·ln 2`` in two parts (Cody-Waite) and ``p`` a
degree-7 polynomial, within a few ulp of libm's; ``2^n`` is built in the exponent bits. Only
float compares, multiplies and adds, a float→int conversion, an integer shift and a
reinterpret: each a vector instruction on SSE, AVX, NEON and 32-bit NEON (no ``floor``, which
32-bit NEON lacks and LLVM would turn back into calls: the argument is offset to be positive,
so truncation is the floor). The division left is a vector ``div`` on every target but 32-bit
ARM, where it is four scalar ``vdiv`` (no calls).

The pass runs before TVM's legalization (:func:`edgecompile.schedules.pipeline.fusion_passes`)
and replaces each sigmoid or SiLU call by a ``call_tir`` of the TE compute below, which FuseOps
then fuses like TVM's own elementwise kernels.
"""

from __future__ import annotations

from typing import Any

from edgecompile.schedules.analysis import dtype_of, op_name

#: ``exp`` is evaluated on ``[-EXP_BOUND, EXP_BOUND]``: past it float32 ``exp`` is 0 or
#: infinite anyway, and within it ``n`` stays in ``[-127, 127]`` (the exponent field's range).
EXP_BOUND = 87.0
LOG2_E = 1.44269504088896341
# ln 2 in two parts (Cephes' C1 + C2): n·C1 is exact in float32 for the n here, so f keeps its
# precision however large x is.
LN2_HIGH = 0.693359375
LN2_LOW = -2.12194440e-4
# Cephes expf's polynomial for exp(f) - 1 - f - f²/2 ... on [-ln 2 / 2, ln 2 / 2], highest first.
EXP_POLYNOMIAL = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
# x·log2(e) + 0.5 is at least -126 here: shifted up by this, truncation toward zero is floor.
_FLOOR_OFFSET = 128
_FLOAT32_EXPONENT_BIAS = 127
_FLOAT32_MANTISSA_BITS = 23

SIGMOID_OPS = frozenset({"relax.sigmoid", "relax.nn.silu"})
#: The names of :func:`sigmoid`'s blocks (sigmoid, SiLU), as the schedule rules find them.
BLOCK_NAMES = ("sigmoid", "silu")


def vector_exp(x: Any) -> Any:
    """``exp(x)`` of a float32 TIR expression, as vectorizable arithmetic."""
    from tvm import tirx

    def const(value: float) -> Any:
        return tirx.const(value, "float32")

    x = tirx.max(tirx.min(x, const(EXP_BOUND)), const(-EXP_BOUND))
    shifted = x * const(LOG2_E) + const(0.5 + _FLOOR_OFFSET)
    exponent = tirx.Cast("int32", shifted) - _FLOOR_OFFSET  # floor(x·log2 e + 0.5)
    n = tirx.Cast("float32", exponent)
    f = x - n * const(LN2_HIGH) - n * const(LN2_LOW)
    poly = const(EXP_POLYNOMIAL[0])
    for coefficient in EXP_POLYNOMIAL[1:]:
        poly = poly * f + const(coefficient)
    mantissa = poly * f * f + f + const(1.0)
    bits = tirx.shift_left(exponent + _FLOAT32_EXPONENT_BIAS, _FLOAT32_MANTISSA_BITS)
    return tirx.reinterpret("float32", bits) * mantissa


def sigmoid_expr(x: Any) -> Any:
    """``1 / (1 + exp(-x))`` of a float32 TIR expression (:func:`vector_exp`)."""
    from tvm import tirx

    one = tirx.const(1.0, "float32")
    return one / (one + vector_exp(-x))


def sigmoid(data: Any, times_input: bool = False) -> Any:
    """TE: the sigmoid of ``data`` (float32, any shape), or SiLU (``x · sigmoid(x)``)."""
    from tvm import te

    def gate(*index: Any) -> Any:
        value = data(*index)
        return value * sigmoid_expr(value) if times_input else sigmoid_expr(value)

    return te.compute(data.shape, gate, name=BLOCK_NAMES[1] if times_input else BLOCK_NAMES[0])


def vector_sigmoid() -> Any:
    """The pass: every float32 ``relax.sigmoid`` / ``relax.nn.silu`` call of every Relax
    function becomes a ``call_tir`` of :func:`sigmoid` (other dtypes keep TVM's lowering)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewriter(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = op_name(call)
            if name not in SIGMOID_OPS or dtype_of(call.args[0]) != "float32":
                return call
            silu = name == "relax.nn.silu"
            return self.builder_.call_te(
                sigmoid, call.args[0], times_input=silu, primfunc_name_hint=name.split(".")[-1]
            )

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.VectorSigmoid")
    def transform(module: Any, _context: Any) -> Any:
        functions = [
            (gvar, func)
            for gvar, func in module.functions_items()
            if isinstance(func, relax.Function)
        ]
        if not any(_calls_sigmoid(func) for _, func in functions):
            return module
        rewriter = _Rewriter(module)
        for gvar, func in functions:
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return transform


def _calls_sigmoid(func: Any) -> bool:
    from tvm import relax

    found = False

    def visit(expr: Any) -> None:
        nonlocal found
        if isinstance(expr, relax.Call) and op_name(expr) in SIGMOID_OPS:
            found = True

    relax.analysis.post_order_visit(func, visit)
    return found
