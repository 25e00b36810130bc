"""Stage-by-stage progress: rewritten in place on a terminal, plain lines in a pipe or a log.

Commands report through a :class:`Progress` so the library stays quiet when used from Python
(:data:`SILENT`). A command in a pipe (``edgecompile build ... | tee log``, CI) still says what
it is doing: each stage's start and end as a line of its own, and long stages' status lines at
most every :data:`PIPE_SECONDS`. ``EDGECOMPILE_PROGRESS=off`` silences it everywhere.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

#: In a pipe, a status line (:meth:`Progress.update`) at most this often.
PIPE_SECONDS = 8.0
#: ``EDGECOMPILE_PROGRESS`` values that turn progress off.
_OFF = {"0", "off", "no", "false", "none"}


def progress_wanted() -> bool:
    """Whether the user asked for progress (``EDGECOMPILE_PROGRESS``, default on)."""
    return os.environ.get("EDGECOMPILE_PROGRESS", "").strip().lower() not in _OFF


class Progress:
    """``[2/5] import into Relax ... 0.4 s``: one line per stage on a terminal (long stages'
    status rewritten under it); in a pipe, ``[2/5] import into Relax`` when a stage starts
    and ``[2/5] done in 0.4 s`` when it ends.

    Safe to call from a helper thread (a heartbeat refreshing a long stage's status).
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        terminal: bool | None = None,
        pipe_seconds: float = PIPE_SECONDS,
    ):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = progress_wanted() if enabled is None else enabled
        self.terminal = _isatty(self.stream) if terminal is None else terminal
        self.pipe_seconds = pipe_seconds
        self.done = 0
        self._live_line = False
        self._last_pipe_line = -math.inf
        self._lock = threading.RLock()

    def update(self, text: str) -> None:
        """A status line under the current stage (long stages: tuning): rewritten in place on
        a terminal, a plain line at most every ``pipe_seconds`` in a pipe."""
        if not self.enabled:
            return
        with self._lock:
            if self.terminal:
                self.stream.write(("\r\x1b[K" if self._live_line else "\n") + "    " + text)
                self.stream.flush()
                self._live_line = True
            elif time.monotonic() - self._last_pipe_line >= self.pipe_seconds:
                self._line(f"    {text}")

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        with self._lock:
            self.done += 1
            number = f"[{self.done}/{self.total}]"
            if self.enabled:
                if self.terminal:
                    self.stream.write(f"{number} {label} ...")
                    self.stream.flush()
                else:
                    self._line(f"{number} {label}")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._end(" failed", f"{number} failed after {_since(start)}")
            raise
        self._end(f" {_since(start)}", f"{number} done in {_since(start)}")

    def _end(self, terminal_text: str, pipe_line: str) -> None:
        with self._lock:
            if self.enabled:
                if self.terminal:
                    self.stream.write(terminal_text + "\n")
                    self.stream.flush()
                else:
                    self._line(pipe_line)
            self._live_line = False

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_pipe_line = time.monotonic()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _since(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


SILENT = Progress(0, enabled=False)
