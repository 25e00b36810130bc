"""The neighbour pass before the search (edgecompile.tuning.neighbours): each heavy kernel's
default point with one knob moved one step, measured, committed and named as the pass's.

One tiny model (conftest's: conv 3→4 3×3 + ReLU, then a global pool: two kernels of our rules
with knobs) on this machine.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompile.cli import cli
from edgecompile.records import RecordStore, record_schedule, store_for, summarize, trace_digest
from edgecompile.targets import resolve_target
from edgecompile.tuning.neighbours import (
    NEIGHBOURS,
    PointMaker,
    measure_neighbours,
    one_knob_moves,
    point_key,
    ring,
)
from edgecompile.tuning.search import knob_rule
from edgecompile.tuning.tasks import TuningTask

TOLERANCE = 1e-5
SIZE = 16


@dataclass
class Session:
    """An open measurement on this machine with the model's untuned kernels measured."""

    tasks: list[TuningTask]
    store: RecordStore
    measuring: Any
    monitor: Any


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, make_tiny_onnx: Callable[..., Path]) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("neighbours") / "tiny.onnx", size=SIZE)


@pytest.fixture(scope="module")
def tasks(model: Path) -> list[TuningTask]:
    from edgecompile.builder import prepare_model
    from edgecompile.tuning.tasks import extract_tasks

    scratch = model.parent / "prepared"
    scratch.mkdir(exist_ok=True)
    relax_model, _, _ = prepare_model(str(model), scratch)
    return extract_tasks(relax_model.module, resolve_target("host").tvm_target())


@contextlib.contextmanager
def session(tasks: list[TuningTask], records: Path) -> Iterator[Session]:
    """The tune's measurement (builder, local runner) over a fresh store, untuned measured."""
    from edgecompile.device.access import BoardAccess
    from edgecompile.toolchain import toolchain_for
    from edgecompile.tuning.baseline import measure_untuned
    from edgecompile.tuning.budget import TimeBudget
    from edgecompile.tuning.measure import measurement
    from edgecompile.tuning.monitor import SearchMonitor

    preset = resolve_target("host")
    store = store_for(preset, records)
    with (
        store.writer() as database,
        measurement(
            preset, toolchain_for(preset, None), "local", 1, preset.tvm_target(), database,
            access=BoardAccess(), remote_port=None, scratch=str(records),
        ) as measuring,
    ):  # fmt: skip
        untuned = measure_untuned(tasks, store, measuring.measurer)
        monitor = SearchMonitor(tasks, untuned, 100, TimeBudget(None), measuring.pace, "here")
        yield Session(tasks, store, measuring, monitor)


def _knob_task(tasks: list[TuningTask]) -> tuple[TuningTask, Any]:
    (found,) = [(t, rule) for t in tasks if "conv" in t.name and (rule := knob_rule(t))]
    return found


def _decisions(trace: Any) -> list[tuple[str, Any]]:
    """Each sampling instruction's decision, in order, as plain values."""
    out = []
    for inst in trace.insts:
        decision = trace.get_decision(inst)
        if inst.kind.name == "SamplePerfectTile":
            out.append((inst.kind.name, tuple(int(v) for v in decision)))
        elif inst.kind.name == "SampleCategorical":
            out.append((inst.kind.name, int(decision)))
    return out


