"""The report's first phase: each model's costs and host builds, several models at once.

Building needs no quiet machine, so models are costed and built ``jobs`` at a time in worker
processes; a build TVM crashes on is retried alone and reported, never the end of the run.
The untuned build ("tvm") gets no tuning records, whatever the cache holds; with records, a
second, tuned build ("tvm-tuned") is made and cached by their digest.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress
from edgecompile.reporting.results import (
    TARGET,
    TUNED,
    ModelResult,
    StageFailure,
    Stages,
    TuningRecords,
)

if TYPE_CHECKING:
    from edgecompile.artifact import Artifact
    from edgecompile.inspection import ModelCost


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


def model_costs(name: str, input_size: tuple[int, int]) -> tuple[ModelCost, list[dict[str, str]]]:
    """Params, multiply-adds, MAC and G1–G4 findings of ``name`` at ``input_size``.

    Costs depend on shapes only, so the model is traced on the ``meta`` device, as
    ``measure_model`` does; a builder that needs real weights (CondenseNet's condensation
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
    target: str = TARGET,
) -> tuple[Artifact, bool]:
    """(artifact of ``name`` for ``target`` under ``builds_dir``, whether an earlier build was
    reused): for this machine, or for the board a board report times it on.

    Untuned (``records`` None) with its static ONNX kept for ORT, or with ``records`` applied
    (under :func:`tuned_builds_dir`). A cached build is reused only if it is for this model,
    input shape, seed, target, TVM and edgecompile version, and the same records (or
    none), and did not fail verification nor fall back (:func:`build_fallback`); else it is
    rebuilt.
    """
    from edgecompile import __version__
    from edgecompile.artifact import load_artifact
    from edgecompile.benchmarking.local import artifact_onnx
    from edgecompile.builder import artifact_name, build
    from edgecompile.schedules.coverage import build_fallback
    from edgecompile.targets import resolve_target

    preset = resolve_target(target)
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
                # A build that lost schedules to a failure is redone: the bug may be fixed by
                # now, and a reused one would keep reporting TVM's default lowering's times.
                and build_fallback(manifest.schedules, manifest.extra) is None
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

    def measured(self, fields: dict[str, Any], stages: Stages, started: float) -> ModelResult:
        """The model's row once the second phase (here or on a board) ran ``stages`` from
        ``started`` (:func:`time.perf_counter`), ``fields`` holding all it knows: both phases'
        failures and stage times, and the wall time of both."""
        return ModelResult(
            model=self.model,
            family=self.family,
            input_size=self.input_size,
            failures=[*self.failures, *stages.failures],
            stage_seconds={**self.stage_seconds, **stages.seconds},
            wall_seconds=round(self.seconds + time.perf_counter() - started, 2),
            **fields,
        )


def prepare_model(
    name: str,
    builds_dir: Path,
    *,
    input_size: tuple[int, int] | None,
    seed: int,
    rebuild: bool,
    records: TuningRecords | None = None,
    target: str = TARGET,
) -> PreparedModel:
    """Costs and build (for ``target``) of one model, and with ``records`` its tuned build too.

    Needs no quiet machine, so several models are prepared at once (:func:`prepare_models`)."""
    from edgecompile.zoo import model_info

    started = time.perf_counter()
    info = model_info(name)
    size = input_size or info.input_size
    fields: dict[str, Any] = {}
    stages = Stages()
    fallbacks: dict[str, str] = {}

    def note_fallback(engine: str, artifact: Artifact) -> None:
        from edgecompile.schedules.coverage import build_fallback

        fallback = build_fallback(artifact.manifest.schedules, artifact.manifest.extra)
        if fallback is not None:
            fallbacks[engine] = fallback
            fields["schedule_fallbacks"] = dict(fallbacks)

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
            name, builds_dir, input_size=size, seed=seed, rebuild=rebuild, target=target
        )
        fields.update(
            artifact=str(artifact.directory),
            build_reused=reused,
            build_seconds=artifact.manifest.build_seconds,
        )
        note_fallback("tvm", artifact)

    def tuned_build() -> None:
        artifact, reused = build_host_artifact(
            name,
            builds_dir,
            input_size=size,
            seed=seed,
            rebuild=rebuild,
            records=records,
            target=target,
        )
        applied = artifact.manifest.records or {}
        fields.update(
            tuned_artifact=str(artifact.directory),
            tuned_build_reused=reused,
            tuned_build_seconds=artifact.manifest.build_seconds,
            tuned_kernels=len(applied.get("kernels_from_records", [])),
        )
        note_fallback(TUNED, artifact)

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
                            # a long build phase (the zoo for a board) says where it is
                            status = (
                                done[name].failures[0].stage + " failed"
                                if done[name].failures
                                else "built"
                            )
                            progress.update(f"{len(done)}/{len(names)}: {name} {status}")
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


def _process_pool(jobs: int) -> ProcessPoolExecutor:
    # spawn: a forked child would inherit this process's TVM and torch thread pools.
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def _crashed(name: str, input_size: tuple[int, int] | None) -> PreparedModel:
    from edgecompile.zoo import model_info

    info = model_info(name)
    size = input_size or info.input_size
    failure = StageFailure("build", "the build process died (TVM crashed on it?): report it")
    return PreparedModel(name, info.family, (int(size[0]), int(size[1])), {}, [failure], {}, 0.0)
