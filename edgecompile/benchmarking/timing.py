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


#: Timed calls of one engine in a row, and the least time each engine runs untimed before its row.
#: Per-call interleaving cannot time several threads: after one engine's call its pool's threads
#: keep spinning (ONNX Runtime's and TVM's both do) and the next engine's first call, or first
#: few, shares the two cores with them. Measured (mobilenet_v1, 2 threads, this host): TVM's call
#: right after ORT's took 40-45 ms against 6 ms alone; ORT after TVM up to 23 ms for ~70 ms.
BLOCK_CALLS = 5
SETTLE_SECONDS = 0.1


def time_interleaved(
    runners: Mapping[str, Runner],
    inputs: list[np.ndarray],
    repeat: int,
    warmup: int,
    block: int = BLOCK_CALLS,
    settle_seconds: float = SETTLE_SECONDS,
) -> dict[str, list[float]]:
    """Seconds per call of every runner: ``warmup`` untimed calls each, then rounds in which
    every runner in turn is called untimed until ``settle_seconds`` have passed (at least once)
    and then timed ``block`` times in a row, until each has ``repeat`` timings.

    Interleaved by rows, so that a burst of load from another process on a shared machine hits
    every engine of the same round, not just whichever one happened to be timed during it; not
    call by call, since an engine's threads still spin when the next engine starts
    (:data:`BLOCK_CALLS`).
    """
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    seconds: dict[str, list[float]] = {engine: [] for engine in runners}
    while any(len(times) < repeat for times in seconds.values()):
        for engine, run in runners.items():
            timed = min(block, repeat - len(seconds[engine]))
            if timed <= 0:
                continue
            settle_until = time.perf_counter() + settle_seconds
            run(inputs)
            while time.perf_counter() < settle_until:
                run(inputs)
            for _ in range(timed):
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
