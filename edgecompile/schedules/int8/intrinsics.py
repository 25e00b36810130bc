"""The tensor intrinsic the blocked integer conv is tensorized with: 16 int32 accumulators +=
16 × 4 int8 weights · 4 broadcast uint8 inputs, one AVX-512 VNNI ``vpdpbusd``.

TVM ships this as ``dot_16x4_vnni`` (``tvm.s_tir.tensor_intrin.x86``), but passes the
operands as ``<16 x i32>``, an older LLVM's signature; the LLVM this TVM is built with takes
``<64 x i8>`` and refuses the call. Ours also keeps the accumulators in a ``local`` buffer, so
a register tile of them stays in registers across the reduction.
"""

from __future__ import annotations

#: The name ours is registered under (once per process, on first use).
VNNI_DOT_16x4_LOCAL = "edgecompile_dot_16x4_vnni_local"


def vnni_intrinsic() -> str:
    """Register the intrinsic (first call) and return its name, for ``sch.tensorize``."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(VNNI_DOT_16x4_LOCAL)
        return VNNI_DOT_16x4_LOCAL
    except Exception:  # not registered yet: TVM raises its own error type
        pass

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            four_inputs = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            broadcast = T.reinterpret(T.broadcast(four_inputs, 16), dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                broadcast,
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register(VNNI_DOT_16x4_LOCAL, description, implementation)
    return VNNI_DOT_16x4_LOCAL
