"""The zoo report's entry point: choose models, build them, measure them one by one, write.

Two phases: costs and builds (:mod:`~edgecompile.reporting.builds`, several models at once), then
each model timed and profiled alone (:mod:`~edgecompile.reporting.measure`); then the statistics
(:mod:`~edgecompile.reporting.stats`), tables (:mod:`~edgecompile.reporting.tables`) and plots
(:mod:`~edgecompile.reporting.plots`).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompile.benchmarking.history import host_cpu_name
from edgecompile.benchmarking.timing import check_counts
from edgecompile.benchmarking.workers import PinnedWorker
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress
from edgecompile.reporting.builds import (
    PreparedModel,
    default_build_jobs,
    prepare_models,
    tuning_records,
)
from edgecompile.reporting.measure import measure_model
from edgecompile.reporting.plots import (
    PLOT_MAC,
    PLOT_MULTIPLY_ADDS,
    PLOT_OP_CLASSES,
    plot_latency,
    plot_op_classes,
)
from edgecompile.reporting.results import (
    BUILDS_DIR,
    DEFAULT_ENGINES,
    ENGINES,
    INT8_ENGINES,
    NO_PROFILE,
    TARGET,
    TUNED,
    ModelResult,
    ZooReport,
)
from edgecompile.reporting.stats import correlations
from edgecompile.reporting.tables import write_csv, write_index

if TYPE_CHECKING:
    from edgecompile.device.access import BoardAccess
    from edgecompile.reporting.board import Board


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
    check_counts(threads, repeat, warmup)
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown:
        raise EdgecompileError(
            f"unknown engine(s) {', '.join(unknown)}", f"choose from {', '.join(ENGINES)}"
        )
    # TVM is what the report is about: bench_local always times it.
    return ["tvm", *[engine for engine in dict.fromkeys(engines) if engine != "tvm"]]


def _check_target(target: str | None, on_board: bool) -> str:
    """The preset the models are built for: the board's (``--target``, required with
    ``--device``), else this machine's; one line before anything is built when they clash."""
    from edgecompile.targets import resolve_target

    if on_board and (target is None or target == TARGET):
        raise EdgecompileError(
            "a report on a board needs the board's preset to build for",
            "add --target (e.g. --target rpi4; `edgecompile targets` lists them)",
        )
    if target is None or target == TARGET:
        return TARGET
    preset = resolve_target(target)
    if not on_board and not preset.is_host:
        raise EdgecompileError(
            f"--target {target} builds for a board, and the report times each build where it runs",
            f"add --device USER@HOST (a {target} board), or drop --target for this machine",
        )
    return target


def _board_engines(engines: Sequence[str], notes: list[str]) -> list[str]:
    """The engines a board report times: torch is left out with a note; int8 is refused."""
    from edgecompile.reporting.board import BOARD_ENGINES

    here_only = [engine for engine in engines if engine in INT8_ENGINES]
    if here_only:
        raise EdgecompileError(
            f"{', '.join(here_only)}: timed on this machine only, not yet on a board",
            f"drop them from --engines (a board report times {', '.join(BOARD_ENGINES)})",
        )
    if "torch" in engines:
        notes.append(
            "torch not measured: a board report times our builds and ONNX Runtime on the "
            "board, and no torch runs there."
        )
    return [engine for engine in engines if engine in BOARD_ENGINES]


def _checked_board(
    access: BoardAccess, target: str, threads: Sequence[int], *, wants_ort: bool
) -> Board:
    """The board, checked (reachable, the preset's arch, thread counts within its cores)."""
    from edgecompile.reporting.board import check_board
    from edgecompile.targets import resolve_target

    preset = resolve_target(target)
    cores = preset.target.get("num-cores")
    if isinstance(cores, int) and max(threads) > cores:
        raise EdgecompileError(
            f"bad --threads {max(threads)}: {preset.name} has {cores} cores",
            f"use counts from 1 to {cores}",
        )
    return check_board(access, preset, wants_ort)


def _measure_here(
    prepared: Sequence[PreparedModel],
    results_csv: Path,
    progress: Progress,
    profile_runs: int,
    **options: Any,
) -> list[ModelResult]:
    """Each model benched and profiled alone on this machine (the second phase)."""
    workers = {count: PinnedWorker(count) for count in options["threads"]}
    try:
        return _measure_each(
            prepared,
            lambda model: f"measure {model.model}",
            lambda model: measure_model(
                model, profile_runs=profile_runs, workers=workers, **options
            ),
            results_csv,
            progress,
            options,
        )
    finally:
        for worker in workers.values():
            worker.close()


def _measure_on_board(
    prepared: Sequence[PreparedModel],
    results_csv: Path,
    progress: Progress,
    board: Board,
    **options: Any,
) -> list[ModelResult]:
    """Each model deployed to the board and timed there, one after the other."""
    from edgecompile.reporting.board import board_session, measure_on_board

    with board_session(board) as session:
        return _measure_each(
            prepared,
            lambda model: f"deploy and time {model.model} on {board.access.device}",
            lambda model: measure_on_board(session, model, progress=progress, **options),
            results_csv,
            progress,
            options,
        )


def _measure_each(
    prepared: Sequence[PreparedModel],
    stage_line: Callable[[PreparedModel], str],
    measure: Callable[[PreparedModel], ModelResult],
    results_csv: Path,
    progress: Progress,
    options: dict[str, Any],
) -> list[ModelResult]:
    """``measure`` each model in turn under its own stage line, the CSV rewritten after each."""
    results: list[ModelResult] = []
    for model in prepared:
        with progress.stage(stage_line(model)):
            results.append(measure(model))
        _after_model(results, results_csv, progress, options)
    return results


