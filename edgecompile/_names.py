"""Plain names: a name read from a file (a preset's table, a manifest, a records store, an
import payload) becomes part of a path only after :func:`check_plain_name` accepted it.

Why: such a file may come from anyone (a shared preset, a downloaded artifact, a colleague's
records); a name like ``../../x`` or ``/etc/x`` would make a build, a deploy or an import write
or delete outside its folder. A plain name is one path component that cannot climb out, hide
(leading dot) or break a shell line or a terminal.
"""

from __future__ import annotations

import re

from edgecompile.errors import EdgecompileError

#: Longest accepted name: far above any real board or model name, well below NAME_MAX (255)
#: once a build adds ``<model>-`` or a deploy adds its temporary suffix.
MAX_NAME_LENGTH = 100
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def plain_name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain name, or None when it is one."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a text"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.'"
    if not _PLAIN.fullmatch(name):
        return "may use only letters, digits and _ . + -"
    return None


def check_plain_name(name: object, what: str, source: str) -> str:
    """``name`` if it is a plain name, else one-line :class:`EdgecompileError`.

    ``what`` says which name (``preset name``), ``source`` where it was read (a file).
    """
    problem = plain_name_problem(name)
    if problem is None:
        assert isinstance(name, str)
        return name
    shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
    raise EdgecompileError(
        f"{what} {shown} in {source} {problem}",
        "use a plain name of letters, digits and _ . + - (no path, at most "
        f"{MAX_NAME_LENGTH} characters)",
    )


def safe_name(text: str) -> str:
    """``text`` with every character a plain name may not hold replaced by ``_`` (for names we
    derive ourselves, e.g. a store's folder from a target's ``mcpu``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", text).replace("..", "__")
    if not _PLAIN.fullmatch(cleaned[:1]):
        cleaned = "_" + cleaned
    return cleaned[:MAX_NAME_LENGTH]
