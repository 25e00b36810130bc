"""Stage 3b: tune a model's kernels for one target with MetaSchedule, into that target's records.

model → export + import (as ``build`` does) → the fused module (our blocked layout, legalized and
fused: exactly the PrimFuncs a build compiles) → one task per distinct kernel → each kernel as an
untuned build compiles it (our schedule, else TVM's default lowering) measured and committed as
a record → MetaSchedule's evolutionary search (xgboost cost model) seeded with them → more
records → per kernel, the search's best records re-measured against the untuned schedule,
interleaved and repeated, and the verdict stored as the kernel's choice (``choices.json``), which
is all a later ``build`` applies.

Why the re-measurement: each record is one measurement, and the fastest of hundreds of candidates
beats one measurement of the untuned schedule by luck alone. Without it the "tuned" mobilenet_v2
came out 5% slower than untuned on this host; with it a search record replaces our schedule only
where it is faster in a fresh, fair comparison.

Where candidates run: host targets measure in a local worker process; board targets are linked
with the board's toolchain (a ``.so`` the board loads as is) and measured on the board over TVM
RPC -- directly, through an RPC tracker, or through an SSH tunnel to a server bound to the
board's loopback (:mod:`edgecompile.device.tunnel`), never by exposing RPC on a network.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError, last_line
from edgecompile.progress import SILENT, Progress
from edgecompile.records import (
    SEARCHED,
    UNTUNED,
    Choice,
    RecordStore,
    mark_of,
    mean_seconds,
    record_schedule,
    store_for,
    trace_digest,
)
from edgecompile.targets import BoardPreset, resolve_target

#: Default search budget when neither --trials nor --time-budget is given.
DEFAULT_TRIALS_PER_TASK = 32
#: Candidates per search round. MetaSchedule's default (64) spends a whole small budget on the
#: first few tasks; the evolutionary search costs about the same per round whatever its size.
MAX_TRIALS_PER_ROUND = 16
#: The evolutionary search's population, scaled with the trials a task can get: generating one
#: round for mobilenet_v2's largest kernel took 9.1 s with MetaSchedule's 512 and 2.1 s with
#: 128 here (1.3 s on both cores); a population far larger than the trials measured only
#: costs host time.
MIN_POPULATION = 128
MAX_POPULATION = 512
MIN_TRIALS_PER_ROUND = 4
#: A board that failed this many rounds in a row is gone: stop, keep the records.
MAX_FAILED_ROUNDS = 2
#: RPC sessions: an emulated or slow board needs minutes for the first load.
RPC_SESSION_TIMEOUT = 600
#: The re-measurement: the search's best few records per kernel against the untuned schedule,
#: in interleaved rounds (load that comes and goes hits both), each round a few timings.
CONFIRM_CANDIDATES = 2
CONFIRM_ROUNDS = 3
CONFIRM_REPEATS = 3
#: A search record replaces the untuned schedule only when this much faster (noise is ~1-2%).
CONFIRM_MARGIN = 0.03
TUNE_STAGES = 6
FAILED_RUN = 1e9  # MetaSchedule records 1e10 s for a candidate that failed


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
    #: What a build uses (``tuned`` / ``untuned``, re-measured) and the time it re-measured.
    uses: str = UNTUNED
    uses_ms: float | None = None

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
            "tasks": [task.to_dict() for task in self.tasks],
        }


def _weighted(tasks: list[TaskOutcome], attribute: str) -> float | None:
    values = [(t.weight, getattr(t, attribute)) for t in tasks]
    if not values or any(v is None for _, v in values):
        return None
    return round(sum(w * v for w, v in values), 6)


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


def tune(
    model: str,
    target: str | BoardPreset = "host",
    *,
    trials: int | None = None,
    time_budget: str | float | None = None,
    records: str | Path | None = None,
    access: BoardAccess | None = None,
    remote_port: int | None = None,
    threads: int | None = None,
    batch: int = 1,
    input_size: str | tuple[int, int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    cc: str | None = None,
    schedules_dir: str | Path | None = None,
    progress: Progress = SILENT,
) -> TuneResult:
    """Tune ``model``'s kernels for ``target``, adding to the target's records (resumable).

    ``trials`` is the total number of search candidates this model's kernels should have in the
    records: a rerun after an interruption (even ``kill -9``) measures only the rest. With only
    ``time_budget``, the search runs until the time is spent. ``schedules_dir``: user schedules
    (as ``build --schedules``), part of the untuned baseline every kernel is measured as.

    Host targets are measured here; a board target on the board ``access`` reaches (one of
    its ``device``: an SSH tunnel to an RPC server on the board's loopback port
    ``remote_port``, started if none listens; ``rpc``; or ``tracker`` under ``rpc_key``, else
    the preset's key).
    """
    from edgecompile.builder import prepare_model
    from edgecompile.export import parse_input_size
    from edgecompile.schedules.user import load_user_schedules
    from edgecompile.toolchain import toolchain_for

    started = time.monotonic()
    preset = target if isinstance(target, BoardPreset) else resolve_target(target)
    budget_seconds = parse_duration(time_budget)
    if trials is not None and trials < 0:
        raise EdgecompileError(f"bad trial count {trials}", "use --trials 0 or more")
    if budget_seconds is not None and budget_seconds <= 0:
        raise EdgecompileError("the time budget must be positive", "use e.g. --time-budget 20m")
    access = access or BoardAccess()
    transport = _transport(preset, access)
    user_rules = [] if schedules_dir is None else load_user_schedules(schedules_dir).rules
    toolchain = toolchain_for(preset, cc)
    store = store_for(preset, records)
    thread_count = threads if threads is not None else preset.threads
    tvm_target = preset.tvm_target()
    size = parse_input_size(input_size)

    with tempfile.TemporaryDirectory(prefix="edgecompile-tune-") as scratch:
        relax_model, _, _ = prepare_model(
            model, Path(scratch), batch=batch, input_size=size, weights=weights, seed=seed,
            progress=progress,
        )  # fmt: skip
        with progress.stage("extract tuning tasks"):
            tasks = _extract_tasks(relax_model.module, tvm_target)
        with (
            store.writer() as database,
            _measurement(
                preset,
                toolchain,
                transport,
                thread_count,
                access=access,
                remote_port=remote_port,
            ) as (builder, runner, confirm_runner, where),
        ):
            store.add_kernel_names({task.workload_hash: task.name for task in tasks})
            with progress.stage(f"measure the untuned kernels on {where}"):
                untuned = _measure_untuned(
                    tasks, tvm_target, store, database, builder, runner, user_rules
                )
            searched_before = _searched_records(store, tasks)
            if trials is None and budget_seconds is None:
                trials = DEFAULT_TRIALS_PER_TASK * len(tasks)
            remaining = (
                max(0, trials - searched_before) if trials is not None else 1000 * len(tasks)
            )
            monitor = _Monitor(tasks, untuned, remaining, budget_seconds, progress, where)
            label = f"search: {remaining} trials" if trials is not None else "search"
            with progress.stage(label + (f" on {where}" if remaining else " (already done)")):
                stopped = _search(
                    tasks, tvm_target, database, builder, runner, remaining, monitor, scratch,
                    local=transport == "local",
                )  # fmt: skip
            with progress.stage(f"re-measure the search's best against untuned on {where}"):
                _confirm(tasks, tvm_target, store, database, builder, confirm_runner, progress)
        outcomes = _outcomes(store, tasks, untuned)
    return TuneResult(
        model=relax_model.name,
        preset=preset.name,
        records=store.path,
        transport=where,
        threads=thread_count,
        tasks=outcomes,
        trials_run=monitor.trials,
        trials_before=searched_before,
        seconds=time.monotonic() - started,
        stopped=stopped,
        failures={k: v for k, v in monitor.failures.items() if v},
    )


# --------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class _Task:
    """One distinct kernel of the model: MetaSchedule's extracted task plus what we need."""

    name: str
    weight: int
    module: Any  # IRModule({"main": PrimFunc}): the workload
    workload_hash: str
    extracted: Any


def _extract_tasks(module: Any, target: Any) -> list[_Task]:
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
            _Task(
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


def _searched_records(store: RecordStore, tasks: list[_Task]) -> int:
    """Search records (not the untuned baselines) the store has for these tasks' workloads."""
    bodies = store.records_by_workload()
    baselines = store.baselines()
    wanted = {task.workload_hash for task in tasks}
    return sum(
        record_schedule(body, baselines) == SEARCHED
        for workload in wanted
        for body in bodies.get(workload, [])
    )


# --------------------------------------------------------------------------------------------
# Measuring


def _transport(preset: BoardPreset, access: BoardAccess) -> str:
    given = (("rpc", access.rpc), ("tracker", access.tracker), ("device", access.device))
    chosen = [name for name, value in given if value]
    if len(chosen) > 1:
        raise EdgecompileError(
            f"--{' and --'.join(chosen)} given together", "measure through one of them"
        )
    if chosen:
        return chosen[0]
    if not preset.is_host:
        raise EdgecompileError(
            f"{preset.name} kernels must be measured on a {preset.arch} board",
            "pass --device user@host (SSH), --rpc host:port or --tracker host:port --rpc-key KEY",
        )
    return "local"


@contextlib.contextmanager
def _measurement(
    preset: BoardPreset,
    toolchain: Any,
    transport: str,
    threads: int | None,
    *,
    access: BoardAccess,
    remote_port: int | None,
) -> Iterator[tuple[Any, Any, Any, str]]:
    """MetaSchedule's builder, the search's runner and the re-measurement's runner for
    ``transport``, and where candidates are measured."""
    from tvm.s_tir import meta_schedule as ms

    from edgecompile import _tune_workers as workers

    builder = ms.builder.LocalBuilder(
        f_build=workers.build_kernel,
        f_export=partial(workers.export_shared_library, toolchain),
        max_workers=1,
        timeout_sec=120,
    )
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
    confirming = ms.runner.EvaluatorConfig(number=3, repeat=CONFIRM_REPEATS, min_repeat_ms=40)
    if transport == "local":

        def local(config: Any) -> Any:
            return ms.runner.LocalRunner(
                evaluator_config=config,
                timeout_sec=60,
                initializer=partial(workers.set_thread_count, threads),
            )

        yield builder, local(evaluator), local(confirming), f"this machine ({threads} threads)"
        return
    from edgecompile.device.remote import check_rpc_target

    if transport == "device":
        from edgecompile.device.tunnel import DEFAULT_RPC_PORT, rpc_tunnel

        with rpc_tunnel(access, remote_port=remote_port or DEFAULT_RPC_PORT) as (host, port):
            check_rpc_target(preset, BoardAccess(rpc=f"{host}:{port}"))
            yield (
                builder,
                _direct_runner(host, port, threads, evaluator),
                _direct_runner(host, port, threads, confirming),
                f"{access.device} (SSH tunnel)",
            )
        return
    key = access.rpc_key or preset.rpc_key
    check_rpc_target(preset, access)
    if access.rpc:
        host, _, port = access.rpc.rpartition(":")
        yield (
            builder,
            _direct_runner(host, int(port), threads, evaluator),
            _direct_runner(host, int(port), threads, confirming),
            f"RPC server {access.rpc}",
        )
        return
    assert access.tracker is not None
    tracker_host, _, tracker_port = access.tracker.rpartition(":")

    def tracked(config: Any) -> Any:
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=tracker_host,
                tracker_port=int(tracker_port),
                tracker_key=key,
                session_timeout_sec=RPC_SESSION_TIMEOUT,
            ),
            evaluator_config=config,
            f_create_session=partial(workers.connect_tracker, threads),
            max_workers=1,
        )

    yield builder, tracked(evaluator), tracked(confirming), f"tracker {access.tracker} key {key}"


