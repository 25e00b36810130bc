"""What the schedules need to know about a CPU target: vector lanes, vector registers, cores.

Everything is read from the TVM target, so one schedule serves the host and every ARM preset:
the register tile is sized from these numbers, never from the machine the compiler runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

FLOAT32_BITS = 32


@dataclass(frozen=True)
class CpuInfo:
    """The target's SIMD shape as the schedules use it.

    ``lanes`` float32 values fill one vector register and is also the channel block ``x`` of
    the NCHW[x]c layout; ``registers`` bounds the register tile (accumulators + operands must fit,
    or LLVM spills and the kernel runs ~2x slower); ``cores`` sizes the parallel split.
    """

    arch: str
    lanes: int
    registers: int
    cores: int

    @property
    def tile_registers(self) -> int:
        """Vector registers a register tile may fill.

        All of them on x86 (AVX-512 tiles of 31 compiled without spills). On ARM two fewer:
        LLVM's AArch64 scheduler loads the next input values in pairs (``ldp s, s``) for the
        lane-indexed FMAs and spilled accumulators at a full budget (seen in the assembly; not
        timed, there is no board here).
        """
        return self.registers if self.arch.startswith(("x86", "i686")) else self.registers - 2


def cpu_info(target: Any) -> CpuInfo:
    """Read :class:`CpuInfo` from an ``llvm`` TVM target (host or cross)."""
    import tvm

    from edgecompile.targets import host_triple

    triple = str(target.attrs.get("mtriple", "")) or host_triple()
    arch = triple.split("-")[0]
    width = int(tvm.target.codegen.llvm_get_vector_width(target))
    lanes = max(width // FLOAT32_BITS, 1)
    cores = int(target.attrs.get("num-cores", 0) or os.cpu_count() or 1)
    return CpuInfo(arch=arch, lanes=lanes, registers=_vector_registers(arch, lanes), cores=cores)


def _vector_registers(arch: str, lanes: int) -> int:
    # AArch64 NEON: v0-v31. 32-bit ARM NEON: q0-q15. x86: AVX-512 adds zmm16-31 (and EVEX
    # encodings of xmm/ymm16-31); SSE/AVX2 have 16.
    if arch in ("aarch64", "arm64"):
        return 32
    if arch.startswith(("arm", "thumb")):
        return 16
    return 32 if lanes >= 16 else 16
