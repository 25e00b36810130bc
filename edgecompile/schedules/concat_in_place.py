"""Channel concats that cost nothing: each input is written straight into its slab of the output.

In the blocked layout a concat along the channel-block axis of a batch-1 tensor
(``[1, C/c, H, W, c]``) is its inputs laid end to end in memory. So instead of running a copy
kernel, the producers of the inputs are given views into the concat's buffer: the output gets a
storage of its own, each input becomes a tensor at its byte offset in that storage, and the
concat call is dropped (SqueezeNet's fire modules, the dense blocks of CondenseNet, ESPNet's
branches). A concat whose input is itself a placed concat nests (its storage is the outer one).

Runs after ``CallTIRRewrite`` (outputs are explicit ``R.builtin.alloc_tensor`` s) and before
``StaticPlanBlockMemory``, which plans every other tensor as before; the placed ones live in their
storage until the storage's last tensor dies. A concat is left alone unless every input is a
fresh kernel output that no other placed concat claims, and every offset keeps TVM's 64-byte
allocation alignment (the kernels may assume it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import ir, relax, tirx

from edgecompile.schedules.analysis import dtype_of, root_children, static_shape

#: The block TOPI's concatenate (LegalizeOps) writes; a concat fused with anything has others.
CONCAT_BLOCK = "T_concat"
#: TVM's runtime allocation alignment (``kAllocAlignment``): kernels may assume their buffers
#: start on it, so a view starts on it too.
ALIGNMENT = 64
_ALLOC_TENSOR = "relax.builtin.alloc_tensor"


def is_plain_concat(func: Any) -> bool:
    """Whether a PrimFunc is TOPI's concat alone: one ``T_concat`` block under its root (a
    concat fused with anything, or our finished lane-permuting concat, has other blocks)."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    found = root_children(func)
    if found is None:
        return False
    sch, blocks = found
    return len(blocks) == 1 and sch.get(blocks[0]).name_hint == CONCAT_BLOCK


def is_channel_slab_concat(inputs: list[Any], output: Any) -> bool:
    """Whether concatenating ``inputs`` into ``output`` lays them end to end in memory: batch 1,
    equal beyond axis 1, axis 1 summing up (the only axis a plain concat's shapes allow)."""
    shapes = [static_shape(v) for v in (*inputs, output)]
    if any(s is None or len(s) < 2 or s[0] != 1 for s in shapes):
        return False
    *parts, whole = shapes
    same_rest = all(len(s) == len(whole) and s[2:] == whole[2:] for s in parts)
    return same_rest and sum(s[1] for s in parts) == whole[1]


def _nbytes(var: Any) -> int:
    return int(np.prod(static_shape(var))) * np.dtype(dtype_of(var)).itemsize


