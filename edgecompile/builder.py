"""Stages 1 → 4 in one call: model (zoo name, ONNX file or ``pkg.module:function``) → artifact.

``build`` exports (torch sources), imports into Relax, compiles for the board's TVM target,
links with the board's toolchain, verifies host libraries against ONNX Runtime, and writes
``<output>/<model>-<preset>/`` atomically: a crash leaves no half artifact under that name.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgecompile import __version__
from edgecompile._atomic import atomic_directory, atomic_file, scratch_directory
from edgecompile._interrupts import raise_if_interrupt
from edgecompile._names import safe_name
from edgecompile.artifact import Artifact, Manifest, elf_info, sha256_file, write_manifest
from edgecompile.errors import EdgecompileError
from edgecompile.export import (
    DEFAULT_TOLERANCE,
    TensorSpec,
    example_input,
    export_onnx,
    is_module_reference,
    load_torch_model,
    parse_input_size,
    relative_error,
    run_onnxruntime,
)
from edgecompile.importer import RelaxModel, import_onnx
from edgecompile.progress import SILENT, Progress
from edgecompile.quantization.checks import check_int8_build
from edgecompile.records import RecordStore, store_for
from edgecompile.schedules.int8 import VERIFY_STEPS, output_steps
from edgecompile.schedules.pipeline import RULE_ERRORS_KEY
from edgecompile.schedules.user import UserSchedules, load_user_schedules
from edgecompile.targets import BoardPreset, resolve_target
from edgecompile.toolchain import toolchain_for

BUILD_STAGES = 5
#: The build's scratch folder in $TMPDIR: ``edgecompile-build-<pid>-<random>``.
SCRATCH_PREFIX = "edgecompile-build-"


@dataclass(frozen=True)
class BuildResult:
    artifact: Artifact
    max_relative_error: float | None
    #: ``build(int8=True)``: the quantization (a ``QuantizedModel``: its accuracy report)
    quantization: Any = None


#: The folder-name mark of an int8 build: ``<model>-int8-<preset>`` never replaces the fp32
#: ``<model>-<preset>`` of the same model and board.
INT8_MARK = "int8"


def artifact_folder_name(name: str, preset: str, int8: bool = False) -> str:
    """``<model>-<preset>``, or ``<model>-int8-<preset>`` for an int8 build."""
    return f"{name}-{INT8_MARK}-{preset}" if int8 else f"{name}-{preset}"


def artifact_name(source: str) -> str:
    """A file-system-safe model name: zoo name, ONNX file stem, or the factory's name."""
    if source.endswith(".onnx"):
        stem = Path(source).stem
    elif is_module_reference(source):
        stem = source.rpartition(":")[2]
    else:
        from edgecompile.zoo import resolve_name

        stem = resolve_name(source)  # an alias ("mnasnet1_0") builds the zoo model's artifact
    # A plain name, as loading the artifact checks (".x.onnx" or "a..b.onnx" would not be one).
    return safe_name(stem)


def _onnx_input_shapes(
    path: Path, batch: int, input_size: tuple[int, int] | None
) -> dict[str, list[int]] | None:
    """--batch / --input-size for a bring-your-own ONNX file: applies to its NCHW inputs."""
    if input_size is None and batch == 1:
        return None
    from edgecompile.importer import load_onnx

    proto = load_onnx(path)
    initializers = {init.name for init in proto.graph.initializer}
    shapes = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
        ]
        if len(dims) != 4:
            raise EdgecompileError(
                f"{path}: input {value.name!r} is not NCHW (rank {len(dims)})",
                "drop --input-size/--batch and export the file with static shapes",
            )
        height, width = input_size or (dims[2], dims[3])
        shapes[value.name] = [batch, dims[1], height, width]
    return shapes


