"""``bench`` here: the host library of a model next to ONNX Runtime and torch, per thread count.

Answers "is our library faster than what people already use?" on this machine: every engine
gets the same seeded input and the same thread count, and its output must agree with the
reference before any time of it is reported (a fast wrong answer is not a result).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.artifact import Artifact, elf_info, load_artifact
from edgecompile.benchmarking.engines import ENGINES, TOLERANCE, measure
from edgecompile.benchmarking.history import History, history_entry, host_cpu_name, record_history
from edgecompile.benchmarking.timing import EngineTiming, check_counts
from edgecompile.benchmarking.workers import PinnedWorker, measure_in_subprocess
from edgecompile.errors import EdgecompileError
from edgecompile.quantization.images import DEFAULT_SOURCE
from edgecompile.runner import check_library


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
    int8: bool = False,
    calibration: str | Path | None = None,
) -> Artifact:
    """A given artifact (checked to run here), or a fresh untuned host build of a zoo name / ONNX
    file: no tuning records, so its numbers are the untuned ones whatever the cache holds.
    ``int8``: the model's int8 build instead, as ``build --int8`` makes it (quantized on
    ``calibration``, else the default photographs).

    Without ``output_dir`` the build goes to a temporary folder that lives for the process:
    benchmarking should not leave build/ entries behind unless asked to
    (:func:`host_artifact` removes it when done). A given artifact's library is checked
    against its manifest's sha256 before anything loads it.
    """
    from edgecompile.targets import host_arch, resolve_target

    if _is_artifact(source):
        artifact = load_artifact(source)
        check_library(artifact)
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
            source,
            preset,
            output_dir=directory,
            input_size=input_size,
            seed=seed,
            records=False,
            keep_onnx=True,
            int8=int8,
            calibration=calibration,
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

#: Where ``edgecompile build`` writes by default, so where a matching build may already be.
BUILD_DIR = Path("build")


@contextlib.contextmanager
def host_artifact(
    source: str,
    *,
    target: str = "host",
    input_size: str | None = None,
    seed: int = 0,
    output_dir: str | Path | None = None,
    notes: list[str] | None = None,
    build_dir: Path = BUILD_DIR,
    int8: bool = False,
    calibration: str | Path | None = None,
) -> Iterator[Artifact]:
    """:func:`resolve_host_artifact` for the length of a ``with`` block.

    Without ``output_dir``, a model already built in ``build_dir`` exactly as a bench would
    build it (:func:`existing_build`; an int8 one only with the default calibration) is used
    as it is, with a note; otherwise the model is built in a temporary folder that is removed
    when the block ends, however it ends (an error, Ctrl-C): a bench leaves no build behind
    unless asked to with ``output_dir``.
    """
    build = {"target": target, "input_size": input_size, "seed": seed}
    if int8:
        from edgecompile.quantization.checks import check_int8_build

        if _is_artifact(source):
            raise EdgecompileError(
                f"{source} is a build already; --int8 quantizes and builds a model",
                "profile the artifact without --int8 (an int8 build's rows say int8 anyway), "
                "or give the model's name or float ONNX file",
            )
        check_int8_build(source, True, calibration)  # before the slow quantize
    if _is_artifact(source) or output_dir is not None:
        yield resolve_host_artifact(
            source, **build, output_dir=output_dir, int8=int8, calibration=calibration
        )
        return
    existing = (
        existing_build(source, **build, build_dir=build_dir, int8=int8)
        if calibration is None
        else None
    )
    if existing is not None:
        if notes is not None:
            calibrated = "default calibration, " if int8 else ""
            notes.append(
                f"used the existing build {existing.directory} (same model, target, input size, "
                f"seed, {calibrated}untuned); give -o DIR to build afresh"
            )
        yield existing
        return
    try:
        scratch = tempfile.mkdtemp(prefix="edgecompile-bench-")
    except OSError as error:
        raise EdgecompileError(
            f"cannot make a temporary folder for the build: {error.strerror or error}",
            "free space in the temporary folder ($TMPDIR), or give -o DIR",
        ) from None
    try:
        yield resolve_host_artifact(
            source, **build, output_dir=scratch, int8=int8, calibration=calibration
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def existing_build(
    source: str,
    *,
    target: str = "host",
    input_size: str | None = None,
    seed: int = 0,
    build_dir: Path = BUILD_DIR,
    int8: bool = False,
) -> Artifact | None:
    """``build_dir/<model>-<preset>``, when it is what :func:`resolve_host_artifact` would
    build for a zoo name: the same preset target, input size, batch 1 and seeded weights,
    untuned (no records, no user schedules, our schedules in place), by this edgecompile and
    TVM, its library intact (sha256). Anything else (an ONNX file, a factory) is None: its
    source may have changed since, which a manifest cannot tell. ``int8``: the
    ``<model>-int8-<preset>`` that ``build --int8`` makes without ``--calibration`` instead
    (the ``tvm-int8`` engine's build)."""
    import tvm

    from edgecompile import __version__
    from edgecompile.builder import artifact_folder_name, artifact_name
    from edgecompile.export import is_module_reference, parse_input_size
    from edgecompile.targets import resolve_target
    from edgecompile.zoo import model_info

    if source.endswith(".onnx") or is_module_reference(source):
        return None
    name = artifact_name(source)
    preset = resolve_target(target)
    directory = build_dir / artifact_folder_name(name, preset.name, int8)
    if not (directory / "manifest.json").is_file():
        return None
    try:
        artifact = load_artifact(directory)
        check_library(artifact)
    except EdgecompileError:
        return None  # a broken build is not reused; a fresh one is made instead
    manifest = artifact.manifest
    height, width = parse_input_size(input_size) or model_info(source).input_size
    # A --no-custom-schedules build has none of ours: not what a bench measures.
    schedules = [entry.get("schedule") for entry in manifest.schedules if isinstance(entry, dict)]
    # ("edgecompile-int8 ...": our integer convs)
    ours = any(str(schedule).startswith("edgecompile") for schedule in schedules)
    quantization = manifest.extra.get("int8") or {}
    same_precision = (
        is_quantized(artifact)
        and artifact_int8_onnx(artifact) is not None
        # calibrated on the default photographs, as the tvm-int8 engine's build is
        and quantization.get("accuracy", {}).get("images_from") == DEFAULT_SOURCE
        if int8
        else not is_quantized(artifact)
    )
    same = (
        same_precision
        and manifest.model == name
        and manifest.preset == preset.name
        and manifest.target == dict(preset.target)
        and manifest.weights == f"seeded random weights (seed {seed})"
        and [spec.get("shape") for spec in manifest.inputs] == [[1, 3, height, width]]
        and not manifest.records
        and not manifest.records_digest
        and not manifest.user_schedules
        and ours
        and manifest.tvm_version == str(tvm.__version__)
        and manifest.edgecompile_version == __version__
    )
    return artifact if same else None


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
# measuring


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

    The engines are timed interleaved, a row of calls each per round after each one's warm-up
    runs and a settling time (:func:`~edgecompile.benchmarking.timing.time_interleaved`), so load
    from elsewhere hits all alike and no engine's spinning threads slow the next one.
    ``isolate=True`` measures each thread count in its own subprocess (see
    :func:`~edgecompile.benchmarking.workers.measure_in_subprocess`); ``False`` measures in this
    process, for tests and for a single thread count in a fresh process. ``workers`` (thread
    count → :class:`PinnedWorker`) measures those thread counts in long-lived processes
    instead, for many models in a row.

    ``extra_artifacts`` (engine name → artifact) adds other host builds of the same model, e.g.
    ``{"tvm-tuned": ...}``: timed as engines of their own in the same runs (same process, thread
    count and input), their outputs checked like every engine's.

    Every timing is appended to the bench ``history``
    (:func:`~edgecompile.benchmarking.history.append_history`), where a later board bench of the
    same model finds it (:func:`~edgecompile.benchmarking.history.compare_with_host`).
    """
    unknown = [engine for engine in compare if engine not in ENGINES]
    if unknown:
        raise EdgecompileError(f"unknown engine(s) {', '.join(unknown)}", "use --compare ort,torch")
    check_counts(threads, repeat, warmup)
    notes: list[str] = []
    with host_artifact(
        source,
        target=target,
        input_size=input_size,
        seed=seed,
        output_dir=output_dir,
        notes=notes,
    ) as artifact:
        return _bench_artifact(
            artifact,
            compare=compare,
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            seed=seed,
            tolerance=tolerance,
            isolate=isolate,
            extra_artifacts=extra_artifacts,
            workers=workers,
            history=history,
            notes=notes,
        )


#: The bench engine that is our int8 build of the benched model (``build --int8``).
INT8_ENGINE = "tvm-int8"


def note_fallback(notes: list[str], engine: str, artifact: Artifact) -> None:
    """A note when ``artifact``'s build lost schedules to a failure (our pipeline failed, or a
    rule raised on some kernels): its time is then partly TVM's default lowering's."""
    from edgecompile.schedules.coverage import build_fallback

    fallback = build_fallback(artifact.manifest.schedules, artifact.manifest.extra)
    if fallback is not None:
        notes.append(
            f"{engine}: its build lost schedules to a failure, so part or all of its time is "
            f"TVM's default lowering's ({fallback}; `build --explain` names the kernels)"
        )


def artifact_int8_onnx(artifact: Artifact) -> Path | None:
    """The QDQ model an int8 build (``build --int8``) compiled, kept beside its library."""
    name = (artifact.manifest.extra.get("int8") or {}).get("onnx")
    path = artifact.directory / name if name else None
    return path if path is not None and path.is_file() else None


def _int8_build(
    artifact: Artifact,
    references: Mapping[str, Any],
    scratch: Path,
    notes: list[str],
    build_dir: Path = BUILD_DIR,
) -> Artifact:
    """The ``tvm-int8`` engine: the model ``artifact`` was built from, quantized on the default
    photographs and compiled as ``build --int8`` does, in ``scratch`` (host, untuned, verified
    against ONNX Runtime on the same QDQ model within 2 output steps)."""
    from edgecompile.builder import build

    manifest = artifact.manifest
    if is_quantized(artifact):
        raise EdgecompileError(
            f"{artifact.directory} is an int8 build already: its tvm row is the int8 one",
            f"bench the fp32 build or the model's name with --compare {INT8_ENGINE}, "
            f"or drop {INT8_ENGINE}",
        )
    shape = manifest.inputs[0]["shape"]
    torch_spec = references["torch"]
    if torch_spec is not None:  # a zoo model with seeded weights: made again exactly
        source, seed = torch_spec["name"], torch_spec["seed"]
        size = f"{shape[2]}x{shape[3]}"
        existing = None
        if shape[0] == 1:
            existing = existing_build(
                source, input_size=size, seed=seed, build_dir=build_dir, int8=True
            )
        if existing is not None:
            notes.append(
                f"{INT8_ENGINE}: used the existing build {existing.directory} (same model, "
                "input size, seed, default calibration, untuned)"
            )
            return existing
    else:  # an ONNX file: the one the build read, else the static copy it kept
        original = manifest.weights.removeprefix("ONNX file ")
        source = original if Path(original).is_file() else references["onnx"]
        seed = manifest.seed or 0
    return build(
        source,
        "host",
        output_dir=scratch,
        batch=shape[0],
        input_size=(shape[2], shape[3]) if torch_spec is not None else None,
        seed=seed,
        records=False,
        int8=True,
    ).artifact


def is_quantized(artifact: Artifact) -> bool:
    """Built from a QDQ (int8) model: its outputs agree with float engines only as far as the
    quantization allows, so the bench checks it as it checks ``ort-int8`` (by SQNR)."""
    return "max_output_steps" in (artifact.manifest.verification or {})


def _bench_artifact(
    artifact: Artifact,
    *,
    compare: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int,
    tolerance: float,
    isolate: bool,
    extra_artifacts: Mapping[str, str | Path] | None,
    workers: Mapping[int, PinnedWorker] | None,
    history: History,
    notes: list[str],
) -> BenchReport:
    """:func:`bench_local` once the artifact is at hand."""
    libraries = {"tvm": str(artifact.library)}
    digests = {"tvm": artifact.manifest.library_sha256}
    quantized = ["tvm"] if is_quantized(artifact) else []
    note_fallback(notes, "tvm", artifact)
    for engine, extra in (extra_artifacts or {}).items():
        other = _same_model_as(artifact, engine, load_artifact(extra))
        check_library(other)
        note_fallback(notes, engine, other)
        libraries[engine] = str(other.library)
        digests[engine] = other.manifest.library_sha256
        quantized += [engine] if is_quantized(other) else []
    references, reference_notes = _reference_sources(artifact, compare)
    notes.extend(reference_notes)
    inputs = [(spec["shape"], spec["dtype"]) for spec in artifact.manifest.inputs]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-bench-") as scratch:
        # ort-int8 runs the QDQ model our int8 build compiled, when there is one: the same model.
        int8_onnx = artifact_int8_onnx(artifact)
        if INT8_ENGINE in compare:
            int8_artifact = _int8_build(artifact, references, Path(scratch), notes)
            note_fallback(notes, INT8_ENGINE, int8_artifact)
            libraries[INT8_ENGINE] = str(int8_artifact.library)
            digests[INT8_ENGINE] = int8_artifact.manifest.library_sha256
            quantized.append(INT8_ENGINE)
            int8_onnx = artifact_int8_onnx(int8_artifact)
        engines = [*libraries, *[e for e in dict.fromkeys(compare) if e not in libraries]]
        if references["torch"] is None:
            engines = [e for e in engines if e != "torch"]
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
                "quantized": quantized,
                "int8_onnx": None if int8_onnx is None else str(int8_onnx),
            }
            if workers is not None and count in workers:
                results[count] = workers[count].measure(spec)
            elif isolate:
                results[count] = measure_in_subprocess(spec)
            else:
                results[count] = measure(spec)
    timings = []
    reference = "tvm"
    for count, result in results.items():
        reference = result["reference"]
        ort_median = result["stats"].get("ort", {}).get("median_ms")
        for engine in engines:
            error = result["errors"].get(engine)
            timings.append(
                EngineTiming.from_stats(engine, count, result["stats"][engine], error, ort_median)
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
