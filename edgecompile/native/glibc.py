"""Which glibc an ELF file needs, and whether a board's glibc is new enough: checked before a
bundle is shipped or run, so an old board says so in one line instead of the loader's
"version `GLIBC_2.34' not found" after the upload.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from edgecompile.errors import EdgecompileError

#: A symbol-version name as the dynamic string table holds it (NUL-terminated). Outside glibc
#: itself, these names appear only as versions the file *needs* (``.gnu.version_r``), so the
#: highest one in the file is the oldest glibc that can load it.
_NEEDED = re.compile(rb"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?\x00")


def required_glibc(files: Iterable[Path]) -> tuple[int, ...] | None:
    """The highest ``GLIBC_x.y`` any of ``files`` needs, None when none names one."""
    found: list[tuple[int, ...]] = []
    for path in files:
        data = Path(path).read_bytes()
        found += [
            tuple(int(part) for part in match.groups() if part) for match in _NEEDED.finditer(data)
        ]
    return max(found) if found else None


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"glibc 2.36"`` / ``"2.31"`` (what ``getconf GNU_LIBC_VERSION`` prints) -> (2, 36)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(part) for part in match.groups() if part) if match else None


def version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_glibc(needed: tuple[int, ...] | None, board_glibc: str | None, where: str) -> None:
    """Refuse a board whose glibc is older than ``needed``. A board that cannot tell (no
    ``getconf``, or musl) is let through: its loader then names the missing symbol."""
    have = parse_version(board_glibc or "")
    if needed is None or have is None or have >= needed:
        return
    raise EdgecompileError(
        f"the bundle needs glibc {version_text(needed)} but {where} has {version_text(have)}",
        "update the board's OS (Raspberry Pi OS bullseye or newer has glibc 2.31), or rebuild "
        "the runtime for it",
    )