def _direct_runner(host: str, port: int, threads: int | None, evaluator: Any) -> Any:
    from tvm.s_tir import meta_schedule as ms

    from edgecompile import _tune_workers as workers

    return ms.runner.RPCRunner(
        # RPCRunner insists on a tracker config even when f_create_session ignores it.
        rpc_config=ms.runner.RPCConfig(
            tracker_host=host,
            tracker_port=port,
            tracker_key="direct",
            session_timeout_sec=RPC_SESSION_TIMEOUT,
        ),
        evaluator_config=evaluator,
        f_create_session=partial(workers.connect_direct, host, port, threads, RPC_SESSION_TIMEOUT),
        max_workers=1,
    )


def _untuned_schedule(module: Any, target: Any, user_rules: Sequence[Any] = ()) -> Any | None:
    """What a build without records compiles for this kernel, as a schedule with a trace: a user
    rule's or our rule's schedule (tried as the build tries them), else TVM's default lowering
    (an empty trace). Each carries a ``SCHEDULED_BY_ATTR`` mark, so a record replaying it says
    who made it."""
    from tvm import s_tir

    from edgecompile.schedules.pipeline import TVM_DEFAULT, schedule_rules
    from edgecompile.schedules.rules import SCHEDULED_BY_ATTR, ScheduleFailed
    from edgecompile.schedules.user import UserRule

    for rule in schedule_rules(user_rules):
        try:
            schedule = rule.try_schedule(module["main"], target)
        except ScheduleFailed:
            if isinstance(rule, UserRule):
                continue  # a user rule that fails hands the kernel on, as in the build
            break
        if schedule is not None:
            return schedule
    schedule = s_tir.Schedule(module)
    try:
        schedule.annotate(schedule.get_sblock("root"), SCHEDULED_BY_ATTR, TVM_DEFAULT)
    except Exception:  # no root block: finished TIR, not a task (see _extract_tasks)
        return None
    return schedule


