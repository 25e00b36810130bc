"""The Relax pass that replaces each foldable chain (:mod:`.graph`) with a call to its integer
conv (:mod:`.compute`); everything else stays as imported, fp32 between dequantize/quantize."""

from __future__ import annotations

from typing import Any

from edgecompile.schedules.int8.compute import integer_conv2d
from edgecompile.schedules.int8.graph import Int8Log, QuantizedConv, find_quantized_convs

#: The PrimFunc name hint of a folded conv (``conv2d`` in it: profiles name the layer by it).
KERNEL_NAME = "int8_conv2d"


def fold_int8_convs(log: Int8Log) -> Any:
    """The Relax pass: every foldable chain in ``main`` becomes a call to an integer conv."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.FoldInt8Convs")
    def transform(module: Any, _context: Any) -> Any:
        from edgecompile.schedules.analysis import has_main

        if not has_main(module):
            return module
        plans = find_quantized_convs(module, log)
        if not plans:
            return module
        return _rewrite(module, plans)

    return transform


def _rewrite(module: Any, plans: dict[Any, QuantizedConv]) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def visit_var_binding_(self, binding: Any) -> None:
            plan = plans.get(binding.var)
            if plan is None:
                super().visit_var_binding_(binding)
                return
            call = self.builder_.call_te(
                lambda d, w, b, m: integer_conv2d(d, w, b, m, plan),
                self.visit_expr(plan.data),
                relax.const(plan.weight, "int8"),
                relax.const(plan.bias, "int32"),
                relax.const(plan.multiplier, "float32"),
                primfunc_name_hint=KERNEL_NAME,
            )
            new_var = self.builder_.emit(call)
            self.set_var_remap(binding.var, new_var)

    folder = Folder(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    # The fp32 chains left dead are removed by the pipeline's DeadCodeElimination after the
    # layout pass: until then they keep every heavy op's index the same for the layout pass.
    return folder.builder_.get()
