"""How many search trials a tune runs, how MetaSchedule spreads them over the tasks, and how a
time budget is spent: a deadline for the whole command, and the measured pace (seconds per
build, per run, per round of search) that sizes the rounds and keeps time for what follows."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from edgecompile.errors import EdgecompileError

#: Default search budget when neither --trials nor --time-budget is given.
DEFAULT_TRIALS_PER_TASK = 32
#: With only a time budget the search needs a trial count too: one the time runs out before.
TIME_BUDGET_TRIALS_PER_TASK = 1000
#: A time-budgeted round is about this share of the search's time: rounds are where the search
#: can stop, and small ones share a small budget among more kernels.
ROUND_SHARE_OF_SEARCH = 1 / 8
#: Seconds kept at the end of a time budget for the results, the table and the process's exit
#: (measured: 4.4 s from the table to the shell on this 2-core machine under load).
FINISH_SECONDS = 5.0
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


def plan_search(
    trials: int,
    task_count: int,
    budget: TimeBudget | None = None,
    pace: Pace | None = None,
    heaviest: float = 0.0,
) -> SearchPlan:
    """``trials`` over ``task_count`` tasks. With a time budget, the rounds and the population
    are sized for the trials its time left holds at the measured ``pace`` (a guess: it caps no
    task, the deadline ends the search). ``heaviest``: the largest task's share of the model's
    time (0 to 1), which its trials may follow."""
    per_candidate = pace.candidate_seconds() if pace is not None else 0.0
    left = budget.left() if budget is not None else math.inf
    timed = not math.isinf(left) and per_candidate > 0
    expected = max(1, min(trials, int(left / per_candidate))) if timed else trials
    # A round's evolutionary search costs about the same whatever its size, so rounds are never
    # tiny: with fewer trials than kernels × MIN, only the first kernels get a round.
    per_round = min(
        expected, max(MIN_TRIALS_PER_ROUND, min(MAX_TRIALS_PER_ROUND, expected // task_count))
    )
    if timed:
        # ...nor long: the search can stop between rounds, and a short budget is shared.
        fit = int(ROUND_SHARE_OF_SEARCH * left / per_candidate)
        per_round = max(min(MIN_TRIALS_PER_ROUND, expected), min(per_round, fit))
    # Each task gets at most twice an equal share, or the heaviest kernel's share of the time:
    # the scheduler moves rounds to the kernels that dominate latency, in proportion, but one
    # task cannot eat the whole budget.
    per_task = max(per_round, math.ceil(max(2 / task_count, heaviest) * trials))
    population = min(MAX_POPULATION, max(MIN_POPULATION, 4 * math.ceil(2 * expected / task_count)))
    return SearchPlan(per_round, per_task, population)


class TimeBudget:
    """The deadline of a whole tune (``--time-budget`` counts from the command's start, so the
    untuned measurement, the search and the re-measurement all fit in it); no deadline without
    a budget."""

    def __init__(self, seconds: float | None, started: float | None = None) -> None:
        self.seconds = seconds
        self.started = time.monotonic() if started is None else started
        self.deadline = None if seconds is None else self.started + seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def until(self, keep: float = 0.0) -> float | None:
        """The deadline less ``keep`` seconds (``time.monotonic()``), or None."""
        return None if self.deadline is None else self.deadline - keep

    def left(self, keep: float = 0.0) -> float:
        """Seconds until the deadline, less ``keep`` (time promised to later stages)."""
        if self.deadline is None:
            return math.inf
        return self.deadline - keep - time.monotonic()


def _average(samples: list[float]) -> float | None:
    recent = samples[-PACE_SAMPLES:]
    return sum(recent) / len(recent) if recent else None


#: The pace is the mean of this many latest samples: kernels differ, the machine's load varies.
PACE_SAMPLES = 32
#: A round's candidate generation before any was timed (0.2-2 s here, by kernel and load).
UNTIMED_SEARCH_SECONDS = 1.0


@dataclass
class Pace:
    """Seconds per candidate build, per candidate run (one timing) and per search round's
    candidate generation, as measured so far in this tune."""

    builds: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    searches: list[float] = field(default_factory=list)
    round_started: float | None = None

    def start_round(self) -> None:
        """A search round starts generating its candidates (the scheduler picked its task)."""
        self.round_started = time.monotonic()

    def batch_starts(self) -> None:
        """The builder got a batch: if a search round was generating it, that took this long."""
        if self.round_started is not None:
            self.searches.append(time.monotonic() - self.round_started)
            self.round_started = None

    def build_seconds(self) -> float:
        return _average(self.builds) or 0.0

    def run_seconds(self) -> float:
        return _average(self.runs) or 0.0

    def search_seconds(self) -> float:
        """Generating a round's candidates; before any was timed, a second."""
        return _average(self.searches) or UNTIMED_SEARCH_SECONDS

    def longest_search_seconds(self) -> float:
        """The longest a round's candidate generation has taken so far (it cannot be stopped
        half-way: a large conv's evolutionary search took 25 s where the average was 8)."""
        return max(self.searches, default=UNTIMED_SEARCH_SECONDS)

    def candidate_seconds(self) -> float:
        """One search candidate built and timed once."""
        return self.build_seconds() + self.run_seconds()

    def round_seconds(self, candidates: int) -> float:
        """A search round: generating ``candidates``, building and timing them."""
        return self.search_seconds() + candidates * self.candidate_seconds()

    def remeasure_seconds(self, candidates: int, rounds: int) -> float:
        """Re-measuring ``candidates`` schedules: one build and ``rounds`` runs each."""
        return candidates * (self.build_seconds() + rounds * self.run_seconds())
