"""The neighbour pass: before the evolutionary search, each heavy kernel's best point of our
design space with one knob moved one step at a time, measured and committed like search records.

Why: MetaSchedule's evolutionary search spends its first rounds on random samples of a large
space scored by a cost model that has seen nothing yet, so a tune's gains came late (x86-64-v3,
two 5-minute steps: 77-94% of the final gain at the half on three of four models). Our rules'
spaces are small around their analytic default: a tile's next smaller and larger divisor, the
unroll depth's few values, the other loop order. Those points are enumerated here, heaviest
kernel first (calls × untuned time), each replayed from the centre's trace with one decision
changed (``Trace.with_decision``) and post-processed as MetaSchedule post-processes a search
candidate, then measured by the tune's :class:`~edgecompile.tuning.measure.Measurer` (so the
RPC, tracker and SSH paths measure them too). The search then draws its initial population from
the store's best records: the best neighbours.

The centre is the kernel's best record of our space so far: the untuned default on a first tune,
the winner of the last pass or search on a rerun, so successive tunes into one store descend
coordinate by coordinate. A point already in the store is never measured again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecompile.records import RecordStore, mean_seconds, trace_digest
from edgecompile.tuning.measure import FAILED_RUN, Measurer
from edgecompile.tuning.monitor import SearchMonitor
from edgecompile.tuning.search import cpu_intrinsics_only, has_sampled_choices, knob_rule
from edgecompile.tuning.tasks import TuningTask

#: The pass's share of the time the search stage has (the rest is the evolutionary search's,
#: which starts from what the pass found); with a trial count, its share of the trials.
PASS_SHARE = 0.5
#: What ``records show`` says found a record of the pass (``RecordStore.neighbours``).
NEIGHBOURS = "neighbours"


@dataclass(frozen=True)
class Point:
    """One candidate of the pass: a schedule ready to build, and its trace without the
    post-processing (the identity of the point)."""

    schedule: Any
    key: str


def point_key(trace: Any) -> str:
    """A point's identity: its trace without MetaSchedule's post-processing instructions, so
    a record of the point (post-processed) and the point itself compare equal."""
    return "\n".join(trace.as_python(remove_postproc=True))


def one_knob_moves(trace: Any) -> list[Any]:
    """``trace`` with one decision moved one step, each: every two-level
    ``sample_perfect_tile`` to the next smaller and the next larger inner factor that divides
    its loop (within the instruction's innermost bound), every ``sample_categorical`` to each
    of its other values."""
    moves: list[Any] = []
    for inst in trace.insts:
        decision = trace.get_decision(inst)
        if decision is None:
            continue
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            factors = [int(f) for f in decision]
            if len(factors) != 2:
                continue  # our knobs split in two; deeper tiles are MetaSchedule's own
            extent, inner = factors[0] * factors[1], factors[1]
            bound = int(inst.attrs[1])
            divisors = [
                d for d in range(1, extent + 1) if extent % d == 0 and (bound <= 0 or d <= bound)
            ]
            steps = [d for d in divisors if d < inner][-1:] + [d for d in divisors if d > inner][:1]
            moves += [trace.with_decision(inst, [extent // f, f], True) for f in steps]
        elif kind == "SampleCategorical":
            others = [i for i in range(len(inst.attrs[0])) if i != int(decision)]
            moves += [trace.with_decision(inst, index, True) for index in others]
    return moves


class PointMaker:
    """Schedules of a task's points: a trace replayed on the kernel, then MetaSchedule's
    post-processors for the target (as a search candidate is built: the unroll knob becomes a
    pragma only there)."""

    def __init__(self, task: TuningTask, rule: Any) -> None:
        from tvm.s_tir import meta_schedule as ms

        from edgecompile.tuning.search import design_space

        self.task = task
        self.rule = rule
        target = task.extracted.target
        cpu_intrinsics_only(target)
        context = ms.TuneContext(
            mod=task.extracted.dispatched[0],
            target=target,
            space_generator=design_space(task),
            task_name=task.name,
            num_threads=1,
        )
        self.postprocs = list(context.space_generator.postprocs)

    def design_spaces(self) -> list[Any]:
        """The rule's design spaces' default points, as traces (the first: the default's)."""
        from tvm import s_tir

        target = self.task.extracted.target
        spaces = self.rule.design_spaces(s_tir.Schedule(self.task.module), target)
        return [space.trace for space in spaces]

    def point(self, trace: Any) -> Point | None:
        """The point ``trace`` describes, post-processed; None if a post-processor refuses it
        (MetaSchedule drops such a candidate too)."""
        from tvm import s_tir

        schedule = s_tir.Schedule(self.task.module, debug_mask="none", error_render_level="none")
        try:
            trace.apply_to_schedule(schedule, remove_postproc=True)
            schedule.enter_postproc()
            if not all(postproc.apply(schedule) for postproc in self.postprocs):
                return None
        except Exception:  # TVM's own error types: an invalid point is no candidate
            return None
        return Point(schedule, point_key(trace))


def ring(maker: PointMaker, centre: Any, known: set[str]) -> list[Point]:
    """The points around ``centre`` (a trace) not in ``known``: its one-knob moves, and the
    default point of each of the rule's other design spaces (loop orders; the first space's
    is the untuned schedule, measured already -- its trace spelled otherwise)."""
    points: list[Point] = []
    seen = set(known)
    for trace in [*one_knob_moves(centre), *maker.design_spaces()[1:]]:
        key = point_key(trace)
        if key in seen:
            continue
        seen.add(key)
        point = maker.point(trace)
        if point is not None:
            points.append(point)
    return points


def pass_limit(trials: int) -> int:
    """The candidates the pass may measure of the ``trials`` the search stage has."""
    return math.floor(PASS_SHARE * trials)


def pass_deadline(monitor: SearchMonitor) -> Callable[[], float | None]:
    """When the pass must end (``time.monotonic()``, None: no time budget): its share of the
    time until the search's deadline, which moves earlier as the re-measurement's reserve
    grows with every kernel the pass improves."""
    started = time.monotonic()
    end = monitor.search_deadline()
    if end is None:
        return monitor.search_deadline
    until = started + PASS_SHARE * max(0.0, end - started)

    def deadline() -> float | None:
        search = monitor.search_deadline()
        return until if search is None else min(search, until)

    return deadline


def measure_neighbours(
    tasks: list[TuningTask],
    store: RecordStore,
    measurer: Measurer,
    monitor: SearchMonitor,
    deadline: Callable[[], float | None],
    limit: int | None = None,
) -> int:
    """The pass over ``tasks``, heaviest first, until ``deadline`` (``time.monotonic()``, None:
    none) or ``limit`` candidates; each kernel's ring measured as one batch, its records
    committed and named in the store, the monitor told. Sweeps again while time is left, around
    each kernel whose best point moved (coordinate descent). How many candidates it measured."""
    shares = monitor.shares()
    order = sorted((i for i, task in enumerate(tasks) if shares[i] > 0), key=lambda i: -shares[i])
    makers: dict[int, PointMaker | None] = {}
    centred: dict[int, str] = {}  # the centre each kernel's last ring was measured around
    measured = 0
    while True:
        swept = measured
        for task_id in order:
            if (limit is not None and measured >= limit) or _fitting(deadline, measurer, 1) < 1:
                return measured
            if task_id not in makers:
                rule = knob_rule(tasks[task_id])
                # a kernel we do not schedule has no knobs: MetaSchedule's generic space only
                makers[task_id] = None if rule is None else PointMaker(tasks[task_id], rule)
            maker = makers[task_id]
            if maker is None:
                continue
            database = measurer.database
            workload = database.commit_workload(tasks[task_id].module)
            records = list(database.get_top_k(workload, 1 << 20))
            # the best point of our space so far (none: its untuned build did not run)
            centre = next((r.trace for r in records if has_sampled_choices(r.trace)), None)
            if centre is None or centred.get(task_id) == point_key(centre):
                continue
            centred[task_id] = point_key(centre)
            monitor.starting_neighbours(task_id)
            points = ring(maker, centre, {point_key(record.trace) for record in records})
            if limit is not None:
                points = points[: limit - measured]
            # As many as fit: the builder also stops at the deadline, between two candidates.
            points = points[: _fitting(deadline, measurer, len(points))]
            if points:
                measured += _measure_ring(task_id, points, workload, store, measurer, monitor)
        if measured == swept:
            return measured


def _fitting(deadline: Callable[[], float | None], measurer: Measurer, count: int) -> int:
    """How many of ``count`` candidates fit before the deadline at the measured pace."""
    end = deadline()
    if end is None:
        return count
    left = end - time.monotonic()  # -inf after Ctrl-C
    each = measurer.pace.candidate_seconds()
    if left <= 0 or each <= 0:
        return count if left > 0 else 0
    return min(count, math.floor(left / each))


def _measure_ring(
    task_id: int,
    points: list[Point],
    workload: Any,
    store: RecordStore,
    measurer: Measurer,
    monitor: SearchMonitor,
) -> int:
    """Measure ``points`` once each, commit those that ran as records named as the pass's;
    how many were measured (the deadline skips the rest)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    database = measurer.database
    arg_infos = [ArgInfo.from_entry_func(point.schedule.mod) for point in points]
    results = measurer.measure(
        [(point.schedule.mod, args) for point, args in zip(points, arg_infos, strict=True)]
    )
    measured = committed = 0
    for point, args, runs in zip(points, arg_infos, results, strict=True):
        if runs is None:
            continue  # skipped: the deadline had passed
        measured += 1
        if not runs:
            monitor.failed("build", "a neighbour did not build")
            continue
        run = runs[0]
        seconds = mean_seconds(run.run_secs) if run.error_msg is None else None
        if seconds is None or seconds >= FAILED_RUN:
            monitor.failed("run", run.error_msg or "no time measured")
            continue
        database.commit_tuning_record(
            ms.database.TuningRecord(
                point.schedule.trace, workload, run.run_secs, measurer.target, args
            )
        )
        committed += 1
        monitor.found(task_id, seconds)
    store.add_neighbours(
        {trace_digest(body): NEIGHBOURS for body in store.latest_records(committed)}
    )
    return measured
