"""Tuning candidates built in one long-lived worker process, each build checked against a
deadline first.

MetaSchedule's ``LocalBuilder`` starts a fresh pool of processes for every batch (each imports
TVM: seconds per search round here) and always builds a batch to its end. This builder keeps
its worker (recycled every :data:`BUILDS_PER_WORKER` builds, TVM's own cure for the workers'
leak) and skips what is left of a batch once the deadline has passed, so a time budget ends a
search round between two candidates. Its worker keeps every temporary file (the candidates'
``.so``, the linker's objects) under one folder the tune deletes, interrupted or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecompile.tuning.budget import Pace

#: The error of a candidate not built because the deadline had passed: not a failure, and not
#: a trial (no record is written for it).
SKIPPED = "skipped: the time budget is spent"
BUILDS_PER_WORKER = 200
BUILD_TIMEOUT = 120


def _no_deadline() -> float | None:
    return None


@dataclass
class BuildGate:
    """When builds stop, and who hears of each one (the search's status line)."""

    #: The ``time.monotonic()`` after which no build starts (None: never), asked before each
    #: build: the search's deadline moves as the time the re-measurement will need grows.
    deadline: Callable[[], float | None] = _no_deadline
    #: Called with (candidates built so far, candidates in the batch) before each build.
    on_build: Callable[[int, int], None] | None = None

    def closed(self, seconds_needed: float = 0.0) -> bool:
        """Whether a build of ``seconds_needed`` would end after the deadline."""
        deadline = self.deadline()
        return deadline is not None and time.monotonic() + seconds_needed > deadline


def was_skipped(result: Any) -> bool:
    return getattr(result, "error_msg", None) == SKIPPED


def candidate_builder(toolchain: Any, folder: str, gate: BuildGate, pace: Pace) -> Any:
    """A MetaSchedule builder linking with ``toolchain``, its temporary files in ``folder``;
    close it with ``.close()`` (the worker is killed)."""
    from functools import partial

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor

    from edgecompile import _tune_workers as workers

    @derived_object
    class CandidateBuilder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            self.pool: Any = None

        def build(self, build_inputs: list[Any]) -> list[Any]:
            pace.batch_starts()
            results = []
            for number, build_input in enumerate(build_inputs):
                # A build is not started if it and the runs of the batch so far cannot end
                # before the deadline.
                if gate.closed(pace.build_seconds() + (number + 1) * pace.run_seconds()):
                    results.append(ms.builder.BuilderResult(None, SKIPPED))
                    continue
                if gate.on_build is not None:
                    gate.on_build(number, len(build_inputs))
                results.append(self._build_one(build_input))
            return results

        def warm_up(self) -> None:
            """Start the worker now, without waiting for it."""
            self._pool().submit(workers.ready)

        def _pool(self) -> Any:
            if self.pool is None:
                self.pool = PopenPoolExecutor(
                    max_workers=1,
                    timeout=BUILD_TIMEOUT,
                    initializer=partial(workers.use_temp_folder, folder),
                    maximum_process_uses=BUILDS_PER_WORKER,
                )
            return self.pool

        def _build_one(self, build_input: Any) -> Any:
            future = self._pool().submit(
                workers.build_candidate, toolchain, build_input.mod, build_input.target
            )
            try:
                path, seconds = future.result()
                pace.builds.append(seconds)
                return ms.builder.BuilderResult(path, None)
            except TimeoutError:
                return ms.builder.BuilderResult(
                    None, f"build timed out: killed after {BUILD_TIMEOUT} s"
                )
            except Exception as error:  # the build's own error, raised in the worker
                return ms.builder.BuilderResult(None, f"build failed\n{error}")

        def close(self) -> None:
            if self.pool is not None:
                self.pool.shutdown(wait=False)
                self.pool = None

    return CandidateBuilder()
