"""The zoo report: bench + profile over many models, and what predicts their latency.

``report`` builds each selected zoo model for this machine, times it next to ONNX Runtime and
torch (:func:`edgecompile.bench.bench_local`), splits its time by op class
(:func:`edgecompile.bench.profile_local`) and writes ``index.md`` (tables, findings, the
rank correlations of multiply-adds and MAC with latency), ``results.csv`` and PNG plots.

One model's failure (a build TVM refuses, engines that disagree) is a row of the report, never
the end of it: a whole-zoo run takes tens of minutes and should not be lost to one model.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import fnmatch
import inspect
import math
import multiprocessing
import os
import platform
import re
import sys
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompile._atomic import atomic_file
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress

if TYPE_CHECKING:
    from edgecompile.artifact import Artifact
    from edgecompile.inspection import ModelCost

TARGET = "host"
# "tvm" is TVM untuned with edgecompile's schedules; "tvm-tuned" needs tuning records (#5).
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


def tuned_engine_available(target: str) -> bool:
    """Whether a tuning-records database exists for ``target``, so "tvm-tuned" can be timed.

    Always False for now: tuning records arrive with issue #5 (``edgecompile/records.py``),
    which wires this check to its database and the tuned build into :func:`_bench_model`.
    """
    del target
    return False


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class StageFailure:
    """A stage (cost, build, bench, profile) that failed for one model, and why."""

    stage: str
    problem: str


@dataclass(frozen=True)
class Timing:
    """One engine at one thread count (from ``bench_local``)."""

    engine: str
    threads: int
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    ratio_to_ort: float | None
    max_relative_error: float | None


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


def build_host_artifact(
    name: str,
    builds_dir: Path,
    *,
    input_size: tuple[int, int],
    seed: int,
    rebuild: bool,
) -> tuple[Artifact, bool]:
    """(host artifact of ``name`` under ``builds_dir``, whether an earlier build was reused).

    A cached build is reused only if it is for this model, input shape, seed, host target,
    TVM and edgecompile version, untuned, and did not fail verification; else it is rebuilt.
    """
    from edgecompile import __version__
    from edgecompile.artifact import load_artifact
    from edgecompile.builder import artifact_name, build
    from edgecompile.targets import resolve_target

    preset = resolve_target(TARGET)
    directory = builds_dir / f"{artifact_name(name)}-{preset.name}"
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
                # A build with tuning records applied is not the untuned "tvm" engine.
                and manifest.records_digest is None
                and not getattr(manifest, "records", None)
            ):
                return artifact, True
    # No verification here: bench checks TVM against ONNX Runtime and torch (same tolerance,
    # seeded input) before it times anything, so verifying would only repeat that check.
    result = build(
        name,
        preset,
        output_dir=builds_dir,
        input_size=input_size,
        seed=seed,
        verify=False,
        **_untuned_build_options(build),
    )
    return result.artifact, False


def _untuned_build_options(build: Callable[..., Any]) -> dict[str, Any]:
    """Keyword arguments that keep a build untuned, for the "tvm" engine.

    #5's builder applies tuning records from the default cache unless given ``records=False``;
    the builder before it takes no such argument. Once #5 has landed this can be just
    ``{"records": False}``.
    """
    return {"records": False} if "records" in inspect.signature(build).parameters else {}


def _bench_model(
    artifact_dir: str,
    *,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int,
) -> list[Timing]:
    from edgecompile.bench import bench_local

    # "tvm-tuned" never reaches here until tuned_engine_available() is wired (#5).
    compare = [engine for engine in engines if engine in ("ort", "torch")]
    bench = bench_local(
        artifact_dir, compare=compare, threads=threads, repeat=repeat, warmup=warmup, seed=seed
    )
    return [
        Timing(
            engine=t.engine,
            threads=t.threads,
            median_ms=t.median_ms,
            p90_ms=t.p90_ms,
            min_ms=t.min_ms,
            mean_ms=t.mean_ms,
            ratio_to_ort=t.ratio_to_ort,
            max_relative_error=t.max_relative_error,
        )
        for t in bench.timings
    ]


def op_class_of(name: str, op: str | None) -> str:
    """The report's op class of one profiled VM kernel.

    ``op`` is the manifest schedule kind joined to the kernel by ``profile_local``
    (pointwise, depthwise, grouped, conv, pool, matmul); kernels without one are layout and
    element-wise glue, classified by the op names TVM puts in their names.
    """
    if op in (POINTWISE, DEPTHWISE, GROUPED):
        return op
    if op == "conv":
        return DENSE_CONV
    if op is not None or name.startswith("vm.builtin"):
        return OTHER  # pool, matmul, and the VM's own bookkeeping
    words = set(re.split(r"[_.]+", re.sub(r"\d+", "", name)))
    if words & {"pointwise", "depthwise"}:
        return POINTWISE if "pointwise" in words else DEPTHWISE
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


def _pin_tvm_threads(threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(threads)


def _profile_task(
    artifact_dir: str, threads: int, runs: int, warmup: int, seed: int
) -> dict[str, Any]:
    """Time per op class of one artifact; runs in the profile worker process."""
    from edgecompile.bench import profile_local

    profile = profile_local(artifact_dir, runs=runs, warmup=warmup, threads=threads, seed=seed)
    by_class = dict.fromkeys(OP_CLASSES, 0.0)
    for layer in profile.layers:
        by_class[op_class_of(layer.name, layer.op)] += layer.time_ms
    return {"op_class_ms": by_class, "end_to_end_ms": profile.end_to_end_ms}


class ProfileWorker:
    """One long-lived process that profiles every model at a fixed thread count.

    Not this process: TVM's pool size is process-global (see ``bench._measure_in_subprocess``),
    so the worker pins it before TVM loads. Not a process per model either: importing torch
    and TVM costs ~2.5 s, paid here once per report instead of once per model.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None

    def profile(self, artifact_dir: str, *, runs: int, warmup: int, seed: int) -> dict[str, Any]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # fork would inherit TVM state
                initializer=_pin_tvm_threads,
                initargs=(self.threads,),
            )
        future = self._pool.submit(_profile_task, artifact_dir, self.threads, runs, warmup, seed)
        try:
            return future.result()
        except BrokenProcessPool:
            self.close()  # the next model gets a fresh worker
            raise EdgecompileError(
                "the profile worker died (TVM aborted while running the library)", "report it"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _describe(exc: Exception) -> str:
    if isinstance(exc, EdgecompileError):
        return str(exc)
    # Not a user error: a bug or a TVM crash. Kept in the report so the run goes on.
    first = str(exc).strip().splitlines()[-1:] or [""]
    return f"{type(exc).__name__}: {first[0]} (unexpected: report it)"


def measure_model(
    name: str,
    builds_dir: Path,
    *,
    input_size: tuple[int, int] | None,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    profile_runs: int,
    profiler: ProfileWorker,
    seed: int,
    rebuild: bool,
) -> ModelResult:
    """Costs, build, bench and profile of one model; a failing stage is recorded, not raised."""
    from edgecompile.zoo import model_info

    started = time.perf_counter()
    info = model_info(name)
    size = input_size or info.input_size
    fields: dict[str, Any] = {}
    failures: list[StageFailure] = []
    stage_seconds: dict[str, float] = {}

    def stage(label: str, work: Callable[[], None]) -> bool:
        stage_started = time.perf_counter()
        try:
            work()
        except Exception as exc:  # one model must not end a zoo-wide run; see _describe
            failures.append(StageFailure(label, _describe(exc)))
            return False
        finally:
            stage_seconds[label] = round(time.perf_counter() - stage_started, 2)
        return True

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

    def bench() -> None:
        fields["timings"] = _bench_model(
            fields["artifact"],
            engines=engines,
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            seed=seed,
        )

    def profile() -> None:
        result = profiler.profile(fields["artifact"], runs=profile_runs, warmup=1, seed=seed)
        fields.update(
            op_class_ms=result["op_class_ms"],
            profile_threads=profiler.threads,
            profile_end_to_end_ms=result["end_to_end_ms"],
        )

    stage("cost", costs)
    if stage("build", build):
        stage("bench", bench)
        stage("profile", profile)
    return ModelResult(
        model=name,
        family=info.family,
        input_size=(int(size[0]), int(size[1])),
        failures=failures,
        stage_seconds=stage_seconds,
        wall_seconds=round(time.perf_counter() - started, 2),
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
        "Engines: `tvm` = TVM untuned, with edgecompile's schedules; `ort` = ONNX Runtime "
        "(CPU provider); `torch` = torch eager. vs ORT = engine median / ORT median at the same "
        "thread count.",
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
    rows = [
        [
            result.model,
            result.status,
            "x".join(map(str, result.input_size)),
            "-"
            if result.build_seconds is None
            else f"{result.build_seconds:.1f}" + (" (reused)" if result.build_reused else ""),
            _seconds(result.stage_seconds.get("bench")),
            f"{result.wall_seconds:.1f}",
            "; ".join(f"{f.stage}: {f.problem}" for f in result.failures) or "-",
        ]
        for result in report.models
    ]
    headers = ["model", "status", "input", "build s", "bench s", "wall s", "problem"]
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
    progress: Progress = SILENT,
) -> ZooReport:
    """Bench and profile the selected zoo models here; write index.md, results.csv and plots.

    ``models``: None for the whole zoo, or names / globs / substrings (see
    :func:`select_models`). ``input_size`` overrides every model's default resolution (for
    quick runs). Host builds are cached in ``output_dir/builds`` and reused by a rerun unless
    ``rebuild``. ``progress`` gets one stage per model.
    """
    from edgecompile.export import parse_input_size

    started = time.perf_counter()
    names = select_models(models)
    engines = _check_options(threads, engines, repeat, warmup)
    threads = list(dict.fromkeys(threads))
    size = parse_input_size(input_size if not isinstance(input_size, int) else [input_size])
    notes = []
    if TUNED in engines:
        if tuned_engine_available(TARGET):
            # #5: build with the records database and bench that library as "tvm-tuned".
            raise NotImplementedError("tvm-tuned is available but not wired into the report")
        engines.remove(TUNED)
        notes.append(f"{TUNED} not measured: there is no tuning-records database for {TARGET} yet.")
    output = Path(output_dir)
    builds_dir = output / BUILDS_DIR
    results = []
    profiler = ProfileWorker(threads[0])
    try:
        for name in names:
            with progress.stage(name):
                results.append(
                    measure_model(
                        name,
                        builds_dir,
                        input_size=size,
                        engines=engines,
                        threads=threads,
                        repeat=repeat,
                        warmup=warmup,
                        profile_runs=profile_runs,
                        profiler=profiler,
                        seed=seed,
                        rebuild=rebuild,
                    )
                )
            if progress.enabled:
                for failure in results[-1].failures:
                    progress.stream.write(f"      {failure.stage} failed: {failure.problem}\n")
    finally:
        profiler.close()
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
    for count in zoo_report.threads:
        headers += [f"{engine}@{count} ms" for engine in zoo_report.engines]
        if "ort" in zoo_report.engines:
            headers.append(f"tvm/ort@{count}")
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
            if "ort" in zoo_report.engines:
                timing = result.timing("tvm", count)
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
