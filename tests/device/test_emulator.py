"""The emulated aarch64 board: binfmt registration, rootfs, and a cross-compiled Relax library.

Needs root and the Debian packages from ``.ci/install-emulator-deps.sh``; the first run builds
the arm64 rootfs (~6 minutes, network needed) into the default cache, later runs reuse it.
Skipped, with the reason, where that is impossible.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from edgecompile.device import emulator
from edgecompile.errors import EdgecompileError
from edgecompile.targets import resolve_target
from edgecompile.toolchain import toolchain_for

pytestmark = pytest.mark.emulator


@tvm.script.ir_module
class TinyModule:
    """relu(x @ w + 1): a matmul, a broadcast add and an activation, like one CNN layer."""

    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 3), "float32")) -> R.Tensor(
        (4, 3), "float32"
    ):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.add(y, R.const(1.0, "float32"))
            out = R.nn.relu(z)
            R.output(out)
        return out


@pytest.fixture(scope="module")
def aarch64_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyModule cross-compiled for a Raspberry Pi 4 and linked by the preset's toolchain."""
    path = tmp_path_factory.mktemp("aarch64") / "tiny_aarch64.so"
    executable = tvm.compile(TinyModule, target=resolve_target("rpi4").tvm_target())
    executable.export_library(str(path), fcompile=toolchain_for(resolve_target("rpi4")).fcompile())
    return path


@pytest.mark.usefixtures("as_root")
def test_ensure_binfmt_is_idempotent(no_emulator: Callable[[str], None]) -> None:
    try:
        emulator.ensure_binfmt()
    except EdgecompileError as error:
        no_emulator(f"binfmt_misc cannot be set up here: {error}")
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text()
    emulator.ensure_binfmt()  # second call: nothing to do, nothing breaks
    assert Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text() == entry
    assert "enabled" in entry.splitlines()
    flags = next(line for line in entry.splitlines() if line.startswith("flags:"))
    assert "F" in flags


def test_rootfs_matches_host_tvm(rootfs: Path) -> None:
    import importlib.metadata
    import json

    marker = json.loads((rootfs / emulator.MARKER).read_text())
    assert marker["machine"] == "aarch64"
    for name in ("apache-tvm", "apache-tvm-ffi"):
        assert marker["packages"][name] == importlib.metadata.version(name)
    assert emulator.ensure_rootfs() == rootfs  # cached: returns at once


def test_run_in_rootfs_emulates_the_cpu(rootfs: Path) -> None:
    result = emulator.run_in_rootfs(
        rootfs, ["/usr/bin/python3", "-c", "import platform; print(platform.machine())"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "aarch64"
    failed = emulator.run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert (failed.returncode, failed.stderr.strip()) == (3, "oops")


@pytest.fixture()
def temp_dirs_made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The temp dirs the test's calls make, to check each is gone afterwards (not a glob over
    the shared rootfs's /tmp: a run killed earlier may have left its own there)."""
    made: list[Path] = []
    mkdtemp = emulator.tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(Path(mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(emulator.tempfile, "mkdtemp", recording_mkdtemp)
    return made


def test_cross_compiled_library_runs_on_the_board(
    rootfs: Path, aarch64_library: Path, temp_dirs_made: list[Path]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype("float32")
    w = rng.standard_normal((8, 3)).astype("float32")

    outputs = emulator.run_library_in_rootfs(rootfs, aarch64_library, {"x": x, "w": w})

    assert len(outputs) == 1
    assert outputs[0].shape == (4, 3) and outputs[0].dtype == np.float32
    np.testing.assert_allclose(outputs[0], np.maximum(x @ w + 1.0, 0.0), rtol=1e-5, atol=1e-5)
    assert temp_dirs_made and all(p.is_relative_to(rootfs / "tmp") for p in temp_dirs_made)
    assert not [p for p in temp_dirs_made if p.exists()], "temp dir left in the rootfs"


def test_unknown_entry_reports_the_board_error(
    rootfs: Path, aarch64_library: Path, temp_dirs_made: list[Path]
) -> None:
    inputs = {"x": np.zeros((4, 8), "float32"), "w": np.zeros((8, 3), "float32")}
    with pytest.raises(EdgecompileError, match=r"failed: .*no_such_function"):
        emulator.run_library_in_rootfs(rootfs, aarch64_library, inputs, entry="no_such_function")
    assert temp_dirs_made and not [p for p in temp_dirs_made if p.exists()]


def test_x86_library_is_rejected_clearly(rootfs: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny_x86.so"
    executable = tvm.compile(TinyModule, target=tvm.target.Target({"kind": "llvm"}))
    executable.export_library(str(path), fcompile=toolchain_for(resolve_target("host")).fcompile())
    inputs = {"x": np.zeros((4, 8), "float32"), "w": np.zeros((8, 3), "float32")}
    with pytest.raises(EdgecompileError, match=r"built for x86-64.*aarch64") as raised:
        emulator.run_library_in_rootfs(rootfs, path, inputs)
    assert raised.value.fix and "aarch64" in raised.value.fix


def test_ensure_binfmt_without_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator, "_binfmt_entry", lambda: None)
    monkeypatch.setattr(emulator, "_qemu_interpreter", lambda: None)
    with pytest.raises(EdgecompileError) as raised:
        emulator.ensure_binfmt()
    assert raised.value.fix == "apt-get install qemu-user-static"


def test_ensure_binfmt_without_root_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator, "_binfmt_entry", lambda: None)
    monkeypatch.setattr(emulator, "_qemu_interpreter", lambda: "/usr/bin/qemu-aarch64-static")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EdgecompileError, match="needs root"):
        emulator.ensure_binfmt()


@pytest.mark.usefixtures("as_root")
def test_interrupted_build_leaves_no_rootfs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    def bootstrap_then_fail(target: Path, say: Callable[[str], None]) -> None:
        (target / "usr").mkdir(parents=True)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-bootstrap

    monkeypatch.setattr(emulator, "_host_command", lambda *args, **kwargs: None)
    monkeypatch.setattr(emulator, "_bootstrap", bootstrap_then_fail)
    with pytest.raises(KeyboardInterrupt):
        emulator.ensure_rootfs(tmp_path)
    leftovers = [p.name for p in (tmp_path / "rootfs").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    assert not emulator.rootfs_path(tmp_path).exists()
