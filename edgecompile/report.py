"""The zoo report: bench + profile over many models, and what predicts their latency.

``report`` builds each selected zoo model for this machine (and, when tuning records exist for
it, a second build with them applied), times it next to ONNX Runtime and torch
(:func:`edgecompile.bench.bench_local`), splits its time by op class
(:func:`edgecompile.bench.profile_local`) and writes ``index.md`` (tables, findings, the
rank correlations of multiply-adds and MAC with latency), ``results.csv`` and PNG plots.

Measuring runs in one long-lived worker process per thread count (:class:`PinnedWorker`),
shared by every model: a fresh Python with torch and TVM per model and thread count cost more
than the measurement itself.

One model's failure (a build TVM refuses, engines that disagree) is a row of the report, never
the end of it: a whole-zoo run takes tens of minutes and should not be lost to one model.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import fnmatch
import math
import multiprocessing
import os
import platform
import re
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompile._atomic import atomic_file
from edgecompile.bench import EngineTiming as Timing
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress

if TYPE_CHECKING:
    from edgecompile.artifact import Artifact
    from edgecompile.bench import PinnedWorker
    from edgecompile.inspection import ModelCost

TARGET = "host"
# "tvm" is TVM untuned with edgecompile's schedules; "tvm-tuned" the same model built with the
# target's MetaSchedule tuning records applied (measured only when there are records).
ENGINES = ("tvm", "tvm-tuned", "ort", "torch")
DEFAULT_ENGINES = ENGINES
TUNED = "tvm-tuned"
BUILDS_DIR = "builds"

# Op classes of the time-by-class table and bars, in stacking order.
POINTWISE = "pointwise"
DEPTHWISE = "depthwise"
GROUPED = "grouped"
DENSE_CONV = "dense conv"
DATA_MOVEMENT = "shuffle/data movement"
ELEMENTWISE = "element-wise"
OTHER = "other"
OP_CLASSES = (POINTWISE, DEPTHWISE, GROUPED, DENSE_CONV, DATA_MOVEMENT, ELEMENTWISE, OTHER)

CSV_FIELDS = (
    "model",
    "family",
    "input_size",
    "engine",
    "threads",
    "median_ms",
    "p90_ms",
    "min_ms",
    "mean_ms",
    "ratio_to_ort",
    "max_relative_error",
    "params",
    "multiply_adds",
    "memory_access",
    "status",
    "error",
)
PLOT_MULTIPLY_ADDS = "latency_vs_multiply_adds.png"
PLOT_MAC = "latency_vs_mac.png"
PLOT_OP_CLASSES = "time_by_op_class.png"
# Below this many models a rank correlation says nothing (two points always give ±1).
MIN_MODELS_FOR_CORRELATION = 3
# A ρ below this is too weak to call the cost a predictor of latency.
WEAK_CORRELATION = 0.3


@dataclass(frozen=True)
class TuningRecords:
    """The records "tvm-tuned" is built with: one target's store, its digest and size."""

    store: str
    digest: str
    records: int


def tuning_records(target: str, records: str | Path | None = None) -> TuningRecords | None:
    """The store of ``target`` under ``records`` (None: the default cache), if it has records."""
    from edgecompile.records import store_for
    from edgecompile.targets import resolve_target

    store = store_for(resolve_target(target), records)
    if not store.exists():
        return None
    clean = store.lines()
    if not clean.records:  # only torn lines: nothing a build could apply
        return None
    return TuningRecords(str(store.path), store.digest(), len(clean.records))


def tuned_engine_available(target: str, records: str | Path | None = None) -> bool:
    """Whether ``target`` has tuning records under ``records``, so "tvm-tuned" can be timed."""
    return tuning_records(target, records) is not None


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class StageFailure:
    """A stage (cost, build, bench, profile) that failed for one model, and why."""

    stage: str
    problem: str


@dataclass(frozen=True)
class ModelResult:
    model: str
    family: str
    input_size: tuple[int, int]
    params: int | None = None
    multiply_adds: int | None = None
    memory_access: int | None = None
    findings: dict[str, str] = field(default_factory=dict)
    artifact: str | None = None
    build_reused: bool = False
    build_seconds: float | None = None
    tuned_artifact: str | None = None
    tuned_build_reused: bool = False
    tuned_build_seconds: float | None = None
    #: Kernels of the tuned build whose schedule came from the records (0: the records had
    #: nothing for this model, so its tuned build is the untuned one and is not timed).
    tuned_kernels: int | None = None
    timings: list[Timing] = field(default_factory=list)
    op_class_ms: dict[str, float] = field(default_factory=dict)
    profile_threads: int | None = None
    profile_end_to_end_ms: float | None = None
    failures: list[StageFailure] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def status(self) -> str:
        return f"{self.failures[0].stage} failed" if self.failures else "ok"

    def timing(self, engine: str, threads: int) -> Timing | None:
        return next((t for t in self.timings if (t.engine, t.threads) == (engine, threads)), None)


