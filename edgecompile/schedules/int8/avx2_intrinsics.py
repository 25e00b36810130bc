"""The tensor intrinsic the blocked integer conv is tensorized with on AVX2 without VNNI: 16
int32 accumulators += 16 × 2 int16 weights · 2 broadcast inputs (uint8 values the kernel's
pack widened to int16), as two ``vpmaddwd`` (s16 × s16, adjacent pairs summed into s32
lanes) and two ``vpaddd``.

Exact: a pair sum is at most 2 · 255 · 128 in magnitude, far inside int32. AVX2's
``vpmaddubsw`` (u8 × s8 pairs) would skip the widening but saturates its int16 pair sums
(255 · 127 · 2 > 32767), and ONNX Runtime's symmetric weights use the whole int8 range.
The weights are int16 already (:func:`.compute.pack_weight`) and the input widened once
where the kernel packs it (:func:`.compute.blocked_integer_conv2d`), so a pair of inputs is
one ``vpbroadcastd`` from memory and each multiply can take its weights as a memory operand.
"""

from __future__ import annotations

from typing import Any

from edgecompile.schedules.int8.intrinsics import registered_intrinsic

#: The name ours is registered under (once per process, on first use).
AVX2_DOT_16x2_LOCAL = "edgecompile_dot_16x2_avx2_local"
#: Output channels of one ``vpmaddwd``: the int32 lanes of a 256-bit register.
_HALF = 8


def _avx2_dot_product() -> tuple[Any, Any]:
    """The ``(description, implementation)``: each of 16 int32 accumulators (``local``) += its
    output channel's 2 int16 weights · the same 2 int16 inputs, widened to int32."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((16, 2), "int16", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((16, 2), "int16", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            # The 2 inputs as one 32-bit lane, broadcast to all 8 pairs.
            pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
            inputs = T.reinterpret(T.broadcast(pair, _HALF), dtype="int16x16")
            for half in T.unroll(2):
                C[T.ramp(half * _HALF, 1, _HALF)] = C.vload(
                    [half * _HALF], dtype="int32x8"
                ) + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    inputs,
                    B.vload([half * _HALF, 0], dtype="int16x16"),
                    dtype="int32x8",
                )

    return description, implementation


def avx2_intrinsic() -> str:
    """Register the intrinsic (first call) and return its name, for ``sch.tensorize``."""
    return registered_intrinsic(AVX2_DOT_16x2_LOCAL, _avx2_dot_product)
