"""The tensor intrinsics the NEON blocked integer conv (:mod:`.neon`) is tensorized with: one
step of 4 output channels × 4 int8 weights · 4 broadcast int8 inputs, into int32 accumulators.

- ``sdot`` (the dot-product extension, ``+dotprod``: Cortex-A55/A76, the rpi5): one instruction,
  one accumulator lane per output channel; where 4 adjacent pixels' inputs are 16 adjacent
  bytes (stride 1), one load for the 4 and the indexed form per pixel
  (:func:`sdot_indexed_intrinsic`).
- Without it (Cortex-A53/A72/A57: rpi3, rpi4): ``smull`` (8 int8 × int8 → int16, exact:
  |−128 · −128| fits) and ``sadalp`` (adjacent int16 pairs added into int32 lanes, exact), two
  accumulators per output channel (input lanes 0-1 and 2-3), summed once at requantization:
  4 instructions per step where TVM's ``neon_4x4_i8i8i32`` reduces each step with 6.

TVM ships ``dot_4x4_i8i8s32_sdot`` (``tvm.s_tir.tensor_intrin.arm_cpu``) with a global
accumulator buffer; ours keep it ``local``, so a register tile of accumulators stays in
registers across the reduction (as :mod:`.intrinsics` does for VNNI). 32-bit ARM (armv7,
rpi3-armv7, rpi4-armv7) widens the same way under its own names, ``vmull.s8``/``vpadal.s16``.
"""

from __future__ import annotations

from edgecompile.schedules.int8.intrinsics import dot_product_intrinsic, registered_intrinsic

#: The names ours are registered under (once per process, on first use).
SDOT_4x4_LOCAL = "edgecompile_dot_4x4_i8i8s32_sdot_local"
SDOT_INDEXED_4x4x4_LOCAL = "edgecompile_dot_4x4x4_i8i8s32_sdot_indexed_local"
#: Pixels one indexed ``sdot`` step reads with one 16-byte load (4 channels each).
SDOT_PIXELS = 4
SMULL_4x4_LOCAL = "edgecompile_dot_4x4_i8i8s32_smull_local"
VMULL_4x4_LOCAL = "edgecompile_dot_4x4_i8i8s32_vmull_local"
#: The widening multiply and the pairwise widening add (ARM's accumulating), LLVM's names.
_WIDENING = {
    "smull": ("llvm.aarch64.neon.smull.v8i16", "llvm.aarch64.neon.saddlp.v4i32.v8i16"),
    "vmull": ("llvm.arm.neon.vmulls.v8i16", "llvm.arm.neon.vpadals.v4i32.v8i16"),
}


def neon_intrinsic(instruction: str) -> str:
    """Register the intrinsic for ``instruction`` ("sdot", "smull", or "vmull": 32-bit ARM's
    smull) on first use and return its name, for ``sch.tensorize``."""
    name = {"sdot": SDOT_4x4_LOCAL, "smull": SMULL_4x4_LOCAL, "vmull": VMULL_4x4_LOCAL}[instruction]
    return registered_intrinsic(
        name, _sdot if instruction == "sdot" else lambda: _widening(instruction)
    )


def sdot_indexed_intrinsic() -> str:
    """Register (first call) and return the 4-pixel ``sdot`` step: 4 pixels × 4 output channels
    of int32 accumulators += the 4 channels' weights · each pixel's 4 inputs, the 4 pixels'
    16 input bytes one load, each pixel's 4 picked by the indexed form
    ``sdot v.4s, v.16b, v.4b[i]`` (where the plain step loads and broadcasts each pixel)."""
    return registered_intrinsic(SDOT_INDEXED_4x4x4_LOCAL, _sdot_indexed)


