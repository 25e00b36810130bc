"""How many search trials a tune runs, and how MetaSchedule spreads them over the tasks."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from edgecompile.errors import EdgecompileError

#: Default search budget when neither --trials nor --time-budget is given.
DEFAULT_TRIALS_PER_TASK = 32
#: With only a time budget the search needs a trial count too: one the time runs out before.
TIME_BUDGET_TRIALS_PER_TASK = 1000
#: Candidates per search round. MetaSchedule's default (64) spends a whole small budget on the
#: first few tasks; the evolutionary search costs about the same per round whatever its size.
MAX_TRIALS_PER_ROUND = 16
MIN_TRIALS_PER_ROUND = 4
#: The evolutionary search's population, scaled with the trials a task can get: generating one
#: round for mobilenet_v2's largest kernel took 9.1 s with MetaSchedule's 512 and 2.1 s with
#: 128 here (1.3 s on both cores); a population far larger than the trials measured only
#: costs host time.
MIN_POPULATION = 128
MAX_POPULATION = 512

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | float | int | None) -> float | None:
    """``90s``, ``20m``, ``1h30m`` or a number of seconds → seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    found = _DURATION.match(text.strip().lower())
    if not text.strip() or found is None or not any(found.groups()):
        raise EdgecompileError(
            f"cannot read the duration {text!r}", "write it like 90s, 20m or 1h30m"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def read_budget(trials: int | None, time_budget: str | float | None) -> float | None:
    """Check ``trials`` and ``time_budget`` before anything is measured; the budget in seconds."""
    budget_seconds = parse_duration(time_budget)
    if trials is not None and trials < 0:
        raise EdgecompileError(f"bad trial count {trials}", "use --trials 0 or more")
    if budget_seconds is not None and budget_seconds <= 0:
        raise EdgecompileError("the time budget must be positive", "use e.g. --time-budget 20m")
    return budget_seconds


def trials_to_run(
    trials: int | None, budget_seconds: float | None, searched_before: int, task_count: int
) -> int:
    """Search trials this run measures: ``trials`` is the total the records should hold (a rerun
    after an interruption measures only the rest); with only a time budget, enough never to
    stop the search before the time does."""
    if trials is None and budget_seconds is None:
        trials = DEFAULT_TRIALS_PER_TASK * task_count
    if trials is None:
        return TIME_BUDGET_TRIALS_PER_TASK * task_count
    return max(0, trials - searched_before)


@dataclass(frozen=True)
class SearchPlan:
    """How MetaSchedule's task scheduler spreads ``trials`` over the tasks."""

    per_round: int
    per_task: int
    population: int


def plan_search(trials: int, task_count: int) -> SearchPlan:
    # A round's evolutionary search costs about the same whatever its size, so rounds are never
    # tiny: with fewer trials than kernels × MIN, only the first kernels get a round.
    per_round = min(
        trials, max(MIN_TRIALS_PER_ROUND, min(MAX_TRIALS_PER_ROUND, trials // task_count))
    )
    # Each task gets at most twice its share: the gradient scheduler still moves trials to the
    # kernels that dominate latency, but one task cannot eat the whole budget.
    per_task = max(per_round, math.ceil(2 * trials / task_count))
    population = min(MAX_POPULATION, max(MIN_POPULATION, 4 * per_task))
    return SearchPlan(per_round, per_task, population)