@dataclass(frozen=True)
class Correlation:
    """Spearman rank correlation of a cost with one engine's median latency over the zoo."""

    engine: str
    threads: int
    models: int
    multiply_adds_rho: float | None
    mac_rho: float | None


@dataclass(frozen=True)
class ZooReport:
    output_dir: str
    index: str
    results_csv: str
    plots: list[str]
    target: str
    threads: list[int]
    engines: list[str]
    repeat: int
    warmup: int
    seed: int
    machine: dict[str, Any]
    models: list[ModelResult]
    correlations: list[Correlation]
    notes: list[str]
    wall_seconds: float
    records: TuningRecords | None = None

    @property
    def failed(self) -> list[ModelResult]:
        return [result for result in self.models if result.failures]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for model, result in zip(data["models"], self.models, strict=True):
            model["status"] = result.status
        return data


# --------------------------------------------------------------------------------------------
# choosing models


def select_models(models: str | Sequence[str] | None = None) -> list[str]:
    """Zoo names for ``models``: None = all; else names, globs or substrings (comma-separated).

    An exact name selects only itself (``mobilenet_v2`` is not also ``mobilenet_v2_x0_35``);
    a glob (``shufflenet_v1_g3*``) or a substring (``mnasnet``) selects every match.
    """
    from edgecompile.zoo import list_models

    every = list_models()
    if models is None:
        return every
    patterns = models.split(",") if isinstance(models, str) else list(models)
    patterns = [pattern.strip() for pattern in patterns if pattern.strip()]
    if not patterns:
        return every
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if pattern in every:
            matches = [pattern]
        else:
            glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
            matches = [name for name in every if fnmatch.fnmatchcase(name, glob)]
        if not matches:
            plain = re.sub(r"[*?\[\]]", "", pattern)
            close = difflib.get_close_matches(plain, every, n=4, cutoff=0.5)
            close += [name for name in every if plain and name.startswith(plain)][:4]
            close = list(dict.fromkeys(close))[:4]
            hint = f"close names: {', '.join(close)}" if close else "no close names"
            raise EdgecompileError(
                f"no zoo model matches {pattern!r}",
                f"{hint}; `edgecompile models` lists them all",
            )
        chosen.update(dict.fromkeys(matches))
    return list(chosen)


def _check_options(
    threads: Sequence[int], engines: Sequence[str], repeat: int, warmup: int
) -> list[str]:
    if not threads or min(threads) < 1:
        raise EdgecompileError(f"bad thread counts {list(threads)}", "use e.g. --threads 1,2")
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown:
        raise EdgecompileError(
            f"unknown engine(s) {', '.join(unknown)}", f"choose from {', '.join(ENGINES)}"
        )
    if repeat < 1 or warmup < 0:
        raise EdgecompileError("bad --repeat/--warmup", "use --repeat 1 or more, --warmup 0+")
    # TVM is what the report is about: bench_local always times it.
    return ["tvm", *[engine for engine in dict.fromkeys(engines) if engine != "tvm"]]


# --------------------------------------------------------------------------------------------
# per-model stages


def model_costs(name: str, input_size: tuple[int, int]) -> tuple[ModelCost, list[dict[str, str]]]:
    """Params, multiply-adds, MAC and G1–G4 findings of ``name`` at ``input_size``.

    Costs depend on shapes only, so the model is traced on the ``meta`` device, as
    ``summarize_model`` does; a builder that needs real weights (CondenseNet's condensation
    ranks them) is built for real instead.
    """
    import torch

    from edgecompile.export import TorchModel
    from edgecompile.inspection import inspect_model
    from edgecompile.zoo import get_model, model_info

    info = model_info(name)
    shape = (1, 3, *input_size)
    try:
        with torch.device("meta"):
            module = info.builder(**info.kwargs).eval()
            cost = inspect_model(TorchModel(name, module, shape, info.task, "meta"))
    except (NotImplementedError, RuntimeError):
        module = get_model(name)
        cost = inspect_model(TorchModel(name, module, shape, info.task, "real"))
    return cost, [asdict(finding) for finding in cost.findings]


def tuned_builds_dir(builds_dir: Path, records: TuningRecords) -> Path:
    """Where tuned builds with ``records`` are cached: keyed by the records' digest, so new
    records (another tune) are new builds, never an old library under a new name."""
    return builds_dir / f"tuned-{records.digest[:12]}"


