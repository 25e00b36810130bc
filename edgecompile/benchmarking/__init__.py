"""Local latency of a compiled model next to ONNX Runtime and torch, and where its time goes.

One job per module:

- :mod:`~edgecompile.benchmarking.timing` — timing engines interleaved, latency statistics,
  :class:`EngineTiming` (a leaf: the board bench in :mod:`edgecompile.device.remote` uses it
  too);
- :mod:`~edgecompile.benchmarking.engines` — the TVM, ONNX Runtime and torch runners; one
  measurement (outputs checked against the reference, then timed);
- :mod:`~edgecompile.benchmarking.workers` — measuring in a process of its own (TVM's thread pool is
  sized once per process), :class:`PinnedWorker` for many models in a row;
- :mod:`~edgecompile.benchmarking.local` — :func:`bench_local`: what to measure, then every thread
  count, recorded in the history;
- :mod:`~edgecompile.benchmarking.history` — the bench history every bench appends to, and a board
  bench read against this machine's latest numbers (:func:`compare_with_host`);
- :mod:`~edgecompile.benchmarking.profile` — :func:`profile_local`: per-kernel time from the
  instrumented Relax VM, joined to the schedules.
"""

from __future__ import annotations

from edgecompile.benchmarking.history import (
    HostComparison,
    append_history,
    compare_with_host,
    format_host_comparison,
    host_history,
    read_history,
)
from edgecompile.benchmarking.local import BenchReport, bench_local, parse_list
from edgecompile.benchmarking.profile import ProfileReport, profile_local
from edgecompile.benchmarking.timing import EngineTiming, latency_stats
from edgecompile.benchmarking.workers import PinnedWorker

__all__ = [
    "BenchReport",
    "EngineTiming",
    "HostComparison",
    "PinnedWorker",
    "ProfileReport",
    "append_history",
    "bench_local",
    "compare_with_host",
    "format_host_comparison",
    "host_history",
    "latency_stats",
    "parse_list",
    "profile_local",
    "read_history",
]
