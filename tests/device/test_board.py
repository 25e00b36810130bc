"""The emulated board as a service: loopback only, key login only, stopped cleanly and only it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgecompile.device import board
from edgecompile.errors import EdgecompileError


def _host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo]


def test_an_unknown_board_names_the_ones_emulated(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="cannot emulate 'pi-zero'") as raised:
        board.start_emulated_board("pi-zero", state_dir=tmp_path, authorized_key="ssh-x y")
    assert "rpi4" in raised.value.fix and "rpi3-armv7" in raised.value.fix


def test_a_board_without_python_refuses_a_tracker(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="no TVM RPC server to register"):
        board.start_emulated_board(
            "rpi3-armv7", state_dir=tmp_path, authorized_key="ssh-x y", tracker="127.0.0.1:9190"
        )


def test_a_private_key_is_never_authorized(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to get past the root check")
    key = tmp_path / "id"
    board.generate_client_key(key)
    with pytest.raises(EdgecompileError, match="not an OpenSSH public key"):
        board.start_emulated_board("rpi4", state_dir=tmp_path / "b", authorized_key=key)


def test_stale_state_never_signals_a_stranger(tmp_path: Path) -> None:
    """A state file whose PIDs now belong to other processes: not running, nothing killed."""
    me = psutil.Process()
    stranger = {"role": "supervisor", "pid": os.getpid(), "started": me.create_time() - 100}
    state = {
        "name": "rpi4", "cpu": "cortex-a72", "rootfs": "/nonexistent", "state_dir": str(tmp_path),
        "host": "127.0.0.1", "user": "root", "ssh_port": 2222, "rpc_port": 9090,
        "tracker": None, "rpc_key": "rpi4", "tracked_rpc_port": None,
        "unshare": {**stranger, "role": "unshare"}, "init": stranger, "pid_namespace": 1,
        "processes": [], "mounts": [], "host_key_fingerprint": "SHA256:x", "started_at": "then",
    }  # fmt: skip
    (tmp_path / board.STATE_FILE).write_text(json.dumps(state))
    current = board.status(tmp_path)
    assert not current.running
    assert "stale state file" in current.problems[0]
    assert board.stop(tmp_path) is False  # we are still alive to assert this
    assert not (tmp_path / board.STATE_FILE).exists()


emulator = pytest.mark.emulator


@emulator
def test_board_listens_on_loopback_only_and_mounts_privately(emulated_board: Any) -> None:
    current = board.status(emulated_board.state_dir)
    assert current.running and current.problems == []
    expected = {
        f"127.0.0.1:{emulated_board.ssh_port}": ["sshd"],
        f"127.0.0.1:{emulated_board.rpc_port}": ["rpc-server"],
        f"127.0.0.1:{emulated_board.tracked_rpc_port}": ["rpc-server (tracker)"],
    }
    assert current.listening == expected  # nothing else, and nothing on 0.0.0.0 or ::
    roles = sorted(p.role for p in emulated_board.processes)
    assert roles == ["rpc-server", "rpc-server (tracker)", "sshd"]

    # The board's mounts exist in its own namespace only, not in the host's mount table.
    host = _host_mounts()
    assert not [m for m in emulated_board.mounts if m in host]
    with open(f"/proc/{emulated_board.init.pid}/mountinfo") as inside:
        board_mounts = {line.split()[4] for line in inside}
    assert set(emulated_board.mounts) <= board_mounts


@emulator
def test_a_second_board_from_the_same_state_dir_is_refused(
    emulated_board: Any, client_key: Path, free_ports: Callable[[], int]
) -> None:
    with pytest.raises(EdgecompileError, match="already running"):
        board.start_emulated_board(
            "rpi4",
            ssh_port=free_ports(),
            rpc_port=free_ports(),
            state_dir=emulated_board.state_dir,
            authorized_key=client_key.with_name(client_key.name + ".pub"),
        )
    assert board.status(emulated_board.state_dir).running


@emulator
def test_port_in_use_is_refused_before_starting(
    rootfs: Path, client_key: Path, tmp_path: Path, free_ports: Callable[[], int]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(EdgecompileError, match=f"127.0.0.1:{port} \\(sshd\\) is in use"):
            board.start_emulated_board(
                "rpi4",
                ssh_port=port,
                rpc_port=free_ports(),
                state_dir=tmp_path,
                authorized_key=client_key.with_name(client_key.name + ".pub"),
                rootfs=rootfs,
            )
    assert not (tmp_path / board.STATE_FILE).exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from edgecompile.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@emulator
def test_cli_emulate_status_stop(
    rootfs: Path, tmp_path: Path, free_ports: Callable[[], int]
) -> None:
    """The CLI's lifecycle: the board outlives `emulate`, `stop` kills all of it and only it."""
    state_dir = tmp_path / "board"
    ssh_port, rpc_port = free_ports(), free_ports()
    started = _cli(
        "device", "emulate", "rpi4", "--dir", str(state_dir),
        "--ssh-port", str(ssh_port), "--rpc-port", str(rpc_port),
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert f"{board.BOARD_USER}@127.0.0.1:{ssh_port}" in started.stdout
        assert f"--identity {state_dir / 'id_ed25519'}" in started.stdout
        assert "says nothing about the real board" in started.stderr
        assert (state_dir / "id_ed25519").stat().st_mode & 0o077 == 0

        status = _cli("device", "status", "--dir", str(state_dir), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["running"] and report["problems"] == []
        state = board.status(state_dir).state
        assert state is not None
        members = [state.init.pid] + [p.pid for p in psutil.Process(state.init.pid).children(True)]
        assert len(members) >= 3  # supervisor, sshd, rpc server (and its worker)

        # a login session in progress must not survive the stop either
        from edgecompile.device import ssh

        known = tmp_path / "known_hosts"
        session = ssh.connect(
            state.device,
            identity=state_dir / "id_ed25519",
            known_hosts=known,
            accept_new_host_key=True,
        )
        assert session.run("echo up").stdout.strip() == "up"
    finally:
        stopped = _cli("device", "stop", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the emulated rpi4" in stopped.stdout
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) and _not_zombie(pid) for pid in members):
        assert time.monotonic() < deadline, "board processes survived `device stop`"
        time.sleep(0.2)
    with pytest.raises(EdgecompileError, match="dropped"):
        session.run("true")
    session.close()
    assert not (state_dir / board.STATE_FILE).exists()
    assert (state_dir / "sshd" / "ssh_host_ed25519_key").exists()  # same host key next time
    status = _cli("device", "status", "--dir", str(state_dir))
    assert status.returncode == 1 and "no emulated board recorded" in status.stdout
    assert _cli("device", "stop", "--dir", str(state_dir)).stdout.startswith("no emulated board")


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
