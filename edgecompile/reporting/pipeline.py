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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgecompile.benchmarking.history import host_cpu_name
from edgecompile.benchmarking.timing import check_counts
from edgecompile.benchmarking.workers import PinnedWorker
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress
from edgecompile.reporting.builds import default_build_jobs, prepare_models, tuning_records
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
    TARGET,
    TUNED,
    ZooReport,
)
from edgecompile.reporting.stats import correlations
from edgecompile.reporting.tables import write_csv, write_index


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


def progress_stages(models: int, build_jobs: int | None = None) -> int:
    """How many stages :func:`report` shows for ``models`` models (for :class:`Progress`)."""
    jobs = build_jobs or default_build_jobs()
    return models + (1 if min(jobs, models) > 1 else models)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, LLVM's CPU name, library versions."""
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
        "llvm_cpu": resolve_target(TARGET).target.get("mcpu", "generic"),
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
