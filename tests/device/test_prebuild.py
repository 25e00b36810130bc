"""`python -m edgecompile.device.prebuild`, CI's stage before pytest: every cache the emulated
boards need, one line each; an error is one line and exit 2; a warm cache builds nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecompile.device import emulator, native_rootfs, prebuild
from edgecompile.errors import EdgecompileError
from edgecompile.native import runtime


def _record_requests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []

    def rootfs(progress: Any = None) -> Path:
        asked.append(("rootfs with TVM", "aarch64"))
        return tmp_path / "tvm"

    def native(arch: str, progress: Any = None) -> Path:
        asked.append(("rootfs without Python", arch))
        return tmp_path / arch

    def built(arch: str, progress: Any = None) -> Path:
        asked.append(("runtime", arch))
        return tmp_path / f"runtime-{arch}"

    monkeypatch.setattr(emulator, "ensure_rootfs", rootfs)
    monkeypatch.setattr(native_rootfs, "ensure_native_rootfs", native)
    monkeypatch.setattr(runtime, "ensure_runtime", built)
    return asked


def test_every_cache_the_emulated_boards_need_is_ensured_with_a_line_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = _record_requests(monkeypatch, tmp_path)
    assert prebuild.main([]) == 0
    assert asked == [
        ("rootfs with TVM", "aarch64"),
        ("rootfs without Python", "aarch64"),
        ("rootfs without Python", "arm"),
        ("runtime", "aarch64"),
        ("runtime", "arm"),
    ]
    lines = capsys.readouterr().out.splitlines()
    ready = [line for line in lines if ": ready in " in line]
    assert len(ready) == 5
    assert ready[-1].startswith("native runtime for armv7: ready in ")
    assert ready[-1].endswith(f"({tmp_path / 'runtime-arm'})")
    assert lines[-1].startswith("emulated boards ready in ")


def test_a_failed_build_is_one_error_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_requests(monkeypatch, tmp_path)

    def no_network(arch: str, progress: Any = None) -> Path:
        raise EdgecompileError("bootstrapping the armhf rootfs failed", "check network access")

    monkeypatch.setattr(native_rootfs, "ensure_native_rootfs", no_network)
    assert prebuild.main([]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("Error: bootstrapping the armhf rootfs failed")
    assert "Traceback" not in captured.err + captured.out
    assert prebuild.main(["--cold"]) == 2  # it takes no options
    assert capsys.readouterr().err.startswith("Error: ")


@pytest.mark.emulator
def test_a_warm_cache_builds_nothing(
    as_root: None, monkeypatch: pytest.MonkeyPatch, no_emulator: Callable[[str], None]
) -> None:
    """What CI's stage costs once the cache is warm: every step finds its marker (any build
    here raises), so it is seconds, not the cold hour."""

    class WouldBuild(Exception):
        pass

    def refuse(*args: object, **kwargs: object) -> None:
        raise WouldBuild

    for module, name in (
        (emulator, "_build_rootfs"),
        (native_rootfs, "_build"),
        (runtime, "_build"),
    ):
        monkeypatch.setattr(module, name, refuse)
    done: list[str] = []
    try:
        took = prebuild.prebuild(done.append)
    except WouldBuild:
        (missing, _), *_ = prebuild.steps()[sum(": ready in " in line for line in done) :]
        no_emulator(f"{missing} is not cached: run python -m edgecompile.device.prebuild")
        raise  # unreachable: no_emulator fails or skips
    assert [step for step, _ in took] == [step for step, _ in prebuild.steps()]
