"""What the schedules need to know about a CPU target: vector lanes, vector registers, cores
and data caches.

Everything is read from the TVM target, so one schedule serves the host and every ARM preset:
the register tile is sized from these numbers, never from the machine the compiler runs on.
Caches come from the target's ``model`` (the SoC, as TVM's own tags name it: ``bcm2711``), else
its ``mcpu`` (the core's usual configuration), else, for this machine, from sysfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

FLOAT32_BITS = 32
KIB = 1024
SYSFS_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
#: Fewest output columns a depthwise tile keeps beside its window's weights: a window that
#: leaves fewer is not held in registers at all (:attr:`CpuInfo.tailed_row_tile_limit`).
MIN_HELD_WINDOW_TILE = 2
#: The depthwise tile the rules aim for (``rules.DEPTHWISE_SPATIAL_TARGET``): a window's
#: weights never raise :attr:`CpuInfo.row_tile_limit` past it.
ROW_TILE_TARGET = 8


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

    def cache_bytes(self, level: int) -> int:
        """Bytes of the data cache at ``level`` one core sees (0 where the target's caches do
        not say)."""
        return next((cache.size for cache in self.caches if cache.level == level), 0)

    #: Kernel-window taps beyond the reduction step whose operands LLVM loads ahead: a K×K
    #: conv's 3×3 window loops have a constant trip count, so LLVM unrolls them and hoists the
    #: next tap's loads too (:meth:`across_window`).
    window_taps: int = 0

    @property
    def folds_broadcasts(self) -> bool:
        """Whether an FMA reads its broadcast input straight from memory: AVX-512's
        ``vfmadd231ps (mem){1to16}``. A tile's inputs then hold no register; on SSE, AVX2 and
        NEON each input value is loaded into one (NEON's lane-indexed ``fmla`` included)."""
        return self.arch.startswith(("x86", "i686")) and self.lanes >= 16

    @property
    def tile_registers(self) -> int:
        """Vector registers a register tile may fill.

        All of them with AVX-512, the budget this project's host schedules were timed with.
        One fewer on other x86 and two fewer on ARM, for the values LLVM keeps beside the
        tile (an input pair loaded by one ``ldp``, a ReLU's zero): at a full budget some of
        their kernels spilled (``benchmarks/spills.py``).
        """
        if self.folds_broadcasts:
            return self.registers
        return self.registers - (1 if self.arch.startswith(("x86", "i686")) else 2)

    @property
    def operand_steps(self) -> int:
        """Reduction steps whose operands (weight vectors, input values) are live at once.

        LLVM's scheduler loads the next unrolled step's operands before the current step's
        FMAs are done (AArch64 pairs them: ``ldp q, q`` / ``ldp s, s``), so a tile must leave
        room for two steps; with 16 registers on 32-bit ARM it runs further ahead, four
        steps. Read off the assembly of the zoo's kernels (``benchmarks/spills.py``): with one
        step counted, 22 of MobileNet v2's kernels spilled on rpi4; with these counts none do.
        AVX-512 tiles keep one step: their broadcasts are folded (:attr:`folds_broadcasts`).
        """
        if self.folds_broadcasts:
            return 1
        if self.arch.startswith(("arm", "thumb")) and self.registers <= 16:
            return 4 + self.window_taps
        return 2 + self.window_taps

    @property
    def reads_weights_from_memory(self) -> bool:
        """Whether a weight vector used by one product only needs no register: x86 below
        AVX-512 reads an arithmetic operand straight from memory (SSE's ``mulps``, AVX2's
        ``vfmadd231ps``), so a tile of one pixel holds its accumulators, the broadcast input
        and a product only (:meth:`single_pixel_tile_fits`). ARM's arithmetic reads registers
        only; AVX-512 folds the broadcast instead (:attr:`folds_broadcasts`)."""
        return self.arch.startswith(("x86", "i686")) and not self.folds_broadcasts

    @property
    def chain_bound(self) -> bool:
        """SSE (``x86-64-v2``): :attr:`reads_weights_from_memory` without FMA, so each
        reduction step is a multiply and a dependent add, and a tile's chains of them, not its
        loads, bound it (:func:`~edgecompile.schedules.rules.single_pixel_tile`)."""
        return self.reads_weights_from_memory and not self.fma

    @property
    def fma_from_memory(self) -> bool:
        """AVX2 (``x86-64-v3``): :attr:`reads_weights_from_memory` with FMA, whose one
        instruction reads an operand from memory, so a step holds only its accumulators, its
        weight vectors and one broadcast (:func:`~edgecompile.schedules.rules.fma_chains_tile`)."""
        return self.reads_weights_from_memory and self.fma

    def single_pixel_tile_fits(self, accumulators: int) -> bool:
        """Whether a tile of one pixel and ``accumulators`` output vectors fits where
        :attr:`reads_weights_from_memory`: the accumulators, the input broadcast of each live
        reduction step, and one product (SSE has no FMA: ``mulps`` writes a register the
        ``addps`` reads)."""
        return accumulators + self.operand_steps + 1 <= self.tile_registers

    def unrolled_single_pixel_tile_fits(self, accumulators: int) -> bool:
        """:meth:`single_pixel_tile_fits` for a reduction LLVM unrolls whole (a stem's 3
        channels × 3×3 taps) on a target without FMA: there its scheduler issues a step's
        multiplies ahead of their adds, so each accumulator's product holds a register of its
        own beside it, with the broadcasts of the live steps. On ``x86-64-v2`` (SSE, across the
        window: 3 steps) MobileNet v2's stem at 8 output blocks × 1 pixel spilled 4 times per
        tile (2 × 8 + 3 > 15), SqueezeNet 1.1's twice; 6 × 1 (ShuffleNet v2's, 2 × 6 + 3 = 15)
        and 4 × 1 read spill-free."""
        return 2 * accumulators + self.operand_steps <= self.tile_registers

    def tile_fits(self, accumulators: int, weights: int, inputs: int) -> bool:
        """Whether a register tile of ``accumulators`` vectors fits, with ``weights`` vectors
        and ``inputs`` broadcast values read per reduction step, without LLVM spilling any of
        them to the stack inside the reduction loop."""
        if self.folds_broadcasts:
            return accumulators + weights + 1 <= self.tile_registers
        operands = self.operand_steps * (weights + inputs)
        return accumulators + operands <= self.tile_registers

    @property
    def max_is_a_select(self) -> bool:
        """Whether LLVM emits a float max as a compare and a select, each holding a mask
        register beside its operands: 32-bit NEON (``vcgt`` + ``vbsl`` in the pool listings,
        not ``vmax``, whose NaN handling differs)."""
        return self.arch.startswith(("arm", "thumb"))

    @property
    def loads_whole_block_first(self) -> bool:
        """Whether LLVM's scheduler issues every load of an unrolled block before its
        arithmetic: 32-bit ARM with 16 q registers (the generic armv7 core). A K×K conv's
        window loops, unrolled by LLVM (3 × 3 taps × the reduction split), then kept all 27
        to 36 steps' operands live and spilled 52 to 82 times per tile even at a 1 × 1 tile:
        no tile fits, so the window runs as one loop instead (:meth:`streamed_tile_fits`)."""
        return self.arch.startswith(("arm", "thumb")) and self.registers <= 16

    def streamed_tile_fits(self, accumulators: int, weights: int, inputs: int, steps: int) -> bool:
        """Whether a register tile fits where :attr:`loads_whole_block_first`, its reduction one
        loop of ``steps`` unrolled steps per iteration: every step's operands are live at once,
        beside a spare (two without FMA, where products need registers before their adds). On
        armv7, 3 × 3 SqueezeNet expands and stems read spill-free at 2 × 2 pixels × blocks ×
        2 steps (14 registers) and 2 × 3 × 1 (13); 4 × 2 × 1 and 2 × 4 × 1 (16) spilled."""
        spare = 2 if self.separate_products else 1
        return accumulators + steps * (weights + inputs) + spare <= self.tile_registers

    #: Weights (taps) and columns of a depthwise window (:meth:`holding_window`); 0 for a
    #: pool, which has none.
    window_weights: int = 0
    window_columns: int = 0
    #: Whether a product needs a register of its own before it is added: 32-bit ARM without
    #: VFPv4 has no FMA (LLVM emits ``vmul`` + ``vadd``) and, unlike SSE, cannot read an
    #: operand from memory.
    separate_products: bool = False
    #: Whether the target has a fused multiply-add: not SSE (``x86-64-v2``), nor 32-bit ARM
    #: without VFPv4 (:attr:`separate_products`). Without it each reduction step is a multiply
    #: and a dependent add, so a tile needs more accumulator chains to hide their latency.
    fma: bool = True

    @property
    def row_tile_limit(self) -> int:
        """Most output columns of a depthwise or pooling tile: ``w`` accumulators, and its
        input columns and window weights for the taps LLVM unrolls (the window of 3 columns
        is unrolled, and pooling's loop of 3 by LLVM). Three fewer than the tile registers
        with AVX-512 (one weight, one input, one spare); elsewhere a quarter of the
        registers, which read spill-free in the assembly of every pooling kernel of the zoo's
        default models (``benchmarks/spills.py``), less one where a max takes a mask register
        too (:attr:`max_is_a_select`): at 4, SqueezeNet's max pools spilled on armv7.

        A depthwise window (:attr:`window_weights`) loads each tap's weight as its FMAs need
        it, so its tile may hold every register but one per tap (and one for a product where
        :attr:`separate_products`), up to :data:`ROW_TILE_TARGET`: 7 columns for 3×3 on 16
        registers, where 4 left MobileNet v2's 14-wide rows a tail (below) and spilled. At 8 a
        3×3 tile spilled 2 to 22 times per kernel on x86-64-v2 and armv7; at 7, none did.
        """
        if self.folds_broadcasts:
            return self.tile_registers - 3
        limit = max(self.registers // 4, 1)
        if not self.window_weights:
            return max(limit - int(self.max_is_a_select), 1)
        beside = self.registers - self.window_weights - int(self.separate_products)
        return max(limit, min(beside, ROW_TILE_TARGET))

    @property
    def tailed_row_tile_limit(self) -> int:
        """Most output columns of a depthwise tile when the row ends in a narrower tail.

        Then nothing in the loop over the row's full tiles is conditional (the first tile's
        padding and the tail are peeled off), and LLVM hoists every weight of the unrolled
        window out of it: ``w`` accumulators, the ``w + kw - 1`` inputs of one window row and
        all the weights must fit, with one temporary. 3×3 on 16 registers leaves 2 columns;
        at 4 (14 = 4 + 4 + 4 + 2), MobileNet v2's 14-wide depthwise kernels spilled 7
        (x86-64-v2), 9 (x86-64-v3) and 15 (armv7) times per tile. A window too large to leave
        even :data:`MIN_HELD_WINDOW_TILE` columns is not kept whole (5×5 on 16 or 32
        registers read spill-free at :attr:`row_tile_limit`): LLVM reloads its weights."""
        limit = self.row_tile_limit
        if self.folds_broadcasts or not self.window_weights:
            return limit
        inputs = self.window_columns - 1  # beside the w each column of the tile adds
        held = (self.registers - self.window_weights - inputs - 1) // 2
        return min(limit, held) if held >= MIN_HELD_WINDOW_TILE else limit

    def taps_outside_tile_fit(self, tile: int, stride: int, width: int) -> bool:
        """Whether a depthwise tile of ``tile`` output columns in a row of ``width``, its
        window's taps looped outside its columns (``kw`` outer, the columns inner), fits beside
        the input columns it holds between taps at column ``stride``
        (:func:`held_window_columns`; where :attr:`loads_whole_block_first`, every column read
        twice, all loaded up front): its accumulators, those columns, one input and one weight,
        and a product's register without FMA (two with :attr:`separate_products`, as
        :meth:`streamed_tile_fits`).

        At stride 2 output column ``j``'s last tap reads the column of ``j + 1``'s first, so
        that order holds ``tile - 1`` columns loaded at tap 0 until tap 2: a 3×3 row of 7 on
        x86-64-v2 (SSE: 7 + 6 + 2 + 1 > 15) spilled two of them per window row (MobileNet v2's
        and ShuffleNet v2's 14² → 7² layers). Where it does not fit, the taps run inside each
        column instead (``rules._row_tile``): a shared column is read by the next column's tap
        right after, one held at a time. So did MnasNet's 5×5 stride-2 tile of 4 on armv7
        (4 + 7 + 2 + 2 > 14: 2 stack accesses per window row; 6.9 → 6.2 instructions per
        vector multiply with the taps inside).

        The rest keep the taps outside: stride 1, which reads spill-free on every target of the
        matrix; 32-bit ARM with FMA (``rpi4-armv7``), whose 3×3 stride-2 tile of 7 spilled 33
        times inside, 6 outside; and, except where LLVM loads whole blocks first, a row of
        several tiles: on x86-64-v2 those read spill-free with the taps outside (only the row
        that is one tile spilled), and with the taps inside MobileNet v2 ran 1.04× slower."""
        whole_block = self.loads_whole_block_first
        if self.folds_broadcasts or stride < 2 or not self.window_columns:
            return True
        if (whole_block and not self.separate_products) or (not whole_block and tile < width):
            return True
        held = held_window_columns(tile, self.window_columns, stride, whole_block=whole_block)
        spare = 2 if self.separate_products else int(not self.fma)
        return tile + held + 2 + spare <= self.tile_registers

    def holding_window(self, kernel_rows: int, kernel_columns: int) -> CpuInfo:
        """This CPU for a depthwise tile over a ``kernel_rows × kernel_columns`` window with
        weights (:attr:`row_tile_limit`, :attr:`tailed_row_tile_limit`)."""
        return replace(
            self, window_weights=kernel_rows * kernel_columns, window_columns=kernel_columns
        )

    def across_window(self) -> CpuInfo:
        """This CPU for a tile whose reduction runs over a K×K window (:attr:`window_taps`)."""
        return replace(self, window_taps=1)


def held_window_columns(
    tile: int, window_columns: int, stride: int, *, whole_block: bool = False
) -> int:
    """Most input columns a depthwise tile of ``tile`` output columns keeps in registers at
    once when its window's ``window_columns`` taps loop outside its columns: tap ``t`` of
    output column ``j`` reads input column ``stride * j + t``, and a column read by several
    taps stays loaded from the first of them to the last. With ``whole_block`` (a scheduler
    that loads a whole unrolled block first), every column read by more than one tap."""
    taps: dict[int, list[int]] = {}
    for tap in range(window_columns):
        for column in range(tile):
            taps.setdefault(stride * column + tap, []).append(tap)
    if whole_block:
        return sum(1 for readers in taps.values() if len(readers) > 1)
    return max(
        (
            sum(1 for readers in taps.values() if readers[0] < tap <= readers[-1])
            for tap in range(window_columns)
        ),
        default=0,
    )


def cpu_info(target: Any) -> CpuInfo:
    """Read :class:`CpuInfo` from an ``llvm`` TVM target (host or cross)."""
    from edgecompile.targets import host_triple

    triple = str(target.attrs.get("mtriple", "")) or host_triple()
    arch = triple.split("-")[0]
    lanes = max(_vector_bits(target, arch) // FLOAT32_BITS, 1)
    cores = int(target.attrs.get("num-cores", 0) or os.cpu_count() or 1)
    return CpuInfo(
        arch=arch,
        lanes=lanes,
        registers=_vector_registers(arch, lanes),
        cores=cores,
        caches=target_caches(target),
        separate_products=_separate_products(target, arch),
        fma=_has_fma(target, arch),
    )


def _separate_products(target: Any, arch: str) -> bool:
    """32-bit ARM without VFPv4 (the generic ``armv7`` preset): no NEON FMA."""
    import tvm

    if not arch.startswith(("arm", "thumb")):
        return False
    return not bool(tvm.target.codegen.target_has_features("vfp4", target))


def _has_fma(target: Any, arch: str) -> bool:
    """x86: the target's ``fma`` feature (AVX2 and up); ARM: NEON with VFPv4, and AArch64."""
    import tvm

    if arch in ("x86_64", "i386", "i686"):
        return bool(tvm.target.codegen.target_has_features("fma", target))
    return not _separate_products(target, arch)


def _vector_bits(target: Any, arch: str) -> int:
    """The SIMD width the target's code may use. On x86 it is read from the target's CPU
    features: TVM 0.27's ``llvm_get_vector_width`` answers 512 for any x86 CPU on an AVX-512
    machine (``x86-64-v2`` included), which would size SSE code's tiles for AVX-512."""
    import tvm

    if arch in ("x86_64", "i386", "i686"):
        for feature, bits in (("avx512f", 512), ("avx", 256)):
            if bool(tvm.target.codegen.target_has_features(feature, target)):
                return bits
        return 128
    return int(tvm.target.codegen.llvm_get_vector_width(target))


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
