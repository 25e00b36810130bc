"""The tuning tasks (the fused module's kernels, as a build compiles them) and their records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecompile.errors import EdgecompileError
from edgecompile.records import SEARCHED, RecordStore, mean_seconds, record_schedule


@dataclass(frozen=True)
class TuningTask:
    """One distinct kernel of the model: MetaSchedule's extracted task plus what we need."""

    name: str
    weight: int
    module: Any  # IRModule({"main": PrimFunc}): the workload
    workload_hash: str
    extracted: Any


def extract_tasks(module: Any, target: Any) -> list[TuningTask]:
    """The fused module's kernels (after our layout and fusion: what a build compiles)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from edgecompile.schedules.analysis import has_root_block
    from edgecompile.schedules.pipeline import fused_module

    fused, _ = fused_module(module, target)
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target):
        workload = extracted.dispatched[0]
        if not has_root_block(workload):
            # A kernel our layout pass wrote as finished TIR (ShuffleNet's lane-permuting
            # concat: whole-vector shuffles, no block to schedule). MetaSchedule's search
            # fails the whole tune on it ("Do not have a default for prim.Shuffle").
            continue
        tasks.append(
            TuningTask(
                name=str(extracted.task_name),
                weight=int(extracted.weight),
                module=workload,
                workload_hash=str(tvm_ffi.structural_hash(workload)),
                extracted=extracted,
            )
        )
    if not tasks:
        raise EdgecompileError(
            "the model has no kernels to tune", "check the model: its graph computes nothing"
        )
    return tasks


def count_searched_records(store: RecordStore, tasks: list[TuningTask]) -> int:
    """Search records (not the untuned baselines) the store has for these tasks' workloads."""
    bodies = store.records_by_workload()
    baselines = store.baselines()
    wanted = {task.workload_hash for task in tasks}
    return sum(
        record_schedule(body, baselines) == SEARCHED
        for workload in wanted
        for body in bodies.get(workload, [])
    )


def best_search_seconds(store: RecordStore, tasks: list[TuningTask]) -> dict[str, float]:
    """Per task's workload, the best search record's time (earlier tunes' records)."""
    bodies = store.records_by_workload()
    baselines = store.baselines()
    best: dict[str, float] = {}
    for task in tasks:
        times = [
            seconds
            for seconds, body in timed_records(bodies.get(task.workload_hash, []))
            if record_schedule(body, baselines) == SEARCHED
        ]
        if times:
            best[task.workload_hash] = min(times)
    return best


def timed_records(bodies: list[Any]) -> list[tuple[float, Any]]:
    """Each record body with its measured mean time in seconds; records with none left out."""
    return [(seconds, body) for body in bodies if (seconds := mean_seconds(body[1])) is not None]


def milliseconds(seconds: float | None) -> float | None:
    """A record's time as the verdicts and outcomes store it (ms, to the nanosecond)."""
    return None if seconds is None else round(seconds * 1e3, 6)
