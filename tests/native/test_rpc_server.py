"""edgecompile-rpc-server: TVM's RPC server on the native runtime, so `tune --device` measures on
a board without Python (32-bit ones included), still on the board's loopback behind the SSH
tunnel.

Default run: the cache key covers the server, and the tunnel installs and starts it on a board
without TVM Python (a stand-in board: a shell on this machine). Slow: the server cross-built
and run under qemu-user, reached by TVM's own RPC client, tuned through.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgecompile.artifact import sha256_file
from edgecompile.device import ssh, tunnel
from edgecompile.device.probe import BoardInfo
from edgecompile.errors import EdgecompileError
from edgecompile.native import runtime

# --- the build's cache key ----------------------------------------------------------------------


def test_the_cache_key_covers_the_rpc_server_and_its_tvm_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = runtime.source_hash()
    assert "rpc/rpc_endpoint.cc" in runtime.RPC_SOURCES
    # Our sources copied elsewhere hash the same: the key is their names and contents.
    copy = tmp_path / "native"
    copy.mkdir()
    for _, source in runtime._PROGRAMS:
        shutil.copy(source, copy / source.name)
    for header in runtime._PROGRAM_HEADERS:
        shutil.copy(runtime._HERE / header, copy / header)
    shutil.copytree(runtime._SHIM, copy / "shim")
    programs = tuple((name, copy / source.name) for name, source in runtime._PROGRAMS)
    monkeypatch.setattr(runtime, "_HERE", copy)
    monkeypatch.setattr(runtime, "_SHIM", copy / "shim")
    monkeypatch.setattr(runtime, "_PROGRAMS", programs)
    assert runtime.source_hash() == before

    server = copy / "rpc_server.cpp"
    server.write_text(server.read_text() + "\n// edited\n")
    edited = runtime.source_hash()
    assert edited != before
    # The main() both programs include from beside them is part of the key too.
    shared = copy / "program_main.h"
    assert '#include "program_main.h"' in server.read_text()
    shared.write_text(shared.read_text() + "\n// edited\n")
    header_edited = runtime.source_hash()
    assert header_edited not in (before, edited)
    monkeypatch.setattr(runtime, "RPC_SOURCES", runtime.RPC_SOURCES[:-1])
    assert runtime.source_hash() not in (before, edited, header_edited)


def test_the_build_compiles_the_rpc_sources_into_the_runtime_and_links_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_zig(spec: Any, arguments: list[str], *, what: str) -> None:
        calls.append(list(arguments))
        Path(arguments[arguments.index("-o") + 1]).write_bytes(b"built")

    monkeypatch.setattr(runtime, "_zig", fake_zig)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    runtime._build(runtime.ARCHES["arm"], runtime.installed_sources(), out, work, lambda _: None)

    library = next(c for c in calls if str(out / runtime.RUNTIME_LIBRARY) in c)
    linked = {Path(a).name for a in library if a.endswith(".o")}
    for name in runtime.RPC_SOURCES:
        assert f"runtime__{name.replace('/', '__')}.o" in linked
    server = next(c for c in calls if str(out / runtime.RPC_SERVER) in c)
    assert str(out / runtime.RUNTIME_LIBRARY) in server  # linked against the runtime
    assert (out / runtime.RPC_SERVER).is_file() and (out / runtime.RUNNER).is_file()


# --- the tunnel starts it on a board without TVM Python -----------------------------------------


class _ShellBoard:
    """A board that is a shell on this machine with its own $HOME: the tunnel's commands run
    for real (sha256sum, mkdir, mv, nohup); SFTP is a copy, which `corrupt` can spoil."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.settings = SimpleNamespace(label="pi@board", timeout=10)
        self.alive = True
        self.uploads: list[str] = []
        self.corrupt = False
        self.sftp = SimpleNamespace(put=self._put)

    def _put(self, local: str, remote: str, confirm: bool = True) -> None:
        self.uploads.append(Path(remote).name)
        data = Path(local).read_bytes()
        Path(remote).write_bytes(data[:-1] + b"?" if self.corrupt else data)

    def translate_errors(self, what: str) -> Any:
        return nullcontext()

    def run(self, command: str, **_: Any) -> ssh.CommandResult:
        done = subprocess.run(
            ["sh", "-c", command],
            env={**os.environ, "HOME": str(self.home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return ssh.CommandResult(done.returncode, done.stdout, done.stderr)

    def check(self, command: str, what: str, fix: str, **_: Any) -> str:
        return ssh.BoardConnection.check(self, command, what, fix)  # type: ignore[arg-type]


def _board_info(home: Path, **changes: Any) -> BoardInfo:
    facts: dict[str, Any] = dict(
        machine="armv7l", home=str(home), python3=None, python=None, python_bits=None,
        tvm_version=None, tvm_ffi_version=None, cpu_model=None, cores=4, governor=None,
        os="Raspbian GNU/Linux 11 (bullseye)", emulated=False, glibc="glibc 2.31",
        userland_bits=32,
    )  # fmt: skip
    return BoardInfo(**{**facts, **changes})


_REAL_ENSURE_RUNTIME = runtime.ensure_runtime


@pytest.fixture
def shell_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_ShellBoard]:
    """A Python-less armv7 board, and a cached "runtime" whose server is a script that writes
    its arguments down instead of serving."""
    home = tmp_path / "home"
    home.mkdir()
    built = tmp_path / "cache" / "arm-tvm-test"
    (built / "lib").mkdir(parents=True)
    (built / "bin").mkdir()
    (built / runtime.RUNTIME_LIBRARY).write_bytes(b"\x7fELF runtime")
    server = built / runtime.RPC_SERVER
    server.write_text('#!/bin/sh\necho "$@" > "$HOME/server-arguments"\n')
    files = {
        name: {"sha256": sha256_file(built / name)}
        for name in (runtime.RUNTIME_LIBRARY, runtime.RPC_SERVER)
    }
    (built / runtime.RECORD).write_text(json.dumps({"arch": "arm", "files": files}))
    asked: list[str] = []
    monkeypatch.setattr(
        runtime, "ensure_runtime", lambda arch, progress=None: asked.append(arch) or built
    )
    board = _ShellBoard(home)
    monkeypatch.setattr(tunnel, "probe", lambda b, remote_python=None: _board_info(home))
    monkeypatch.setattr(
        tunnel, "_listening", lambda transport, port: (home / "server-arguments").exists()
    )
    board.client = SimpleNamespace(get_transport=lambda: None)  # type: ignore[attr-defined]
    board.asked = asked  # type: ignore[attr-defined]
    yield board


def _wait_for(path: Path) -> str:
    for _ in range(100):
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_a_board_without_tvm_python_gets_the_native_server_on_its_port(
    shell_board: _ShellBoard,
) -> None:
    tunnel._start_server(shell_board, None, 9191)  # type: ignore[arg-type]

    assert shell_board.asked == ["arm"]  # the runtime for the board's 32-bit userland
    assert _wait_for(shell_board.home / "server-arguments").split() == ["--port", "9191"]
    installed = shell_board.home / ".cache" / "edgecompile" / "native" / "arm-tvm-test"
    assert os.access(installed / runtime.RPC_SERVER, os.X_OK)
    assert (installed / runtime.RUNTIME_LIBRARY).read_bytes() == b"\x7fELF runtime"
    assert not list(installed.rglob("*.partial-*"))
    # Uploaded under temporary names, moved into place once checked.
    assert sorted(name.partition(".partial-")[0] for name in shell_board.uploads) == sorted(
        Path(name).name for name in (runtime.RPC_SERVER, runtime.RUNTIME_LIBRARY)
    )

    # Started again (the server was stopped): the same build is not uploaded twice.
    (shell_board.home / "server-arguments").unlink()
    tunnel._start_server(shell_board, None, 9191)  # type: ignore[arg-type]
    assert len(shell_board.uploads) == 2
    _wait_for(shell_board.home / "server-arguments")


def test_a_cold_runtime_the_board_needs_is_announced_on_the_tunnels_progress(
    shell_board: _ShellBoard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tune --device` to a board without Python on a cold cache: the runtime's cross-build
    (minutes) is a progress line of its own before the server is uploaded and started."""
    import io

    from edgecompile.progress import Progress

    monkeypatch.setattr(runtime, "ensure_runtime", _REAL_ENSURE_RUNTIME)
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cold-cache"))

    def stand_in_build(spec: Any, sources: Any, out: Path, work: Path, say: Any) -> None:
        for name in (runtime.RUNTIME_LIBRARY, runtime.RUNNER, runtime.RPC_SERVER):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text('#!/bin/sh\necho "$@" > "$HOME/server-arguments"\n')
        say("compiled 1/1 (stand-in)")

    monkeypatch.setattr(runtime, "_build", stand_in_build)
    shown = io.StringIO()
    progress = Progress(1, stream=shown, enabled=True, terminal=False, pipe_seconds=0)
    tunnel._start_server(shell_board, None, 9191, progress)  # type: ignore[arg-type]

    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("[1/1] cross-build the native TVM runtime for armv7 "), lines
    assert lines[-1].startswith("[1/1] done in ")
    assert _wait_for(shell_board.home / "server-arguments").split() == ["--port", "9191"]


def test_a_corrupted_upload_is_one_line_and_leaves_nothing_half_installed(
    shell_board: _ShellBoard,
) -> None:
    shell_board.corrupt = True
    with pytest.raises(EdgecompileError) as caught:
        tunnel._start_server(shell_board, None, 9191)  # type: ignore[arg-type]
    assert "arrived corrupted" in str(caught.value) and "\n" not in str(caught.value)
    installed = shell_board.home / ".cache" / "edgecompile" / "native" / "arm-tvm-test"
    assert [p for p in installed.rglob("*") if p.is_file()] == []
    assert not (shell_board.home / "server-arguments").exists()  # nothing was started


def test_a_board_too_old_or_not_arm_is_refused_in_one_line(tmp_path: Path) -> None:
    board = _ShellBoard(tmp_path)
    with pytest.raises(EdgecompileError) as caught:
        tunnel.install_native_server(board, _board_info(tmp_path, glibc="glibc 2.28"))  # type: ignore[arg-type]
    assert "glibc 2.28" in str(caught.value) and "2.31" in str(caught.value)
    with pytest.raises(EdgecompileError) as caught:
        tunnel.native_arch(_board_info(tmp_path, machine="x86_64", userland_bits=64))
    assert "x86_64" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("machine", "bits", "arch"),
    [("aarch64", 64, "aarch64"), ("aarch64", 32, "arm"), ("armv7l", 32, "arm"),
     ("armv8l", None, "arm"), ("arm64", None, "aarch64")],
)  # fmt: skip
def test_the_board_userland_picks_the_runtime(machine: str, bits: int | None, arch: str) -> None:
    info = _board_info(Path("/home/pi"), machine=machine, userland_bits=bits)
    assert tunnel.native_arch(info) == arch


def test_a_chosen_python_without_tvm_is_not_silently_replaced(
    shell_board: _ShellBoard,
) -> None:
    with pytest.raises(EdgecompileError) as caught:
        tunnel._start_server(shell_board, "/opt/py/bin/python3", 9191)  # type: ignore[arg-type]
    assert "/opt/py/bin/python3" in str(caught.value) and "--remote-python" in str(caught.value)
    assert shell_board.uploads == []


# --- the server itself, under qemu-user (slow: the runtime is cross-built on a cold cache) ------

#: A small input keeps the emulated runs to seconds; the kernels are the same.
SIZE = 64


def _qemu_argv(arch: str) -> tuple[list[str], dict[str, str]]:
    from edgecompile.native.execute import QEMU
    from edgecompile.native.sysroot import ensure_sysroot

    program, cpu = QEMU[arch]
    if shutil.which(program) is None:
        pytest.skip(f"needs {program}")
    return [program, "-L", str(ensure_sysroot(arch))], {**os.environ, "QEMU_CPU": cpu}


class _Server:
    """edgecompile-rpc-server under qemu-user on a free loopback port."""

    def __init__(self, arch: str, *arguments: str) -> None:
        prefix, self.environment = _qemu_argv(arch)
        self.program = [*prefix, str(runtime.ensure_runtime(arch) / runtime.RPC_SERVER)]
        self.process = subprocess.Popen(
            [*self.program, "--port", "0", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environment,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once listening
        assert line.startswith("edgecompile-rpc-server: listening on 127.0.0.1:"), line
        address, _, work = line.strip().partition(", work dir ")
        self.port = int(address.rpartition(":")[2])
        self.work_dir = Path(work)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=60)
        return self.process.returncode, errors


def _build(
    model: str, target: str, folder: Path, *, records: Path | None = None, size: int | None = SIZE
) -> Any:
    from edgecompile.builder import build

    size_given = None if size is None else str(size)
    return build(model, target, output_dir=folder, input_size=size_given, records=records).artifact


def _run_over_rpc(port: int, artifact: Any, data: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax, rpc

    remote = rpc.connect("127.0.0.1", port, session_timeout=600)
    remote.upload(str(artifact.library))
    machine = relax.VirtualMachine(remote.load_module(artifact.library.name), remote.cpu())
    output = machine["main"](tvm.runtime.tensor(data, remote.cpu()))
    result = np.asarray(output.numpy())
    remote.remove(artifact.library.name)
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("target", "arch"), [("rpi3-armv7", "arm"), ("rpi4", "aarch64")])
def test_tvm_rpc_runs_a_library_on_the_native_server_under_qemu(
    target: str, arch: str, tmp_path: Path
) -> None:
    from edgecompile.export import example_input, load_torch_model, relative_error, run_torch

    prefix, environment = _qemu_argv(arch)
    program = [*prefix, str(runtime.ensure_runtime(arch) / runtime.RPC_SERVER)]
    for wrong in (["--port", "70000"], ["--bogus"]):
        refused = subprocess.run(
            [*program, *wrong], capture_output=True, text=True, env=environment, timeout=120
        )
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("edgecompile-rpc-server: ")

    artifact = _build("squeezenet1_1", target, tmp_path)
    data = example_input(artifact.manifest.inputs[0]["shape"], seed=7)
    expected = run_torch(load_torch_model("squeezenet1_1", input_size=str(SIZE)), data)
    server = _Server(arch)
    try:
        # Loopback only: nothing answers on this machine's other addresses.
        bound = [c.laddr for c in __import__("psutil").Process(server.process.pid).net_connections()
                 if c.status == "LISTEN"]  # fmt: skip
        assert [address.ip for address in bound] == ["127.0.0.1"]
        assert relative_error(_run_over_rpc(server.port, artifact, data), expected) <= 1e-4

        # A client with another key is turned away at the handshake, as TVM's server does.
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            key = b"client:other"
            sock.sendall(struct.pack("<ii", 0xFF271, len(key)) + key)
            assert struct.unpack("<i", sock.recv(4))[0] == 0xFF271 + 2
        sessions = [p.name for p in server.work_dir.iterdir()]
        assert sessions == []  # each session's uploads are removed when it ends
    finally:
        code, errors = server.stop()
    assert code == 0, errors
    assert not server.work_dir.exists()  # its own work dir, removed at exit


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_tune_through_the_native_server_writes_records_the_armv7_build_uses(
    tmp_path: Path,
) -> None:
    """`tune --rpc` on the native server (the tunnel's server, reached directly); the tuned
    armv7 library, run on that server, computes what ONNX Runtime computes."""
    import importlib.util

    from click.testing import CliRunner

    from edgecompile.cli.app import cli
    from edgecompile.export import relative_error, run_onnxruntime
    from edgecompile.records import CHOICES_FILE, list_stores

    spec = importlib.util.spec_from_file_location(
        "tune_tests", Path(__file__).parents[1] / "test_tune.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    onnx_path = module.write_pointwise_onnx(tmp_path / "pointwise.onnx")
    records = tmp_path / "records"
    server = _Server("arm")
    try:
        result = CliRunner().invoke(
            cli,
            ["tune", str(onnx_path), "--target", "rpi3-armv7", "--rpc",
             f"127.0.0.1:{server.port}", "--trials", "4", "--threads", "1",
             "--records", str(records)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        (store,) = list_stores(records)
        # Emulated timings may keep every untuned schedule: with the verdicts dropped, every
        # kernel takes its fastest record, so a search record surely runs.
        (store.path / CHOICES_FILE).unlink(missing_ok=True)
        artifact = _build(
            str(onnx_path), "rpi3-armv7", tmp_path / "build", records=records, size=None
        )
        assert artifact.manifest.records is not None
        assert artifact.manifest.records["kernels_from_records"]
        x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype("float32")
        (expected,) = run_onnxruntime(onnx_path, {"input": x})
        assert relative_error(_run_over_rpc(server.port, artifact, x), expected) <= 1e-4
    finally:
        code, errors = server.stop()
    assert code == 0, errors
