"""Progress on a terminal and in a pipe: a command in `| tee log` says what it is doing."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecompile.progress import Progress, progress_wanted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_each_stage_start_and_end_as_lines() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream=stream, enabled=True)
    with progress.stage("export"):
        pass
    with pytest.raises(ValueError), progress.stage("compile"):
        raise ValueError
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] export"
    assert lines[1].startswith("[1/2] done in ") and lines[1].endswith(" s")
    assert lines[2] == "[2/2] compile"
    assert lines[3].startswith("[2/2] failed after ")
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_a_pipe_gets_status_lines_at_most_every_pipe_seconds() -> None:
    stream = io.StringIO()
    progress = Progress(1, stream=stream, enabled=True, pipe_seconds=0.2)
    with progress.stage("tune"):
        progress.update("a")  # right after the stage's own line: not yet
        time.sleep(0.3)
        for text in "bcd":
            progress.update(text)
    status = [line for line in stream.getvalue().splitlines() if line.startswith("    ")]
    assert status == ["    b"]


def test_a_terminal_gets_one_line_per_stage_with_the_status_rewritten() -> None:
    stream = Terminal()
    progress = Progress(1, stream=stream, enabled=True)
    with progress.stage("tune"):
        progress.update("trial 1")
        progress.update("trial 2")
    text = stream.getvalue()
    assert text.startswith("[1/1] tune ...")
    assert "\r\x1b[K    trial 2" in text and text.endswith(" s\n")


@pytest.mark.parametrize(
    ("value", "wanted"), [("", True), ("on", True), ("off", False), ("0", False)]
)
def test_edgecompile_progress_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, value: str, wanted: bool
) -> None:
    monkeypatch.setenv("EDGECOMPILE_PROGRESS", value)
    assert progress_wanted() is wanted
    stream = io.StringIO()
    with Progress(1, stream=stream).stage("export"):
        pass
    assert bool(stream.getvalue()) is wanted


@pytest.mark.timeout(300)
def test_build_in_a_pipe_prints_its_stages(tiny_onnx: Path, tmp_path: Path) -> None:
    environment = {**os.environ, "EDGECOMPILE_PROGRESS": "on"}
    completed = subprocess.run(
        [sys.executable, "-m", "edgecompile", "build", str(tiny_onnx), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    starts = [line for line in completed.stderr.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in starts if "done in" not in line] == [
        f"[{n}/5]" for n in range(1, 6)
    ]
    assert sum("done in" in line for line in starts) == 5
