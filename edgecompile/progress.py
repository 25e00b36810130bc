"""Stage-by-stage progress on a terminal; silent in a pipe or a log.

Commands report through a :class:`Progress` so the library stays quiet when used from Python.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    """Prints ``[2/5] import into Relax ... 0.4 s`` lines to ``stream`` when it is a terminal."""

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._live_line = False

    def update(self, text: str) -> None:
        """A status line under the current stage, rewritten in place (long stages: tuning)."""
        if not self.enabled:
            return
        self.stream.write(("\r\x1b[K" if self._live_line else "\n") + "    " + text)
        self.stream.flush()
        self._live_line = True

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        self.done += 1
        start = time.perf_counter()
        if self.enabled:
            self.stream.write(f"[{self.done}/{self.total}] {label} ...")
            self.stream.flush()
        try:
            yield
        except BaseException:
            if self.enabled:
                self.stream.write(" failed\n")
            self._live_line = False
            raise
        if self.enabled:
            self.stream.write(f" {time.perf_counter() - start:.1f} s\n")
            self.stream.flush()
        self._live_line = False


SILENT = Progress(0, enabled=False)
