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
