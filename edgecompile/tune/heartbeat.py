"""A tune's progress kept moving: its status line refreshed every couple of seconds, whatever
the search is doing, on a terminal and in a pipe.

A tune runs for minutes to hours, mostly inside MetaSchedule's C++ (which releases the GIL):
waiting for a round to report was how a 2-minute budget showed one line in 11 minutes. A thread
refreshes the line from the status the tune keeps; :class:`TuneProgress` rewrites it in place on
a terminal and, in a pipe or a log, prints it as a plain line at most every
:data:`PIPE_SECONDS`, with every stage's start and end as lines of their own.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from edgecompile.progress import Progress

#: How often the status line is refreshed.
TICK_SECONDS = 2.0
#: In a pipe, a status line at most this often (stage lines are printed when they happen).
PIPE_SECONDS = 8.0


class TuneProgress(Progress):
    """:class:`~edgecompile.progress.Progress` that also reports in a pipe, in plain lines,
    and may be written from the heartbeat thread."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        pipe_seconds: float = PIPE_SECONDS,
    ) -> None:
        stream = stream or sys.stderr
        super().__init__(total, stream=stream, enabled=True)
        self.terminal = stream.isatty() if terminal is None else terminal
        self.pipe_seconds = pipe_seconds
        self._lock = threading.RLock()
        self._last_line = -math.inf

    def update(self, text: str) -> None:
        with self._lock:
            if self.terminal:
                super().update(text)
                return
            if time.monotonic() - self._last_line >= self.pipe_seconds:
                self._line(f"    {text}")

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        if self.terminal:
            with super().stage(label):
                yield
            return
        with self._lock:
            self.done += 1
            number = self.done
            self._line(f"[{number}/{self.total}] {label}")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            with self._lock:
                self._line(f"[{number}/{self.total}] failed after {_seconds(started)}")
            raise
        with self._lock:
            self._line(f"[{number}/{self.total}] done in {_seconds(started)}")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()


def _seconds(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


@contextlib.contextmanager
def heartbeat(
    progress: Progress, status: Callable[[], str | None], every: float = TICK_SECONDS
) -> Iterator[None]:
    """While the ``with`` lasts, ``progress.update(status())`` every ``every`` seconds from a
    thread of its own (no thread for a silent progress; a ``None`` status is skipped)."""
    if not progress.enabled:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                text = status()
            except Exception:  # a status read mid-change: the next beat reads it again
                text = None
            if text:
                progress.update(text)
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="edgecompile-tune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
