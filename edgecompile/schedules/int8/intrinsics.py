"""The tensor intrinsic the blocked integer conv is tensorized with: 16 int32 accumulators +=
16 × 4 int8 weights · 4 broadcast uint8 inputs, one AVX-512 VNNI ``vpdpbusd``.

TVM ships this as ``dot_16x4_vnni`` (``tvm.s_tir.tensor_intrin.x86``), but passes the
operands as ``<16 x i32>``, an older LLVM's signature; the LLVM this TVM is built with takes
``<64 x i8>`` and refuses the call. Ours also keeps the accumulators in a ``local`` buffer, so
a register tile of them stays in registers across the reduction.

NEON's ``sdot`` is the same dot product with 4 lanes (:mod:`.neon_intrinsics`): both are made by
:func:`dot_product_intrinsic` and registered once by :func:`registered_intrinsic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The name ours is registered under (once per process, on first use).
VNNI_DOT_16x4_LOCAL = "edgecompile_dot_16x4_vnni_local"


def registered_intrinsic(name: str, make: Callable[[], tuple[Any, Any]]) -> str:
    """``name``, registered with the ``(description, implementation)`` that ``make`` returns the
    first time it is asked for (TVM refuses a second registration under one name), for
    ``sch.tensorize``."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name)
        return name
    except Exception:  # not registered yet: TVM raises its own error type
        pass
    TensorIntrin.register(name, *make())
    return name


def dot_product_intrinsic(lanes: int, input_dtype: str, llvm_intrinsic: str) -> tuple[Any, Any]:
    """The ``(description, implementation)`` of a dot-product instruction: each of ``lanes``
    int32 accumulators (``local``) += its output channel's 4 int8 weights · the same 4 inputs
    (``input_dtype``), widened to int32, as one call of ``llvm_intrinsic`` on the accumulator
    vector, the 4 inputs broadcast to every lane, and the ``lanes × 4`` weights (VNNI's
    ``vpdpbusd``: 16 lanes, uint8 inputs; ``sdot``: 4 lanes, int8 inputs)."""
    from tvm.script import tirx as T

    # TVMScript reads these, and the arguments, from the closure as it parses.
    four_inputs_dtype = f"{input_dtype}x4"
    weights_dtype = f"int8x{lanes * 4}"
    accumulators_dtype = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((4,), input_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer((4,), input_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # The 4 inputs as one 32-bit lane, broadcast (on ARM, LLVM loads it with one ld1r);
            # as bytes, whatever their sign: the instruction's LLVM signature takes i8 vectors.
            four_inputs = T.reinterpret(A.vload([0], four_inputs_dtype), dtype="int32")
            broadcast = T.reinterpret(T.broadcast(four_inputs, lanes), dtype=weights_dtype)
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                C.vload([0], dtype=accumulators_dtype),
                broadcast,
                B.vload([0, 0], dtype=weights_dtype),
                dtype=accumulators_dtype,
            )

    return description, implementation


def vnni_intrinsic() -> str:
    """Register the intrinsic (first call) and return its name, for ``sch.tensorize``."""
    return registered_intrinsic(
        VNNI_DOT_16x4_LOCAL,
        lambda: dot_product_intrinsic(16, "uint8", "llvm.x86.avx512.vpdpbusd.512"),
    )