def _measure_untuned(
    tasks: list[_Task],
    target: Any,
    store: RecordStore,
    database: Any,
    builder: Any,
    runner: Any,
    user_rules: Sequence[Any] = (),
) -> dict[str, float]:
    """Measure every task as an untuned build compiles it and commit that as a record.

    So the search starts from our schedules (its initial population comes from the database's
    best records), and a build picks per kernel whichever measured fastest, the untuned schedule
    included. A record already in the store with the same trace is not measured again.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    timings: dict[str, float] = {}
    pending: list[tuple[_Task, Any, Any]] = []
    for task in tasks:
        schedule = _untuned_schedule(task.module, target, user_rules)
        if schedule is None:
            continue
        workload = database.commit_workload(task.module)
        known = [
            r for r in database.get_top_k(workload, 1 << 20) if str(r.trace) == str(schedule.trace)
        ]
        if known:
            seconds = mean_seconds(known[0].run_secs)
            if seconds is not None:
                timings[task.workload_hash] = seconds
            continue
        pending.append((task, schedule, workload))
    if not pending:
        return timings
    built = builder.build([ms.builder.BuilderInput(s.mod, target) for _, s, _ in pending])
    runnable = [(p, b) for p, b in zip(pending, built, strict=True) if b.error_msg is None]
    futures = runner.run(
        [
            ms.runner.RunnerInput(b.artifact_path, "cpu", ArgInfo.from_entry_func(s.mod))
            for (_, s, _), b in runnable
        ]
    )
    committed = 0
    for ((task, schedule, workload), _), future in zip(runnable, futures, strict=True):
        result = future.result()
        if result.error_msg is not None or not result.run_secs:
            continue
        committed += 1
        database.commit_tuning_record(
            ms.database.TuningRecord(
                schedule.trace,
                workload,
                result.run_secs,
                target,
                ArgInfo.from_entry_func(schedule.mod),
            )
        )
        seconds = mean_seconds(result.run_secs)
        if seconds is not None:
            timings[task.workload_hash] = seconds
    _remove_artifacts(built)
    # The database appended one line per commit: the last ``committed`` lines are these.
    new_lines = store.lines().records[-committed:] if committed else []
    store.add_baselines(
        {
            trace_digest(body): mark_of(body) or "untuned"
            for body in (json.loads(line)[1] for line in new_lines)
        }
    )
    return timings


# --------------------------------------------------------------------------------------------
# Searching


class _StopTuning(Exception):
    """Raised from the measure callback to end the search (time budget, board gone)."""


class _Monitor:
    """Counts trials, tracks the best time per task, prints progress, enforces the budget."""

    def __init__(
        self,
        tasks: list[_Task],
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
            raise _StopTuning(self.stop_reason)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop_reason = "time budget spent"
            raise _StopTuning(self.stop_reason)

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


def _search(
    tasks: list[_Task],
    target: Any,
    database: Any,
    builder: Any,
    runner: Any,
    trials: int,
    monitor: _Monitor,
    scratch: str,
    *,
    local: bool,
) -> str:
    """MetaSchedule's task scheduler over ``tasks`` for ``trials`` candidates; why it stopped."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    if trials <= 0:
        return "no search trials left to run"

    @derived_object
    class MonitorCallback(ms.measure_callback.PyMeasureCallback):
        def apply(
            self,
            task_scheduler: Any,
            task_id: int,
            measure_candidates: Any,
            builder_results: Any,
            runner_results: Any,
        ) -> None:
            try:
                monitor.record_round(task_id, list(builder_results), list(runner_results))
            finally:
                _remove_artifacts(list(builder_results))

    # A round's evolutionary search costs about the same whatever its size, so rounds are never
    # tiny: with fewer trials than kernels × MIN, only the first kernels get a round.
    per_round = min(
        trials, max(MIN_TRIALS_PER_ROUND, min(MAX_TRIALS_PER_ROUND, trials // len(tasks)))
    )
    # Each task gets at most twice its share: the gradient scheduler still moves trials to the
    # kernels that dominate latency, but one task cannot eat the whole budget.
    per_task = max(per_round, math.ceil(2 * trials / len(tasks)))
    population = min(MAX_POPULATION, max(MIN_POPULATION, 4 * per_task))
    # MetaSchedule searches the next task while the last one's candidates are measured: with
    # local measurements the search keeps to one core, so the measuring one is left alone.
    search_threads = 1 if local else os.cpu_count() or 1
    contexts = _tune_contexts(tasks, population, search_threads)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), MonitorCallback()]
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[float(task.weight) for task in tasks],
            work_dir=scratch,
            max_trials_global=trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=per_round,
            builder=builder,
            runner=runner,
            database=database,
            measure_callbacks=callbacks,
        )
    except Exception as error:  # our stop arrives wrapped by TVM's FFI; anything else is real
        if monitor.stop_reason is None:
            raise EdgecompileError(
                f"tuning failed: {last_line(error)}",
                "the records measured so far are kept; run the same command to continue",
            ) from None
        if monitor.stop_reason != "time budget spent":
            raise EdgecompileError(
                f"tuning stopped: {monitor.stop_reason}",
                "the records measured so far are kept; fix the board, then rerun to continue",
            ) from None
        return monitor.stop_reason
    return "trials done"