def build_host_artifact(
    name: str,
    builds_dir: Path,
    *,
    input_size: tuple[int, int],
    seed: int,
    rebuild: bool,
    records: TuningRecords | None = None,
) -> tuple[Artifact, bool]:
    """(host artifact of ``name`` under ``builds_dir``, whether an earlier build was reused).

    Untuned (``records`` None) with its static ONNX kept for ORT, or with ``records`` applied
    (under :func:`tuned_builds_dir`). A cached build is reused only if it is for this model,
    input shape, seed, host target, TVM and edgecompile version, and the same records (or
    none), and did not fail verification; else it is rebuilt.
    """
    from edgecompile import __version__
    from edgecompile.artifact import load_artifact
    from edgecompile.bench import artifact_onnx
    from edgecompile.builder import artifact_name, build
    from edgecompile.targets import resolve_target

    preset = resolve_target(TARGET)
    output_dir = builds_dir if records is None else tuned_builds_dir(builds_dir, records)
    directory = output_dir / f"{artifact_name(name)}-{preset.name}"
    if not rebuild and directory.is_dir():
        try:
            artifact = load_artifact(directory)
        except EdgecompileError:
            artifact = None
        if artifact is not None:
            import tvm

            manifest = artifact.manifest
            if (
                manifest.model == name
                and manifest.inputs
                and manifest.inputs[0]["shape"] == [1, 3, *input_size]
                and manifest.weights == f"seeded random weights (seed {seed})"
                and manifest.target == dict(preset.target)
                and manifest.tvm_version == str(tvm.__version__)
                and manifest.edgecompile_version == __version__
                and (manifest.verification or {}).get("status") in ("passed", "skipped")
                and _records_match(manifest.records, records)
                # The untuned build's ONNX is ORT's model: without it bench would export again.
                and (records is not None or artifact_onnx(artifact) is not None)
            ):
                return artifact, True
    # No verification here: bench checks TVM against ONNX Runtime and torch (same tolerance,
    # seeded input) before it times anything, so verifying would only repeat that check.
    result = build(
        name,
        preset,
        output_dir=output_dir,
        input_size=input_size,
        seed=seed,
        verify=False,
        records=False if records is None else records.store,
        keep_onnx=records is None,
    )
    return result.artifact, False


def _records_match(applied: dict[str, Any] | None, records: TuningRecords | None) -> bool:
    """Whether a build's applied records (manifest ``records``) are exactly ``records``."""
    if records is None:
        return applied is None
    return applied is not None and applied.get("digest") == records.digest


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
) -> list[Timing]:
    """Every engine at every thread count, the tuned library (if any) in the same runs."""
    from edgecompile.bench import bench_local

    compare = [engine for engine in engines if engine in ("ort", "torch")]
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
    from edgecompile.bench import profile_local

    profile = profile_local(artifact_dir, runs=runs, warmup=warmup, threads=threads, seed=seed)
    by_class = dict.fromkeys(OP_CLASSES, 0.0)
    for layer in profile.layers:
        by_class[op_class_of(layer.name, layer.op)] += layer.time_ms
    return {"op_class_ms": by_class, "end_to_end_ms": profile.end_to_end_ms}


def _describe(exc: Exception) -> str:
    if isinstance(exc, EdgecompileError):
        return str(exc)
    # Not a user error: a bug or a TVM crash. Kept in the report so the run goes on.
    first = str(exc).strip().splitlines()[-1:] or [""]
    return f"{type(exc).__name__}: {first[0]} (unexpected: report it)"


class _Stages:
    """Runs one model's stages: a failing stage is recorded (and the caller told), not raised."""

    def __init__(self) -> None:
        self.failures: list[StageFailure] = []
        self.seconds: dict[str, float] = {}

    def run(self, label: str, work: Callable[[], None]) -> bool:
        started = time.perf_counter()
        try:
            work()
        except Exception as exc:  # one model must not end a zoo-wide run; see _describe
            self.failures.append(StageFailure(label, _describe(exc)))
            return False
        finally:
            self.seconds[label] = round(time.perf_counter() - started, 2)
        return True


@dataclass(frozen=True)
class PreparedModel:
    """A model after the first phase (costs and builds), ready to be measured."""

    model: str
    family: str
    input_size: tuple[int, int]
    fields: dict[str, Any]
    failures: list[StageFailure]
    stage_seconds: dict[str, float]
    seconds: float

    @property
    def built(self) -> bool:
        return "artifact" in self.fields


