"""The TIR lowering our kernels are built with: TVM's own, plus tile buffers kept on the stack
and the partition hints of row tails kept alive (:func:`keep_partition_hints`); on 32-bit ARM
before ARMv8, ``round`` as float arithmetic, not a libm call per element
(:func:`.rounding.round_without_libm`).

Trap (TVM 0.27, ``LowerTVMBuiltin``): a CPU buffer of 1 KiB or more -- and a ``local`` one of
any size -- is not a stack array but a ``TVMBackendAllocWorkspace`` / ``FreeWorkspace`` call
pair, run once per iteration of the loop that holds it, with a ``memset`` for the accumulator's
init. Our register tiles are such buffers: 24 AVX-512 accumulators are 1.5 KiB, and the dense
conv's padded input window is up to 5 KiB. MobileNet-class models run the tile loop thousands of
times per layer (3136 tiles for a 112x112 map), and the calls cost more than the arithmetic
there: profiled on MNASNet's 16->96 pointwise at 112x112, 0.56 ms against 0.42 ms with the tile
on the stack (where LLVM keeps it in registers and the buffer disappears).

:func:`keep_tiles_on_stack` marks every allocation of a known size up to
:data:`MAX_STACK_TILE_BYTES` with TVM's own ``disable_lower_builtin`` annotation, which makes
``LowerTVMBuiltin`` leave it as an LLVM ``alloca``; :data:`TIR_PIPELINE` is TVM's default TIR
pipeline with that pass run just before ``LowerTVMBuiltin``.
"""

from __future__ import annotations

from typing import Any

#: Name under which :func:`register_tir_pipeline` registers the pipeline with TVM, for
#: ``tvm.compile(..., tir_pipeline=TIR_PIPELINE)`` and ``tvm.tirx.build(..., pipeline=...)``.
TIR_PIPELINE = "edgecompile"
#: Largest buffer put on the stack. Our tiles stay under 8 KiB; the cap keeps a generic
#: (e.g. MetaSchedule) kernel's big cache buffer off the thread stacks, which TVM's worker
#: threads share with everything else they run (8 MiB by default on Linux, less on some boards).
MAX_STACK_TILE_BYTES = 32 * 1024
# TVM's kDisableLowerTVMBuiltin (include/tvm/tirx/transform.h).
_DISABLE_LOWER_BUILTIN = "disable_lower_builtin"
#: TVM's loop annotation (``attr::pragma_loop_partition_hint``) that has ``LoopPartition``
#: split that one loop where a condition in it changes, even with ``partition_const_loop`` off;
#: the schedules put it on the tile loop of a row with a tail (``rules.split_row``), so the full
#: tiles run without the tail's bounds test and the tail once after them.
PARTITION_HINT = "pragma_loop_partition_hint"


def buffer_bytes(buffer: Any) -> int | None:
    """Bytes of a buffer whose shape is all constants; ``None`` for a symbolic shape."""
    from tvm import tirx

    count = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        count *= int(extent)
    dtype = buffer.dtype
    return count * dtype.bits * dtype.lanes // 8


def _stack_allocation(node: Any) -> Any:
    from tvm import tirx

    size = buffer_bytes(node.buffer)
    annotations = dict(node.annotations or {})
    if size is None or size > MAX_STACK_TILE_BYTES or _DISABLE_LOWER_BUILTIN in annotations:
        return node
    annotations[_DISABLE_LOWER_BUILTIN] = tirx.IntImm("bool", 1)
    return tirx.AllocBuffer(node.buffer, annotations, node.span)


def keep_tiles_on_stack() -> Any:
    """The pass: small constant-size allocations become stack arrays, not workspace calls."""
    import tvm_ffi
    from tvm import tirx

    @tirx.transform.prim_func_pass(opt_level=0, name="edgecompile.KeepTilesOnStack")
    def _pass(func: Any, _mod: Any, _ctx: Any) -> Any:
        body = tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, _stack_allocation)])
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass


def _has_partition_hint(func: Any) -> bool:
    """Whether a loop of ``func`` carries :data:`PARTITION_HINT`."""
    import tvm_ffi
    from tvm import tirx

    found = []

    def visit(node: Any) -> Any:
        if PARTITION_HINT in (node.annotations or {}):
            found.append(node)
        return node

    tvm_ffi.structural_map(func.body, [(tirx.For, visit)])
    return bool(found)


def keep_partition_hints() -> Any:
    """The pass: a kernel with a loop marked for peeling its tail gets int32 indices first.

    Trap (TVM 0.27): the hint becomes an attribute naming the loop's variable, and
    ``NarrowDataType`` (run just before ``LoopPartition``) gives an int64 loop a new int32
    variable without renaming the attribute's, so ``LoopPartition`` never sees the hint and
    the tail's bounds test stays in every tile. Narrowed before lowering, the variable is
    int32 from the start. Kernels with an int64 buffer (whose data narrowing would change)
    and kernels without the mark are left alone.
    """
    import tvm
    from tvm import tirx

    narrow = tirx.transform.ForceNarrowIndexToInt32()

    @tirx.transform.prim_func_pass(opt_level=0, name="edgecompile.KeepPartitionHints")
    def _pass(func: Any, mod: Any, ctx: Any) -> Any:
        if any(str(param.dtype) in ("int64", "uint64") for param in func.params):
            return func
        if not _has_partition_hint(func):
            return func
        narrowed = narrow(tvm.IRModule({"main": func}))
        return next(iter(narrowed.functions.values()))

    return _pass


def _pipeline() -> tuple[Any, Any, Any]:
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline

    from edgecompile.schedules.rounding import round_without_libm

    default_lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()
    lower = tvm.transform.Sequential([keep_partition_hints(), default_lower])

    def host_passes() -> Any:
        return tvm.transform.Sequential(
            [round_without_libm(), keep_tiles_on_stack(), finalize_host()]
        )

    return lower, host_passes, finalize_device


def register_tir_pipeline() -> str:
    """Register :data:`TIR_PIPELINE` with TVM (idempotent) and return its name.

    Every process that builds a kernel must call it: the compile, and MetaSchedule's builder
    workers, so that a tuning candidate is measured as the build will compile it.
    """
    from tvm.tirx import compilation_pipeline

    compilation_pipeline.PIPELINE_MAP[TIR_PIPELINE] = _pipeline
    return TIR_PIPELINE
