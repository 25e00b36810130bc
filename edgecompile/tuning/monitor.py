"""The search as it runs: trials counted, the best time per task, the status line, and the
stops (time budget spent, a board that fails every candidate).

The search ends between rounds (:meth:`SearchMonitor.stop_reason_before_round`) and its
builds stop at :meth:`SearchMonitor.search_deadline`: the time budget less what the
re-measurement of the kernels the search improved will take, at the pace measured so far.
"""

from __future__ import annotations

import math
import time
from typing import Any

from edgecompile.records import mean_seconds
from edgecompile.tuning.budget import FINISH_SECONDS, Pace, TimeBudget
from edgecompile.tuning.building import was_skipped
from edgecompile.tuning.measure import FAILED_RUN
from edgecompile.tuning.tasks import TuningTask
from edgecompile.tuning.verdict import CONFIRM_CANDIDATES, remeasure_seconds

#: A board that failed this many rounds in a row is gone: stop, keep the records.
MAX_FAILED_ROUNDS = 2
TIME_BUDGET_SPENT = "time budget spent"
INTERRUPTED = "interrupted"


class SearchMonitor:
    """Counts trials, tracks the best time per task, says when the search must stop, and
    writes the status line."""

    def __init__(
        self,
        tasks: list[TuningTask],
        untuned: dict[str, float],
        trials: int,
        budget: TimeBudget,
        pace: Pace,
        where: str,
        searched_best: dict[str, float] | None = None,
    ) -> None:
        self.tasks = tasks
        self.untuned = [untuned.get(t.workload_hash) for t in tasks]
        self.best = list(self.untuned)
        #: The best search record per task (earlier tunes' included): tasks whose best beats
        #: the untuned schedule get re-measured after the search.
        searched_best = searched_best or {}
        self.searched = [searched_best.get(t.workload_hash) for t in tasks]
        for i, seconds in enumerate(self.searched):
            if seconds is not None and (self.best[i] is None or seconds < self.best[i]):
                self.best[i] = seconds
        self.rounds = [0] * len(tasks)
        self.planned = trials
        self.budget = budget
        self.pace = pace
        self.where = where
        self.started = time.monotonic()
        self.trials = 0
        self.failures = {"build": 0, "run": 0}
        self.first_error: dict[str, str] = {}
        self.failed_rounds = 0
        self.stop_reason: str | None = None
        self.current: int | None = None
        self.activity = "starting"
        #: Tasks whose last round waits for its runs, oldest first.
        self.measuring: list[int] = []
        #: Ctrl-C arrived during the search (see :func:`~edgecompile.tuning.search.run_search`).
        self.interrupted = False

    # ---- the budget -------------------------------------------------------------------------

    def remeasure_reserve(self) -> float:
        """Seconds the re-measurement will need for the tasks the search has improved."""
        contested = sum(
            1
            for untuned, searched in zip(self.untuned, self.searched, strict=True)
            if searched is not None and (untuned is None or searched < untuned)
        )
        return contested * remeasure_seconds(self.pace, CONFIRM_CANDIDATES)

    def interrupt(self) -> None:
        """Ctrl-C: no further round or build; the rounds out for measurement are recorded."""
        self.interrupted = True
        self.stop_reason = INTERRUPTED
        self.activity = "stopping after this round (Ctrl-C again to quit at once)"

    def search_deadline(self) -> float | None:
        """When the search's builds must stop (``time.monotonic()``), or None (no budget)."""
        if self.interrupted:
            return -math.inf
        if self.budget.deadline is None:
            return None
        return self.budget.deadline - FINISH_SECONDS - self.remeasure_reserve()

    def stop_reason_before_round(
        self, candidates: int, measuring: int, setup: float = 0.0
    ) -> str | None:
        """Why the search must not start another round of ``candidates`` while ``measuring``
        candidates of earlier rounds still wait for their runs (and, before the first round,
        ``setup`` seconds of MetaSchedule's preparations); None: go on."""
        if self.stop_reason is not None:
            return self.stop_reason
        deadline = self.search_deadline()
        if deadline is None:
            return None
        # The round is worth starting if its search and a couple of its candidates fit: the
        # builder stops the rest at the deadline. The search counted at its longest so far: a
        # round that overruns eats the re-measurement's reserve (squeezenet1_1's tune for
        # x86-64-v3 left every improved kernel unjudged so, the average being a third of it).
        needed = (
            setup
            + self.pace.longest_search_seconds()
            + min(candidates, 2) * self.pace.candidate_seconds()
            + measuring * self.pace.run_seconds()
        )
        if time.monotonic() + needed > deadline:
            self.stop_reason = TIME_BUDGET_SPENT
        return self.stop_reason

    # ---- the rounds -------------------------------------------------------------------------

    def shares(self) -> list[float]:
        """Each task's share of the model's untuned time: calls × the baseline's time (its best
        time so far where the baseline has none; a task never measured counts as much as the
        largest, so it is not left out). Untuned, not best: the rounds follow what each kernel
        weighs in the model, not how much the search has already won on it."""
        times = [
            untuned if untuned is not None else best
            for untuned, best in zip(self.untuned, self.best, strict=True)
        ]
        known = [t.weight * s for t, s in zip(self.tasks, times, strict=True) if s is not None]
        largest = max(known, default=1.0)
        return [
            largest if s is None else t.weight * s for t, s in zip(self.tasks, times, strict=True)
        ]

    def starting(self, task_id: int) -> None:
        self.current = task_id
        self.rounds[task_id] += 1
        self.measuring.append(task_id)
        self.activity = "searching"

    def measured(self, task_id: int) -> None:
        if task_id in self.measuring:
            self.measuring.remove(task_id)

    def building(self, built: int, total: int) -> None:
        self.activity = f"building {built + 1}/{total}"

    def starting_neighbours(self, task_id: int) -> None:
        """The neighbour pass (:mod:`~edgecompile.tuning.neighbours`) starts on a task."""
        self.current = task_id
        self.activity = "neighbours"

    def found(self, task_id: int, seconds: float) -> None:
        """A candidate outside a search round (the neighbour pass) ran in ``seconds``."""
        self.trials += 1
        self._improve(task_id, seconds)

    def failed(self, kind: str, message: str) -> None:
        """A candidate outside a search round failed to ``kind`` (build, run)."""
        self.trials += 1
        self._failure(kind, message)

    def record_round(
        self, task_id: int, builder_results: list[Any], runner_results: list[Any]
    ) -> None:
        """A round was measured (skipped candidates left out by the caller)."""
        self.trials += len(runner_results)
        succeeded = 0
        for built, ran in zip(builder_results, runner_results, strict=False):
            if was_skipped(built):
                continue
            if built.error_msg:
                self._failure("build", built.error_msg)
            elif ran.error_msg:
                self._failure("run", ran.error_msg)
            else:
                seconds = mean_seconds(ran.run_secs)
                if seconds is not None and seconds < FAILED_RUN:
                    succeeded += 1
                    self._improve(task_id, seconds)
        ran_any = any(not b.error_msg for b in builder_results)
        self.failed_rounds = self.failed_rounds + 1 if ran_any and not succeeded else 0
        if self.current == task_id and not self.interrupted:
            self.activity = "measured"
        if self.failed_rounds >= MAX_FAILED_ROUNDS and self.stop_reason is None:
            self.stop_reason = (
                f"every candidate failed on {self.where} for {self.failed_rounds} rounds: "
                f"{self.first_error.get('run', 'unknown error')}"
            )

    def _improve(self, task_id: int, seconds: float) -> None:
        previous = self.searched[task_id]
        self.searched[task_id] = seconds if previous is None else min(previous, seconds)
        best = self.best[task_id]
        self.best[task_id] = seconds if best is None else min(best, seconds)

    def _failure(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        self.first_error.setdefault(kind, lines[-1] if lines else "unknown error")

    # ---- the status line --------------------------------------------------------------------

    def estimated_ms(self) -> float | None:
        if any(seconds is None for seconds in self.best):
            return None
        return sum(t.weight * s for t, s in zip(self.tasks, self.best, strict=True) if s) * 1e3

    def status(self) -> str:
        """``12/- trials · task 3/26 conv2d…: building 2/8, best 0.123 ms · est. 4.56 ms ·
        0:41 elapsed, ~0:19 left``."""
        elapsed = self.budget.elapsed()
        if self.budget.deadline is not None:
            left = max(0.0, self.budget.left())
        elif self.trials:
            searching = time.monotonic() - self.started
            left = searching / self.trials * max(0, self.planned - self.trials)
        else:
            left = math.nan
        if self.current is None:
            task = "starting"
        else:
            best = self.best[self.current]
            task = (
                f"task {self.current + 1}/{len(self.tasks)} {self.tasks[self.current].name}: "
                f"{self.activity}, best {'-' if best is None else f'{best * 1e3:.3f} ms'}"
            )
        estimate = self.estimated_ms()
        planned = "-" if self.budget.deadline is not None else self.planned
        return (
            f"{self.trials}/{planned} trials · {task} · est. "
            f"{'-' if estimate is None else f'{estimate:.2f} ms'} · {clock(elapsed)} elapsed, "
            f"~{clock(left)} left"
        )


def clock(seconds: float) -> str:
    """``m:ss``; ``?`` for an unknown time."""
    if math.isnan(seconds) or math.isinf(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class TuneStatus:
    """The status line of a whole tune, for the heartbeat: the search's while it runs, else the
    current stage with the time spent and left."""

    def __init__(self, budget: TimeBudget) -> None:
        self.budget = budget
        self.stage = "starting"
        self.search: SearchMonitor | None = None

    def __call__(self) -> str:
        if self.search is not None:
            return self.search.status()
        left = self.budget.left()
        return f"{self.stage}: {clock(self.budget.elapsed())} elapsed" + (
            "" if math.isinf(left) else f", ~{clock(max(0.0, left))} left"
        )
