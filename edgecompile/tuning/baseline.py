"""The untuned baseline: every task as a build without records compiles it, measured once and
committed as a record.

So the search starts from our schedules (its initial population comes from the database's best
records), and every search record is later judged against the schedule it would replace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgecompile.records import RecordStore, mark_of, mean_seconds, trace_digest
from edgecompile.tuning.measure import Measurer
from edgecompile.tuning.tasks import TuningTask

#: Kernels measured per batch.
BATCH = 8


def untuned_schedule(module: Any, target: Any, user_rules: Sequence[Any] = ()) -> Any | None:
    """What a build without records compiles for this kernel, as a schedule with a trace: a user
    rule's or our rule's schedule (tried as the build tries them), else TVM's default lowering
    (an empty trace). Each carries a ``SCHEDULED_BY_ATTR`` mark, so a record replaying it says
    who made it.

    A rule with knobs (:mod:`~edgecompile.schedules.knobs`) gives its design space's default
    point: the same code, its choices as sampling instructions at their analytic values, so the
    search's evolution, seeded from the best records, mutates our schedule's choices."""
    from tvm import s_tir

    from edgecompile.schedules.knobs import Knobs
    from edgecompile.schedules.pipeline import TVM_DEFAULT, schedule_rules
    from edgecompile.schedules.rules import SCHEDULED_BY_ATTR, ScheduleFailed
    from edgecompile.schedules.user import UserRule

    for rule in schedule_rules(user_rules):
        try:
            if getattr(rule, "has_knobs", False):
                schedule = rule.try_schedule(module["main"], target, Knobs(tunable=True))
            else:
                schedule = rule.try_schedule(module["main"], target)
        except ScheduleFailed:
            if isinstance(rule, UserRule):
                continue  # a user rule that fails hands the kernel on, as in the build
            break
        if schedule is not None:
            return schedule
    schedule = s_tir.Schedule(module)
    try:
        schedule.annotate(schedule.get_sblock("root"), SCHEDULED_BY_ATTR, TVM_DEFAULT)
    except Exception:  # no root block: finished TIR, not a task (see extract_tasks)
        return None
    return schedule


def measure_untuned(
    tasks: list[TuningTask],
    store: RecordStore,
    measurer: Measurer,
    user_rules: Sequence[Any] = (),
) -> dict[str, float]:
    """Measure every task as an untuned build compiles it and commit that as a record; the
    seconds per workload hash.

    A record already in the store with the same trace is not measured again. Kernels whose
    builds the measurer's deadline stopped are left for a rerun.
    """
    database = measurer.database
    timings: dict[str, float] = {}
    pending: list[tuple[TuningTask, Any, Any]] = []
    for task in tasks:
        schedule = untuned_schedule(task.module, measurer.target, user_rules)
        if schedule is None:
            continue
        workload = database.commit_workload(task.module)
        known = [
            r for r in database.get_top_k(workload, 1 << 20) if str(r.trace) == str(schedule.trace)
        ]
        if known:
            seconds = mean_seconds(known[0].run_secs)
            if seconds is not None:
                timings[task.workload_hash] = seconds
            continue
        pending.append((task, schedule, workload))
    # In batches: the first times the runs, so the deadline can stop the rest in time.
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        if not _measure_batch(batch, store, measurer, timings):
            break  # the deadline stopped its builds
    return timings


def _measure_batch(
    batch: list[tuple[TuningTask, Any, Any]],
    store: RecordStore,
    measurer: Measurer,
    timings: dict[str, float],
) -> bool:
    """Measure and commit ``batch``; False if the deadline skipped any of its builds."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    database = measurer.database
    arg_infos = [ArgInfo.from_entry_func(schedule.mod) for _, schedule, _ in batch]
    measured = measurer.measure(
        [(schedule.mod, args) for (_, schedule, _), args in zip(batch, arg_infos, strict=True)]
    )
    committed = 0
    for (task, schedule, workload), args, runs in zip(batch, arg_infos, measured, strict=True):
        if not runs or runs[0].error_msg is not None or not runs[0].run_secs:
            continue
        committed += 1
        database.commit_tuning_record(
            ms.database.TuningRecord(
                schedule.trace, workload, runs[0].run_secs, measurer.target, args
            )
        )
        seconds = mean_seconds(runs[0].run_secs)
        if seconds is not None:
            timings[task.workload_hash] = seconds
    store.add_baselines(
        {trace_digest(body): mark_of(body) or "untuned" for body in store.latest_records(committed)}
    )
    return all(runs is not None for runs in measured)