def _tune_contexts(tasks: list[_Task], population: int, search_threads: int) -> list[Any]:
    """One MetaSchedule TuneContext per task, logging to our quiet logger.

    MetaSchedule's own helper configures per-task loggers through ``logging.config`` that print
    every round and a task table to stdout, and breaks on a second call in one process when the
    logger has picked up an unnamed handler. Our progress line replaces those logs.
    """
    import logging

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    logger = logging.getLogger("edgecompile.tune.metaschedule")
    logger.setLevel(logging.WARNING)
    return [
        ms.TuneContext(
            mod=task.extracted.dispatched[0],
            target=task.extracted.target,
            space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 2)
            ),
            task_name=task.name,
            logger=logger,
            rand_state=seed,
            num_threads=search_threads,
        ).clone()
        for task, seed in zip(tasks, fork_seed(0, n=len(tasks)), strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Re-measuring


def _confirm(
    tasks: list[_Task],
    target: Any,
    store: RecordStore,
    database: Any,
    builder: Any,
    runner: Any,
    progress: Progress,
) -> None:
    """Per task, decide what a build uses: the search's best records re-measured against the
    untuned schedule (interleaved rounds, median), committed to the store's choices one task at
    a time (an interrupted tune keeps the verdicts it reached). A task decided before, whose
    records have not changed since, is not measured again."""
    bodies_of = store.records_by_workload()
    baselines = store.baselines()
    decided = store.choices()
    for number, task in enumerate(tasks, 1):
        bodies = bodies_of.get(task.workload_hash, [])
        previous = decided.get(task.workload_hash)
        if previous is not None and previous.records == len(bodies):
            continue
        timed = [(t, b) for b in bodies if (t := mean_seconds(b[1])) is not None]
        untuned = [(t, b) for t, b in timed if trace_digest(b) in baselines]
        searched = sorted(
            ((t, b) for t, b in timed if trace_digest(b) not in baselines), key=lambda p: p[0]
        )
        if not untuned or not searched:
            continue  # nothing to compare: the build takes the best record, as MetaSchedule does
        untuned_seconds, untuned_body = min(untuned, key=lambda pair: pair[0])
        contenders = [b for t, b in searched[:CONFIRM_CANDIDATES] if t < untuned_seconds]
        if not contenders:
            choice = Choice(UNTUNED, round(untuned_seconds * 1e3, 6), None, len(bodies))
        else:
            progress.update(
                f"re-measure {number}/{len(tasks)} {task.name}: untuned vs "
                f"{len(contenders)} search record(s), {CONFIRM_ROUNDS} rounds"
            )
            medians = _remeasure(
                task, [untuned_body, *contenders], target, database, builder, runner
            )
            choice = _verdict(medians, [untuned_body, *contenders], len(bodies))
        store.add_choices({task.workload_hash: choice})


def _verdict(medians: list[float | None], bodies: list[Any], records: int) -> Choice:
    """``bodies[0]`` is the untuned record, the rest search records; ``medians`` their times."""
    untuned = medians[0]
    timed = [(m, b) for m, b in zip(medians[1:], bodies[1:], strict=True) if m is not None]
    best, body = min(timed, key=lambda pair: pair[0], default=(None, None))

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1e3, 6)

    if best is not None and (untuned is None or best < untuned * (1 - CONFIRM_MARGIN)):
        return Choice(trace_digest(body), ms(untuned), ms(best), records)
    return Choice(UNTUNED, ms(untuned), ms(best), records)