def _expected_moves(trace: Any) -> set[tuple[int, Any]]:
    """By the definition, from the trace: (which sample, new decision) for each tile's next
    smaller and larger divisor of its loop within its bound, each other categorical value."""
    expected = set()
    samples = [i for i in trace.insts if i.kind.name.startswith("Sample")]
    for number, inst in enumerate(samples):
        decision = trace.get_decision(inst)
        if inst.kind.name == "SamplePerfectTile":
            outer, inner = (int(v) for v in decision)
            bound = int(inst.attrs[1])
            valid = [d for d in range(1, outer * inner + 1) if (outer * inner) % d == 0]
            valid = [d for d in valid if bound <= 0 or d <= bound]
            smaller = max((d for d in valid if d < inner), default=None)
            larger = min((d for d in valid if d > inner), default=None)
            for d in (smaller, larger):
                if d is not None:
                    expected.add((number, (outer * inner // d, d)))
        else:
            for index in range(len(inst.attrs[0])):
                if index != int(decision):
                    expected.add((number, index))
    return expected


def test_the_candidates_are_the_defaults_one_knob_neighbours(tasks: list[TuningTask]) -> None:
    from edgecompile.tuning.baseline import untuned_schedule

    task, rule = _knob_task(tasks)
    maker = PointMaker(task, rule)
    default = untuned_schedule(task.module, task.extracted.target).trace
    before = _decisions(default)
    assert len(before) >= 3  # tiles and the unroll depth: a kernel with knobs to move
    moved = set()
    for trace in one_knob_moves(default):
        after = _decisions(trace)
        changed = [n for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert len(changed) == 1  # one knob at a time
        moved.add((changed[0], after[changed[0]][1]))
    assert moved == _expected_moves(default)
    assert any(kind == "SampleCategorical" for kind, _ in before)  # the unroll knob moved too

    # The ring: those moves and the other loop order's default point, less what is known
    # (the untuned baseline's record: the default point itself).
    others = maker.design_spaces()[1:]
    assert others, "the conv rule has one design space per loop order"
    points = ring(maker, default, {point_key(default)})
    keys = [p.key for p in points]
    assert set(keys) == {point_key(t) for t in [*one_knob_moves(default), *others]}
    assert point_key(default) not in keys and len(keys) == len(set(keys))
    assert len(ring(maker, default, {point_key(default), keys[0]})) == len(points) - 1


def test_every_neighbour_compiles_and_computes_the_untuned_kernel(tasks: list[TuningTask]) -> None:
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from edgecompile._tune_workers import build_kernel
    from edgecompile.tuning.baseline import untuned_schedule

    task, rule = _knob_task(tasks)
    target = task.extracted.target
    maker = PointMaker(task, rule)
    default = untuned_schedule(task.module, target).trace
    rng = np.random.default_rng(0)
    args = [
        rng.standard_normal([int(d) for d in info.shape]).astype("float32")
        for info in ArgInfo.from_entry_func(task.module)
    ]

    def run(mod: Any) -> np.ndarray:
        tensors = [tvm.runtime.tensor(a) for a in args]
        tensors[-1] = tvm.runtime.tensor(np.zeros_like(args[-1]))
        build_kernel(mod, target)["main"](*tensors)
        return tensors[-1].numpy()

    expected = run(untuned_schedule(task.module, target).mod)
    points = ring(maker, default, {point_key(default)})
    assert len(points) >= 4
    for point in points:
        actual = run(point.schedule.mod)
        assert np.abs(actual - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def test_the_pass_stops_at_its_deadline(tasks: list[TuningTask], tmp_path: Path) -> None:
    with session(tasks, tmp_path / "records") as s:
        records = len(s.store.lines().records)
        gone = lambda: time.monotonic() - 1.0  # noqa: E731
        s.measuring.gate.deadline = gone
        assert measure_neighbours(tasks, s.store, s.measuring.measurer, s.monitor, gone) == 0
        assert len(s.store.lines().records) == records and not s.store.neighbours()

        # A deadline that passes once the first kernel's ring is measured: the heaviest
        # kernel with knobs got its ring, and the pass ended there.
        def after_first_ring() -> float | None:
            return time.monotonic() - 1.0 if s.store.neighbours() else None

        s.measuring.gate.deadline = after_first_ring
        measured = measure_neighbours(
            tasks, s.store, s.measuring.measurer, s.monitor, after_first_ring
        )
        assert measured >= 4 and s.monitor.trials == measured
        named = s.store.neighbours()
        by_workload = s.store.records_by_workload()
        touched = {
            w for w, bodies in by_workload.items() if any(trace_digest(b) in named for b in bodies)
        }
        shares = s.monitor.shares()
        heaviest = max(
            (i for i, t in enumerate(tasks) if knob_rule(t) is not None), key=lambda i: shares[i]
        )
        assert touched == {tasks[heaviest].workload_hash}
        assert set(named.values()) == {NEIGHBOURS}


def test_the_pass_keeps_to_its_limit_and_never_measures_a_point_twice(
    tasks: list[TuningTask], tmp_path: Path
) -> None:
    with session(tasks, tmp_path / "records") as s:
        measurer = s.measuring.measurer
        assert measure_neighbours(tasks, s.store, measurer, s.monitor, lambda: None, 2) == 2
        assert len(s.store.neighbours()) == 2
        first = measure_neighbours(tasks, s.store, measurer, s.monitor, lambda: None)
        assert first > 0
        # Every ring measured: a second pass has nothing new around the same centres, unless a
        # neighbour became a kernel's best (its ring is then the next step of the descent).
        keys = [
            point_key(r.trace)
            for t in tasks
            for r in measurer.database.get_top_k(measurer.database.commit_workload(t.module), 999)
        ]
        assert len(keys) == len(set(keys))


def test_a_tune_runs_the_pass_before_the_search_and_records_show_names_it(
    model: Path, tmp_path: Path
) -> None:
    from edgecompile.progress import Progress
    from edgecompile.tuning import TUNE_STAGES, tune

    records = tmp_path / "records"
    stream = _Lines()
    result = tune(
        str(model), "host", trials=8, records=records, threads=1,
        progress=Progress(TUNE_STAGES, stream=stream, enabled=True, terminal=False),
    )  # fmt: skip
    assert result.stopped == "trials done" and result.trials_run >= 8
    assert any("neighbours" in line for line in stream.lines)
    store = store_for(resolve_target("host"), records)
    named = store.neighbours()
    assert len(named) == 4  # half the trials; the search had the rest
    bodies = [json.loads(line)[1] for line in store.lines().records]
    baselines = store.baselines()
    made_by = {trace_digest(b): record_schedule(b, baselines, named) for b in bodies}
    assert {d for d, by in made_by.items() if by == NEIGHBOURS} == set(named)
    assert "metaschedule" in made_by.values()

    # The best record of a kernel found by the pass is shown as the pass's: the neighbour
    # record's trace committed again with a time no schedule reaches.
    body = next(b for b in bodies if trace_digest(b) in named)
    workload = next(w for w, bs in store.records_by_workload().items() if body in bs)
    _commit_again(store, workload, body, 1e-9)
    (kernel,) = [k for k in summarize(store) if k.name == store.kernel_names()[workload]]
    assert kernel.schedule == NEIGHBOURS
    shown = CliRunner().invoke(cli, ["records", "show", "--records", str(records)])
    assert shown.exit_code == 0, shown.output
    assert NEIGHBOURS in shown.output


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line.strip())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _commit_again(store: RecordStore, workload_hash: str, body: Any, seconds: float) -> None:
    from tvm.s_tir import meta_schedule as ms

    (line,) = [w for w in store.lines().workloads if json.loads(w)[0] == workload_hash]
    with store.writer() as database:
        workload = database.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod)
        record = ms.database.TuningRecord.from_json(body, workload)
        database.commit_tuning_record(
            ms.database.TuningRecord(
                record.trace, workload, [seconds], record.target, record.args_info
            )
        )


def test_the_search_cost_model_learns_the_stores_records_first(
    tasks: list[TuningTask], tmp_path: Path
) -> None:
    """The evolutionary search starts from a cost model trained on the store's records (the
    untuned points and the pass's neighbours), not an empty one scoring at random."""
    from collections import Counter

    from edgecompile.tuning.search import (
        WARM_START_RECORDS,
        _tune_contexts,
        warm_start_records,
        warmed_cost_model,
    )

    with session(tasks, tmp_path / "records") as s:
        database = s.measuring.measurer.database
        assert measure_neighbours(tasks, s.store, s.measuring.measurer, s.monitor, lambda: None)
        known = warm_start_records(tasks, database)
        per_task = Counter(index for index, _ in known)
        assert set(per_task) == set(range(len(tasks)))  # every kernel's untuned record
        conv = tasks.index(_knob_task(tasks)[0])
        assert 1 < per_task[conv] <= WARM_START_RECORDS  # and the conv's neighbours
        fastest = database.get_top_k(database.commit_workload(tasks[conv].module), 1)[0]
        mine = [record for index, record in known if index == conv]
        assert str(mine[0].trace) == str(fastest.trace)  # the fastest first

        model = warmed_cost_model(_tune_contexts(tasks, 16, 1), known, 1)
        assert model.data_size == len(known) and model.booster is not None  # trained on them
        assert warmed_cost_model(_tune_contexts(tasks, 16, 1), [], 1).data_size == 0
