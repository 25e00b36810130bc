"""A tune's progress kept moving: its status line refreshed every couple of seconds, whatever
the search is doing, on a terminal and in a pipe.

A tune runs for minutes to hours, mostly inside MetaSchedule's C++ (which releases the GIL):
waiting for a round to report was how a 2-minute budget showed one line in 11 minutes. A thread
refreshes the line from the status the tune keeps; :class:`~edgecompile.progress.Progress`
rewrites it in place on a terminal and, in a pipe or a log, prints it as a plain line at most
every :data:`~edgecompile.progress.PIPE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from edgecompile.progress import Progress

#: How often the status line is refreshed.
TICK_SECONDS = 2.0


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
