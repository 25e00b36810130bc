"""Fault injection on ``edgecompile build``, run as a user runs it: a subprocess, its own $TMPDIR.

A build is stopped by SIGINT, SIGTERM or SIGKILL at three points -- in a schedule rule (inside
TVM's pass, where its FFI used to turn Ctrl-C into a compile failure and a silent fallback),
while the linker runs, and with the new artifact complete but not yet in place -- and then:
the exit code is the shell's (130 / 143), the previous artifact is byte-identical, no sibling
or scratch folder is left (after SIGKILL: once the next build ran, which works).
Three builds racing on one output path all succeed and leave one complete artifact.

Each stop point is a file the build touches when it gets there (``$FAULT_READY``): a user rule
(``--schedules``), a linker (``--cc``), or a shim that wraps ``write_manifest``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecompile.artifact import MANIFEST, sha256_file

#: Python start-up and ``import tvm`` take most of a build of the tiny model.
READY_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 60
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
ARTIFACT = "tiny-host"

#: A schedule rule that stops the build inside TVM's pass (it is offered the first kernel).
STALL_RULE = """
import os, time
from pathlib import Path
from edgecompile.schedules.user import schedule

@schedule("stall")
def stall(func, target):
    Path(os.environ["FAULT_READY"]).touch()
    time.sleep(300)
"""
#: A "linker" that stops the build in the link stage.
STALL_LINKER = """#!/bin/sh
: > "$FAULT_READY"
exec sleep 300
"""
#: ``edgecompile`` with ``write_manifest`` wrapped: the staged artifact is complete, then the
#: build waits -- for a signal, or (``FAULT_BARRIER=N``) until N builds got there.
SHIM = """
import os, sys, time
from pathlib import Path
from edgecompile import builder
from edgecompile.cli import main

_write_manifest = builder.write_manifest
ready = Path(os.environ["FAULT_READY"])
barrier = int(os.environ.get("FAULT_BARRIER", "0"))

def write_then_wait(*args, **kwargs):
    _write_manifest(*args, **kwargs)
    ready.with_name(f"{ready.name}.{os.getpid()}").touch()
    if not barrier:
        time.sleep(300)
    deadline = time.monotonic() + 120
    while len(list(ready.parent.glob(ready.name + ".*"))) < barrier:
        if time.monotonic() > deadline:
            sys.exit("barrier: the other builds never came")
        time.sleep(0.01)

builder.write_manifest = write_then_wait
main(sys.argv[1:])
"""


@dataclass
class Workspace:
    """One test's folders: the output folder, the build's $TMPDIR, the helpers' folder."""

    root: Path
    out: Path
    tmpdir: Path
    onnx: Path
    library_leftovers: frozenset[str]

    @property
    def artifact(self) -> Path:
        return self.out / ARTIFACT

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmpdir), **extra}

    def build_argv(self, *options: str) -> list[str]:
        return ["build", str(self.onnx), "--target", "host", "-o", str(self.out), *options]

    def leftovers(self) -> list[str]:
        """Sibling names the atomic writer uses (``.tiny-host.*``), and anything in $TMPDIR
        that the libraries' own imports do not leave there too."""
        siblings = [p.name for p in self.out.iterdir() if p.name != ARTIFACT]
        scratch = [p.name for p in self.tmpdir.iterdir() if p.name not in self.library_leftovers]
        return sorted(siblings + [f"$TMPDIR/{name}" for name in scratch])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def edgecompile_argv(*args: str) -> list[str]:
    """The installed ``edgecompile`` command, as a user runs it."""
    return [str(Path(sys.executable).with_name("edgecompile")), *args]


