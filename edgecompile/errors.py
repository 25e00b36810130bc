"""The one exception type for mistakes a user can fix.

Everything the CLI reports as ``Error: ...`` (exit code 2) is an :class:`EdgecompileError`;
anything else reaching the top is a bug in edgecompile and keeps its traceback.
"""

from __future__ import annotations


class EdgecompileError(Exception):
    """A user-facing error: one line that names the problem and the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)


def first_line(text: object) -> str:
    """The first non-blank line of ``text`` (an exception's message, a process's output), or
    ``""``; never raises on an empty message, as ``str(exc).splitlines()[0]`` does."""
    for line in str(text if text is not None else "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def last_line(text: object) -> str:
    """The last non-blank line of ``text``: where TVM's and tools' errors put the message
    itself (after their tracebacks), or ``""``. An exception with no message gives its type's
    name, so a reason is never empty."""
    source = "" if text is None else str(text)
    for line in reversed(source.splitlines()):
        if line.strip():
            return line.strip()
    return type(text).__name__ if isinstance(text, BaseException) else ""
