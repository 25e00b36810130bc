"""MetaSchedule's search: its task scheduler and evolutionary search (xgboost cost model) over
the tasks, seeded from the records, each round reported to the :class:`SearchMonitor`."""

from __future__ import annotations

import os
from typing import Any

from edgecompile.errors import EdgecompileError, last_line
from edgecompile.tune.budget import plan_search
from edgecompile.tune.measure import Measurer, remove_artifacts
from edgecompile.tune.monitor import TIME_BUDGET_SPENT, SearchMonitor
from edgecompile.tune.tasks import TuningTask


def run_search(
    tasks: list[TuningTask],
    measurer: Measurer,
    trials: int,
    monitor: SearchMonitor,
    scratch: str,
    *,
    local: bool,
) -> str:
    """MetaSchedule's task scheduler over ``tasks`` for ``trials`` candidates; why it stopped."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    if trials <= 0:
        return "no search trials left to run"

    @derived_object
    class MonitorCallback(ms.measure_callback.PyMeasureCallback):
        def apply(
            self,
            task_scheduler: Any,
            task_id: int,
            measure_candidates: Any,
            builder_results: Any,
            runner_results: Any,
        ) -> None:
            try:
                monitor.record_round(task_id, list(builder_results), list(runner_results))
            finally:
                remove_artifacts(list(builder_results))

    plan = plan_search(trials, len(tasks))
    # MetaSchedule searches the next task while the last one's candidates are measured: with
    # local measurements the search keeps to one core, so the measuring one is left alone.
    search_threads = 1 if local else os.cpu_count() or 1
    contexts = _tune_contexts(tasks, plan.population, search_threads)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), MonitorCallback()]
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[float(task.weight) for task in tasks],
            work_dir=scratch,
            max_trials_global=trials,
            max_trials_per_task=plan.per_task,
            num_trials_per_iter=plan.per_round,
            builder=measurer.builder,
            runner=measurer.runner,
            database=measurer.database,
            measure_callbacks=callbacks,
        )
    except Exception as error:  # our stop arrives wrapped by TVM's FFI; anything else is real
        if monitor.stop_reason is None:
            raise EdgecompileError(
                f"tuning failed: {last_line(error)}",
                "the records measured so far are kept; run the same command to continue",
            ) from None
        if monitor.stop_reason != TIME_BUDGET_SPENT:
            raise EdgecompileError(
                f"tuning stopped: {monitor.stop_reason}",
                "the records measured so far are kept; fix the board, then rerun to continue",
            ) from None
        return monitor.stop_reason
    return "trials done"


def _tune_contexts(tasks: list[TuningTask], population: int, search_threads: int) -> list[Any]:
    """One MetaSchedule TuneContext per task, logging to our quiet logger.

    MetaSchedule's own helper configures per-task loggers through ``logging.config`` that print
    every round and a task table to stdout, and breaks on a second call in one process when the
    logger has picked up an unnamed handler. Our progress line replaces those logs.
    """
    import logging

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    logger = logging.getLogger("edgecompile.tune.metaschedule")
    logger.setLevel(logging.WARNING)
    return [
        ms.TuneContext(
            mod=task.extracted.dispatched[0],
            target=task.extracted.target,
            space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 2)
            ),
            task_name=task.name,
            logger=logger,
            rand_state=seed,
            num_threads=search_threads,
        ).clone()
        for task, seed in zip(tasks, fork_seed(0, n=len(tasks)), strict=True)
    ]
