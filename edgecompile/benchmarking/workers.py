"""Measuring in a process of its own: TVM's thread pool is sized once per process.

:func:`measure_in_subprocess` starts a fresh Python per thread count; :class:`PinnedWorker`
keeps one alive for many models (a report over the zoo). Both run
:func:`edgecompile.benchmarking.engines.measure` there and bring its user errors back intact.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, TypeVar

from edgecompile.benchmarking.engines import measure
from edgecompile.errors import EdgecompileError, last_line

Result = TypeVar("Result")


def measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh process per thread count: TVM's pool size is process-global and, measured on
    squeezenet1_1, runtime.config_threadpool after the first run did not change its latency,
    so switching in-process cannot be trusted."""
    env = {**os.environ, "TVM_NUM_THREADS": str(spec["threads"])}
    completed = subprocess.run(
        [sys.executable, "-c", f"from {__name__} import worker_main; worker_main()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = last_line(completed.stderr) or "no output"
        raise EdgecompileError(f"the benchmark worker failed: {tail}", "report it")
    return _raise_if_error(json.loads(lines[-1]))


def worker_main() -> None:
    """Entry point of the per-thread-count subprocess: spec JSON in, result JSON out."""
    spec = json.loads(sys.stdin.read())
    sys.stdout.write("\n" + json.dumps(_measure_or_error(spec)) + "\n")


def _measure_or_error(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`, with a user error as data: it crosses a process boundary intact."""
    try:
        return measure(spec)
    except EdgecompileError as exc:
        return {"error": exc.problem, "fix": exc.fix}
    finally:
        # A long-lived worker measures model after model: free this one's TVM library, ORT
        # session and torch module now, not when a cycle collection happens to run.
        gc.collect()


def _raise_if_error(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise EdgecompileError(result["error"], result.get("fix"))
    return result


def _pin_tvm_threads(threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(threads)


class PinnedWorker:
    """One long-lived process, its TVM thread pool pinned to ``threads``, for many models.

    A process of its own for the reason in :func:`measure_in_subprocess`; long-lived because
    starting Python and importing torch and TVM costs ~3.5 s, which a report over the zoo
    would otherwise pay per model and thread count. Started on first use; ``close`` ends it.

    Memory a model leaves behind (the whole zoo grew a worker from ~0.9 to ~3 GB) is given
    back by replacing the process after ``max_tasks`` calls.
    """

    def __init__(self, threads: int, *, max_tasks: int = 40) -> None:
        self.threads = threads
        self.max_tasks = max_tasks
        self._pool: ProcessPoolExecutor | None = None

    def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in the worker (a module-level function: it is pickled by name)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # fork would inherit TVM state
                initializer=_pin_tvm_threads,
                initargs=(self.threads,),
                max_tasks_per_child=self.max_tasks,
            )
        try:
            return self._pool.submit(function, *args).result()
        except BrokenProcessPool:
            self.close()  # the next call gets a fresh worker
            raise EdgecompileError(
                f"the {self.threads}-thread benchmark worker process died (a library it ran "
                "aborted?)",
                "report it with the model name",
            ) from None

    def measure(self, spec: dict[str, Any]) -> dict[str, Any]:
        """:func:`measure` in the worker; the thread count must be the worker's."""
        if spec["threads"] != self.threads:
            raise ValueError(f"a {self.threads}-thread worker asked to time {spec['threads']}")
        return _raise_if_error(self.call(_measure_or_error, spec))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PinnedWorker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