def _remeasure(
    task: _Task, bodies: list[Any], target: Any, database: Any, builder: Any, runner: Any
) -> list[float | None]:
    """Median time of each record's schedule over interleaved rounds (None: failed now)."""
    from tvm.s_tir import meta_schedule as ms

    workload = database.commit_workload(task.module)
    candidates = [
        ms.database.TuningRecord.from_json(body, workload).as_measure_candidate() for body in bodies
    ]
    built = builder.build(
        [ms.builder.BuilderInput(candidate.sch.mod, target) for candidate in candidates]
    )
    try:
        owners = [
            i
            for _ in range(CONFIRM_ROUNDS)
            for i, result in enumerate(built)
            if result.error_msg is None
        ]
        futures = runner.run(
            [
                ms.runner.RunnerInput(built[i].artifact_path, "cpu", candidates[i].args_info)
                for i in owners
            ]
        )
        samples: dict[int, list[float]] = {}
        for i, future in zip(owners, futures, strict=True):
            result = future.result()
            if result.error_msg is None:
                values = [float(v) for v in result.run_secs or [] if float(v) < FAILED_RUN]
                samples.setdefault(i, []).extend(values)
    finally:
        _remove_artifacts(built)
    return [statistics.median(samples[i]) if samples.get(i) else None for i in range(len(bodies))]


