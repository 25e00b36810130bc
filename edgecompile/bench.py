"""Local latency of a compiled model next to ONNX Runtime and torch, and where its time goes.

``bench_local`` answers "is our library faster than what people already use?" on this
machine: every engine gets the same seeded input and the same thread count, and its output
must agree with the reference before any time of it is reported (a fast wrong answer is not
a result). ``profile_local`` answers "which kernels cost the time?" by instrumenting the
Relax VM around each packed call. Every bench, here or on a board, appends its numbers to a
history (``append_history``), so a board's latency can be read next to this machine's
(``compare_with_host``).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgecompile._cache import cache_root
from edgecompile.artifact import Artifact, elf_info, load_artifact
from edgecompile.errors import EdgecompileError

if TYPE_CHECKING:
    from edgecompile.device.remote import BenchResult

ENGINES = ("tvm", "ort", "torch")
TOLERANCE = 1e-4

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]
Result = TypeVar("Result")
#: Where a bench appends its numbers: True = :func:`default_history_path`, False = nowhere.
History = str | Path | bool


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


@dataclass(frozen=True)
class BenchReport:
    model: str
    artifact: str
    input_shapes: list[list[int]]
    seed: int
    repeat: int
    warmup: int
    threads: list[int]
    engines: list[str]
    reference: str
    timings: list[EngineTiming]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# resolving what to measure


def _is_artifact(source: str) -> bool:
    path = Path(source)
    return path.is_dir() or path.name == "manifest.json" or path.suffix == ".so"


def resolve_host_artifact(
    source: str,
    *,
    target: str = "host",
    input_size: str | None = None,
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> Artifact:
    """A given artifact (checked to run here), or a fresh host build of a zoo name / ONNX file.

    Without ``output_dir`` the build goes to a temporary folder that lives for the process:
    benchmarking should not leave build/ entries behind unless asked to.
    """
    from edgecompile.targets import host_arch, resolve_target

    if _is_artifact(source):
        artifact = load_artifact(source)
    else:
        preset = resolve_target(target)
        if not preset.is_host:
            raise EdgecompileError(
                f"target {preset.name} does not run on this machine",
                "use --target host here, or --device/--rpc/--tracker to bench on the board",
            )
        from edgecompile.builder import build

        directory = output_dir or tempfile.mkdtemp(prefix="edgecompile-bench-")
        artifact = build(
            source, preset, output_dir=directory, input_size=input_size, seed=seed, keep_onnx=True
        ).artifact
    arch = elf_info(artifact.library).arch
    if arch != host_arch():
        raise EdgecompileError(
            f"{artifact.directory} is a {arch} library; this machine is {host_arch()}",
            "to bench it on its board give exactly one of --device user@host, --rpc or "
            "--tracker; or build with --target host",
        )
    return artifact


_SEEDED = re.compile(r"seeded random weights \(seed (\d+)\)")


def artifact_onnx(artifact: Artifact) -> Path | None:
    """The static ONNX model a build kept beside its library (``build(keep_onnx=True)``)."""
    name = artifact.manifest.extra.get("onnx")
    path = artifact.directory / name if name else None
    return path if path is not None and path.is_file() else None


def _reference_sources(artifact: Artifact, compare: Sequence[str]) -> tuple[dict[str, Any], list]:
    """How the worker rebuilds the ORT/torch references for ``artifact``, plus notes.

    A zoo build with seeded weights is re-created exactly (same name, seed, input shape). ORT
    runs the static ONNX the build kept when there is one (what TVM compiled, and no second
    export); else a zoo model is exported again and an ONNX build uses its ONNX file. Anything
    else cannot be compared, which is an error, not a silently missing column.
    """
    manifest = artifact.manifest
    notes: list[str] = []
    shape = manifest.inputs[0]["shape"]
    seeded = _SEEDED.fullmatch(manifest.weights)
    onnx_file = manifest.weights.removeprefix("ONNX file ")
    kept = artifact_onnx(artifact)
    spec: dict[str, Any] = {"torch": None, "onnx": None if kept is None else str(kept)}
    if seeded and len(manifest.inputs) == 1:
        spec["torch"] = {
            "name": manifest.model,
            "input_size": [shape[2], shape[3]],
            "batch": shape[0],
            "seed": int(seeded.group(1)),
        }
    elif manifest.weights.startswith("ONNX file ") and (kept or Path(onnx_file).is_file()):
        spec["onnx"] = spec["onnx"] or onnx_file
        if "torch" in compare:
            notes.append("torch skipped: the model came from an ONNX file")
    wanted = [engine for engine in compare if engine != "tvm"]
    if wanted and spec["torch"] is None and spec["onnx"] is None:
        raise EdgecompileError(
            f"cannot re-create ONNX Runtime/torch references for {artifact.directory} "
            f"(weights: {manifest.weights})",
            "bench the zoo name or the ONNX file instead, or pass --compare ''",
        )
    return spec, notes


# --------------------------------------------------------------------------------------------
# engines (module-level factories so tests can swap one for a broken engine)


def tvm_runner(library: str) -> Runner:
    import tvm
    from tvm import relax

    machine = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    main = machine["main"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = main(*[tvm.runtime.tensor(x) for x in inputs])
        items = result if type(result).__name__ in ("Array", "Tuple") else [result]
        return [item.numpy() for item in items]

    return run


def ort_runner(onnx_path: str, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs, strict=True)))

    return run


def torch_runner(model: Any, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    module = model.module

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x) for x in inputs])
        out = out if isinstance(out, (list, tuple)) else [out]
        return [item.numpy() for item in out]

    return run


def _make_runners(spec: dict[str, Any], threads: int) -> dict[str, Runner]:
    from edgecompile.runner import set_threads

    set_threads(threads)
    runners: dict[str, Runner] = {}
    torch_model = None
    onnx_path = spec["onnx"]
    if spec["torch"] is not None:
        from edgecompile.export import export_onnx, load_torch_model

        info = spec["torch"]
        torch_model = load_torch_model(
            info["name"], input_size=info["input_size"], batch=info["batch"], seed=info["seed"]
        )
        if "ort" in spec["engines"] and not onnx_path:  # an artifact without its ONNX
            onnx_path = str(Path(spec["scratch"]) / f"{info['name']}.onnx")
            if not Path(onnx_path).is_file():
                export_onnx(torch_model, onnx_path, seed=info["seed"])
    for engine in spec["engines"]:
        if engine in spec["libraries"]:
            runners[engine] = tvm_runner(spec["libraries"][engine])
        elif engine == "ort" and onnx_path:
            runners[engine] = ort_runner(onnx_path, threads)
        elif engine == "torch" and torch_model is not None:
            runners[engine] = torch_runner(torch_model, threads)
    return runners


# --------------------------------------------------------------------------------------------
# measuring


def check_agreement(
    outputs: dict[str, list[np.ndarray]], tolerance: float = TOLERANCE
) -> tuple[str, dict[str, float]]:
    """Each engine's max relative error against the reference (ORT if present, else torch).

    Raises before any timing happens, so a wrong engine never gets a number printed.
    """
    from edgecompile.export import relative_error

    reference = "ort" if "ort" in outputs else "torch" if "torch" in outputs else "tvm"
    expected = outputs[reference]
    errors: dict[str, float] = {}
    for engine, actual in outputs.items():
        if len(actual) != len(expected) or any(
            a.shape != e.shape for a, e in zip(actual, expected, strict=False)
        ):
            raise EdgecompileError(
                f"{engine} and {reference} return different output shapes",
                "the engines do not compute the same model; rebuild the artifact",
            )
        error = max(relative_error(a, e) for a, e in zip(actual, expected, strict=True))
        if not error <= tolerance:
            raise EdgecompileError(
                f"{engine} disagrees with {reference}: max relative error {error:.2e} > "
                f"{tolerance:.0e}; no time reported for it",
                "rebuild the artifact from the same model and seed, or report the model",
            )
        errors[engine] = error
    return reference, errors


def _time(run: Runner, inputs: list[np.ndarray], repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run(inputs)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(inputs)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One thread count, all engines, in this process: outputs checked, then timed."""
    from edgecompile.device.remote import latency_stats

    threads = spec["threads"]
    inputs = [np.asarray(x, dtype=np.float32) for x in _inputs(spec)]
    runners = _make_runners(spec, threads)
    outputs = {engine: run(inputs) for engine, run in runners.items()}
    reference, errors = check_agreement(outputs, spec["tolerance"])
    stats = {
        engine: latency_stats(_time(run, inputs, spec["repeat"], spec["warmup"]))
        for engine, run in runners.items()
    }
    return {"reference": reference, "errors": errors, "stats": stats}


