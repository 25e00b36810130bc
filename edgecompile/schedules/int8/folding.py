"""The Relax pass that replaces each foldable chain (:mod:`.graph`) with a call to its integer
conv (:mod:`.compute`); everything else stays as imported, fp32 between dequantize/quantize."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecompile.schedules.int8.add import ADD_KERNEL_NAME, integer_add
from edgecompile.schedules.int8.compute import (
    AVX2_IN_BLOCK,
    IN_BLOCK,
    Layouts,
    blocked_integer_conv2d,
    blocked_integer_depthwise,
    integer_conv2d,
    pack_depthwise_weight,
    pack_weight,
    unpack_blocked,
    whole_blocks,
)
from edgecompile.schedules.int8.graph import Int8Log, QuantizedConv, find_quantized_convs
from edgecompile.schedules.int8.layouts import GlueOp, blocked_kind, blocked_outputs, glue_ops
from edgecompile.schedules.int8.neon import (
    neon_blocked_kind,
    neon_instruction,
    neon_kernel,
    pack_neon_depthwise_weight,
)

#: The PrimFunc name hint of a folded conv (``conv2d`` in it: profiles name the layer by it).
KERNEL_NAME = "int8_conv2d"


def fold_int8_convs(log: Int8Log, target: Any = None) -> Any:
    """The Relax pass: every foldable chain in ``main`` becomes a call to an integer conv,
    channel-blocked (:func:`.compute.blocked_integer_conv2d`, :func:`.compute.
    blocked_integer_depthwise`) where ``target`` has kernels for that layout
    (:func:`.schedule.has_blocked_kernel`: AVX-512 VNNI, or AVX2, whose conv takes its input
    channels in pairs), else NCHW; consecutive blocked kernels hand each other the blocked
    layout (:mod:`.layouts`)."""
    import tvm

    from edgecompile.schedules.int8.schedule import blocked_instruction

    instruction = blocked_instruction(target) if target is not None else None
    blocked = instruction is not None
    in_block = AVX2_IN_BLOCK if instruction == "avx2" else IN_BLOCK
    # ARM: the NEON blocked conv (sdot, else smull; vmull on 32-bit ARM), see .neon.
    neon = neon_instruction(target) if target is not None else None

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.FoldInt8Convs")
    def transform(module: Any, _context: Any) -> Any:
        from edgecompile.schedules.analysis import has_main

        if not has_main(module):
            return module
        plans = find_quantized_convs(module, log)
        if not plans:
            return module
        return _rewrite(module, plans, log, blocked, neon, in_block)

    return transform


def _rewrite(
    module: Any,
    plans: dict[Any, QuantizedConv],
    log: Int8Log,
    blocked: bool,
    neon: str | None = None,
    in_block: int = IN_BLOCK,
) -> Any:
    """``neon``: the NEON blocked conv's instruction (:func:`.neon.neon_instruction`), if the
    target is ARM; ``in_block``: the x86 blocked conv's input channels per dot product (4 on
    VNNI, 2 on AVX2: :func:`.compute.pack_weight`)."""
    from tvm import relax

    from edgecompile.schedules.analysis import (
        bindings_of,
        dtype_of,
        heavy_op_indices,
        static_shape,
    )
    from edgecompile.schedules.compute import pool_nchwc

    kinds = {var: blocked_kind(plan, dtype_of(plan.data), blocked) for var, plan in plans.items()}
    if neon:  # ARM: the blocked depthwise conv; a channel sum is NEON's own conv (below)
        kinds = {var: neon_blocked_kind(plan, dtype_of(plan.data)) for var, plan in plans.items()}
    # Glue on the blocked layout: x86 (VNNI or AVX2) only, where the pool rule's vector is 16
    # bytes (one xmm register of uint8 lanes on either).
    glue = glue_ops(module["main"], module) if blocked and not neon else {}
    written_blocked = blocked_outputs(module["main"], plans, kinds, glue)
    log.blocked_outputs = {plans[var].op_index for var in written_blocked if var in plans}
    pool_index = heavy_op_indices(module, frozenset({"relax.nn.max_pool2d"}))

    def kernel(var: Any, plan: QuantizedConv) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """The compute (data, weight, bias, multiplier) → output, and its three constants."""
        kind = kinds[var]
        if kind is None and neon and plan.groups == 1 and dtype_of(plan.data) == "uint8":
            compute, weight, bias = neon_kernel(neon, plan)
            return compute, weight, bias, plan.multiplier
        if kind is None:
            return (
                (lambda *args: integer_conv2d(*args, plan)),
                plan.weight,
                plan.bias,
                plan.multiplier,
            )
        layouts = Layouts(
            blocked_input=plan.data in written_blocked, blocked_output=var in written_blocked
        )
        if kind == "conv":
            compute, (weight, bias) = blocked_integer_conv2d, pack_weight(plan, in_block)
        else:
            pack = pack_neon_depthwise_weight if neon else pack_depthwise_weight
            compute, (weight, bias) = blocked_integer_depthwise, pack(plan)
        multiplier = plan.multiplier
        if layouts.blocked_output:
            bias, multiplier = whole_blocks(bias), whole_blocks(multiplier)
        return (lambda *args: compute(*args, plan, layouts)), weight, bias, multiplier

    # A blocked output's var, by the original ``quantize`` var it replaces for its (folded,
    # blocked) readers; the original stays for the dead fp32 chains reading it until DCE.
    blocked_vars: dict[Any, Any] = {}

    values = bindings_of(module["main"])

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def visit_var_binding_(self, binding: Any) -> None:
            if binding.var in glue and binding.var in written_blocked:
                self._blocked_glue(binding, glue[binding.var])
                return
            plan = plans.get(binding.var)
            if plan is None:
                super().visit_var_binding_(binding)
                return
            compute, weight, bias, multiplier = kernel(binding.var, plan)
            if plan.data in written_blocked:
                data = blocked_vars[plan.data]
            else:
                data = self.visit_expr(plan.data)
            if plan.matmul:  # [N, K] → [N, K, 1, 1]: a 1×1 conv
                batch, features = static_shape(plan.data)
                data = self.builder_.emit(relax.op.reshape(data, (batch, features, 1, 1)))
            call = self.builder_.call_te(
                compute,
                data,
                # int8; AVX2's conv and NEON's depthwise int16, x86's depthwise int32
                relax.const(weight, str(weight.dtype)),
                relax.const(bias, "int32"),
                relax.const(multiplier, "float32"),
                primfunc_name_hint=KERNEL_NAME,
            )
            new_var = self.builder_.emit(call)
            if binding.var in written_blocked:
                blocked_vars[binding.var] = new_var
                # The fp32 chains still reading it (dead) read it unpacked, as they read an
                # NCHW output: reviving the original quantize would hand the layout pass a
                # dead fp32 chain joined up again, and it lays out the live glue around it.
                channels = plan.weight.shape[0]
                new_var = self.builder_.emit(
                    self.builder_.call_te(
                        lambda d: unpack_blocked(d, channels),
                        new_var,
                        primfunc_name_hint="int8_unpack",
                    )
                )
            if plan.matmul:
                shape = (batch, plan.weight.shape[0])
                new_var = self.builder_.emit(relax.op.reshape(new_var, shape))
            self.set_var_remap(binding.var, new_var)

        def _blocked_glue(self, binding: Any, op: GlueOp) -> None:
            """The glue op on the blocked inputs (:mod:`.layouts`), its NCHW self left for the
            dead fp32 chains (a max pool's binding stays in place: the heavy ops keep their
            indices for the layout pass, as a folded conv's fp32 conv does)."""
            sources = [blocked_vars[source] for source in op.inputs]
            value = binding.value
            if op.kind == "concat":
                result = relax.op.concat(sources, axis=1)
            elif op.kind == "add":  # elementwise: the same integers on the blocked layout
                result = self.builder_.call_te(
                    lambda a, b: integer_add(a, b, op.add),
                    *sources,
                    primfunc_name_hint=ADD_KERNEL_NAME,
                )
            elif op.kind == "max_pool":
                attrs = value.attrs
                result = self.builder_.call_te(
                    pool_nchwc,
                    sources[0],
                    "max",
                    [int(k) for k in attrs.pool_size],
                    [int(k) for k in attrs.strides],
                    [int(p) for p in attrs.padding],
                    False,
                    pool_index[binding.var],
                    bool(attrs.ceil_mode),
                    primfunc_name_hint="int8_max_pool2d",
                )
            else:  # quantize(dequantize(x)): both elementwise, on the blocked x
                source = values[value.args[0]]
                real = self.builder_.emit(
                    relax.op.dequantize(sources[0], *source.args[1:3], axis=-1)
                )
                result = relax.op.quantize(
                    real, *value.args[1:3], axis=-1, out_dtype=str(value.attrs.out_dtype)
                )
            new_var = self.builder_.emit(result)
            blocked_vars[binding.var] = new_var
            if op.kind == "max_pool":
                super().visit_var_binding_(binding)
            else:
                channels = static_shape(binding.var)[1]
                unpacked_var = self.builder_.emit(
                    self.builder_.call_te(
                        lambda data: unpack_blocked(data, channels),
                        new_var,
                        primfunc_name_hint="int8_unpack",
                    )
                )
                self.set_var_remap(binding.var, unpacked_var)

    folder = Folder(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    # The fp32 chains left dead are removed by the pipeline's DeadCodeElimination after the
    # layout pass: until then they keep every heavy op's index the same for the layout pass.
    return folder.builder_.get()
