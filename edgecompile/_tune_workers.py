"""Functions the tune's worker processes run: the candidate builder's and MetaSchedule's runners'.

They live in this small module because the workers are fresh Python processes that unpickle
these functions by reference: importing it must stay cheap (TVM itself is imported lazily).

Trap (TVM 0.27): MetaSchedule's default ``f_build`` imports ``tvm.s_tir.tensor_intrin``, which
takes ~100 s here, so every build timed out and tuning stalled at its first task. Our CPU
schedules use no tensor intrinsics; :func:`build_kernel` builds without them.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from edgecompile.toolchain import Toolchain


def use_temp_folder(folder: str) -> None:
    """Builder-worker initializer: every temporary file of the worker (the candidates' folders,
    the linker's objects) goes under ``folder``, which the tune deletes however it ends -- a
    worker killed mid-build (Ctrl-C) cannot leave files in the user's temp folder."""
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = folder


def build_candidate(toolchain: Toolchain, mod: Any, target: Any) -> tuple[str, float]:
    """One tuning candidate (a scheduled PrimFunc module) → the path of its ``.so``, in a folder
    of its own (the tune deletes it once the candidate is measured), and the seconds the build
    took (the worker's start-up left out: the tune's pace is per build)."""
    started = time.perf_counter()
    path = export_shared_library(toolchain, build_kernel(mod, target))
    return path, time.perf_counter() - started


def ready() -> bool:
    """A no-op: submitted to start a worker (and its TVM import) ahead of the first build."""
    return True


def build_kernel(mod: Any, target: Any) -> Any:
    """A candidate → a runtime module, lowered as :func:`~edgecompile.schedules.compile_relax`
    lowers the build's kernels."""
    import tvm

    from edgecompile.schedules.tir import register_tir_pipeline

    return tvm.tirx.build(mod, target=target, pipeline=register_tir_pipeline())


def export_shared_library(toolchain: Toolchain, module: Any) -> str:
    """Link with the board's own toolchain into a ``.so`` the board loads as is.

    MetaSchedule's default exports a ``.tar`` of objects, which the board would have to link
    itself: most boards have no compiler, and a host build would need a host ``g++``.
    """
    path = os.path.join(tempfile.mkdtemp(prefix="edgecompile-candidate-"), "candidate.so")
    module.export_library(path, fcompile=toolchain.fcompile())
    return path


def set_thread_count(threads: int | None) -> None:
    """Runner-worker initializer: TVM's thread pool reads ``TVM_NUM_THREADS`` when it starts."""
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def connect_direct(
    host: str, port: int, threads: int | None, session_timeout: float, _config: Any
) -> Any:
    """``f_create_session`` for an RPC server reached directly (or through our SSH tunnel).

    MetaSchedule's ``RPCRunner`` only knows trackers; this opens the server itself.
    """
    from tvm import rpc

    session = rpc.connect(host, port, session_timeout=session_timeout)
    _configure_threads(session, threads)
    return session


def connect_tracker(threads: int | None, config: Any) -> Any:
    """``f_create_session`` through a tracker (MetaSchedule's default), plus our thread count."""
    session = config.connect_server()
    _configure_threads(session, threads)
    return session


def _configure_threads(session: Any, threads: int | None) -> None:
    if threads is not None:
        session.get_function("runtime.config_threadpool")(0, int(threads))