def prepare_model(
    model: str,
    scratch_dir: Path,
    *,
    batch: int = 1,
    input_size: tuple[int, int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress = SILENT,
) -> tuple[RelaxModel, Any, str]:
    """Stages 1-2 (two progress stages): the model in Relax, its static ONNX, where it came from.

    Shared by ``build`` and ``tune``, so a tuned workload is exactly what a build compiles.
    """
    name = artifact_name(model)
    with progress.stage("read ONNX" if model.endswith(".onnx") else "export to ONNX"):
        if model.endswith(".onnx"):
            onnx_path = Path(model)
            input_shapes = _onnx_input_shapes(onnx_path, batch, input_size)
            origin = f"ONNX file {model}"
        else:
            torch_model = load_torch_model(
                model, input_size=input_size, batch=batch, seed=seed, weights=weights
            )
            onnx_path = scratch_dir / f"{name}.onnx"
            export_onnx(torch_model, onnx_path, seed=seed, tolerance=tolerance)
            input_shapes = None
            origin = torch_model.origin
    with progress.stage("import into TVM Relax"):
        relax_model, static_onnx = import_onnx(onnx_path, name=name, input_shapes=input_shapes)
    return relax_model, static_onnx, origin


def build(
    model: str,
    target: str | BoardPreset = "host",
    *,
    output_dir: str | Path = "build",
    batch: int = 1,
    input_size: str | Sequence[int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    cc: str | None = None,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress = SILENT,
    custom_schedules: bool = True,
    records: str | Path | bool | None = None,
    keep_onnx: bool = False,
    schedules_dir: str | Path | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
) -> BuildResult:
    """Compile ``model`` for ``target`` into ``output_dir/<model>-<preset>/``.

    ``custom_schedules=False`` compiles every op with TVM's default lowering (plain loops), the
    baseline our schedules are measured against (records are not applied either).
    ``records``: the tuning records to apply -- a records folder, ``None`` for the default
    cache (used when it has records for this target), ``False`` for none.
    ``keep_onnx``: also write the static ONNX model that was compiled as ``<model>.onnx`` beside
    the library (manifest ``extra["onnx"]``), for ``bench`` to run ONNX Runtime on.
    ``schedules_dir``: a directory of user schedules (:mod:`edgecompile.schedules.user`), tried
    before ours on every kernel no tuning record scheduled; the manifest's ``user_schedules``
    names its files and their sha256.
    ``int8``: quantize the model first (:func:`edgecompile.quantization.quantize`, calibrated on
    ``calibration``, a folder of images, else the default photographs), then compile that QDQ
    model into integer kernels, in ``output_dir/<model>-int8-<preset>/``; the manifest's
    ``extra["int8"]`` holds the accuracy report, the QDQ model goes beside the library.
    """
    started = time.perf_counter()
    check_int8_build(model, int8, calibration)
    preset = target if isinstance(target, BoardPreset) else resolve_target(target)
    user = _user_schedules(schedules_dir, custom_schedules)
    toolchain = toolchain_for(preset, cc)
    store = _record_store(preset, records) if custom_schedules else None
    name = artifact_name(model)
    final_dir = Path(output_dir) / artifact_folder_name(name, preset.name, int8)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        # Checked here, not only for torch models: an ONNX file's batch of 0 would become 1.
        raise EdgecompileError(f"bad batch size {batch!r}", "use --batch 1 or more")
    if isinstance(input_size, int):  # build(..., input_size=160) from Python
        input_size = (input_size, input_size)
    size = parse_input_size(input_size)

    # Removed on every way out, Ctrl-C and SIGTERM included; a SIGKILLed build's is removed by
    # the next build.
    with scratch_directory(SCRATCH_PREFIX) as scratch_dir:
        quantization = None
        if int8:
            from edgecompile.quantization.pipeline import quantize

            quantization = quantize(
                model,
                calibration=calibration,
                output=scratch_dir / f"{name}.int8.onnx",
                input_size=size,
                weights=weights,
                seed=seed,
                progress=progress,
            )
        with _keeping_quantized(quantization, Path(output_dir)):
            relax_model, static_onnx, origin = prepare_model(
                model if quantization is None else str(quantization.path),
                scratch_dir,
                batch=batch,
                input_size=size if quantization is None else None,  # the QDQ model has its size
                weights=weights if quantization is None else None,
                seed=seed,
                tolerance=tolerance,
                progress=progress,
            )
            if quantization is not None:  # where the float model came from, not the scratch file
                origin = quantization.origin
            mcpu = preset.target.get("mcpu", "generic")
            with progress.stage(f"compile for {preset.name} ({mcpu})"):
                executable, schedules, records_used, user_kernels, rule_errors = _compile(
                    relax_model, preset, custom_schedules, store, user
                )
            with atomic_directory(final_dir) as staging:
                library = staging / f"{name}.so"
                with progress.stage(f"link with {toolchain.description}"):
                    # TVM's own workspace would be a folder of its own in $TMPDIR: keep it in ours.
                    executable.export_library(
                        str(library),
                        fcompile=toolchain.fcompile(),
                        workspace_dir=str(scratch_dir),
                    )
                elf = elf_info(library)
                extra: dict[str, Any] = {}
                if rule_errors:  # kernels a rule of ours raised on (glue kernels too): --explain
                    extra[RULE_ERRORS_KEY] = [error.to_dict() for error in rule_errors]
                if quantization is not None:
                    extra["int8"] = _int8_manifest(quantization, staging, name, static_onnx)
                elif keep_onnx:
                    # Exactly what TVM compiled (pinned shapes, folded Shape chains): ``bench`` runs
                    # ONNX Runtime on it instead of exporting the model a second time.
                    import onnx

                    onnx.save(static_onnx, str(staging / f"{name}.onnx"))
                    extra["onnx"] = f"{name}.onnx"
                error = None
                verification: dict[str, Any] = {"status": "skipped", "reason": "--no-verify"}
                verifying = verify and preset.is_host
                label = "verify against ONNX Runtime" if verifying else "verify: skip"
                with progress.stage(label):
                    if verifying:
                        static_path = scratch_dir / "static.onnx"
                        import onnx

                        onnx.save(static_onnx, str(static_path))
                        steps = output_steps(relax_model.module)
                        verification = {}
                        if steps is not None:  # a QDQ model: compared in its output's steps
                            verification = _verify_int8(
                                library, static_path, relax_model, steps, seed
                            )
                        error = verify_library(library, static_path, relax_model, seed=seed)
                        if steps is None and not error <= tolerance:
                            raise EdgecompileError(
                                f"the compiled {name} differs from ONNX Runtime by {error:.2e} "
                                f"(relative), above {tolerance:.0e}",
                                _mismatch_fix(user_kernels),
                            )
                        # An int8 build's relative error is kept for the record: bench and report
                        # read it, but only the steps decide.
                        verification = {
                            "status": "passed",
                            "max_relative_error": error,
                            **verification,
                            "seed": seed,
                        }
                    elif verify:
                        verification = {
                            "status": "skipped",
                            "reason": f"{preset.arch} library: run it on the board or the emulator",
                        }
                manifest = Manifest(
                    model=name,
                    preset=preset.name,
                    target=dict(preset.target),
                    library=library.name,
                    library_sha256=sha256_file(library),
                    arch=elf.arch,
                    tvm_version=_tvm_version(),
                    edgecompile_version=__version__,
                    inputs=[_spec_dict(spec) for spec in relax_model.inputs],
                    outputs=[_spec_dict(spec) for spec in relax_model.outputs],
                    weights=origin,
                    records_digest=None if records_used is None else records_used["digest"],
                    records=records_used,
                    user_schedules=None if user is None else _user_manifest(user, user_kernels),
                    schedules=schedules,
                    build_seconds=round(time.perf_counter() - started, 2),
                    verification=verification,
                    built_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    toolchain={"linker": toolchain.description, "version": toolchain.version()},
                    seed=seed,
                    extra=extra,
                )
                write_manifest(staging, manifest)
    return BuildResult(Artifact(final_dir, manifest), error, quantization)


@contextlib.contextmanager
def _keeping_quantized(quantization: Any, output_dir: Path) -> Iterator[None]:
    """On a failed int8 build, keep its QDQ model and accuracy report in ``output_dir``: the
    calibration behind them took minutes, and ``edgecompile build`` of the kept file rebuilds
    without calibrating again (the scratch folder that held them is removed on the way out)."""
    if quantization is None:
        yield
        return
    try:
        yield
    except BaseException as failure:  # Ctrl-C too: the calibration is not lost
        kept = output_dir / quantization.path.name
        with atomic_file(kept) as staged:
            shutil.copyfile(quantization.path, staged)
        report = {
            **quantization.to_dict(),
            "path": str(kept),
            "report": str(output_dir / quantization.report_path.name),
        }
        with atomic_file(output_dir / quantization.report_path.name) as staged:
            staged.write_text(json.dumps(report, indent=2) + "\n")
        if not isinstance(failure, EdgecompileError):
            raise
        fix = f"{failure.fix}; " if failure.fix else ""
        raise EdgecompileError(
            failure.problem, f"{fix}the quantized model is kept: edgecompile build {kept}"
        ) from failure


def _int8_manifest(quantization: Any, staging: Path, name: str, static_onnx: Any) -> dict[str, Any]:
    """``extra["int8"]``: the quantization (scheme, calibration, accuracy against fp32) and the
    QDQ model that was compiled, kept beside the library: ``bench`` runs ONNX Runtime on exactly
    it (``ort-int8``), and ``edgecompile build`` of that file rebuilds without calibrating."""
    import onnx

    onnx.save(static_onnx, str(staging / f"{name}.int8.onnx"))
    entry = quantization.to_dict()
    for scratch_path in ("path", "report"):  # in the build's scratch folder, removed by now
        entry.pop(scratch_path, None)
    return {**entry, "onnx": f"{name}.int8.onnx"}


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    """As manifest.json stores it (shape a list), so a loaded manifest equals the built one."""
    return {"name": spec.name, "shape": [int(d) for d in spec.shape], "dtype": spec.dtype}


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def _record_store(preset: BoardPreset, records: str | Path | bool | None) -> RecordStore | None:
    """The store to apply: an explicit folder must hold records for the target; the default
    cache is used only when it has some."""
    if records is False:
        return None
    store = store_for(preset, None if records is True else records)
    if store.exists():
        return store
    if records not in (None, True):
        raise EdgecompileError(
            f"no tuning records for {preset.name} in {records}",
            f"tune first (edgecompile tune MODEL --target {preset.name} --records {records}), "
            "or drop --records",
        )
    return None


def _user_schedules(
    schedules_dir: str | Path | None, custom_schedules: bool
) -> UserSchedules | None:
    """The user's schedules, loaded before the (slow) export so a bad directory fails fast."""
    if schedules_dir is None:
        return None
    if not custom_schedules:
        raise EdgecompileError(
            "--schedules and --no-custom-schedules exclude each other",
            "user schedules run in edgecompile's pipeline; drop one of them",
        )
    return load_user_schedules(schedules_dir)


def _user_manifest(user: UserSchedules, user_kernels: dict[str, str]) -> dict[str, Any]:
    """``user_schedules`` of the manifest: the files that ran (sha256) and, per rule, how many
    kernels it scheduled (heavy or not; the per-op ``schedule`` names it for heavy ops)."""
    counts = {rule.schedule_name: 0 for rule in user.rules}
    for schedule in user_kernels.values():
        counts[schedule] = counts.get(schedule, 0) + 1
    entry = user.to_manifest()
    for rule in entry["rules"]:
        rule["kernels"] = counts[rule["schedule"]]
    return entry


def _mismatch_fix(user_kernels: dict[str, str]) -> str:
    if user_kernels:
        names = ", ".join(sorted(set(user_kernels.values())))
        return f"check user schedule(s) {names}, or build without --schedules"
    return "report the model; --no-verify skips the check"


def _compile(
    relax_model: RelaxModel,
    preset: BoardPreset,
    custom_schedules: bool = True,
    store: RecordStore | None = None,
    user: UserSchedules | None = None,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any] | None, dict[str, str], list[Any]]:
    """The VM executable; per heavy op of ``main`` the schedule it got (for the manifest);
    which records were applied, if any; the kernels user schedules scheduled; and the kernels
    a rule of ours raised on (:class:`~edgecompile.schedules.pipeline.RuleError`)."""
    from edgecompile.schedules import compile_relax
    from edgecompile.schedules.pipeline import RuleCrashed, ScheduleReport

    database = store.snapshot() if store is not None else None
    report = ScheduleReport()
    try:
        executable, schedules = compile_relax(
            relax_model.module,
            preset.tvm_target(),
            custom_schedules=custom_schedules,
            database=database,
            report=report,
            extra_rules=() if user is None else user.rules,
        )
    except EdgecompileError:  # a user schedule's bug: already one line naming its file
        raise
    except RuleCrashed:  # strict mode (the tests): a rule's bug, raised with its traceback
        raise
    except Exception as exc:  # TVMError and friends: the last line names the failing pass
        raise_if_interrupt(exc)  # Ctrl-C wrapped by TVM's FFI is no compile failure
        lines = str(exc).strip().splitlines()
        raise EdgecompileError(
            f"TVM failed to compile {relax_model.name} for {preset.name}: "
            f"{lines[-1] if lines else type(exc).__name__}",
            "report it with the model name and target",
        ) from None
    if store is None:
        return executable, schedules, None, report.user_kernels, report.rule_errors
    clean = store.lines()
    used = {
        "store": str(store.path),
        "digest": store.digest(),
        "records": len(clean.records),
        "kernels_from_records": sorted(report.kernels_from_records),
        # One line when the store has damaged lines the build left out (None: it has none).
        "damaged": store.damage_note(),
    }
    return executable, schedules, used, report.user_kernels, report.rule_errors


def _verify_int8(
    library: Path, onnx_path: Path, relax_model: RelaxModel, steps: list[float], seed: int
) -> dict[str, Any]:
    """A QDQ model's check: ONNX Runtime's integer kernels round differently from fp32, so the
    difference is counted in output quantization steps, not relative to the output."""
    differences = verify_library(library, onnx_path, relax_model, seed=seed, steps=steps)
    if not differences <= VERIFY_STEPS:
        raise EdgecompileError(
            f"the compiled int8 {relax_model.name} differs from ONNX Runtime on the same QDQ "
            f"model by {differences:.1f} output quantization steps, above {VERIFY_STEPS:.0f}",
            "report the model; --no-verify skips the check",
        )
    return {"status": "passed", "max_output_steps": differences, "seed": seed}


def verify_library(
    library: Path,
    onnx_path: Path,
    relax_model: RelaxModel,
    *,
    seed: int = 0,
    steps: list[float] | None = None,
) -> float:
    """Max relative error of the compiled library against ONNX Runtime on seeded inputs; with
    ``steps`` (each output's quantization step), the max difference in those steps."""
    from edgecompile.runner import run_library

    feeds = {
        spec.name: example_input(spec.shape, seed=seed + index).astype(spec.dtype)
        for index, spec in enumerate(relax_model.inputs)
    }
    expected = run_onnxruntime(onnx_path, feeds)
    actual = run_library(library, list(feeds.values()))
    if len(actual) != len(expected):  # pragma: no cover - a frontend bug, not user input
        raise EdgecompileError(
            f"the compiled model returns {len(actual)} outputs, ONNX Runtime {len(expected)}",
            "report the model",
        )
    if steps is not None:
        import numpy as np

        pairs = zip(actual, expected, steps, strict=True)
        return max(float(np.abs(a - e).max()) / step for a, e, step in pairs)
    return max(relative_error(a, e) for a, e in zip(actual, expected, strict=True))
