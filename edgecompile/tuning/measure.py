"""Where tuning candidates are built and timed: here, or on a board over TVM RPC.

Host targets measure in a local worker process; board targets are linked with the board's
toolchain (a ``.so`` the board loads as is) and measured on the board over TVM RPC -- directly,
through an RPC tracker, or through an SSH tunnel to a server bound to the board's loopback
(:mod:`edgecompile.device.tunnel`), never by exposing RPC on a network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress
from edgecompile.targets import BoardPreset
from edgecompile.tuning.budget import Pace
from edgecompile.tuning.building import BuildGate, candidate_builder, was_skipped
from edgecompile.tuning.processes import keep_workers_out_of_ctrl_c

#: RPC sessions: an emulated or slow board needs minutes for the first load.
RPC_SESSION_TIMEOUT = 600
FAILED_RUN = 1e9  # MetaSchedule records 1e10 s for a candidate that failed


def choose_transport(preset: BoardPreset, access: BoardAccess) -> str:
    """``local``, or the one way ``access`` reaches the board: ``rpc``, ``tracker``, ``device``."""
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


@dataclass(frozen=True)
class Measurer:
    """The candidate builder and the runner (one timing per run), for the target, the database
    records go to, and the pace builds and runs are added to."""

    target: Any
    database: Any
    builder: Any
    #: The runner, being started in a thread (a local one starts a worker process that imports
    #: TVM: seconds the model's export overlaps).
    starting_runner: Future[Any]
    pace: Pace

    @property
    def runner(self) -> Any:
        return self.starting_runner.result()

    def measure(
        self, candidates: Sequence[tuple[Any, Any]], rounds: int = 1
    ) -> list[list[Any] | None]:
        """Build each ``(scheduled module, args info)`` once and run those that built, ``rounds``
        times interleaved (load that comes and goes hits them all); per candidate, its runner
        results (none: it did not build; None: not built, the deadline had passed). The build
        folders are deleted afterwards."""
        from tvm.s_tir import meta_schedule as ms

        built = self.builder.build(
            [ms.builder.BuilderInput(module, self.target) for module, _ in candidates]
        )
        try:
            owners = [
                i
                for _ in range(rounds)
                for i, result in enumerate(built)
                if result.error_msg is None
            ]
            started = time.monotonic()
            futures = self.runner.run(
                [
                    ms.runner.RunnerInput(built[i].artifact_path, "cpu", candidates[i][1])
                    for i in owners
                ]
            )
            results: list[list[Any] | None] = [
                None if was_skipped(result) else [] for result in built
            ]
            for i, future in zip(owners, futures, strict=True):
                results[i].append(future.result())  # type: ignore[union-attr]
            if owners:
                self.pace.runs.append((time.monotonic() - started) / len(owners))
        finally:
            remove_artifacts(built)
        return results


@dataclass(frozen=True)
class Measurement:
    """Where candidates are measured (the baselines, the search and the verdict all time them
    with one runner: one worker process to start), the gate that stops their builds at a
    deadline, and the pace they go at."""

    where: str
    measurer: Measurer
    gate: BuildGate
    pace: Pace


@contextlib.contextmanager
def measurement(
    preset: BoardPreset,
    toolchain: Any,
    transport: str,
    threads: int | None,
    target: Any,
    database: Any,
    *,
    access: BoardAccess,
    remote_port: int | None,
    scratch: str,
    progress: Progress = SILENT,
) -> Iterator[Measurement]:
    """The builder and runners for ``transport``, open for as long as the ``with`` lasts; every
    candidate is built under ``scratch`` (a folder the caller deletes). ``progress`` shows what
    reaching the board builds first (a board without Python: the native runtime, cold)."""
    from tvm.s_tir import meta_schedule as ms

    keep_workers_out_of_ctrl_c()
    gate, pace = BuildGate(), Pace()
    builder = candidate_builder(toolchain, scratch, gate, pace)
    builder.warm_up()  # its worker starts (imports TVM) while the runner's does
    starter = ThreadPoolExecutor(1, thread_name_prefix="edgecompile-runner")
    starting: Future[Any] | None = None
    runners = _runners(
        preset, transport, threads, access=access, remote_port=remote_port, progress=progress
    )
    try:
        with runners as (runner_for, where):
            evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
            starting = starter.submit(runner_for, evaluator)
            measurer = Measurer(target, database, builder, starting, pace)
            yield Measurement(where, measurer, gate, pace)
    finally:
        builder.close()
        starter.shutdown(wait=False)
        if starting is not None and starting.done() and starting.exception() is None:
            _close_runner(starting.result())
        # A runner still starting (an interrupt came first) has a worker that exits when this
        # process does: it reads its work from a pipe of ours.


def _close_runner(runner: Any) -> None:
    """Kill a local runner's worker now: left to the garbage collector, TVM's pool shutdown
    fails at exit ("cannot join current thread") and an interrupted tune leaves it running."""
    pool = getattr(runner, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False)


@contextlib.contextmanager
def _runners(
    preset: BoardPreset,
    transport: str,
    threads: int | None,
    *,
    access: BoardAccess,
    remote_port: int | None,
    progress: Progress = SILENT,
) -> Iterator[tuple[Callable[[Any], Any], str]]:
    """A runner for an evaluator config on ``transport``, and where it measures."""
    from edgecompile import _tune_workers as workers

    if transport == "local":
        yield (
            partial(_local_runner, threads),
            f"this machine ({threads} thread{'' if threads == 1 else 's'})",
        )
        return
    from edgecompile.device.remote import check_rpc_target

    if transport == "device":
        from edgecompile.device.tunnel import DEFAULT_RPC_PORT, rpc_tunnel

        tunnel = rpc_tunnel(access, remote_port=remote_port or DEFAULT_RPC_PORT, progress=progress)
        with tunnel as (host, port):
            check_rpc_target(preset, BoardAccess(rpc=f"{host}:{port}"))
            yield _direct_runner(host, port, threads), f"{access.device} (SSH tunnel)"
        return
    key = access.rpc_key or preset.rpc_key
    check_rpc_target(preset, access)
    if access.rpc:
        host, _, port = access.rpc.rpartition(":")
        yield _direct_runner(host, int(port), threads), f"RPC server {access.rpc}"
        return
    assert access.tracker is not None
    tracker_host, _, tracker_port = access.tracker.rpartition(":")
    session = partial(workers.connect_tracker, threads)
    tracked = partial(_rpc_runner, tracker_host, int(tracker_port), key, session)
    yield tracked, f"tracker {access.tracker} key {key}"


def _local_runner(threads: int | None, evaluator: Any) -> Any:
    from tvm.s_tir import meta_schedule as ms

    from edgecompile import _tune_workers as workers

    return ms.runner.LocalRunner(
        evaluator_config=evaluator,
        timeout_sec=60,
        initializer=partial(workers.set_thread_count, threads),
    )


def _direct_runner(host: str, port: int, threads: int | None) -> Callable[[Any], Any]:
    """Runners for an RPC server reached directly (or through our SSH tunnel): MetaSchedule's
    ``RPCRunner`` knows only trackers, so the session is opened by our own function."""
    from edgecompile import _tune_workers as workers

    session = partial(workers.connect_direct, host, port, threads, RPC_SESSION_TIMEOUT)
    # RPCRunner insists on a tracker config even when f_create_session ignores it.
    return partial(_rpc_runner, host, port, "direct", session)


def _rpc_runner(
    tracker_host: str,
    tracker_port: int,
    tracker_key: str,
    create_session: Callable[[Any], Any],
    evaluator: Any,
) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(
            tracker_host=tracker_host,
            tracker_port=tracker_port,
            tracker_key=tracker_key,
            session_timeout_sec=RPC_SESSION_TIMEOUT,
        ),
        evaluator_config=evaluator,
        f_create_session=create_session,
        max_workers=1,
    )


def remove_artifacts(built: Sequence[Any]) -> None:
    """Delete the candidates' build folders (each ``.so`` has a temporary folder of its own)."""
    for result in built:
        if getattr(result, "artifact_path", None):
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