def place_concats(module: Any) -> Any:
    """``module`` with every eligible concat in ``main`` replaced by views (see the module doc)."""
    main = module["main"]
    if not isinstance(main, relax.Function) or not isinstance(main.body, relax.SeqExpr):
        return module
    concat_kernels = {
        gv
        for gv, func in module.functions.items()
        if not isinstance(func, relax.Function)
        and gv.name_hint.startswith("concatenate")
        and is_plain_concat(func)
    }
    if not concat_kernels:
        return module
    bindings = [b for block in main.body.blocks for b in block.bindings]
    alias: dict[Any, Any] = {}
    allocs: dict[Any, Any] = {}
    for binding in bindings:
        value = binding.value
        if isinstance(value, relax.Var):
            alias[binding.var] = alias.get(value, value)
        elif (
            isinstance(value, relax.Call)
            and isinstance(value.op, ir.Op)
            and value.op.name == _ALLOC_TENSOR
        ):
            allocs[binding.var] = binding

    def resolve(var: Any) -> Any:
        return alias.get(var, var)

    def is_kernel_call(value: Any) -> bool:  # a PrimFunc called with its output last
        return (
            isinstance(value, relax.Call)
            and isinstance(value.op, ir.GlobalVar)
            and isinstance(module[value.op], tirx.PrimFunc)
            and len(value.args) > 0
        )

    # How often each alloc is a kernel's output (its last argument): exactly once for a fresh
    # one; any other call taking it last (not a PrimFunc's output) makes it ineligible.
    written: dict[Any, int] = {}
    for binding in bindings:
        value = binding.value
        if isinstance(value, relax.Call) and value.args:
            last = resolve(value.args[-1])
            written[last] = written.get(last, 0) + (1 if is_kernel_call(value) else 2)
    returned = {resolve(v) for v in getattr(main.body.body, "fields", [main.body.body])}

    placement: dict[Any, tuple[Any, int]] = {}  # alloc → (the alloc it lives in, byte offset)
    dropped: set[Any] = set()
    for binding in bindings:
        value = binding.value
        if not (isinstance(value, relax.Call) and value.op in concat_kernels):
            continue
        *inputs, output = (resolve(arg) for arg in value.args)
        if output not in allocs or output in placement or written.get(output) != 1:
            continue
        offsets, offset = [], 0
        for item in inputs:
            offsets.append(offset)
            offset += _nbytes(item) if item in allocs else 0
        eligible = (
            is_channel_slab_concat(inputs, output)
            and len(set(inputs)) == len(inputs)
            and all(
                item in allocs
                and item not in placement
                and written.get(item) == 1
                and item not in returned
                and item is not output
                for item in inputs
            )
            and all(o % ALIGNMENT == 0 for o in offsets)
            and offset == _nbytes(output)
        )
        if not eligible:
            continue
        for item, item_offset in zip(inputs, offsets, strict=True):
            placement[item] = (output, item_offset)
        dropped.add(binding.var)
    if not dropped:
        return module

    producers = {
        value.op
        for value in (b.value for b in bindings)
        if is_kernel_call(value) and resolve(value.args[-1]) in placement
    }

    def root_of(var: Any) -> tuple[Any, int]:
        offset = 0
        while var in placement:
            var, step = placement[var]
            offset += step
        return var, offset

    members = set(placement) | {root_of(v)[0] for v in placement}
    storages: dict[Any, Any] = {}
    new_bindings = []
    for binding in bindings:
        if binding.var in dropped:
            continue
        if binding.var not in members:
            new_bindings.append(binding)
            continue
        root, offset = root_of(binding.var)
        if root not in storages:
            storage = relax.Var(f"{root.name}_storage", relax.ObjectType())
            size = relax.ShapeExpr([_nbytes(root)])
            call = relax.op.memory.alloc_storage(size, 0, "global", "uint8")
            new_bindings.append(relax.VarBinding(storage, call))
            storages[root] = storage
        var = binding.var
        shape = relax.ShapeExpr(list(static_shape(var)))
        view = relax.op.memory.alloc_tensor(storages[root], offset, shape, dtype_of(var))
        new_bindings.append(relax.VarBinding(binding.var, view))
    body = relax.SeqExpr([relax.BindingBlock(new_bindings)], main.body.body)
    updated = relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    module = module.clone()
    module.update_func(module.get_global_var("main"), updated)
    for gv in producers:
        module.update_func(gv, output_at_any_offset(module[gv]))
    return module


def output_at_any_offset(func: Any) -> Any:
    """``func`` with its output buffer (the last parameter) at a symbolic element offset, so it
    accepts a view into a larger storage: TVM's calling convention otherwise demands a tensor's
    ``byte_offset`` be 0. The offset stays a multiple of the allocation alignment."""
    import tvm_ffi

    output = func.params[-1]
    itemsize = np.dtype(str(output.dtype)).itemsize
    viewable = tirx.decl_buffer(
        output.shape,
        output.dtype,
        name=output.name,
        elem_offset=tirx.Var(f"{output.name}_elem_offset", "int64"),
        offset_factor=ALIGNMENT // itemsize,
    )
    return tvm_ffi.structural_map(
        func, (ir.Var, lambda var: viewable if var.same_as(output) else var), order="post"
    )


def concat_in_place() -> Any:
    """The pass (a module pass, between ``CallTIRRewrite`` and ``StaticPlanBlockMemory``)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.ConcatInPlace")
    def transform(module: Any, _context: Any) -> Any:
        return place_concats(module)

    return transform
