"""The verdict per kernel: the search's best records re-measured against the untuned schedule,
and what a build uses (``choices.json``).

Why re-measure: each record is one measurement, and the fastest of hundreds of candidates beats
one measurement of the untuned schedule by luck alone. Without it the "tuned" mobilenet_v2 came
out 5% slower than untuned on this host; with it a search record replaces our schedule only
where it is faster in a fresh, fair comparison.
"""

from __future__ import annotations

import statistics
from typing import Any

from edgecompile.progress import Progress
from edgecompile.records import UNTUNED, Choice, RecordStore, trace_digest
from edgecompile.tuning.budget import FINISH_SECONDS, Pace, TimeBudget
from edgecompile.tuning.measure import FAILED_RUN, Measurer
from edgecompile.tuning.tasks import TuningTask, milliseconds, timed_records

#: The re-measurement: the search's best few records per kernel against the untuned schedule,
#: in interleaved rounds (load that comes and goes hits all), one timing each per round --
#: the search's own runner, so no second worker process starts.
CONFIRM_CANDIDATES = 2
CONFIRM_ROUNDS = 9
#: A search record replaces the untuned schedule only when this much faster (noise is ~1-2%).
CONFIRM_MARGIN = 0.03


def remeasure_seconds(pace: Pace, contenders: int) -> float:
    """How long re-measuring one kernel takes: the untuned schedule and ``contenders`` search
    records, each built once and timed in every round."""
    return pace.remeasure_seconds(1 + contenders, CONFIRM_ROUNDS)


def confirm_choices(
    tasks: list[TuningTask],
    store: RecordStore,
    measurer: Measurer,
    progress: Progress,
    budget: TimeBudget | None = None,
) -> int:
    """Per task, decide what a build uses: the search's best records re-measured against the
    untuned schedule (interleaved rounds, median), committed to the store's choices one task at
    a time (an interrupted tune keeps the verdicts it reached). A task decided before, whose
    records have not changed since, is not measured again.

    With a time ``budget``, the heaviest kernels (calls × untuned time) go first and a kernel
    whose re-measurement would not end in time is left undecided: how many, returned (a rerun
    decides them)."""
    bodies_of = store.records_by_workload()
    baselines = store.baselines()
    decided = store.choices()
    pending = []
    for task in tasks:
        bodies = bodies_of.get(task.workload_hash, [])
        previous = decided.get(task.workload_hash)
        if previous is not None and previous.records == len(bodies):
            continue
        timed = timed_records(bodies)
        untuned = [(t, b) for t, b in timed if trace_digest(b) in baselines]
        searched = sorted(
            ((t, b) for t, b in timed if trace_digest(b) not in baselines), key=lambda p: p[0]
        )
        if not untuned or not searched:
            continue  # nothing to compare: see RecordStore.decisions
        untuned_seconds, untuned_body = min(untuned, key=lambda pair: pair[0])
        contenders = [b for t, b in searched[:CONFIRM_CANDIDATES] if t < untuned_seconds]
        contenders += earlier_winner(previous, searched, contenders)
        pending.append((task, untuned_seconds, untuned_body, contenders, len(bodies)))
    pending.sort(key=lambda entry: -entry[0].weight * entry[1])
    undecided = 0
    for number, (task, untuned_seconds, untuned_body, contenders, records) in enumerate(pending, 1):
        if not contenders:
            choice = Choice(UNTUNED, milliseconds(untuned_seconds), None, records)
        else:
            if budget is not None and budget.left(FINISH_SECONDS) < remeasure_seconds(
                measurer.pace, len(contenders)
            ):
                undecided += 1
                continue
            progress.update(
                f"re-measure {number}/{len(pending)} {task.name}: untuned vs "
                f"{len(contenders)} search record(s), {CONFIRM_ROUNDS} rounds"
            )
            medians = remeasure(task, [untuned_body, *contenders], measurer)
            if medians is None:  # the deadline stopped its builds
                undecided += 1
                continue
            choice = choice_from_medians(medians, [untuned_body, *contenders], records)
        store.add_choices({task.workload_hash: choice})
    return undecided


def earlier_winner(
    previous: Choice | None, searched: list[Any], contenders: list[Any]
) -> list[Any]:
    """The record an earlier verdict chose, if the new records pushed it out of ``contenders``:
    it is re-measured with them. Why: a later tune's search times its candidates once each, so
    a new record can look faster by luck; without the earlier winner in the comparison, that
    record losing to the untuned schedule would drop a win already confirmed."""
    if previous is None or not previous.uses_tuned:
        return []
    if any(trace_digest(body) == previous.record for body in contenders):
        return []
    return [body for _, body in searched if trace_digest(body) == previous.record][:1]


def choice_from_medians(medians: list[float | None], bodies: list[Any], records: int) -> Choice:
    """``bodies[0]`` is the untuned record, the rest search records; ``medians`` their times."""
    untuned = medians[0]
    timed = [(m, b) for m, b in zip(medians[1:], bodies[1:], strict=True) if m is not None]
    best, body = min(timed, key=lambda pair: pair[0], default=(None, None))
    if best is not None and (untuned is None or best < untuned * (1 - CONFIRM_MARGIN)):
        return Choice(trace_digest(body), milliseconds(untuned), milliseconds(best), records)
    return Choice(UNTUNED, milliseconds(untuned), milliseconds(best), records)


def remeasure(task: TuningTask, bodies: list[Any], measurer: Measurer) -> list[float | None] | None:
    """Median time of each record's schedule over interleaved rounds (None: failed now); None
    if the deadline stopped any of their builds."""
    from tvm.s_tir import meta_schedule as ms

    workload = measurer.database.commit_workload(task.module)
    candidates = [
        ms.database.TuningRecord.from_json(body, workload).as_measure_candidate() for body in bodies
    ]
    measured = measurer.measure(
        [(candidate.sch.mod, candidate.args_info) for candidate in candidates],
        rounds=CONFIRM_ROUNDS,
    )
    medians: list[float | None] = []
    for runs in measured:
        if runs is None:
            return None
        samples = [
            float(v)
            for run in runs
            if run.error_msg is None
            for v in run.run_secs or []
            if float(v) < FAILED_RUN
        ]
        medians.append(statistics.median(samples) if samples else None)
    return medians
