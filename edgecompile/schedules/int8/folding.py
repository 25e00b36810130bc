"""The Relax pass that replaces each foldable chain (:mod:`.graph`) with a call to its integer
conv (:mod:`.compute`); everything else stays as imported, fp32 between dequantize/quantize."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecompile.schedules.int8.compute import blocked_integer_conv2d, integer_conv2d, pack_weight
from edgecompile.schedules.int8.graph import Int8Log, QuantizedConv, find_quantized_convs

#: The PrimFunc name hint of a folded conv (``conv2d`` in it: profiles name the layer by it).
KERNEL_NAME = "int8_conv2d"


def fold_int8_convs(log: Int8Log, target: Any = None) -> Any:
    """The Relax pass: every foldable chain in ``main`` becomes a call to an integer conv,
    channel-blocked (:func:`.compute.blocked_integer_conv2d`) where ``target`` has a kernel for
    that layout (:func:`.schedule.has_blocked_kernel`), else NCHW."""
    import tvm

    from edgecompile.schedules.int8.schedule import has_blocked_kernel

    blocked = target is not None and has_blocked_kernel(target)

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.FoldInt8Convs")
    def transform(module: Any, _context: Any) -> Any:
        from edgecompile.schedules.analysis import has_main

        if not has_main(module):
            return module
        plans = find_quantized_convs(module, log)
        if not plans:
            return module
        return _rewrite(module, plans, blocked)

    return transform


def _rewrite(module: Any, plans: dict[Any, QuantizedConv], blocked: bool) -> Any:
    from tvm import relax

    from edgecompile.schedules.analysis import dtype_of, static_shape

    def call_args(plan: QuantizedConv) -> tuple[Any, np.ndarray, np.ndarray]:
        # The blocked kernel multiplies u8 × s8 as the hardware does: an int8 input, or a
        # depthwise/grouped conv (no channel sum to block), keeps the NCHW kernel.
        if blocked and plan.groups == 1 and dtype_of(plan.data) == "uint8":
            return blocked_integer_conv2d, *pack_weight(plan)
        return integer_conv2d, plan.weight, plan.bias

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def visit_var_binding_(self, binding: Any) -> None:
            plan = plans.get(binding.var)
            if plan is None:
                super().visit_var_binding_(binding)
                return
            compute, weight, bias = call_args(plan)
            data = self.visit_expr(plan.data)
            if plan.matmul:  # [N, K] → [N, K, 1, 1]: a 1×1 conv
                batch, features = static_shape(plan.data)
                data = self.builder_.emit(relax.op.reshape(data, (batch, features, 1, 1)))
            call = self.builder_.call_te(
                lambda d, w, b, m: compute(d, w, b, m, plan),
                data,
                relax.const(weight, "int8"),
                relax.const(bias, "int32"),
                relax.const(plan.multiplier, "float32"),
                primfunc_name_hint=KERNEL_NAME,
            )
            new_var = self.builder_.emit(call)
            if plan.matmul:
                shape = (batch, plan.weight.shape[0])
                new_var = self.builder_.emit(relax.op.reshape(new_var, shape))
            self.set_var_remap(binding.var, new_var)

    folder = Folder(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    # The fp32 chains left dead are removed by the pipeline's DeadCodeElimination after the
    # layout pass: until then they keep every heavy op's index the same for the layout pass.
    return folder.builder_.get()
