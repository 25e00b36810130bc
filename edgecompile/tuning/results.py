"""What a tune reports: per kernel, its records and what a build uses; and the run as a whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.records import UNTUNED, RecordStore, record_schedule, uses_label
from edgecompile.tuning.tasks import TuningTask, milliseconds, timed_records


@dataclass(frozen=True)
class TaskOutcome:
    """One kernel of the model after tuning."""

    name: str
    weight: int
    #: As an untuned build compiles it: our schedule, or TVM's default lowering.
    untuned_ms: float | None
    #: The fastest record's single measurement, and who made it.
    best_ms: float | None
    schedule: str
    records: int
    #: What a build uses (``tuned`` / ``untuned``: the workload's
    #: :class:`~edgecompile.records.Decision`, as ``records show`` and ``build`` read it) and
    #: its time (re-measured, unless ``pending``).
    uses: str = UNTUNED
    uses_ms: float | None = None
    #: Search records no re-measurement has judged yet (a rerun of the tune does).
    pending: bool = False
    #: What a build uses won a re-measurement (pending or not).
    confirmed: bool = False

    @property
    def uses_label(self) -> str:
        return uses_label(self.uses, self.pending)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TuneResult:
    """What a tune did, and the per-kernel state of the records afterwards."""

    model: str
    preset: str
    records: Path
    transport: str
    threads: int | None
    tasks: list[TaskOutcome]
    trials_run: int
    trials_before: int
    seconds: float
    stopped: str
    failures: dict[str, int] = field(default_factory=dict)
    #: Kernels the search improved that the time budget left no time to re-measure.
    undecided: int = 0

    @property
    def estimated_ms(self) -> float | None:
        """Sum over kernels of weight × the re-measured time of what a build uses."""
        return _weighted(self.tasks, "uses_ms")

    @property
    def untuned_estimated_ms(self) -> float | None:
        """The same sum with every kernel untuned (baselines' own measurements)."""
        return _weighted(self.tasks, "untuned_ms")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "preset": self.preset,
            "records": str(self.records),
            "transport": self.transport,
            "threads": self.threads,
            "trials_run": self.trials_run,
            "trials_before": self.trials_before,
            "seconds": round(self.seconds, 1),
            "stopped": self.stopped,
            "estimated_ms": self.estimated_ms,
            "untuned_estimated_ms": self.untuned_estimated_ms,
            "failures": self.failures,
            "undecided": self.undecided,
            "tasks": [task.to_dict() for task in self.tasks],
        }


def _weighted(tasks: list[TaskOutcome], attribute: str) -> float | None:
    values = [(t.weight, getattr(t, attribute)) for t in tasks]
    if not values or any(v is None for _, v in values):
        return None
    return round(sum(w * v for w, v in values), 6)


def task_outcomes(
    store: RecordStore, tasks: list[TuningTask], untuned: dict[str, float]
) -> list[TaskOutcome]:
    """Each task's records as they stand, and what a build applies for it."""
    bodies = store.records_by_workload()
    baselines = store.baselines()
    neighbours = store.neighbours()
    decisions = store.decisions()
    outcomes = []
    for task in tasks:
        task_records = bodies.get(task.workload_hash, [])
        best_seconds, best = min(
            timed_records(task_records), key=lambda pair: pair[0], default=(None, None)
        )
        untuned_ms = milliseconds(untuned.get(task.workload_hash))
        decision = decisions.get(task.workload_hash)
        confirmed = decision is not None and decision.confirmed
        if decision is None:  # no records at all: the build compiles it untuned
            uses, uses_ms, pending = UNTUNED, untuned_ms, False
        else:
            uses, pending = decision.uses, decision.pending
            uses_ms = decision.tuned_ms if decision.record else decision.untuned_ms or untuned_ms
        outcomes.append(
            TaskOutcome(
                name=task.name,
                weight=task.weight,
                untuned_ms=untuned_ms,
                best_ms=milliseconds(best_seconds),
                schedule="-" if best is None else record_schedule(best, baselines, neighbours),
                records=len(task_records),
                uses=uses,
                uses_ms=uses_ms,
                pending=pending,
                confirmed=confirmed,
            )
        )
    return outcomes