def _remove_artifacts(built: list[Any]) -> None:
    """Delete the candidates' build folders (each ``.so`` has a temporary folder of its own)."""
    for result in built:
        if getattr(result, "artifact_path", None):
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)


def _outcomes(
    store: RecordStore, tasks: list[_Task], untuned: dict[str, float]
) -> list[TaskOutcome]:
    bodies = store.records_by_workload()
    baselines = store.baselines()
    choices = store.choices()
    outcomes = []
    for task in tasks:
        task_records = bodies.get(task.workload_hash, [])
        timed = [(s, b) for b in task_records if (s := mean_seconds(b[1])) is not None]
        best_seconds, best = min(timed, key=lambda pair: pair[0], default=(None, None))
        untuned_seconds = untuned.get(task.workload_hash)
        untuned_ms = None if untuned_seconds is None else round(untuned_seconds * 1e3, 6)
        choice = choices.get(task.workload_hash)
        if choice is None:  # no search records (or no baseline): the build takes the best record
            uses = (
                UNTUNED if best is None or record_schedule(best, baselines) != SEARCHED else "tuned"
            )
            uses_ms = None if best_seconds is None else round(best_seconds * 1e3, 6)
        else:
            uses = choice.uses
            uses_ms = choice.tuned_ms if choice.uses_tuned else (choice.untuned_ms or untuned_ms)
        outcomes.append(
            TaskOutcome(
                name=task.name,
                weight=task.weight,
                untuned_ms=untuned_ms,
                best_ms=None if best_seconds is None else round(best_seconds * 1e3, 6),
                schedule="-" if best is None else record_schedule(best, baselines),
                records=len(task_records),
                uses=uses,
                uses_ms=uses_ms,
            )
        )
    return outcomes