def _after_model(
    results: list[ModelResult], results_csv: Path, progress: Progress, options: dict[str, Any]
) -> None:
    """Say what failed, and write the CSV so far: a long run stopped halfway keeps its rows."""
    if progress.enabled:
        for failure in results[-1].failures:
            progress.stream.write(f"      {failure.stage} failed: {failure.problem}\n")
    results_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(results_csv, results, options["engines"], options["threads"])


def progress_stages(models: int, build_jobs: int | None = None) -> int:
    """How many stages :func:`report` shows for ``models`` models (for :class:`Progress`)."""
    jobs = build_jobs or default_build_jobs()
    return models + (1 if min(jobs, models) > 1 else models)


def machine_info(target: str = TARGET) -> dict[str, Any]:
    """What the numbers were measured (or, for a board report, the models built) on: CPU,
    cores, the target's LLVM CPU name, library versions."""
    from importlib import metadata

    from edgecompile.targets import resolve_target

    versions = {}
    for package in ("apache-tvm", "onnxruntime", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": host_cpu_name(),
        "cores": os.cpu_count(),
        "llvm_cpu": resolve_target(target).target.get("mcpu", "generic"),
        "python": platform.python_version(),
        # Other work on a shared machine moves the numbers: say how busy it was.
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "versions": versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


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
    target: str | None = None,
    access: BoardAccess | None = None,
) -> ZooReport:
    """Bench and profile the selected zoo models here; write index.md, results.csv and plots.

    On a board (``access`` with a ``device``, and ``target`` its preset): the models are built
    for ``target``, deployed as bundles and timed there by the bundle's native runner, and by
    ONNX Runtime there when the board's Python has it (see :mod:`~edgecompile.reporting.board`);
    the board is checked before anything is built.

    ``models``: None for the whole zoo, or names / globs / substrings (see
    :func:`select_models`). ``input_size`` overrides every model's default resolution (for
    quick runs). Host builds are cached in ``output_dir/builds`` and reused by a rerun unless
    ``rebuild``. ``records``: where the tuning records for "tvm-tuned" are (None: the default
    cache, and the engine is left out with a note when it has none for this machine; a folder
    given without them is an error). ``build_jobs``: models costed and built at once, in worker
    processes (None: one per core, at most 4; 1: one after the other in this process); timing
    is always one model at a time. ``progress`` gets the build phase and one stage per model.
    """
    from edgecompile.export import parse_input_size
    from edgecompile.records import default_records_root

    started = time.perf_counter()
    names = select_models(models)
    engines = _check_options(threads, engines, repeat, warmup)
    threads = list(dict.fromkeys(threads))
    size = parse_input_size(input_size if not isinstance(input_size, int) else [input_size])
    notes: list[str] = []
    on_board = access is not None and access.given
    target = _check_target(target, on_board)
    board = None
    if on_board:
        assert access is not None
        engines = _board_engines(engines, notes)
        board = _checked_board(access, target, threads, wants_ort="ort" in engines)
        if "ort" in engines and board.ort_version is None:
            engines.remove("ort")
            notes.append(f"ort not measured: {board.ort_missing}.")
    tuned = tuning_records(target, records) if TUNED in engines else None
    if tuned is not None:
        notes.append(
            f"{TUNED} applies the {tuned.records} tuning records in `{tuned.store}` (digest "
            f"{tuned.digest[:12]}); a model none of them apply to gets no {TUNED} time."
        )
    elif TUNED in engines:
        if records is not None:
            raise EdgecompileError(
                f"no tuning records for {target} in {records}",
                f"tune first (edgecompile tune MODEL --records {records}), or drop --records",
            )
        engines.remove(TUNED)
        notes.append(
            f"{TUNED} not measured: there are no tuning records for {target} in "
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
        target=target,
    )
    index = output / "index.md"
    results_csv = output / "results.csv"
    options = dict(engines=engines, threads=threads, repeat=repeat, warmup=warmup, seed=seed)
    if board is None:
        results = _measure_here(prepared, results_csv, progress, profile_runs, **options)
    else:
        results = _measure_on_board(prepared, results_csv, progress, board, **options)
        notes.append(NO_PROFILE)
    found = correlations(results, engines, threads)
    plots = [output / PLOT_MULTIPLY_ADDS, output / PLOT_MAC]
    if board is None:  # a board has no per-kernel profile (NO_PROFILE): no plot, never a fake one
        plots.append(output / PLOT_OP_CLASSES)
    write_csv(results_csv, results, engines, threads)
    plot_latency(plots[0], results, engines, threads, found, cost="multiply_adds")
    plot_latency(plots[1], results, engines, threads, found, cost="memory_access")
    if board is None:
        plot_op_classes(plots[2], results)
    zoo_report = ZooReport(
        output_dir=str(output),
        index=str(index),
        results_csv=str(results_csv),
        plots=[str(plot) for plot in plots],
        target=target,
        threads=list(threads),
        engines=engines,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        machine=machine_info(target),
        models=results,
        correlations=found,
        notes=notes,
        wall_seconds=0.0,
        records=tuned,
        board=board.describe() if board is not None else None,
    )
    # The index states the total time, so it is written last.
    zoo_report = dataclasses.replace(
        zoo_report, wall_seconds=round(time.perf_counter() - started, 1)
    )
    write_index(index, zoo_report)
    return zoo_report