def prepare_model(
    name: str,
    builds_dir: Path,
    *,
    input_size: tuple[int, int] | None,
    seed: int,
    rebuild: bool,
    records: TuningRecords | None = None,
) -> PreparedModel:
    """Costs and host build of one model, and with ``records`` its tuned build too.

    Needs no quiet machine, so several models are prepared at once (see :func:`report`)."""
    from edgecompile.zoo import model_info

    started = time.perf_counter()
    info = model_info(name)
    size = input_size or info.input_size
    fields: dict[str, Any] = {}
    stages = _Stages()

    def costs() -> None:
        cost, findings = model_costs(name, size)
        fields.update(
            params=cost.params,
            multiply_adds=cost.multiply_adds,
            memory_access=cost.memory_access,
            findings={finding["guideline"]: finding["summary"] for finding in findings},
        )

    def build() -> None:
        artifact, reused = build_host_artifact(
            name, builds_dir, input_size=size, seed=seed, rebuild=rebuild
        )
        fields.update(
            artifact=str(artifact.directory),
            build_reused=reused,
            build_seconds=artifact.manifest.build_seconds,
        )

    def tuned_build() -> None:
        artifact, reused = build_host_artifact(
            name, builds_dir, input_size=size, seed=seed, rebuild=rebuild, records=records
        )
        applied = artifact.manifest.records or {}
        fields.update(
            tuned_artifact=str(artifact.directory),
            tuned_build_reused=reused,
            tuned_build_seconds=artifact.manifest.build_seconds,
            tuned_kernels=len(applied.get("kernels_from_records", [])),
        )

    stages.run("cost", costs)
    if stages.run("build", build) and records is not None:
        stages.run("tuned build", tuned_build)
    return PreparedModel(
        model=name,
        family=info.family,
        input_size=(int(size[0]), int(size[1])),
        fields=fields,
        failures=stages.failures,
        stage_seconds=stages.seconds,
        seconds=round(time.perf_counter() - started, 2),
    )


def prepare_models(
    names: Sequence[str], jobs: int, progress: Progress = SILENT, **options: Any
) -> list[PreparedModel]:
    """:func:`prepare_model` for every name, ``jobs`` at a time in worker processes (1: here).

    At most ``jobs`` models are in flight, so when a build process dies (TVM crashing on a
    model) the suspects are few: each is retried alone, and only the one that kills its
    process again is reported as failed.
    """
    if min(jobs, len(names)) <= 1:
        prepared = []
        for name in names:
            with progress.stage(f"cost and build {name}"):
                prepared.append(prepare_model(name, **options))
        return prepared
    done: dict[str, PreparedModel] = {}
    suspects: list[str] = []
    queue = list(names)
    with progress.stage(f"cost and build {len(names)} models, {jobs} at a time"):
        while queue:
            with _process_pool(jobs) as pool:
                in_flight: dict[Future[PreparedModel], str] = {}
                while queue or in_flight:
                    while queue and len(in_flight) < jobs:
                        name = queue.pop(0)
                        in_flight[pool.submit(prepare_model, name, **options)] = name
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    broken = False
                    for future in finished:
                        name = in_flight.pop(future)
                        try:
                            done[name] = future.result()
                        except BrokenProcessPool:
                            suspects.append(name)
                            broken = True
                    if broken:  # the pool is gone: everything in flight failed with it
                        suspects += in_flight.values()
                        break
    for name in suspects:
        with progress.stage(f"cost and build {name} alone (its build process died)"):
            try:
                with _process_pool(1) as pool:
                    done[name] = pool.submit(prepare_model, name, **options).result()
            except BrokenProcessPool:
                done[name] = _crashed(name, options.get("input_size"))
    return [done[name] for name in names]


def default_build_jobs() -> int:
    """Models built at once by default: one per core, at most 4 (a build holds ~1.5 GB)."""
    return min(4, os.cpu_count() or 1)


def progress_stages(models: int, build_jobs: int | None = None) -> int:
    """How many stages :func:`report` shows for ``models`` models (for :class:`Progress`)."""
    jobs = build_jobs or default_build_jobs()
    return models + (1 if min(jobs, models) > 1 else models)


def _process_pool(jobs: int) -> ProcessPoolExecutor:
    # spawn: a forked child would inherit this process's TVM and torch thread pools.
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def _crashed(name: str, input_size: tuple[int, int] | None) -> PreparedModel:
    from edgecompile.zoo import model_info

    info = model_info(name)
    size = input_size or info.input_size
    failure = StageFailure("build", "the build process died (TVM crashed on it?): report it")
    return PreparedModel(name, info.family, (int(size[0]), int(size[1])), {}, [failure], {}, 0.0)


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
    stages = _Stages()

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
    return ModelResult(
        model=prepared.model,
        family=prepared.family,
        input_size=prepared.input_size,
        failures=[*prepared.failures, *stages.failures],
        stage_seconds={**prepared.stage_seconds, **stages.seconds},
        wall_seconds=round(prepared.seconds + time.perf_counter() - started, 2),
        **fields,
    )


# --------------------------------------------------------------------------------------------
# statistics


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranked = array[order]
    # Runs of equal values in the sorted array: start index and length of each.
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    lengths = np.diff(np.concatenate((starts, [len(ranked)])))
    mean_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation ρ (ties get average ranks), or None when it is undefined.

    Undefined: fewer than two pairs, or one side all ties (no ranking to correlate).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs: {len(x)} x values, {len(y)} y values")
    if len(x) < 2:
        return None
    rank_x = _average_ranks(x) - (len(x) + 1) / 2.0
    rank_y = _average_ranks(y) - (len(y) + 1) / 2.0
    scale = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
    if scale == 0.0:
        return None
    return float(rank_x @ rank_y) / scale