def _sdot_indexed() -> tuple[object, object]:
    from tvm import tirx
    from tvm.script import tirx as T

    def pixel(accumulators: object, inputs: object, weights: object, index: int) -> object:
        """One pixel's sdot: its 4 input bytes (lane ``index`` of the int32 view) broadcast, a
        shuffle LLVM folds into the indexed form, which indexes the last operand only (as the
        second, each pixel cost a ``dup``)."""
        lane = tirx.Shuffle([inputs], [tirx.const(index, "int32")] * 4)
        return tirx.call_llvm_pure_intrin(
            "int32x4",
            "llvm.aarch64.neon.sdot.v4i32.v16i8",
            accumulators,
            weights,
            tirx.reinterpret("int8x16", lane),
        )

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((4, 4), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4, 4), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
            T.writes(C[0:4, 0:4])
            for p, i, k in T.grid(4, 4, 4):
                with T.sblock("update"):
                    vp, vi, vk = T.axis.remap("SSR", [p, i, k])
                    C[vp, vi] = C[vp, vi] + T.cast(A[vp, vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer((4, 4), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4, 4), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
            T.writes(C[0:4, 0:4])
            inputs = T.reinterpret(A.vload([0, 0], "int8x16"), dtype="int32x4")
            weights = B.vload([0, 0], "int8x16")
            C[0, T.ramp(T.int32(0), 1, 4)] = pixel(
                C.vload([0, 0], dtype="int32x4"), inputs, weights, 0
            )
            C[1, T.ramp(T.int32(0), 1, 4)] = pixel(
                C.vload([1, 0], dtype="int32x4"), inputs, weights, 1
            )
            C[2, T.ramp(T.int32(0), 1, 4)] = pixel(
                C.vload([2, 0], dtype="int32x4"), inputs, weights, 2
            )
            C[3, T.ramp(T.int32(0), 1, 4)] = pixel(
                C.vload([3, 0], dtype="int32x4"), inputs, weights, 3
            )

    return description, implementation


def _sdot() -> tuple[object, object]:
    """One ``sdot``: each int32 lane += its output channel's 4 weights · the 4 inputs."""
    return dot_product_intrinsic(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8")


def _widening(instruction: str) -> tuple[object, object]:
    """4 output channels × 2 accumulators each (input lanes 0-1, 2-3): ``smull`` of the 4
    inputs (broadcast twice) by channels 0-1's 8 weights, one by channels 2-3's, each
    ``sadalp``-ed (adjacent int16 pairs added into the int32 lanes) into its 4 accumulators."""
    from tvm import tirx
    from tvm.script import tirx as T

    multiply, pairwise = _WIDENING[instruction]

    def step(accumulators: object, inputs: object, weights: object) -> object:
        """accumulators + the pairwise sums of inputs × weights, as int16 products."""
        products = tirx.call_llvm_pure_intrin("int16x8", multiply, inputs, weights)
        if instruction == "vmull":  # LLVM leaves ARM's add of vpaddl as two instructions
            return tirx.call_llvm_pure_intrin("int32x4", pairwise, accumulators, products)
        # AArch64 has no sadalp intrinsic: LLVM makes one of this add.
        return accumulators + tirx.call_llvm_pure_intrin("int32x4", pairwise, products)

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((2, 2), "int8", offset_factor=1),
        B: T.Buffer((4, 2, 2), "int8", offset_factor=1),
        C: T.Buffer((4, 2), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4, 0:2], A[0:2, 0:2], B[0:4, 0:2, 0:2])
            T.writes(C[0:4, 0:2])
            for i, p, k in T.grid(4, 2, 2):
                with T.sblock("update"):
                    vi, vp, vk = T.axis.remap("SSR", [i, p, k])
                    C[vi, vp] = C[vi, vp] + T.cast(A[vp, vk], "int32") * T.cast(
                        B[vi, vp, vk], "int32"
                    )

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer((2, 2), "int8", offset_factor=1),
        B: T.Buffer((4, 2, 2), "int8", offset_factor=1),
        C: T.Buffer((4, 2), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4, 0:2], A[0:2, 0:2], B[0:4, 0:2, 0:2])
            T.writes(C[0:4, 0:2])
            four_inputs = T.reinterpret(A.vload([0, 0], "int8x4"), dtype="int32")
            inputs = T.reinterpret(T.broadcast(four_inputs, 2), dtype="int8x8")
            # Channels 0-1, then 2-3, each weight half loaded as its own 8 bytes (no ext to
            # move a high half down).
            C[0, T.ramp(T.int32(0), 1, 4)] = step(
                C.vload([0, 0], dtype="int32x4"), inputs, B.vload([0, 0, 0], dtype="int8x8")
            )
            C[2, T.ramp(T.int32(0), 1, 4)] = step(
                C.vload([2, 0], dtype="int32x4"), inputs, B.vload([2, 0, 0], dtype="int8x8")
            )

    return description, implementation
