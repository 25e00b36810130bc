"""TVM's worker processes (candidate builds, local measurement) in a session of their own.

A terminal's Ctrl-C goes to its whole foreground process group. TVM's ``PopenWorker`` starts
its workers there, so one still starting up died in Python's own start-up with "Fatal Python
error: init_import_site ... KeyboardInterrupt" and a traceback on the tune's stderr, although
the tune itself stopped cleanly (exit 130). TVM offers no option for how it starts workers, so
the ``subprocess`` its pool module sees starts them in a new session: the interrupt reaches
only the tune, which stops them itself (and a worker whose tune died reads end-of-file on its
pipe and exits).
"""

from __future__ import annotations

import subprocess
from typing import Any


class _OwnSessionSubprocess:
    """:mod:`subprocess`, but ``Popen`` starts the child in a new session."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


def keep_workers_out_of_ctrl_c() -> None:
    """From now on, TVM's pool workers start outside the terminal's process group."""
    from tvm.support import popen_pool

    if not isinstance(popen_pool.subprocess, _OwnSessionSubprocess):
        popen_pool.subprocess = _OwnSessionSubprocess()
