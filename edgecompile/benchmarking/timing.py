"""Timing engines and summarising the times: what every bench, here or on a board, shares.

A leaf: nothing here imports the rest of ``edgecompile.benchmarking`` or ``edgecompile.device``, so
the host bench and the board bench (:mod:`edgecompile.device.remote`) both build on it without
importing each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgecompile.errors import EdgecompileError

#: One engine: inputs in, outputs out.
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class EngineTiming:
    """One engine at one thread count; ``ratio_to_ort`` is its median over ORT's median."""

    engine: str
    threads: int
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    max_relative_error: float | None
    ratio_to_ort: float | None

    @classmethod
    def from_stats(
        cls,
        engine: str,
        threads: int,
        stats: Mapping[str, float],
        max_relative_error: float | None,
        ort_median_ms: float | None,
    ) -> EngineTiming:
        """The timing from :func:`latency_stats`' ``stats``; no ratio without ORT's median
        (ORT not timed at this thread count, or a zero median that would divide by zero)."""
        return cls(
            engine=engine,
            threads=threads,
            median_ms=stats["median_ms"],
            p90_ms=stats["p90_ms"],
            min_ms=stats["min_ms"],
            mean_ms=stats["mean_ms"],
            max_relative_error=max_relative_error,
            ratio_to_ort=stats["median_ms"] / ort_median_ms if ort_median_ms else None,
        )


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """median, p90 (linear interpolation), mean, population std, min, max -- in ms."""
    if not seconds:
        raise EdgecompileError("no timings were measured", "use --repeat 1 or more")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def time_interleaved(
    runners: Mapping[str, Runner], inputs: list[np.ndarray], repeat: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of every runner: ``warmup`` untimed calls each, then ``repeat`` rounds
    that call every runner once, in order (A, B, C, A, B, C, ...).

    Interleaved, as ``benchmarks/layers.py`` samples, so that a burst of load from another
    process on a shared machine hits every engine of the same round, not just whichever one
    happened to be timed during it.
    """
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    seconds: dict[str, list[float]] = {engine: [] for engine in runners}
    for _ in range(repeat):
        for engine, run in runners.items():
            start = time.perf_counter()
            run(inputs)
            seconds[engine].append(time.perf_counter() - start)
    return seconds


def check_counts(threads: Sequence[int], repeat: int, warmup: int) -> None:
    """Refuse thread counts below 1, fewer than one timed run or negative warm-up runs."""
    if not threads or min(threads) < 1:
        raise EdgecompileError(f"bad thread counts {list(threads)}", "use e.g. --threads 1,2")
    if repeat < 1 or warmup < 0:
        raise EdgecompileError("bad --repeat/--warmup", "use --repeat 1 or more, --warmup 0+")
