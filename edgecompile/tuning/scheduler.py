"""Which kernel the search works on next, and when the search ends: MetaSchedule's task loop
with our choice of task.

Why not MetaSchedule's gradient scheduler: it opens with a round for every task, searching
and building each, before it waits for a single measurement -- with 27 kernels, eleven minutes
in which nothing was recorded, reported or checked against a 2-minute budget. Here each round is
measured (its records committed, the status line moved, the budget checked) while at most the
next one is searched and built, and the search can end between any two rounds.

The order: each kernel's share of the model's untuned time (calls × the baseline's time, see
:meth:`SearchMonitor.shares`) divided by the rounds it already had, plus one -- the heaviest
kernel first, and a kernel twice as heavy gets about twice the rounds: a 112×112 pointwise
conv many more than a 7×7 one. A share counts at least :data:`SHARE_FLOOR` of the model's
time, so a long tune still gives the lightest kernels a round now and then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgecompile.tuning.monitor import SearchMonitor

#: The least share of the model's time a kernel counts as: with mobilenet_v2's 33 kernels, a
#: kernel of 0.1% gets its first round once the heaviest (~15%) have had about seven.
SHARE_FLOOR = 0.02


def floored(shares: Sequence[float]) -> list[float]:
    """``shares``, each at least :data:`SHARE_FLOOR` of their sum."""
    least = SHARE_FLOOR * sum(shares)
    return [max(share, least) for share in shares]


def next_task(shares: Sequence[float], rounds: Sequence[int], live: Sequence[int]) -> int | None:
    """The live task with the largest share per round it would have; ties: the first."""
    return max(live, key=lambda i: (shares[i] / (rounds[i] + 1), -i), default=None)


def budget_scheduler(monitor: SearchMonitor, per_round: int) -> Any:
    """A MetaSchedule task scheduler picking tasks by :func:`next_task` and ending the search
    when ``monitor`` says so (:meth:`SearchMonitor.stop_reason_before_round`)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class BudgetScheduler(ms.task_scheduler.PyTaskScheduler):
        def next_task_id(self) -> int:
            scheduler = self._outer()
            records = scheduler.tasks_
            # A round whose runs are done is recorded now, not when its task comes round again.
            for task_id in _measuring(monitor, records):
                scheduler.touch_task(task_id)
            measuring = _measuring(monitor, records)
            if monitor.stop_reason_before_round(per_round, per_round * len(measuring)):
                return -1  # MetaSchedule then waits for the rounds still measuring
            live = [i for i, record in enumerate(records) if not record.is_terminated]
            task_id = next_task(floored(monitor.shares()), monitor.rounds, live)
            if task_id is None:
                return -1
            # Only the latest round measures while the next one is searched and built (a task's
            # own round must be recorded before its next).
            for waiting in measuring:
                if waiting == task_id or waiting != measuring[-1]:
                    scheduler.join_running_task(waiting)
            monitor.starting(task_id)
            monitor.pace.start_round()
            return task_id

    return BudgetScheduler()


def _measuring(monitor: SearchMonitor, records: Any) -> list[int]:
    """Tasks with a round out for measurement (a task MetaSchedule ended has none)."""
    return [i for i in monitor.measuring if not records[i].is_terminated]
