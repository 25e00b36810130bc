""":func:`tune` itself: the model prepared as ``build`` prepares it, then each tuning stage in
turn, all its records written through one store writer."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgecompile.device.access import BoardAccess
from edgecompile.progress import SILENT, Progress
from edgecompile.records import store_for
from edgecompile.targets import BoardPreset, resolve_target
from edgecompile.tune.baseline import measure_untuned
from edgecompile.tune.budget import read_budget, trials_to_run
from edgecompile.tune.measure import choose_transport, measurement
from edgecompile.tune.monitor import SearchMonitor
from edgecompile.tune.results import TuneResult, task_outcomes
from edgecompile.tune.search import run_search
from edgecompile.tune.tasks import count_searched_records, extract_tasks
from edgecompile.tune.verdict import confirm_choices

#: Progress stages: prepare_model's two, then extract, untuned, search, re-measure.
TUNE_STAGES = 6


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
) -> TuneResult:
    """Tune ``model``'s kernels for ``target``, adding to the target's records (resumable).

    ``trials`` is the total number of search candidates this model's kernels should have in the
    records: a rerun after an interruption (even ``kill -9``) measures only the rest. With only
    ``time_budget``, the search runs until the time is spent. ``schedules_dir``: user schedules
    (as ``build --schedules``), part of the untuned baseline every kernel is measured as.

    Host targets are measured here; a board target on the board ``access`` reaches (one of
    its ``device``: an SSH tunnel to an RPC server on the board's loopback port
    ``remote_port``, started if none listens; ``rpc``; or ``tracker`` under ``rpc_key``, else
    the preset's key).
    """
    from edgecompile.builder import prepare_model
    from edgecompile.export import parse_input_size
    from edgecompile.schedules.user import load_user_schedules
    from edgecompile.toolchain import toolchain_for

    started = time.monotonic()
    preset = target if isinstance(target, BoardPreset) else resolve_target(target)
    budget_seconds = read_budget(trials, time_budget)
    access = access or BoardAccess()
    transport = choose_transport(preset, access)
    user_rules = [] if schedules_dir is None else load_user_schedules(schedules_dir).rules
    toolchain = toolchain_for(preset, cc)
    store = store_for(preset, records)
    thread_count = threads if threads is not None else preset.threads
    tvm_target = preset.tvm_target()
    size = parse_input_size(input_size)

    with tempfile.TemporaryDirectory(prefix="edgecompile-tune-") as scratch:
        relax_model, _, _ = prepare_model(
            model, Path(scratch), batch=batch, input_size=size, weights=weights, seed=seed,
            progress=progress,
        )  # fmt: skip
        with progress.stage("extract tuning tasks"):
            tasks = extract_tasks(relax_model.module, tvm_target)
        with (
            store.writer() as database,
            measurement(
                preset,
                toolchain,
                transport,
                thread_count,
                tvm_target,
                database,
                access=access,
                remote_port=remote_port,
            ) as measuring,
        ):
            where = measuring.where
            store.add_kernel_names({task.workload_hash: task.name for task in tasks})
            with progress.stage(f"measure the untuned kernels on {where}"):
                untuned = measure_untuned(tasks, store, measuring.search, user_rules)
            searched_before = count_searched_records(store, tasks)
            remaining = trials_to_run(trials, budget_seconds, searched_before, len(tasks))
            monitor = SearchMonitor(tasks, untuned, remaining, budget_seconds, progress, where)
            counted = trials is not None or budget_seconds is None
            label = f"search: {remaining} trials" if counted else "search"
            with progress.stage(label + (f" on {where}" if remaining else " (already done)")):
                stopped = run_search(
                    tasks, measuring.search, remaining, monitor, scratch,
                    local=transport == "local",
                )  # fmt: skip
            with progress.stage(f"re-measure the search's best against untuned on {where}"):
                confirm_choices(tasks, store, measuring.confirm, progress)
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
        seconds=time.monotonic() - started,
        stopped=stopped,
        failures={k: v for k, v in monitor.failures.items() if v},
    )
