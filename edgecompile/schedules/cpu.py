"""What the schedules need to know about a CPU target: vector lanes, vector registers, cores
and data caches.

Everything is read from the TVM target, so one schedule serves the host and every ARM preset:
the register tile is sized from these numbers, never from the machine the compiler runs on.
Caches come from the target's ``model`` (the SoC, as TVM's own tags name it: ``bcm2711``), else
its ``mcpu`` (the core's usual configuration), else, for this machine, from sysfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

FLOAT32_BITS = 32
KIB = 1024
SYSFS_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


class CacheLevel(NamedTuple):
    """One level of data (or unified) cache as one core sees it."""

    level: int
    size: int  # bytes
    shared_by: int  # cores sharing this one cache

    def __str__(self) -> str:
        shared = f" shared by {self.shared_by}" if self.shared_by > 1 else " per core"
        return f"L{self.level} {_kib(self.size)}{shared}"

    def short(self) -> str:
        """``L2 1M/4``: 1 MiB shared by 4 cores."""
        size = _kib(self.size).replace(" KiB", "K").replace(" MiB", "M")
        return f"L{self.level} {size}" + (f"/{self.shared_by}" if self.shared_by > 1 else "")


def _kib(size: int) -> str:
    return f"{size // (KIB * KIB)} MiB" if size % (KIB * KIB) == 0 else f"{size // KIB} KiB"


def _caches(
    l1_kib: int, l2_kib: int, l2_shared_by: int, l3_kib: int = 0, l3_shared_by: int = 4
) -> tuple[CacheLevel, ...]:
    levels = [CacheLevel(1, l1_kib * KIB, 1), CacheLevel(2, l2_kib * KIB, l2_shared_by)]
    if l3_kib:
        levels.append(CacheLevel(3, l3_kib * KIB, l3_shared_by))
    return tuple(levels)


# Data caches by SoC (the target's "model"), from the vendors' product briefs.
SOC_CACHES: MappingProxyType[str, tuple[CacheLevel, ...]] = MappingProxyType(
    {
        "bcm2837": _caches(32, 512, 4),  # Raspberry Pi 3: 4x Cortex-A53
        "bcm2711": _caches(32, 1024, 4),  # Raspberry Pi 4: 4x Cortex-A72
        "bcm2712": _caches(64, 512, 1, l3_kib=2048),  # Raspberry Pi 5: 4x Cortex-A76
        "tegra210": _caches(32, 2048, 4),  # Jetson Nano: 4x Cortex-A57
    }
)
# A core's usual configuration in a 4-core cluster, when the SoC is not named.
CORE_CACHES: MappingProxyType[str, tuple[CacheLevel, ...]] = MappingProxyType(
    {
        "cortex-a53": _caches(32, 512, 4),
        "cortex-a55": _caches(32, 256, 1, l3_kib=1024),
        "cortex-a57": _caches(32, 2048, 4),
        "cortex-a72": _caches(32, 1024, 4),
        "cortex-a73": _caches(64, 1024, 4),
        "cortex-a76": _caches(64, 512, 1, l3_kib=2048),
    }
)
# Small enough for any Cortex-A board: a wrong guess on the small side costs little (see
# :func:`edgecompile.schedules.rules.choose_loop_order`).
GENERIC_CACHES = _caches(32, 512, 4)


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
    caches: tuple[CacheLevel, ...] = GENERIC_CACHES

    @property
    def cache_per_core(self) -> int:
        """Bytes of cache one core can count on while every core runs: the largest of each
        level's size divided among the cores sharing it."""
        return max(
            (level.size // max(min(level.shared_by, self.cores), 1) for level in self.caches),
            default=0,
        )

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
    return CpuInfo(
        arch=arch,
        lanes=lanes,
        registers=_vector_registers(arch, lanes),
        cores=cores,
        caches=target_caches(target),
    )


def target_caches(target: Any) -> tuple[CacheLevel, ...]:
    """The target's data caches: by SoC, by core, this machine's own, or a small generic guess."""
    import tvm

    from edgecompile.targets import host_triple

    model = str(target.attrs.get("model", "")).lower()
    mcpu = str(target.attrs.get("mcpu", "")).lower()
    if model in SOC_CACHES:
        return SOC_CACHES[model]
    if mcpu in CORE_CACHES:
        return CORE_CACHES[mcpu]
    triple = str(target.attrs.get("mtriple", ""))
    is_host_cpu = mcpu in ("", str(tvm.target.codegen.llvm_get_system_cpu()))
    if is_host_cpu and (not triple or triple.split("-")[0] == host_triple().split("-")[0]):
        return host_caches() or GENERIC_CACHES
    return GENERIC_CACHES


def host_caches(root: Path = SYSFS_CACHES) -> tuple[CacheLevel, ...]:
    """This machine's data caches as Linux describes them in sysfs (empty if it does not)."""
    levels = []
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _parse_size((index / "size").read_text().strip())
            sharing = _count_cpus((index / "shared_cpu_list").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            levels.append(CacheLevel(level, size, sharing))
    return tuple(sorted(levels))


def _parse_size(text: str) -> int:
    units = {"K": KIB, "M": KIB * KIB, "G": KIB * KIB * KIB}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def _count_cpus(cpu_list: str) -> int:
    """``0-3,8`` → 5."""
    count = 0
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _vector_registers(arch: str, lanes: int) -> int:
    # AArch64 NEON: v0-v31. 32-bit ARM NEON: q0-q15. x86: AVX-512 adds zmm16-31 (and EVEX
    # encodings of xmm/ymm16-31); SSE/AVX2 have 16.
    if arch in ("aarch64", "arm64"):
        return 32
    if arch.startswith(("arm", "thumb")):
        return 16
    return 32 if lanes >= 16 else 16