def correlations(
    results: Sequence[ModelResult], engines: Sequence[str], threads: Sequence[int]
) -> list[Correlation]:
    """Per engine and thread count: ρ(multiply-adds, median) and ρ(MAC, median) over the zoo."""
    found = []
    for engine in engines:
        for count in threads:
            points = [
                (result.multiply_adds, result.memory_access, timing.median_ms)
                for result in results
                if (timing := result.timing(engine, count)) is not None
                and result.multiply_adds is not None
                and result.memory_access is not None
            ]
            if not points:
                continue
            madds, mac, latency = zip(*points, strict=True)
            found.append(
                Correlation(
                    engine=engine,
                    threads=count,
                    models=len(points),
                    multiply_adds_rho=spearman(madds, latency),
                    mac_rho=spearman(mac, latency),
                )
            )
    return found


def correlation_sentences(found: Sequence[Correlation]) -> list[str]:
    """Each correlation as plain sentences: one for multiply-adds (FLOPs), one for MAC."""

    def rho(value: float | None) -> str:
        return "undefined (every value ties)" if value is None else f"ρ = {value:+.2f}"

    sentences = []
    for item in found:
        where = f"{item.engine}, {item.threads} thread{'s' if item.threads > 1 else ''}"
        if item.models < MIN_MODELS_FOR_CORRELATION:
            sentences.append(
                f"**{where}**: only {item.models} model(s) measured, too few for a rank "
                "correlation."
            )
            continue
        text = (
            f"**{where}** ({item.models} models): multiply-adds (FLOPs) rank-correlate with "
            f"latency at Spearman {rho(item.multiply_adds_rho)}. "
            f"Memory access cost (MAC) rank-correlates with latency at {rho(item.mac_rho)}."
        )
        if item.multiply_adds_rho is not None and item.mac_rho is not None:
            best = max(item.multiply_adds_rho, item.mac_rho)
            gap = item.mac_rho - item.multiply_adds_rho
            if best < WEAK_CORRELATION:
                text += " Neither orders the models the way their latency does."
            elif abs(gap) < 0.05:
                text += " Both order the models about equally well."
            else:
                better = "MAC" if gap > 0 else "Multiply-adds"
                text += f" {better} predicts the latency ranking better here."
        sentences.append(text)
    return sentences


