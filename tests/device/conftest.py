"""The emulated aarch64 board, shared by every device test (built once, then cached)."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# --------------------------------------------------------------------------------------------
# The emulated board as a service (sshd + TVM RPC servers) and an RPC tracker on the host.
# Started once per session (~30 s: TVM imports under qemu) and shared by test_board, test_ssh,
# test_rpc and test_cli_device; built artifacts are shared the same way (~13 s per build).


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P and P + 1 both free (the board's RPC servers use both)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


@pytest.fixture(scope="session")
def free_ports() -> Callable[[], int]:
    """:func:`free_port_pair` (test modules cannot import conftest under importlib mode)."""
    return free_port_pair


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ed25519 key pair for the test client; the board authorizes its .pub."""
    from edgecompile.device.board import generate_client_key

    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    generate_client_key(path, comment="edgecompile-tests")
    return path


@pytest.fixture(scope="session")
def rpc_tracker() -> Iterator[str]:
    """TVM's RPC tracker on 127.0.0.1 (host python), as ``host:port``."""
    import subprocess
    import sys
    import time

    port = free_port_pair()
    process = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import socket

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"the RPC tracker exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the RPC tracker did not listen within 60 s")
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    # TVM's tracker listens from a PopenWorker child that outlives a SIGTERM to its parent.
    import psutil

    children = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def emulated_board(
    rootfs: Path,
    client_key: Path,
    rpc_tracker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """A running emulated rpi4 (sshd, direct RPC server, tracker-registered RPC server)."""
    from edgecompile.device import board

    state_dir = tmp_path_factory.mktemp("board")
    rpc_port = free_port_pair()
    ssh_port = free_port_pair()
    state = board.start_emulated_board(
        "rpi4",
        ssh_port=ssh_port,
        rpc_port=rpc_port,
        state_dir=state_dir,
        authorized_key=client_key.with_name(client_key.name + ".pub"),
        tracker=rpc_tracker,
        rootfs=rootfs,
    )
    yield state
    board.stop(state_dir)
    # what the tests deployed into the (shared, cached) rootfs's home
    shutil.rmtree(state.host_path(state.home) / "edgecompile-tests", ignore_errors=True)


@pytest.fixture(scope="session")
def python_less_board(
    as_root: None,
    client_key: Path,
    free_ports: Callable[[], int],
    tmp_path_factory: pytest.TempPathFactory,
    no_emulator: Callable[[str], None],
) -> Callable[..., contextlib.AbstractContextManager[tuple[Any, Any]]]:
    """``with python_less_board(name, arch, remote_dir=None) as (state, access)``: an emulated
    board with sshd only (its rootfs has no Python; ``arch`` "arm" or "aarch64") and a
    ``BoardAccess`` to it with a fresh known_hosts that accepts its key."""
    return functools.partial(
        _python_less_board,
        client_key=client_key,
        ssh_port=free_ports,
        tmp_path_factory=tmp_path_factory,
        no_emulator=no_emulator,
    )


@contextlib.contextmanager
def _python_less_board(
    name: str,
    arch: str,
    *,
    client_key: Path,
    ssh_port: Callable[[], int],
    tmp_path_factory: pytest.TempPathFactory,
    no_emulator: Callable[[str], None],
    remote_dir: str | None = None,
) -> Iterator[tuple[Any, Any]]:
    from edgecompile.device import board
    from edgecompile.device.access import BoardAccess
    from edgecompile.device.native_rootfs import ensure_native_rootfs
    from edgecompile.errors import EdgecompileError

    try:
        rootfs = ensure_native_rootfs(arch, progress=lambda line: print(f"[rootfs] {line}"))
    except EdgecompileError as error:
        no_emulator(f"cannot build the Python-less {name} rootfs: {error}")
    state_dir = tmp_path_factory.mktemp(f"{name}-native")
    state = board.start_emulated_board(
        name,
        native=True,
        ssh_port=ssh_port(),
        state_dir=state_dir,
        authorized_key=client_key.with_name(client_key.name + ".pub"),
        rootfs=rootfs,
    )
    extra = {} if remote_dir is None else {"remote_dir": remote_dir}
    access = BoardAccess(
        device=state.device,
        identity=client_key,
        known_hosts=tmp_path_factory.mktemp("known") / "known_hosts",
        accept_new_host_key=True,
        **extra,
    )
    try:
        yield state, access
    finally:
        board.stop(state_dir)
        if remote_dir is not None:  # what the tests deployed into the cached rootfs's home
            deployed = state.host_path(state.home) / remote_dir.removeprefix("~/")
            shutil.rmtree(deployed, ignore_errors=True)


@pytest.fixture(scope="session")
def trusted_known_hosts(
    emulated_board: Any, client_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A known_hosts that already holds the board's key (accepted once, as a user would)."""
    from edgecompile.device import ssh

    path = tmp_path_factory.mktemp("known") / "known_hosts"
    with ssh.connect(
        emulated_board.device, identity=client_key, known_hosts=path, accept_new_host_key=True
    ):
        pass
    return path


@pytest.fixture(scope="session")
def board_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Any]:
    """``board_artifacts(model, preset)``: each artifact built once per session."""
    from edgecompile.builder import build

    cache: dict[tuple[str, str], Any] = {}

    def get(model: str, preset: str = "rpi4") -> Any:
        if (model, preset) not in cache:
            out = tmp_path_factory.mktemp(f"{model}-{preset}")
            cache[(model, preset)] = build(model, preset, output_dir=out).artifact
        return cache[(model, preset)]

    return get


@pytest.fixture(scope="session")
def torch_reference() -> Callable[[str, Any], Any]:
    """``torch_reference(model, x)``: torch's output on ``x``, computed once per pair."""
    from edgecompile.export import load_torch_model, run_torch

    cache: dict[tuple[str, bytes], Any] = {}

    def get(model: str, x: Any) -> Any:
        key = (model, x.tobytes())
        if key not in cache:
            cache[key] = run_torch(load_torch_model(model), x)
        return cache[key]

    return get
