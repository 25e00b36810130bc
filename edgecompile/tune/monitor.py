"""The search as it runs: trials counted, the best time per task, the progress line, and the
stops (time budget spent, a board that fails every candidate)."""

from __future__ import annotations

import math
import time
from typing import Any

from edgecompile.progress import Progress
from edgecompile.records import mean_seconds
from edgecompile.tune.measure import FAILED_RUN
from edgecompile.tune.tasks import TuningTask

#: A board that failed this many rounds in a row is gone: stop, keep the records.
MAX_FAILED_ROUNDS = 2
TIME_BUDGET_SPENT = "time budget spent"


class StopTuning(Exception):
    """Raised from the measure callback to end the search (time budget, board gone)."""


class SearchMonitor:
    """Counts trials, tracks the best time per task, prints progress, enforces the budget."""

    def __init__(
        self,
        tasks: list[TuningTask],
        untuned: dict[str, float],
        trials: int,
        budget_seconds: float | None,
        progress: Progress,
        where: str,
    ) -> None:
        self.tasks = tasks
        self.best = {i: untuned.get(t.workload_hash) for i, t in enumerate(tasks)}
        self.planned = trials
        self.deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        self.budget_seconds = budget_seconds
        self.progress = progress
        self.where = where
        self.started = time.monotonic()
        self.trials = 0
        self.failures = {"build": 0, "run": 0}
        self.first_error: dict[str, str] = {}
        self.failed_rounds = 0
        self.stop_reason: str | None = None

    def estimated_ms(self) -> float | None:
        known = [(t.weight, self.best[i]) for i, t in enumerate(self.tasks)]
        if any(seconds is None for _, seconds in known):
            return None
        return sum(w * s for w, s in known if s is not None) * 1e3

    def record_round(
        self, task_id: int, builder_results: list[Any], runner_results: list[Any]
    ) -> None:
        self.trials += len(runner_results)
        succeeded = 0
        for built, ran in zip(builder_results, runner_results, strict=False):
            if built.error_msg:
                self._failure("build", built.error_msg)
            elif ran.error_msg:
                self._failure("run", ran.error_msg)
            else:
                seconds = mean_seconds(ran.run_secs)
                if seconds is not None and seconds < FAILED_RUN:
                    succeeded += 1
                    previous = self.best.get(task_id)
                    self.best[task_id] = seconds if previous is None else min(previous, seconds)
        ran_any = any(not b.error_msg for b in builder_results)
        self.failed_rounds = self.failed_rounds + 1 if ran_any and not succeeded else 0
        self._report(task_id)
        if self.failed_rounds >= MAX_FAILED_ROUNDS:
            self.stop_reason = (
                f"every candidate failed on {self.where} for {self.failed_rounds} rounds: "
                f"{self.first_error.get('run', 'unknown error')}"
            )
            raise StopTuning(self.stop_reason)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop_reason = TIME_BUDGET_SPENT
            raise StopTuning(self.stop_reason)

    def _failure(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        self.first_error.setdefault(kind, lines[-1] if lines else "unknown error")

    def _report(self, task_id: int) -> None:
        elapsed = time.monotonic() - self.started
        estimate = self.estimated_ms()
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
        elif self.trials:
            left = elapsed / self.trials * max(0, self.planned - self.trials)
        else:
            left = math.nan
        best = self.best.get(task_id)
        self.progress.update(
            f"{self.trials}/{self.planned if self.deadline is None else '-'} trials · "
            f"task {task_id + 1}/{len(self.tasks)} {self.tasks[task_id].name} best "
            f"{'-' if best is None else f'{best * 1e3:.3f} ms'} · est. "
            f"{'-' if estimate is None else f'{estimate:.2f} ms'} · {_clock(elapsed)} elapsed, "
            f"~{_clock(left)} left"
        )


def _clock(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
