"""The glibc a bundle needs, read from its ELF files, against the board's: one line before
anything is shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompile.errors import EdgecompileError
from edgecompile.native.glibc import check_glibc, parse_version, required_glibc


def test_the_highest_needed_version_over_all_files_wins(tmp_path: Path) -> None:
    # what .dynstr holds: NUL-terminated version names among symbol names
    (tmp_path / "runner").write_bytes(b"\0memcpy\0GLIBC_2.17\0GLIBC_2.28\0")
    (tmp_path / "lib.so").write_bytes(b"\0GLIBC_2.4\0GLIBC_2.31\0GLIBC_PRIVATE\0")
    (tmp_path / "model.so").write_bytes(b"no versions at all")
    files = [tmp_path / name for name in ("runner", "lib.so", "model.so")]
    assert required_glibc(files) == (2, 31)  # numerically: 2.31 > 2.4 > 2.28 > 2.17
    assert required_glibc([tmp_path / "model.so"]) is None


def test_getconf_output_is_read_as_a_version() -> None:
    assert parse_version("glibc 2.36") == (2, 36)
    assert parse_version("2.31") == (2, 31)
    assert parse_version("") is None


def test_an_older_board_glibc_is_one_line_naming_both_versions() -> None:
    with pytest.raises(EdgecompileError) as raised:
        check_glibc((2, 31), "glibc 2.28", "pi@oldpi")
    message = str(raised.value)
    assert "2.31" in message and "2.28" in message and "pi@oldpi" in message
    assert "\n" not in message


@pytest.mark.parametrize("board", ["glibc 2.31", "glibc 2.36", None, "musl"])
def test_a_new_enough_or_silent_board_passes(board: str | None) -> None:
    check_glibc((2, 31), board, "pi@board")


def test_the_native_runtime_needs_no_newer_glibc_than_bullseye() -> None:
    """The cached runtime (when built) needs glibc <= 2.31, the floor the bundle promises."""
    from edgecompile.native import runtime

    folder = runtime.runtime_path("arm")
    if not runtime.is_built(folder):
        pytest.skip("the armv7 runtime is not built here (the slow tests build it)")
    needed = required_glibc([folder / runtime.RUNTIME_LIBRARY, folder / runtime.RUNNER])
    assert needed is not None and needed <= (2, 31)
