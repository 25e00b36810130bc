""":func:`tune` itself: the model prepared as ``build`` prepares it, then each tuning stage in
turn, all its records written through one store writer, all within the time budget."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from edgecompile._atomic import scratch_directory
from edgecompile.device.access import BoardAccess
from edgecompile.progress import SILENT, Progress
from edgecompile.records import store_for
from edgecompile.targets import BoardPreset, resolve_target
from edgecompile.tuning.baseline import measure_untuned
from edgecompile.tuning.budget import FINISH_SECONDS, TimeBudget, read_budget, trials_to_run
from edgecompile.tuning.heartbeat import heartbeat
from edgecompile.tuning.measure import choose_transport, measurement
from edgecompile.tuning.monitor import SearchMonitor, TuneStatus
from edgecompile.tuning.neighbours import measure_neighbours, pass_deadline, pass_limit
from edgecompile.tuning.results import TuneResult, task_outcomes
from edgecompile.tuning.search import deferred_interrupt, run_search
from edgecompile.tuning.tasks import best_search_seconds, count_searched_records, extract_tasks
from edgecompile.tuning.verdict import confirm_choices

#: Progress stages: prepare_model's two, then extract, untuned, neighbours, search, re-measure.
TUNE_STAGES = 7
#: The tune's scratch folder in $TMPDIR (the model's files, every candidate's build), removed
#: however the tune ends.
SCRATCH_PREFIX = "edgecompile-tune-"


def tune(
    model: str,
    target: str | BoardPreset = "host",
    *,
    trials: int | None = None,
    time_budget: str | float | None = None,
    records: str | Path | None = None,
    access: BoardAccess | None = None,
    remote_port: int | None = None,
    threads: int | None = None,
    batch: int = 1,
    input_size: str | tuple[int, int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    cc: str | None = None,
    schedules_dir: str | Path | None = None,
    progress: Progress = SILENT,
    started: float | None = None,
) -> TuneResult:
    """Tune ``model``'s kernels for ``target``, adding to the target's records (resumable).

    ``trials`` is the total number of search candidates this model's kernels should have in the
    records: a rerun after an interruption (even ``kill -9``) measures only the rest. With
    ``time_budget``, the whole tune ends within it: the search stops (between candidates) in
    time for the re-measurement of what it found. It counts from ``started`` (a
    ``time.monotonic()`` value: the CLI passes its process's start), else from the call.
    ``schedules_dir``: user schedules (as ``build --schedules``), part of the untuned baseline
    every kernel is measured as.

    Host targets are measured here; a board target on the board ``access`` reaches (one of
    its ``device``: an SSH tunnel to an RPC server on the board's loopback port
    ``remote_port``, started if none listens; ``rpc``; or ``tracker`` under ``rpc_key``, else
    the preset's key).
    """
    from edgecompile.builder import prepare_model
    from edgecompile.export import parse_input_size
    from edgecompile.schedules.user import load_user_schedules
    from edgecompile.toolchain import toolchain_for

    budget = TimeBudget(read_budget(trials, time_budget), started)
    preset = target if isinstance(target, BoardPreset) else resolve_target(target)
    access = access or BoardAccess()
    transport = choose_transport(preset, access)
    user_rules = [] if schedules_dir is None else load_user_schedules(schedules_dir).rules
    toolchain = toolchain_for(preset, cc)
    store = store_for(preset, records)
    thread_count = threads if threads is not None else preset.threads
    tvm_target = preset.tvm_target()
    size = parse_input_size(input_size)
    status = TuneStatus(budget)

    with (
        scratch_directory(SCRATCH_PREFIX) as scratch,
        store.writer() as database,
        # Opened before the model is exported: a board that cannot be reached fails the tune
        # at once, and the workers start (importing TVM) while the export runs.
        measurement(
            preset,
            toolchain,
            transport,
            thread_count,
            tvm_target,
            database,
            access=access,
            remote_port=remote_port,
            scratch=str(scratch),
            # A board without Python may need the native runtime cross-built first (minutes,
            # once per TVM version): a numbered line of its own, before the tune's stages.
            progress=Progress(
                1, stream=progress.stream, enabled=progress.enabled, terminal=progress.terminal
            ),
        ) as measuring,
        # From here on the status line moves every few seconds, whatever runs.
        heartbeat(progress, status),
    ):
        status.stage = "prepare the model"
        relax_model, _, _ = prepare_model(
            model, scratch, batch=batch, input_size=size, weights=weights, seed=seed,
            progress=progress,
        )  # fmt: skip
        status.stage = "extract tuning tasks"
        with progress.stage(status.stage):
            tasks = extract_tasks(relax_model.module, tvm_target)
        where, gate = measuring.where, measuring.gate
        # Every build (baselines, search, re-measurement) ends in time for the results.
        gate.deadline = partial(budget.until, FINISH_SECONDS)
        store.add_kernel_names({task.workload_hash: task.name for task in tasks})
        status.stage = f"measure the untuned kernels on {where}"
        with progress.stage(status.stage):
            untuned = measure_untuned(tasks, store, measuring.measurer, user_rules)
        searched_before = count_searched_records(store, tasks)
        remaining = trials_to_run(trials, budget.seconds, searched_before, len(tasks))
        monitor = SearchMonitor(
            tasks, untuned, remaining, budget, measuring.pace, where,
            searched_best=best_search_seconds(store, tasks),
        )  # fmt: skip
        status.stage = f"neighbours: one knob at a time on {where}"
        with progress.stage(status.stage):
            deadline = pass_deadline(monitor)
            gate.deadline, gate.on_build = deadline, monitor.building
            status.search = monitor
            try:
                # Ctrl-C ends the pass between two builds (TVM's builder calls back into
                # Python: an interrupt raised there would not unwind cleanly), then raises.
                with deferred_interrupt(monitor) as raise_interrupt:
                    remaining -= measure_neighbours(
                        tasks, store, measuring.measurer, monitor, deadline,
                        pass_limit(remaining),
                    )  # fmt: skip
                if monitor.interrupted:
                    raise_interrupt()
            finally:
                status.search, gate.on_build = None, None
                gate.deadline = partial(budget.until, FINISH_SECONDS)
        counted = trials is not None or budget.seconds is None
        label = f"search: {remaining} trials" if counted else "search"
        status.stage = label + (f" on {where}" if remaining else " (already done)")
        with progress.stage(status.stage):
            gate.deadline, gate.on_build = monitor.search_deadline, monitor.building
            status.search = monitor
            try:
                stopped = run_search(
                    tasks, measuring.measurer, remaining, monitor, str(scratch),
                    local=transport == "local", budget=budget,
                )  # fmt: skip
            finally:
                status.search, gate.on_build = None, None
                gate.deadline = partial(budget.until, FINISH_SECONDS)
        status.stage = f"re-measure the search's best against untuned on {where}"
        with progress.stage(status.stage):
            undecided = confirm_choices(tasks, store, measuring.measurer, progress, budget)
        outcomes = task_outcomes(store, tasks, untuned)
    return TuneResult(
        model=relax_model.name,
        preset=preset.name,
        records=store.path,
        transport=where,
        threads=thread_count,
        tasks=outcomes,
        trials_run=monitor.trials,
        trials_before=searched_before,
        seconds=budget.elapsed(),
        stopped=stopped,
        failures={k: v for k, v in monitor.failures.items() if v},
        undecided=undecided,
    )


def process_started() -> float:
    """When this process started, as a ``time.monotonic()`` value (for ``tune(started=...)``:
    a command's time budget includes its own start-up)."""
    import psutil

    try:
        age = time.time() - psutil.Process().create_time()
    except (psutil.Error, OSError):
        age = 0.0
    return time.monotonic() - max(0.0, age)