# --------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, LLVM's CPU name, library versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("apache-tvm", "onnxruntime", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    from edgecompile.targets import resolve_target

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "llvm_cpu": resolve_target(TARGET).target.get("mcpu", "generic"),
        "python": platform.python_version(),
        # Other work on a shared machine moves the numbers: say how busy it was.
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------
# writing


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def write_csv(
    path: Path, results: Sequence[ModelResult], engines: Sequence[str], threads: Sequence[int]
) -> None:
    """One row per model × engine × thread count; a failed model keeps its rows, without times."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in results:
            error = "; ".join(f"{f.stage}: {f.problem}" for f in result.failures)
            for engine in engines:
                for count in threads:
                    timing = result.timing(engine, count)
                    row = {
                        "model": result.model,
                        "family": result.family,
                        "input_size": "x".join(map(str, result.input_size)),
                        "engine": engine,
                        "threads": count,
                        "params": _number(result.params),
                        "multiply_adds": _number(result.multiply_adds),
                        "memory_access": _number(result.memory_access),
                        "status": result.status,
                        "error": error,
                    }
                    if timing is not None:
                        row.update(
                            median_ms=_number(timing.median_ms, 6),
                            p90_ms=_number(timing.p90_ms, 6),
                            min_ms=_number(timing.min_ms, 6),
                            mean_ms=_number(timing.mean_ms, 6),
                            ratio_to_ort=_number(timing.ratio_to_ort, 6),
                            max_relative_error=_number(timing.max_relative_error, 3),
                        )
                    writer.writerow(row)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(str(cell)) for cell in row) + " |" for row in rows]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _build_seconds(seconds: float | None, reused: bool) -> str:
    return "-" if seconds is None else f"{seconds:.1f}" + (" (reused)" if reused else "")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def write_index(path: Path, report: ZooReport) -> None:
    from edgecompile._table import human_count

    machine = report.machine
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    ok = len(report.models) - len(report.failed)
    threads_text = ", ".join(map(str, report.threads))
    lines = [
        "# edgecompile zoo report",
        "",
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, LLVM CPU "
        f"`{machine['llvm_cpu']}`), target `{report.target}`; {versions}, Python "
        f"{machine['python']}; load average at the end "
        f"{' / '.join(map(str, machine['load_average']))} (1 / 5 / 15 min).",
        f"{len(report.models)} models ({ok} measured, {len(report.failed)} failed) in "
        f"{report.wall_seconds / 60:.1f} min. Batch 1; each latency is the median of "
        f"{report.repeat} timed runs after {report.warmup} warm-up runs, at {threads_text} "
        f"thread(s), every engine on the same seeded input (seed {report.seed}) with its output "
        "checked against ONNX Runtime first.",
        "",
        "Engines: `tvm` = TVM untuned, with edgecompile's schedules; "
        + (
            f"`{TUNED}` = the same model built with this machine's MetaSchedule tuning records "
            "applied, timed in the same runs; "
            if TUNED in report.engines
            else ""
        )
        + "`ort` = ONNX Runtime (CPU provider) on the static ONNX model TVM compiled; `torch` = "
        "torch eager. vs ORT = engine median / ORT median at the same thread count.",
        *[f"Note: {note}" for note in report.notes],
        "",
        "## What predicts latency here",
        "",
        "Spearman rank correlation, over the models measured, of each cost with the median "
        "latency (1.0 = the cost orders the models exactly as their latency does):",
        "",
        *[f"- {sentence}" for sentence in correlation_sentences(report.correlations)],
        "",
        f"![latency vs multiply-adds]({PLOT_MULTIPLY_ADDS})",
        f"![latency vs MAC]({PLOT_MAC})",
        "",
        "## Latency",
        "",
    ]
    headers = ["model", "engine"]
    for count in report.threads:
        headers += [f"{count}T ms", f"{count}T vs ORT"]
    headers += ["multiply-adds", "params", "MAC"]
    rows = []
    for result in report.models:
        for position, engine in enumerate(report.engines):
            row = [result.model if position == 0 else "", engine]
            for count in report.threads:
                timing = result.timing(engine, count)
                row += [
                    _ms(timing.median_ms if timing else None),
                    _ratio(timing.ratio_to_ort if timing else None),
                ]
            first = position == 0
            row += [
                human_count(result.multiply_adds) if first and result.multiply_adds else "",
                human_count(result.params) if first and result.params else "",
                human_count(result.memory_access) if first and result.memory_access else "",
            ]
            rows.append(row)
    lines += _markdown_table(headers, rows)
    profile_threads = next((r.profile_threads for r in report.models if r.profile_threads), None)
    lines += [
        "",
        f"## Time by op class (TVM profile, {profile_threads or report.threads[0]} thread)",
        "",
        "Per-kernel times from the instrumented Relax VM, summed by op class: ms (share). "
        "`other` is pools, the classifier matmul and the VM's bookkeeping. The instrument adds "
        "a little to every kernel and the sum and the end-to-end time are separate runs, so "
        "they differ a little (more on a busy machine).",
        "",
    ]
    rows = []
    for result in report.models:
        if not result.op_class_ms:
            continue
        total = sum(result.op_class_ms.values())
        rows.append(
            [
                result.model,
                _ms(total),
                _ms(result.profile_end_to_end_ms),
                *[
                    f"{ms:.2f} ({100 * ms / total:.0f}%)" if total and ms else "-"
                    for ms in (result.op_class_ms.get(name, 0.0) for name in OP_CLASSES)
                ],
            ]
        )
    lines += _markdown_table(["model", "sum ms", "end-to-end ms", *OP_CLASSES], rows)
    lines += [
        "",
        f"![time by op class]({PLOT_OP_CLASSES})",
        "",
        "## ShuffleNet v2's guidelines (G1–G4)",
        "",
        "From `edgecompile inspect`: G1 equal channel width minimises MAC, G2 group convolution "
        "raises MAC, G3 fragmentation lowers parallelism, G4 element-wise ops are not free.",
        "",
    ]
    guidelines = list(dict.fromkeys(g for r in report.models for g in r.findings))
    rows = [
        [result.model, *[result.findings.get(guideline, "-") for guideline in guidelines]]
        for result in report.models
        if result.findings
    ]
    lines += _markdown_table(["model", *guidelines], rows)
    lines += ["", "## Runs", ""]
    tuned = TUNED in report.engines
    rows = []
    for result in report.models:
        row = [
            result.model,
            result.status,
            "x".join(map(str, result.input_size)),
            _build_seconds(result.build_seconds, result.build_reused),
        ]
        if tuned:
            row += [
                _build_seconds(result.tuned_build_seconds, result.tuned_build_reused),
                "-" if result.tuned_kernels is None else str(result.tuned_kernels),
            ]
        row += [
            _seconds(result.stage_seconds.get("bench")),
            f"{result.wall_seconds:.1f}",
            "; ".join(f"{f.stage}: {f.problem}" for f in result.failures) or "-",
        ]
        rows.append(row)
    headers = ["model", "status", "input", "build s"]
    if tuned:
        headers += ["tuned build s", "kernels from records"]
    headers += ["bench s", "wall s", "problem"]
    lines += _markdown_table(headers, rows)
    lines += [
        "",
        "`results.csv` has one row per model × engine × thread count: "
        + ", ".join(f"`{name}`" for name in CSV_FIELDS)
        + ". MAC (`memory_access`) is in elements, as in ShuffleNet v2.",
        "",
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines))


def _save(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # Agg without pyplot: no global backend switch in the caller
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_latency(
    path: Path,
    results: Sequence[ModelResult],
    engines: Sequence[str],
    threads: Sequence[int],
    found: Sequence[Correlation],
    *,
    cost: str,
) -> None:
    """Latency against ``cost`` ("multiply_adds" or "memory_access"): a point per model and
    engine, one panel per thread count, log axes, ρ in the legend."""
    from matplotlib.figure import Figure

    label = "multiply-adds" if cost == "multiply_adds" else "MAC (elements)"
    figure = Figure(figsize=(5.5 * len(threads), 4.5))
    axes_list = figure.subplots(1, len(threads), squeeze=False)[0]
    markers = dict(zip(ENGINES, ("o", "D", "s", "^"), strict=True))
    for axes, count in zip(axes_list, threads, strict=True):
        plotted = False
        for engine in engines:
            points = [
                (getattr(result, cost), timing.median_ms)
                for result in results
                if (timing := result.timing(engine, count)) and getattr(result, cost)
            ]
            if not points:
                continue
            item = next((c for c in found if (c.engine, c.threads) == (engine, count)), None)
            rho = item.multiply_adds_rho if cost == "multiply_adds" else item.mac_rho
            legend = f"{engine} (ρ = {rho:+.2f})" if rho is not None else engine
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, label=legend, marker=markers[engine], alpha=0.75)
            plotted = True
        if plotted:
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no measurements", ha="center", transform=axes.transAxes)
        axes.set_xlabel(label)
        axes.set_ylabel("median latency (ms)")
        axes.set_title(f"{count} thread{'s' if count > 1 else ''}")
        axes.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"Latency vs {label}, batch 1, one point per model and engine")
    _save(figure, path)


def plot_op_classes(path: Path, results: Sequence[ModelResult]) -> None:
    """Stacked horizontal bars: each model's profiled TVM time split by op class.

    Bars are shares of each model's own time, its total written beside it: latencies span two
    orders of magnitude across the zoo, and absolute bars would flatten every fast model.
    """
    from matplotlib.figure import Figure

    profiled = [result for result in results if sum(result.op_class_ms.values()) > 0]
    figure = Figure(figsize=(10, 1.8 + 0.32 * max(len(profiled), 1)))
    axes = figure.subplots()
    if profiled:
        names = [result.model for result in profiled]
        totals = np.array([sum(result.op_class_ms.values()) for result in profiled])
        left = np.zeros(len(profiled))
        for op_class in OP_CLASSES:
            shares = 100 * np.array([r.op_class_ms.get(op_class, 0.0) for r in profiled]) / totals
            axes.barh(names, shares, left=left, label=op_class)
            left += shares
        for row, total in enumerate(totals):
            axes.text(101, row, f"{total:.1f} ms", va="center", fontsize="small")
        axes.set_xlim(0, 115)
        axes.invert_yaxis()  # first model on top, as in the tables
        axes.set_xlabel("share of TVM time per inference (%, profiled kernels; total at right)")
        axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        axes.text(0.5, 0.5, "no profiles", ha="center", transform=axes.transAxes)
    axes.set_title("Where TVM's time goes, by op class")
    axes.grid(True, axis="x", alpha=0.3)
    _save(figure, path)


# --------------------------------------------------------------------------------------------
# entry point


def report(
    models: str | Sequence[str] | None = None,
    output_dir: str | Path = "report",
    *,
    threads: Sequence[int] = (1, 2),
    engines: Sequence[str] = DEFAULT_ENGINES,
    repeat: int = 10,
    warmup: int = 2,
    profile_runs: int = 5,
    input_size: str | Sequence[int] | None = None,
    seed: int = 0,
    rebuild: bool = False,
    records: str | Path | None = None,
    build_jobs: int | None = None,
    progress: Progress = SILENT,
) -> ZooReport:
    """Bench and profile the selected zoo models here; write index.md, results.csv and plots.

    ``models``: None for the whole zoo, or names / globs / substrings (see
    :func:`select_models`). ``input_size`` overrides every model's default resolution (for
    quick runs). Host builds are cached in ``output_dir/builds`` and reused by a rerun unless
    ``rebuild``. ``records``: where the tuning records for "tvm-tuned" are (None: the default
    cache, and the engine is left out with a note when it has none for this machine; a folder
    given without them is an error). ``build_jobs``: models costed and built at once, in worker
    processes (None: one per core, at most 4; 1: one after the other in this process); timing
    is always one model at a time. ``progress`` gets the build phase and one stage per model.
    """
    from edgecompile.bench import PinnedWorker
    from edgecompile.export import parse_input_size
    from edgecompile.records import default_records_root

    started = time.perf_counter()
    names = select_models(models)
    engines = _check_options(threads, engines, repeat, warmup)
    threads = list(dict.fromkeys(threads))
    size = parse_input_size(input_size if not isinstance(input_size, int) else [input_size])
    notes = []
    tuned = tuning_records(TARGET, records) if TUNED in engines else None
    if tuned is not None:
        notes.append(
            f"{TUNED} applies the {tuned.records} tuning records in `{tuned.store}` (digest "
            f"{tuned.digest[:12]}); a model none of them apply to gets no {TUNED} time."
        )
    elif TUNED in engines:
        if records is not None:
            raise EdgecompileError(
                f"no tuning records for {TARGET} in {records}",
                f"tune first (edgecompile tune MODEL --records {records}), or drop --records",
            )
        engines.remove(TUNED)
        notes.append(
            f"{TUNED} not measured: there are no tuning records for {TARGET} in "
            f"{default_records_root()} (`edgecompile tune MODEL`, or --records DIR)."
        )
    output = Path(output_dir)
    builds_dir = output / BUILDS_DIR
    # Two phases: building needs no quiet machine, so models build `build_jobs` at a time;
    # then each is timed alone, with nothing of ours running beside the measurement.
    prepared = prepare_models(
        names,
        build_jobs or default_build_jobs(),
        progress,
        builds_dir=builds_dir,
        input_size=size,
        seed=seed,
        rebuild=rebuild,
        records=tuned,
    )
    results = []
    workers = {count: PinnedWorker(count) for count in threads}
    try:
        for model in prepared:
            with progress.stage(f"measure {model.model}"):
                results.append(
                    measure_model(
                        model,
                        engines=engines,
                        threads=threads,
                        repeat=repeat,
                        warmup=warmup,
                        profile_runs=profile_runs,
                        workers=workers,
                        seed=seed,
                    )
                )
            if progress.enabled:
                for failure in results[-1].failures:
                    progress.stream.write(f"      {failure.stage} failed: {failure.problem}\n")
    finally:
        for worker in workers.values():
            worker.close()
    found = correlations(results, engines, threads)
    index = output / "index.md"
    results_csv = output / "results.csv"
    plots = [output / PLOT_MULTIPLY_ADDS, output / PLOT_MAC, output / PLOT_OP_CLASSES]
    write_csv(results_csv, results, engines, threads)
    plot_latency(plots[0], results, engines, threads, found, cost="multiply_adds")
    plot_latency(plots[1], results, engines, threads, found, cost="memory_access")
    plot_op_classes(plots[2], results)
    zoo_report = ZooReport(
        output_dir=str(output),
        index=str(index),
        results_csv=str(results_csv),
        plots=[str(plot) for plot in plots],
        target=TARGET,
        threads=list(threads),
        engines=engines,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        machine=machine_info(),
        models=results,
        correlations=found,
        notes=notes,
        wall_seconds=0.0,
        records=tuned,
    )
    # The index states the total time, so it is written last.
    zoo_report = dataclasses.replace(
        zoo_report, wall_seconds=round(time.perf_counter() - started, 1)
    )
    write_index(index, zoo_report)
    return zoo_report


def format_summary(zoo_report: ZooReport) -> str:
    """The terminal summary: latency per engine and thread count, vs ORT, and the ρ sentences."""
    from edgecompile._table import format_table, human_count

    headers = ["model", "mult-adds", "MAC"]
    # TVM's engines against ORT: the ratios the report is about.
    versus_ort = [
        e for e in ("tvm", TUNED) if e in zoo_report.engines and "ort" in zoo_report.engines
    ]
    for count in zoo_report.threads:
        headers += [f"{engine}@{count} ms" for engine in zoo_report.engines]
        headers += [f"{engine}/ort@{count}" for engine in versus_ort]
    rows = []
    for result in zoo_report.models:
        row = [
            result.model,
            human_count(result.multiply_adds) if result.multiply_adds else "-",
            human_count(result.memory_access) if result.memory_access else "-",
        ]
        for count in zoo_report.threads:
            for engine in zoo_report.engines:
                timing = result.timing(engine, count)
                row.append(_ms(timing.median_ms if timing else None))
            for engine in versus_ort:
                timing = result.timing(engine, count)
                row.append(_ratio(timing.ratio_to_ort if timing else None).replace("×", "x"))
        rows.append(row)
    lines = [format_table(headers, rows), ""]
    for sentence in correlation_sentences(zoo_report.correlations):
        lines.append(sentence.replace("**", ""))
    for result in zoo_report.failed:
        failure = result.failures[0]
        lines.append(f"{result.model}: {failure.stage} failed: {failure.problem}")
    lines.append(
        f"wrote {zoo_report.index}, {Path(zoo_report.results_csv).name} and "
        f"{len(zoo_report.plots)} plots in {zoo_report.wall_seconds / 60:.1f} min"
    )
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """``edgecompile.report`` names both this module and :func:`report`.

    Importing the submodule (the CLI does) makes the package attribute ``edgecompile.report``
    this module rather than the function the lazy API promises, so calls are forwarded.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> ZooReport:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
