"""The report's second phase: one built model timed (bench) and profiled, alone.

Measuring runs in one long-lived worker process per thread count
(:class:`~edgecompile.benchmarking.workers.PinnedWorker`), shared by every model: a fresh Python
with torch and TVM per model and thread count cost more than the measurement itself. The profile's
kernels are summed by op class (:func:`op_class_of`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.benchmarking.workers import PinnedWorker
from edgecompile.errors import EdgecompileError
from edgecompile.reporting.builds import PreparedModel
from edgecompile.reporting.results import (
    INT8_ENGINES,
    TUNED,
    ModelResult,
    StageFailure,
    Stages,
)

# Op classes of the time-by-class table and bars, in stacking order.
POINTWISE = "pointwise"
DEPTHWISE = "depthwise"
GROUPED = "grouped"
DENSE_CONV = "dense conv"
DATA_MOVEMENT = "shuffle/data movement"
ELEMENTWISE = "element-wise"
OTHER = "other"
OP_CLASSES = (POINTWISE, DEPTHWISE, GROUPED, DENSE_CONV, DATA_MOVEMENT, ELEMENTWISE, OTHER)


def _bench_model(
    artifact_dir: str,
    *,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int,
    workers: Mapping[int, PinnedWorker],
    tuned_artifact: str | None = None,
) -> list[EngineTiming]:
    """Every engine at every thread count, the tuned library (if any) in the same runs."""
    from edgecompile.benchmarking.local import bench_local

    # tvm-int8 too: bench_local quantizes and builds it beside the untuned library.
    compare = [engine for engine in engines if engine in ("ort", "torch", *INT8_ENGINES)]
    bench = bench_local(
        artifact_dir,
        compare=compare,
        threads=threads,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        extra_artifacts={TUNED: tuned_artifact} if tuned_artifact else None,
        workers=workers,
    )
    return list(bench.timings)


def op_class_of(name: str, op: str | None) -> str:
    """The report's op class of one profiled VM kernel.

    ``op`` is the manifest schedule kind joined to the kernel by ``profile_local``
    (pointwise, depthwise, grouped, conv, pool, matmul); kernels without one are layout and
    element-wise glue, classified by the op names TVM puts in their names.
    """
    if op in (POINTWISE, DEPTHWISE, GROUPED):
        return op
    if op in ("conv", "conv2d_transpose"):  # a transposed conv is a dense conv run backwards
        return DENSE_CONV
    if op is not None or name.startswith("vm.builtin"):
        return OTHER  # pool, matmul, and the VM's own bookkeeping
    words = set(re.split(r"[_.]+", re.sub(r"\d+", "", name)))
    if words & {"pointwise", "depthwise", "grouped"}:
        return next(kind for kind in (POINTWISE, DEPTHWISE, GROUPED) if kind in words)
    if {"conv", "nchwc"} <= words:  # our dense conv schedule's kernel (conv_nchwc)
        return DENSE_CONV
    if "convd" in words:  # conv2d (digits dropped) under TVM's lowering, transposed or not
        return DENSE_CONV
    if words & {"conv", "pool", "matmul", "dense", "mean", "softmax", "sum", "max"}:
        return OTHER
    if words & {
        "transpose", "concatenate", "concat", "slice", "split", "reshape", "layout", "pack",
        "unpack", "pad", "take", "gather", "copy", "squeeze", "expand", "flatten", "resize",
    }:  # fmt: skip
        return DATA_MOVEMENT
    if words & {
        "relu", "add", "multiply", "subtract", "divide", "clip", "sigmoid", "hardswish", "tanh",
        "maximum", "minimum", "exp", "power", "sqrt", "where", "erf", "gelu", "silu", "prelu",
        "negative", "hard", "leaky", "cast",
    }:  # fmt: skip
        return ELEMENTWISE
    return OTHER


def _profile_task(
    artifact_dir: str, threads: int, runs: int, warmup: int, seed: int
) -> dict[str, Any]:
    """Time per op class of one artifact; runs in the worker pinned to ``threads``."""
    from edgecompile.benchmarking.profile import profile_local

    profile = profile_local(artifact_dir, runs=runs, warmup=warmup, threads=threads, seed=seed)
    by_class = dict.fromkeys(OP_CLASSES, 0.0)
    for layer in profile.layers:
        by_class[op_class_of(layer.name, layer.op)] += layer.time_ms
    return {"op_class_ms": by_class, "end_to_end_ms": profile.end_to_end_ms}


def measure_model(
    prepared: PreparedModel,
    *,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    profile_runs: int,
    workers: Mapping[int, PinnedWorker],
    seed: int,
) -> ModelResult:
    """Bench and profile of one prepared model; a failing stage is recorded, not raised.

    ``workers`` has a :class:`PinnedWorker` per thread count; the profile runs at the first.
    A tuned build (when records applied to the model) is timed in the same runs as the rest.
    """
    started = time.perf_counter()
    fields = dict(prepared.fields)
    stages = Stages()

    def bench() -> None:
        # A tuned build no record applied to is the untuned library again: not worth a column.
        tuned = fields.get("tuned_artifact") if fields.get("tuned_kernels") else None
        options = dict(engines=engines, threads=threads, repeat=repeat, warmup=warmup, seed=seed)
        try:
            fields["timings"] = _bench_model(
                fields["artifact"], workers=workers, tuned_artifact=tuned, **options
            )
        except EdgecompileError as exc:
            # Bad records must not cost the untuned numbers: record it, time the rest again.
            if tuned is None or not exc.problem.startswith(f"{TUNED} "):
                raise
            stages.failures.append(StageFailure("tuned bench", str(exc)))
            fields["timings"] = _bench_model(fields["artifact"], workers=workers, **options)

    def profile() -> None:
        count = threads[0]
        result = workers[count].call(
            _profile_task, fields["artifact"], count, profile_runs, 1, seed
        )
        fields.update(
            op_class_ms=result["op_class_ms"],
            profile_threads=count,
            profile_end_to_end_ms=result["end_to_end_ms"],
        )

    if prepared.built:
        stages.run("bench", bench)
        stages.run("profile", profile)
    return prepared.measured(fields, stages, started)