def _inputs(spec: dict[str, Any]) -> list[np.ndarray]:
    from edgecompile.export import example_input

    return [
        example_input(shape, seed=spec["seed"] + index).astype(dtype)
        for index, (shape, dtype) in enumerate(spec["inputs"])
    ]


def _measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh process per thread count: TVM's pool size is process-global and, measured on
    squeezenet1_1, runtime.config_threadpool after the first run did not change its latency,
    so switching in-process cannot be trusted."""
    env = {**os.environ, "TVM_NUM_THREADS": str(spec["threads"])}
    completed = subprocess.run(
        [sys.executable, "-c", "from edgecompile.bench import _worker; _worker()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise EdgecompileError(f"the benchmark worker failed: {tail[0]}", "report it")
    return _raise_if_error(json.loads(lines[-1]))


def _worker() -> None:
    """Entry point of the per-thread-count subprocess: spec JSON in, result JSON out."""
    spec = json.loads(sys.stdin.read())
    sys.stdout.write("\n" + json.dumps(_measure_or_error(spec)) + "\n")


def _measure_or_error(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`, with a user error as data: it crosses a process boundary intact."""
    try:
        return measure(spec)
    except EdgecompileError as exc:
        return {"error": exc.problem, "fix": exc.fix}
    finally:
        # A long-lived worker measures model after model: free this one's TVM library, ORT
        # session and torch module now, not when a cycle collection happens to run.
        gc.collect()


