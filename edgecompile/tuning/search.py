"""MetaSchedule's search: its evolutionary search (xgboost cost model) over the tasks, seeded
from the records, in rounds our :mod:`~edgecompile.tuning.scheduler` orders and ends, each
round's records committed and reported to the :class:`SearchMonitor`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from edgecompile._interrupts import keep_interrupts_through_ffi, raise_if_interrupt
from edgecompile.errors import EdgecompileError, last_line
from edgecompile.tuning.budget import TimeBudget, plan_search
from edgecompile.tuning.building import was_skipped
from edgecompile.tuning.measure import Measurer, remove_artifacts
from edgecompile.tuning.monitor import TIME_BUDGET_SPENT, SearchMonitor
from edgecompile.tuning.scheduler import budget_scheduler, floored
from edgecompile.tuning.tasks import TuningTask

#: MetaSchedule's preparation per task before the first round (design spaces, search state):
#: 3 s for squeezenet1_1's 27 kernels here.
SETUP_SECONDS_PER_TASK = 0.1
#: Records per kernel (the store's fastest) the cost model learns from before the first round
#: (:func:`warmed_cost_model`), and what learning one costs: mobilenet_v2's 33 kernels, 652
#: records, took 6.7 s here (trace replay, features, xgboost's training), one thread.
WARM_START_RECORDS = 32
WARM_START_SECONDS_PER_RECORD = 0.01


def run_search(
    tasks: list[TuningTask],
    measurer: Measurer,
    trials: int,
    monitor: SearchMonitor,
    scratch: str,
    *,
    local: bool,
    budget: TimeBudget,
) -> str:
    """The evolutionary search over ``tasks`` for ``trials`` candidates, or until the budget's
    time for it is spent; why it stopped."""
    from tvm.s_tir import meta_schedule as ms

    if trials <= 0:
        return "no search trials left to run"
    shares = floored(monitor.shares())
    plan = plan_search(trials, len(tasks), budget, measurer.pace, max(shares) / sum(shares))
    known = warm_start_records(tasks, measurer.database)
    # MetaSchedule first builds every task's search space, and the cost model learns the
    # records: not worth it for less time than that and a round take.
    setup = SETUP_SECONDS_PER_TASK * len(tasks) + WARM_START_SECONDS_PER_RECORD * len(known)
    if monitor.stop_reason_before_round(plan.per_round, 0, setup):
        return str(monitor.stop_reason)
    # MetaSchedule searches the next task while the last one's candidates are measured: with
    # local measurements the search keeps to one core, so the measuring one is left alone.
    search_threads = 1 if local else os.cpu_count() or 1
    keep_interrupts_through_ffi()
    try:
        with deferred_interrupt(monitor) as raise_interrupt:
            contexts = _tune_contexts(tasks, plan.population, search_threads)
            cost_model = warmed_cost_model(contexts, known, search_threads)
            if not monitor.interrupted:
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
                    cost_model=cost_model,
                    measure_callbacks=[_recorder(monitor)],
                    task_scheduler=budget_scheduler(monitor, plan.per_round),
                )
    except Exception as error:  # TVM's FFI wraps whatever a callback raised
        raise_if_interrupt(error)  # Ctrl-C, however the FFI wrapped it, is no failure
        raise EdgecompileError(
            f"tuning failed: {last_line(error)}",
            "the records measured so far are kept; run the same command to continue",
        ) from None
    if monitor.interrupted:
        raise_interrupt()  # now that MetaSchedule has recorded the rounds it had out
    if monitor.stop_reason is None:
        return "trials done"
    if monitor.stop_reason != TIME_BUDGET_SPENT:
        raise EdgecompileError(
            f"tuning stopped: {monitor.stop_reason}",
            "the records measured so far are kept; fix the board, then rerun to continue",
        )
    return monitor.stop_reason


def warm_start_records(tasks: list[TuningTask], database: Any) -> list[tuple[int, Any]]:
    """``(task index, record)`` for each task's :data:`WARM_START_RECORDS` fastest records in
    ``database`` (our default point, the neighbour pass's, earlier searches')."""
    known = []
    for index, task in enumerate(tasks):
        if database.has_workload(task.module):
            workload = database.commit_workload(task.module)
            known += [(index, r) for r in database.get_top_k(workload, WARM_START_RECORDS)]
    return known


def warmed_cost_model(contexts: list[Any], known: list[tuple[int, Any]], threads: int) -> Any:
    """MetaSchedule's xgboost cost model (as ``tune_tasks`` would create it) that has learnt
    the ``known`` records of each task (:func:`warm_start_records`) before the first round.

    Why: ``tune_tasks`` starts its model empty, and until it has seen 100 measurements it scores
    candidates with random numbers, so the first rounds of every tune -- and of each continued
    one -- were drawn at random although the store holds measurements of these very kernels:
    our default points, the neighbour pass's (just measured), earlier searches'.
    """
    from tvm.s_tir import meta_schedule as ms

    model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=threads, tree_method="auto")
    by_task: dict[int, list[Any]] = {}
    for index, record in known:
        by_task.setdefault(index, []).append(record)
    for index, records in by_task.items():
        model.update(
            contexts[index],
            [record.as_measure_candidate() for record in records],
            [ms.runner.RunnerResult(record.run_secs, None) for record in records],
        )
    return model


@contextlib.contextmanager
def deferred_interrupt(monitor: SearchMonitor) -> Iterator[Callable[[], None]]:
    """Within the block, Ctrl-C stops the search at its next round (the neighbour pass: before
    its next build) instead of raising at once; yields what raises it afterwards (the handler
    in place before, which the CLI uses to remember the signal for its exit code).

    Why: during the search, Python code of ours and xgboost's runs inside MetaSchedule's C++
    (its cost model is called from a parallel loop): a KeyboardInterrupt raised there ends in
    ``std::terminate`` -- a segfault, not exit 130. A second Ctrl-C raises at once.
    """
    previous = signal.getsignal(signal.SIGINT)

    def raise_interrupt() -> None:
        if callable(previous):
            previous(signal.SIGINT, None)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    if not main or not callable(previous):  # SIG_IGN, SIG_DFL: as they were
        yield raise_interrupt
        return

    def note(signum: int, frame: FrameType | None) -> None:
        if monitor.interrupted:
            previous(signum, frame)  # the second Ctrl-C: the user insists
            raise KeyboardInterrupt
        monitor.interrupt()

    signal.signal(signal.SIGINT, note)
    try:
        yield raise_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def _recorder(monitor: SearchMonitor) -> Any:
    """The measure callback: each measured round's candidates (not those the deadline skipped)
    committed to the database and fed to the cost model (MetaSchedule's default callbacks),
    counted by the monitor; then every build folder of the round deleted."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    defaults = ms.measure_callback.MeasureCallback.create("default")

    @derived_object
    class RecordRound(ms.measure_callback.PyMeasureCallback):
        def apply(
            self,
            task_scheduler: Any,
            task_id: int,
            measure_candidates: Any,
            builder_results: Any,
            runner_results: Any,
        ) -> None:
            built = list(builder_results)
            try:
                kept = [
                    i
                    for i, result in enumerate(built)
                    if not was_skipped(result)
                    # after Ctrl-C (which kills the workers too) only what really ran
                    and not (monitor.interrupted and _failed(result, runner_results[i]))
                ]
                candidates = [measure_candidates[i] for i in kept]
                builds = [built[i] for i in kept]
                runs = [runner_results[i] for i in kept]
                if kept:
                    for callback in defaults:
                        callback.apply(task_scheduler, task_id, candidates, builds, runs)
                monitor.record_round(task_id, builds, runs)
            finally:
                monitor.measured(task_id)
                remove_artifacts(built)

    return RecordRound()


def cpu_intrinsics_only(target: Any) -> None:
    """Register the tensor intrinsics of ``target``'s CPU (x86 or Arm) without the rest of
    ``tvm.s_tir.tensor_intrin``, which every MetaSchedule ``TuneContext`` imports.

    Trap (TVM 0.27): that package parses every GPU intrinsic's TVMScript on import, each parse
    walking the whole Python stack (``inspect.stack``): 107 s here before the first search
    round, 175 s with torch loaded -- a 1-minute budget spent before the search began. A CPU's
    search space refers only to its own intrinsics (x86: 0.6 s, Arm: 4 s). The package is
    entered in ``sys.modules`` without running its ``__init__``; its other submodules still
    import on demand.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return
        sys.modules[name] = importlib.util.module_from_spec(spec)
    triple = str(target.attrs.get("mtriple", "")) if target.kind.name == "llvm" else ""
    if triple.startswith(("x86", "i386", "i686")):
        cpus = ["x86"]
    elif triple.startswith(("aarch64", "arm")):
        cpus = ["arm_cpu"]
    else:
        cpus = ["x86", "arm_cpu"]
    for cpu in cpus:
        importlib.import_module(f"{name}.{cpu}")


def _failed(built: Any, ran: Any) -> bool:
    return bool(built.error_msg or ran.error_msg or not ran.run_secs)


def design_space(task: TuningTask) -> Any:
    """Where the search looks for ``task``: for a kernel one of our rules with knobs claims
    (:mod:`~edgecompile.schedules.knobs`), that rule's design spaces; for any other,
    MetaSchedule's generic one ("post-order-apply").

    Why ours alone, not a union with the generic space (measured for ``x86-64-v2``, 1 thread):
    on a 1×1 conv (24 trials) the union drew 11 of 12 candidates from the generic space, all
    2-10× slower than ours, while ours alone varied our tiles in all 12 and 6 beat the default;
    on mobilenet_v2 (5 min each) a search record won the re-measurement for 6 kernels with ours
    alone, 2 with the generic space alone, none with the union.
    """
    from tvm.s_tir import meta_schedule as ms

    rule = knob_rule(task)
    if rule is None:
        return "post-order-apply"
    target = task.extracted.target

    def spaces(sch: Any) -> list[Any]:
        return rule.design_spaces(sch, target)

    return ms.space_generator.ScheduleFn(spaces)


def knob_rule(task: TuningTask) -> Any | None:
    """The rule of ours whose design spaces ``task`` is searched in: the first with knobs that
    claims the kernel and has a choice left to vary on it; None: MetaSchedule's generic space."""
    from tvm import s_tir

    from edgecompile.schedules.pipeline import schedule_rules
    from edgecompile.schedules.rules import ScheduleFailed

    target = task.extracted.target
    for rule in schedule_rules():
        if not getattr(rule, "has_knobs", False) or not rule.claims(s_tir.Schedule(task.module)):
            continue
        try:  # a rule that fails on this kernel would fail the whole search from inside it
            defaults = rule.design_spaces(s_tir.Schedule(task.module), target)
        except ScheduleFailed:
            return None
        if not defaults:
            # the rule's kernel for another target (VNNI's and rpi5's sdot conv share a
            # layout): the next rule's may be this target's
            continue
        if not any(has_sampled_choices(space.trace) for space in defaults):
            return None  # every choice fixed here (a row tail): nothing for the search to vary
        return rule
    return None


def has_sampled_choices(trace: Any) -> bool:
    """Whether ``trace`` holds a sampling instruction: a choice the search can vary."""
    return any(inst.kind.name.startswith("Sample") for inst in trace.insts)


def _tune_contexts(tasks: list[TuningTask], population: int, search_threads: int) -> list[Any]:
    """One MetaSchedule TuneContext per task, logging to our quiet logger.

    MetaSchedule's own helper configures per-task loggers through ``logging.config`` that print
    every round and a task table to stdout, and breaks on a second call in one process when the
    logger has picked up an unnamed handler. Our status line replaces those logs.
    """
    import logging

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    logger = logging.getLogger("edgecompile.tuning.metaschedule")
    logger.setLevel(logging.WARNING)
    cpu_intrinsics_only(tasks[0].extracted.target)
    return [
        ms.TuneContext(
            mod=task.extracted.dispatched[0],
            target=task.extracted.target,
            space_generator=design_space(task),
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