@pytest.fixture(scope="module")
def library_leftovers(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """What importing ONNX Runtime and TVM alone leaves in a fresh $TMPDIR (ORT writes a
    session file): not the build's to remove."""
    tmpdir = tmp_path_factory.mktemp("import-tmpdir")
    subprocess.run(
        [sys.executable, "-c", "import onnxruntime, tvm"],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        check=True,
        timeout=READY_TIMEOUT_S,
    )
    return frozenset(p.name for p in tmpdir.iterdir())


@pytest.fixture(scope="module")
def good_artifact(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_onnx: Callable[..., Path]
) -> Path:
    """A finished build of the tiny model, copied into each test's output folder."""
    root = tmp_path_factory.mktemp("good")
    onnx = make_tiny_onnx(root / "tiny.onnx")
    subprocess.run(
        edgecompile_argv("build", str(onnx), "--target", "host", "-o", str(root / "out")),
        check=True,
        capture_output=True,
        timeout=READY_TIMEOUT_S,
    )
    return root / "out" / ARTIFACT


@pytest.fixture()
def workspace(
    tmp_path: Path,
    good_artifact: Path,
    library_leftovers: frozenset[str],
    make_tiny_onnx: Callable[..., Path],
) -> Workspace:
    """An output folder that already holds a good artifact (the one a failed build must keep),
    and an empty $TMPDIR."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(good_artifact, out / ARTIFACT)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    onnx = make_tiny_onnx(helpers / "tiny.onnx")
    return Workspace(helpers, out, tmpdir, onnx, library_leftovers)


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Builds a test started; each runs in a session of its own, killed whole at the end (a
    SIGKILLed build's stalled linker lives on)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=EXIT_TIMEOUT_S)


def start(
    processes: list[subprocess.Popen[str]], argv: list[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches the build and its tools
    )
    processes.append(process)
    return process


def wait_for(ready: Path, process: subprocess.Popen[str]) -> None:
    """Until the build touched ``ready`` (or a ``ready.<pid>``)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (ready.exists() or list(ready.parent.glob(ready.name + ".*"))):
        if process.poll() is not None:
            _out, err = process.communicate()
            pytest.fail(f"the build ended ({process.returncode}) before the stop point:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"the build never reached the stop point in {READY_TIMEOUT_S} s")
        time.sleep(0.05)


def stop_point(workspace: Workspace, where: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a build that stops at ``where``."""
    ready = workspace.root / "ready"
    env = workspace.env(FAULT_READY=str(ready))
    if where == "compile":
        rules = workspace.root / "rules"
        rules.mkdir()
        (rules / "stall.py").write_text(STALL_RULE)
        return edgecompile_argv(*workspace.build_argv("--schedules", str(rules))), env
    if where == "link":
        linker = workspace.root / "stall-linker"
        linker.write_text(STALL_LINKER)
        linker.chmod(0o755)
        return edgecompile_argv(*workspace.build_argv("--cc", str(linker))), env
    shim = workspace.root / "shim.py"
    shim.write_text(SHIM)
    return [sys.executable, str(shim), *workspace.build_argv()], env


def send(process: subprocess.Popen[str], signum: signal.Signals) -> None:
    """Ctrl-C goes to the terminal's whole process group; SIGTERM and SIGKILL to the build,
    as ``kill PID`` and an OOM killer do."""
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)


# --- signals at each stage ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["compile", "link", "publish"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_exits_cleanly_and_keeps_the_old_artifact(
    where: str,
    signum: signal.Signals,
    workspace: Workspace,
    processes: list[subprocess.Popen[str]],
) -> None:
    before = snapshot(workspace.artifact)
    argv, env = stop_point(workspace, where)
    process = start(processes, argv, env)
    wait_for(workspace.root / "ready", process)
    send(process, signum)
    out, err = process.communicate(timeout=EXIT_TIMEOUT_S)

    assert process.returncode == EXIT_CODE[signum], err
    message = "Interrupted." if signum == signal.SIGINT else "Terminated."
    assert err.strip().splitlines()[-1] == message, err
    assert "Traceback" not in err and "built" not in out, (out, err)
    assert snapshot(workspace.artifact) == before
    assert workspace.leftovers() == []


def test_killed_builds_keep_the_old_artifact_and_the_next_build_cleans_up(
    workspace: Workspace, processes: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL at each stop point in turn (nothing of a build runs after it), then one build
    that must remove what all three left and put its complete artifact in place."""
    before = snapshot(workspace.artifact)
    for where in ("compile", "link", "publish"):
        argv, env = stop_point(workspace, where)
        process = start(processes, argv, env)
        wait_for(workspace.root / "ready", process)
        send(process, signal.SIGKILL)
        process.communicate(timeout=EXIT_TIMEOUT_S)
        assert process.returncode == EXIT_CODE[signal.SIGKILL]
        assert snapshot(workspace.artifact) == before, where
        for helper in workspace.root.glob("ready*"):
            helper.unlink()
    # Each build removed what the one killed before it left: only the last one's staged folder
    # and scratch folder are there.
    left = workspace.leftovers()
    assert len([name for name in left if name.startswith(f".{ARTIFACT}.")]) == 1, left
    assert len([name for name in left if name.startswith("$TMPDIR/")]) == 1, left

    rerun = subprocess.run(
        edgecompile_argv(*workspace.build_argv("--batch", "2")),
        env=workspace.env(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((workspace.artifact / MANIFEST).read_text())
    assert manifest["inputs"][0]["shape"][0] == 2  # the new build, complete
    assert sha256_file(workspace.artifact / manifest["library"]) == manifest["library_sha256"]
    assert workspace.leftovers() == []


# --- schedule rules: interrupts interrupt, fallbacks are said -----------------------------------


def test_rule_raising_keyboard_interrupt_interrupts_the_build(workspace: Workspace) -> None:
    rules = workspace.root / "rules"
    rules.mkdir()
    (rules / "interrupts.py").write_text(
        textwrap.dedent(
            """
            from edgecompile.schedules.user import schedule

            @schedule("interrupts")
            def interrupts(func, target):
                raise KeyboardInterrupt
            """
        )
    )
    before = snapshot(workspace.artifact)
    result = subprocess.run(
        edgecompile_argv(*workspace.build_argv("--schedules", str(rules))),
        env=workspace.env(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Interrupted."
    assert "built" not in result.stdout
    assert snapshot(workspace.artifact) == before
    assert workspace.leftovers() == []


def test_rule_that_gives_up_is_said_on_stderr_with_the_op_and_reason(
    workspace: Workspace,
) -> None:
    rules = workspace.root / "rules"
    rules.mkdir()
    (rules / "gives_up.py").write_text(
        textwrap.dedent(
            """
            from edgecompile.schedules.user import ScheduleFailed, schedule

            @schedule("gives_up")
            def gives_up(func, target):
                raise ScheduleFailed("the tile does not divide 4 channels")
            """
        )
    )
    result = subprocess.run(
        edgecompile_argv(*workspace.build_argv("--schedules", str(rules))),
        env=workspace.env(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    manifest = json.loads((workspace.artifact / MANIFEST).read_text())
    # One line per heavy op (the tiny model has one: its conv), naming it, the rule, the reason.
    assert len(warnings) == len(manifest["schedules"]) == 1, result.stderr
    assert warnings[0].startswith("warning: op #0 (conv) fell back to ")
    for line in warnings:
        assert line.endswith("user:gives_up: the tile does not divide 4 channels"), line


# --- concurrent builds --------------------------------------------------------------------------


def test_concurrent_builds_on_one_path_all_succeed(
    workspace: Workspace, processes: list[subprocess.Popen[str]]
) -> None:
    """Three builds publish at the same moment (a barrier after each staged its artifact), onto
    a path none of them found: one moves in, the others swap with it."""
    shutil.rmtree(workspace.artifact)
    shim = workspace.root / "shim.py"
    shim.write_text(SHIM)
    ready = workspace.root / "ready"
    env = workspace.env(FAULT_READY=str(ready), FAULT_BARRIER="3")
    builds = [
        start(processes, [sys.executable, str(shim), *workspace.build_argv()], env)
        for _ in range(3)
    ]
    for build in builds:
        out, err = build.communicate(timeout=READY_TIMEOUT_S)
        assert build.returncode == 0, err
        assert "built" in out
    manifest = json.loads((workspace.artifact / MANIFEST).read_text())
    assert sorted(p.name for p in workspace.artifact.iterdir()) == sorted(
        [MANIFEST, manifest["library"]]
    )
    assert sha256_file(workspace.artifact / manifest["library"]) == manifest["library_sha256"]
    assert workspace.leftovers() == []