def _pin_tvm_threads(threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(threads)


class PinnedWorker:
    """One long-lived process, its TVM thread pool pinned to ``threads``, for many models.

    A process of its own for the reason in :func:`_measure_in_subprocess`; long-lived because
    starting Python and importing torch and TVM costs ~3.5 s, which a report over the zoo
    would otherwise pay per model and thread count. Started on first use; ``close`` ends it.

    Memory a model leaves behind (the whole zoo grew a worker from ~0.9 to ~3 GB) is given
    back by replacing the process after ``max_tasks`` calls.
    """

    def __init__(self, threads: int, *, max_tasks: int = 40) -> None:
        self.threads = threads
        self.max_tasks = max_tasks
        self._pool: ProcessPoolExecutor | None = None

    def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in the worker (a module-level function: it is pickled by name)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # fork would inherit TVM state
                initializer=_pin_tvm_threads,
                initargs=(self.threads,),
                max_tasks_per_child=self.max_tasks,
            )
        try:
            return self._pool.submit(function, *args).result()
        except BrokenProcessPool:
            self.close()  # the next call gets a fresh worker
            raise EdgecompileError(
                f"the {self.threads}-thread benchmark worker process died (a library it ran "
                "aborted?)",
                "report it with the model name",
            ) from None

    def measure(self, spec: dict[str, Any]) -> dict[str, Any]:
        """:func:`measure` in the worker; the thread count must be the worker's."""
        if spec["threads"] != self.threads:
            raise ValueError(f"a {self.threads}-thread worker asked to time {spec['threads']}")
        return _raise_if_error(self.call(_measure_or_error, spec))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PinnedWorker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _raise_if_error(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise EdgecompileError(result["error"], result.get("fix"))
    return result


def parse_list(text: str | Sequence[Any] | None, kind: type = str) -> list[Any]:
    """``"1,2"`` → [1, 2]; ``"ort,torch"`` → ["ort", "torch"]; empty text → []."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [kind(str(item).strip()) for item in items if str(item).strip()]
    except ValueError:
        raise EdgecompileError(
            f"bad list {text!r}", "give comma-separated values, e.g. 1,2"
        ) from None


def bench_local(
    source: str,
    *,
    target: str = "host",
    compare: Sequence[str] = ("ort", "torch"),
    threads: Sequence[int] = (1,),
    repeat: int = 20,
    warmup: int = 3,
    seed: int = 0,
    input_size: str | None = None,
    output_dir: str | Path | None = None,
    tolerance: float = TOLERANCE,
    isolate: bool = True,
    extra_artifacts: Mapping[str, str | Path] | None = None,
    workers: Mapping[int, PinnedWorker] | None = None,
    history: History = True,
) -> BenchReport:
    """Latency of the host library of ``source`` and of ORT/torch, per thread count.

    ``isolate=True`` measures each thread count in its own subprocess (see
    :func:`_measure_in_subprocess`); ``False`` measures in this process, for tests and for a
    single thread count in a fresh process. ``workers`` (thread count → :class:`PinnedWorker`)
    measures those thread counts in long-lived processes instead, for many models in a row.

    ``extra_artifacts`` (engine name → artifact) adds other host builds of the same model, e.g.
    ``{"tvm-tuned": ...}``: timed as engines of their own in the same runs (same process, thread
    count and input), their outputs checked like every engine's.

    Every timing is appended to the bench ``history`` (:func:`append_history`), where a later
    board bench of the same model finds it (:func:`compare_with_host`).
    """
    unknown = [engine for engine in compare if engine not in ENGINES]
    if unknown:
        raise EdgecompileError(f"unknown engine(s) {', '.join(unknown)}", "use --compare ort,torch")
    if repeat < 1 or warmup < 0:
        raise EdgecompileError("bad --repeat/--warmup", "use --repeat 1 or more, --warmup 0+")
    if not threads or min(threads) < 1:
        raise EdgecompileError(f"bad thread counts {list(threads)}", "use e.g. --threads 1,2")
    artifact = resolve_host_artifact(
        source, target=target, input_size=input_size, seed=seed, output_dir=output_dir
    )
    libraries = {"tvm": str(artifact.library)}
    digests = {"tvm": artifact.manifest.library_sha256}
    for engine, extra in (extra_artifacts or {}).items():
        other = _same_model_as(artifact, engine, load_artifact(extra))
        libraries[engine] = str(other.library)
        digests[engine] = other.manifest.library_sha256
    references, notes = _reference_sources(artifact, compare)
    engines = [*libraries, *[e for e in dict.fromkeys(compare) if e != "tvm"]]
    if references["torch"] is None:
        engines = [e for e in engines if e != "torch"]
    inputs = [(spec["shape"], spec["dtype"]) for spec in artifact.manifest.inputs]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-bench-") as scratch:
        for count in threads:
            spec = {
                **references,
                "libraries": libraries,
                "engines": engines,
                "inputs": inputs,
                "seed": seed,
                "threads": count,
                "repeat": repeat,
                "warmup": warmup,
                "tolerance": tolerance,
                "scratch": scratch,
            }
            if workers is not None and count in workers:
                results[count] = workers[count].measure(spec)
            elif isolate:
                results[count] = _measure_in_subprocess(spec)
            else:
                results[count] = measure(spec)
    timings = []
    reference = "tvm"
    for count, result in results.items():
        reference = result["reference"]
        ort_median = result["stats"].get("ort", {}).get("median_ms")
        for engine in engines:
            stats = result["stats"][engine]
            timings.append(
                EngineTiming(
                    engine=engine,
                    threads=count,
                    median_ms=stats["median_ms"],
                    p90_ms=stats["p90_ms"],
                    min_ms=stats["min_ms"],
                    mean_ms=stats["mean_ms"],
                    max_relative_error=result["errors"].get(engine),
                    ratio_to_ort=stats["median_ms"] / ort_median if ort_median else None,
                )
            )
    input_shapes = [list(shape) for shape, _ in inputs]
    if history is not False:
        where = {"kind": "host", "cpu": host_cpu_name()}
        entries = [
            history_entry(artifact, input_shapes, t, where, digests.get(t.engine)) for t in timings
        ]
        record_history(entries, history, notes)
    return BenchReport(
        model=artifact.manifest.model,
        artifact=str(artifact.directory),
        input_shapes=input_shapes,
        seed=seed,
        repeat=repeat,
        warmup=warmup,
        threads=list(threads),
        engines=engines,
        reference=reference,
        timings=timings,
        notes=notes,
    )


def _same_model_as(artifact: Artifact, engine: str, other: Artifact) -> Artifact:
    """``other``, checked to be a host build of ``artifact``'s model (inputs, outputs, weights):
    timing it next to ``artifact`` compares two compilations, never two models."""
    from edgecompile.targets import host_arch

    if engine in ENGINES or not engine:
        raise EdgecompileError(
            f"cannot name an extra artifact {engine!r}", "give it a name of its own, e.g. tvm-tuned"
        )
    mine, theirs = artifact.manifest, other.manifest
    mismatched = [
        what
        for what, a, b in (
            ("model", mine.model, theirs.model),
            ("inputs", mine.inputs, theirs.inputs),
            ("outputs", mine.outputs, theirs.outputs),
            ("weights", mine.weights, theirs.weights),
        )
        if a != b
    ]
    if mismatched:
        raise EdgecompileError(
            f"{other.directory} ({engine}) is not a build of the same model as "
            f"{artifact.directory}: {', '.join(mismatched)} differ",
            "build both from the same model, input size and seed",
        )
    arch = elf_info(other.library).arch
    if arch != host_arch():
        raise EdgecompileError(
            f"{other.directory} ({engine}) is a {arch} library; this machine is {host_arch()}",
            "build it with --target host",
        )
    return other


# --------------------------------------------------------------------------------------------
# history: every bench's numbers, so a board bench can be read next to this machine's

#: A file of its own for the history; else ``bench.jsonl`` in the cache folder (below).
HISTORY_ENV = "EDGECOMPILE_BENCH_HISTORY"
HISTORY_VERSION = 1
_REQUIRED = {"run": str, "time": str, "model": str, "input_shapes": list, "engine": str}


def default_history_path() -> Path:
    """``$EDGECOMPILE_BENCH_HISTORY``, else ``bench.jsonl`` in edgecompile's cache root."""
    if os.environ.get(HISTORY_ENV):
        return Path(os.environ[HISTORY_ENV]).expanduser()
    return cache_root() / "bench.jsonl"


def _history_file(history: History | None) -> Path | None:
    if history is False:
        return None
    if history is True or history is None:
        return default_history_path()
    return Path(history).expanduser()


def host_cpu_name() -> str:
    """This machine's CPU as /proc/cpuinfo names it ("AMD EPYC"), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _utc_now() -> str:
    # ISO 8601 with a fixed width and "Z": strings sort in time order, so readers need no parsing.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_entry(
    artifact: Artifact,
    input_shapes: Sequence[Sequence[int]],
    timing: EngineTiming,
    where: Mapping[str, Any],
    library_sha256: str | None,
    *,
    run: str = "",
    time_utc: str = "",
) -> dict[str, Any]:
    """One history line: which build of which model, one engine at one thread count, where.

    ``library_sha256`` is the TVM library timed (None for ORT/torch, which do not run it);
    ``run`` groups the lines of one bench call, so a reader never mixes two runs' numbers;
    left empty, it and ``time_utc`` are stamped when the lines are recorded.
    """
    return {
        "version": HISTORY_VERSION,
        "run": run,
        "time": time_utc,
        "model": artifact.manifest.model,
        "input_shapes": [[int(d) for d in shape] for shape in input_shapes],
        "preset": artifact.manifest.preset,
        "mcpu": artifact.manifest.target.get("mcpu"),
        "weights": artifact.manifest.weights,
        "library_sha256": library_sha256,
        "engine": timing.engine,
        "threads": timing.threads,
        "median_ms": timing.median_ms,
        "p90_ms": timing.p90_ms,
        "min_ms": timing.min_ms,
        "where": dict(where),
    }


def record_history(entries: list[dict[str, Any]], history: History, notes: list[str]) -> None:
    """Stamp ``entries`` as one run and append them; a failure is a note, not a failed bench:
    the measurement the user asked for is worth more than its copy in the cache."""
    run, now = uuid.uuid4().hex[:12], _utc_now()
    for entry in entries:
        entry["run"], entry["time"] = entry["run"] or run, entry["time"] or now
    try:
        append_history(entries, history)
    except OSError as error:
        notes.append(f"bench history not written ({error.strerror or error})")


def append_history(entries: Sequence[Mapping[str, Any]], history: History = True) -> Path | None:
    """Append ``entries`` to the history as JSON lines, in one ``O_APPEND`` write.

    One write: two benches appending at once do not interleave their lines, and a crash leaves
    at most a torn last line, which :func:`read_history` skips. A torn line from an earlier crash
    has no newline, so one goes first: else the new first line would be glued to it and lost.
    """
    path = _history_file(history)
    if path is None or not entries:
        return None
    payload = "".join(json.dumps(dict(entry), sort_keys=True) + "\n" for entry in entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            payload = "\n" + payload
        data = payload.encode()
        while data:  # a short write (signal, nearly full disk) leaves the rest to write
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    return path


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(size - 1)
        return file.read(1)


def read_history(history: History = True) -> list[dict[str, Any]]:
    """Every well-formed line of the history, oldest first; torn or foreign lines are skipped
    (a crash mid-append, or a newer version's line this one cannot read)."""
    path = _history_file(history)
    if path is None or not path.is_file():
        return []
    entries = []
    with path.open("rb") as file:
        for raw in file:
            try:
                entry = json.loads(raw)
            except ValueError:  # includes UnicodeDecodeError
                continue
            if (
                isinstance(entry, dict)
                and entry.get("version") == HISTORY_VERSION
                and all(isinstance(entry.get(k), kind) for k, kind in _REQUIRED.items())
                and isinstance(entry.get("where"), dict)
                and isinstance(entry.get("median_ms"), (int, float))
            ):
                entries.append(entry)
    return entries


def host_history(
    model: str,
    input_shapes: Sequence[Sequence[int]],
    *,
    threads: int | None = None,
    history: History = True,
) -> list[dict[str, Any]]:
    """The latest host bench of ``model`` at ``input_shapes`` (any host preset): its lines at one
    thread count, one per engine; [] when this machine never benched it.

    ``threads`` picks that count when it was measured, else the latest run's counts are taken,
    closest to ``threads`` (fewest when None). Lines of one run only: engines timed in the same
    run saw the same load, so their ratios mean something; a mix of runs would not.
    """
    shapes = [[int(d) for d in shape] for shape in input_shapes]
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for entry in read_history(history):
        if (
            entry["where"].get("kind") == "host"
            and entry["model"] == model
            and entry["input_shapes"] == shapes
        ):
            groups.setdefault((entry["run"], entry.get("threads")), []).append(entry)
    if not groups:
        return []
    same = [lines for (_, count), lines in groups.items() if threads and count == threads]

    def latest_first(lines: list[dict[str, Any]]) -> tuple[str, int]:
        count = lines[0].get("threads") or 0
        return lines[0]["time"], -abs(count - threads) if threads else -count

    return max(same or groups.values(), key=latest_first)


@dataclass(frozen=True)
class HostComparison:
    """This machine's latest numbers for a board result's model, and the board's ratio to them."""

    cpu: str
    threads: int | None
    time: str
    preset: str
    library_sha256: str | None
    #: engine → {"median_ms", "p90_ms", "min_ms"}, in the order the host bench timed them.
    timings: dict[str, dict[str, float]]
    #: board median / host TVM median (None when the host run did not time "tvm").
    board_over_host_tvm: float | None


def compare_with_host(
    model: str,
    input_shapes: Sequence[Sequence[int]],
    board_median_ms: float,
    *,
    threads: int | None = None,
    history: History = True,
) -> HostComparison | None:
    """The board's median next to :func:`host_history`; None when there is nothing to compare."""
    lines = host_history(model, input_shapes, threads=threads, history=history)
    if not lines:
        return None
    first = lines[0]
    timings = {
        line["engine"]: {
            key: float(line.get(key) or 0.0) for key in ("median_ms", "p90_ms", "min_ms")
        }
        for line in lines
    }
    tvm = timings.get("tvm", {}).get("median_ms")
    return HostComparison(
        cpu=str(first["where"].get("cpu") or "unknown CPU"),
        threads=first.get("threads"),
        time=first["time"],
        preset=str(first.get("preset") or "host"),
        library_sha256=next(
            (line.get("library_sha256") for line in lines if line["engine"] == "tvm"), None
        ),
        timings=timings,
        board_over_host_tvm=board_median_ms / tvm if tvm else None,
    )


def host_bench_command(artifact: Artifact, threads: int | None) -> str:
    """The command that records host numbers a board bench of ``artifact`` can be read against:
    same model (the ONNX file for an ONNX build), same input size, the board's thread count."""
    manifest = artifact.manifest
    source = manifest.model
    if manifest.weights.startswith("ONNX file "):
        source = manifest.weights.removeprefix("ONNX file ")
    words = ["edgecompile", "bench", source]
    shape = manifest.inputs[0]["shape"] if len(manifest.inputs) == 1 else []
    if len(shape) == 4:  # NCHW: pin the size, else the host build takes the model's default
        height, width = shape[2], shape[3]
        words += ["--input-size", str(height) if height == width else f"{height}x{width}"]
    words += ["--threads", str(threads or 1)]
    return " ".join(words)


def format_host_comparison(result: BenchResult) -> str:
    """One line under a board bench's numbers: the host's, or how to get them."""
    host = result.host
    if host is None:
        shape = ", ".join("x".join(map(str, s)) for s in result.input_shapes)
        return (
            f"host: no measurements of {result.model} ({shape}) on this machine yet; "
            f"record them with `{result.host_command}`"
        )
    count = host.threads
    threads = f"{count} thread{'s' if count != 1 else ''}" if count else "? threads"
    when = host.time.replace("T", " ")[:16] + " UTC"
    preset = "" if host.preset == "host" else f", {host.preset}"
    engines = ", ".join(f"{engine} {t['median_ms']:.2f} ms" for engine, t in host.timings.items())
    ratio = host.board_over_host_tvm
    tail = f" -> board/host tvm {ratio:.1f}x" if ratio is not None else ""
    return f"host ({host.cpu}, {threads}{preset}, {when}): {engines}{tail}"


# --------------------------------------------------------------------------------------------
# profile


@dataclass(frozen=True)
class LayerTime:
    """One VM kernel: median time per inference, share of the per-layer sum, schedule join."""

    name: str
    calls: int
    time_ms: float
    share: float
    op: str | None
    schedule: str | None
    matched: bool


@dataclass(frozen=True)
class ProfileReport:
    model: str
    artifact: str
    threads: int | None
    runs: int
    layers: list[LayerTime]
    layer_sum_ms: float
    end_to_end_ms: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUILTIN_ROW = "vm.builtin.* (VM bookkeeping)"


def _kernel_category(name: str) -> str | None:
    """Which manifest op a fused kernel name stands for; None for layout/glue kernels.

    Convolutions are ``conv2d`` under TVM's lowering and ``pointwise_nchwc``,
    ``depthwise_nchwc``, ``conv_nchwc`` or ``grouped_nchwc`` under our schedules; transposed
    convolutions (ESPNet's decoder) ``conv2d_transpose``.
    """
    if "conv2d_transpose" in name:  # its own manifest op: it must not take a conv2d's entry
        return "conv2d_transpose"
    if any(word in name for word in ("conv2d", "conv_nchwc", "pointwise", "depthwise", "grouped")):
        return "conv2d"
    if "pool" in name and "unpack" not in name:
        return "pool"
    if "matmul" in name or "dense" in name:
        return "matmul"
    return None


def join_schedules(
    names: Sequence[str], schedules: Sequence[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Best-effort: the i-th conv-like kernel call gets the i-th conv2d entry, and so on.

    Fusion renames kernels (``fused_conv2d3_relu9``) and drops the op's identity, but both
    lists follow ``main``'s order, so matching by order within a kind is right whenever the
    fusion kept one heavy op per kernel. Returns call index → schedule entry.
    """
    queues: dict[str, list[dict[str, Any]]] = {}
    for entry in schedules:
        op = str(entry.get("op", ""))
        kind = "matmul" if op in ("dense", "matmul", "linear") else op
        queues.setdefault(kind, []).append(entry)
    joined: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(names):
        category = _kernel_category(name)
        if category and queues.get(category):
            joined[index] = queues[category].pop(0)
    return joined


def profile_local(
    source: str,
    *,
    target: str = "host",
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    seed: int = 0,
    input_size: str | None = None,
    output_dir: str | Path | None = None,
) -> ProfileReport:
    """Per-kernel time of the host library, from ``vm.set_instrument`` around each call.

    The instrument costs a Python call per VM instruction, so per-layer times are a little
    high; the end-to-end median is measured without it and printed next to their sum so the
    reader sees how much the instrumentation added.
    """
    import tvm
    from tvm import relax

    from edgecompile.device.remote import latency_stats
    from edgecompile.runner import random_inputs, set_threads

    if runs < 1 or warmup < 0:
        raise EdgecompileError("bad --runs/--warmup", "use --runs 1 or more, --warmup 0+")
    artifact = resolve_host_artifact(
        source, target=target, input_size=input_size, seed=seed, output_dir=output_dir
    )
    set_threads(threads)
    machine = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), tvm.cpu())
    main = machine["main"]
    inputs = [tvm.runtime.tensor(x) for x in random_inputs(artifact, seed=seed)]
    for _ in range(warmup):
        main(*inputs)

    calls: list[tuple[str, float]] = []
    started: list[int] = []

    def instrument(_func: Any, name: str, before_run: bool, _ret: Any, *_args: Any) -> int:
        if before_run:
            started.append(time.perf_counter_ns())
        else:
            calls.append((name, (time.perf_counter_ns() - started.pop()) / 1e6))
        return 0

    # Plain and instrumented runs alternate so both see the same load on a shared machine.
    per_run: list[list[tuple[str, float]]] = []
    plain: list[float] = []
    for _ in range(runs):
        machine.set_instrument(None)
        start = time.perf_counter()
        main(*inputs)
        plain.append(time.perf_counter() - start)
        machine.set_instrument(instrument)
        calls.clear()
        main(*inputs)
        per_run.append(list(calls))
    machine.set_instrument(None)
    end_to_end = latency_stats(plain)["median_ms"]

    # Calls in one run, in order; row key = kernel name (a kernel called twice is one row).
    order = [name for name, _ in per_run[0]]
    kernels = [name for name in order if not name.startswith("vm.builtin")]
    joined = join_schedules(kernels, artifact.manifest.schedules)
    rows: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(kernels):
        row = rows.setdefault(name, {"calls": 0, "entry": None})
        row["calls"] += 1
        if index in joined and row["entry"] is None:
            row["entry"] = joined[index]
    totals: dict[str, list[float]] = {name: [] for name in rows}
    builtin: list[float] = []
    for run_calls in per_run:
        sums: dict[str, float] = dict.fromkeys(rows, 0.0)
        builtin_sum = 0.0
        for name, ms in run_calls:
            if name.startswith("vm.builtin"):
                builtin_sum += ms
            else:
                sums[name] = sums.get(name, 0.0) + ms
        for name, ms in sums.items():
            totals.setdefault(name, []).append(ms)
        builtin.append(builtin_sum)
    medians = {name: float(np.median(values)) for name, values in totals.items()}
    medians[BUILTIN_ROW] = float(np.median(builtin))
    layer_sum = sum(medians.values())
    layers = []
    for name, ms in sorted(medians.items(), key=lambda item: -item[1]):
        entry = rows.get(name, {}).get("entry")
        layers.append(
            LayerTime(
                name=name,
                calls=rows[name]["calls"] if name in rows else 0,
                time_ms=ms,
                share=100.0 * ms / layer_sum if layer_sum else 0.0,
                op=entry.get("kind") if entry else None,
                schedule=entry.get("schedule") if entry else None,
                matched=entry is not None,
            )
        )
    notes = [
        "schedules joined by order within each op kind (conv2d, pool, matmul); unmatched rows "
        "are layout/glue kernels or ones fusion merged"
    ]
    return ProfileReport(
        model=artifact.manifest.model,
        artifact=str(artifact.directory),
        threads=threads,
        runs=runs,
        layers=layers,
        layer_sum_ms=layer_sum,
        end_to_end_ms=end_to_end,
        notes=notes,
    )
