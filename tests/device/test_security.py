"""The board side's security: nothing reachable runs as root, and `tune --device`'s local tunnel
port serves only this user's processes.

Another user is played by ``setpriv --reuid nobody`` (the tests run as root where the emulated
board can run at all).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from edgecompile.device import board, tunnel
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError

# Connects to 127.0.0.1:PORT, sends a TVM RPC client handshake, and prints what came back
# ("closed" when the connection was closed without a reply, "silent" when it stayed open).
_CLIENT = r"""
import socket, struct, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30) as sock:
    key = b"client:"
    sock.sendall(struct.pack("<ii", 0xFF271, len(key)) + key)
    try:
        reply = sock.recv(4)
    except ConnectionResetError:
        reply = b""
    except TimeoutError:
        print("silent")
        raise SystemExit
    print(reply.hex() if reply else "closed")
"""

_SUCCESS = struct.pack("<i", 0xFF271).hex()  # TVM's RPC_CODE_SUCCESS


def _as_nobody(port: int) -> str:
    """Run :data:`_CLIENT` as user nobody; return what it printed."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "/usr/bin/python3", "-c", _CLIENT, str(port)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _as_me(port: int) -> str:
    result = subprocess.run(
        ["/usr/bin/python3", "-c", _CLIENT, str(port)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class _FakeTransport:
    """Stands in for the SSH transport: each channel is a socket pair whose far end answers a
    handshake the way TVM's server does, so a forwarded connection gets a reply."""

    def __init__(self) -> None:
        self.opened = 0

    def open_channel(self, *_args: Any, **_kwargs: Any) -> socket.socket:
        self.opened += 1
        near, far = socket.socketpair()

        def answer() -> None:
            with far:
                if far.recv(64):
                    far.sendall(bytes.fromhex(_SUCCESS))

        threading.Thread(target=answer, daemon=True).start()
        return near


def test_the_tunnel_port_serves_only_this_user() -> None:
    transport = _FakeTransport()
    fake_board = SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport))
    forwarder = tunnel._Forwarder(fake_board, 9090)  # type: ignore[arg-type]
    with forwarder as port:
        assert _as_me(port) == _SUCCESS  # forwarded to the board, answered
        assert transport.opened == 1
        assert _as_nobody(port) == "closed"  # refused before anything reached the board
        assert transport.opened == 1 and forwarder.refused == 1
        assert _as_me(port) == _SUCCESS  # and still serving its own user afterwards
    assert transport.opened == 2


def test_peer_uid_names_the_connecting_socket_owner() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            accepted, peer = server.accept()
            with accepted:
                assert peer == client.getsockname()
                assert tunnel.peer_uid(peer, server.getsockname()) == os.geteuid()
                # a connection that does not exist has no owner
                assert tunnel.peer_uid(("127.0.0.1", 1), server.getsockname()) is None


@pytest.mark.parametrize("where", ["rpc", "tracker"])
def test_unreachable_rpc_hints_keep_servers_on_loopback(where: str) -> None:
    """The fix for an unreachable --rpc/--tracker never says to bind to every network."""
    from edgecompile.device.remote import check_rpc_target
    from edgecompile.targets import resolve_target

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again once the block ends: nothing listens
    with pytest.raises(EdgecompileError) as raised:
        check_rpc_target(resolve_target("rpi4"), BoardAccess(**{where: f"127.0.0.1:{port}"}))
    fix = raised.value.fix or ""
    assert "0.0.0.0" not in fix
    assert f"--host 127.0.0.1 --port {port}" in fix and "SSH tunnel" in fix


def _fake_rootfs(path: Path) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "home").mkdir()
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    (path / "etc" / "shadow").write_text("root:*:20000:0:99999:7:::\n")
    (path / "etc" / "shadow").chmod(0o640)
    return path


def test_the_board_user_is_added_once_and_unprivileged(tmp_path: Path) -> None:
    from edgecompile.device import emulator

    if os.geteuid() != 0:
        pytest.skip("needs root to give the home to another uid")
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    assert emulator.ensure_user(rootfs, "pi", 1000) == "/home/pi"
    assert emulator.ensure_user(rootfs, "pi", 1000) == "/home/pi"  # no second entry
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    assert passwd == ["root:x:0:0:root:/root:/bin/bash", "pi:x:1000:1000:edgecompile board user:"
                      "/home/pi:/bin/bash"]  # fmt: skip
    assert (rootfs / "etc" / "group").read_text().splitlines()[-1] == "pi:x:1000:"
    shadow = rootfs / "etc" / "shadow"
    # "*": no password matches, but not locked ("!"), which would stop key logins too
    assert shadow.read_text().splitlines()[-1].split(":")[:2] == ["pi", "*"]
    assert shadow.stat().st_mode & 0o777 == 0o640  # the file's mode survives the rewrite
    home = (rootfs / "home" / "pi").stat()
    assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (1000, 1000, 0o700)

    other = _fake_rootfs(tmp_path / "taken")
    (other / "etc" / "passwd").write_text("games:x:1000:1000::/:/bin/false\n")
    with pytest.raises(EdgecompileError, match="id 1000 already belongs to 'games'"):
        emulator.ensure_user(other, "pi", 1000)


emulator = pytest.mark.emulator


def _uids_below(pid: int) -> set[int]:
    process = psutil.Process(pid)
    return {uid for p in [process, *process.children(recursive=True)] for uid in p.uids()}


@emulator
def test_board_rpc_servers_and_logins_are_unprivileged(
    emulated_board: Any, client_key: Path, trusted_known_hosts: Path
) -> None:
    from edgecompile.device import ssh

    servers = [p for p in emulated_board.processes if p.role.startswith("rpc-server")]
    assert len(servers) == 2
    for server in servers:  # the server and the workers it forks
        assert _uids_below(server.pid) == {board.BOARD_UID}, server.role
    assert board.status(emulated_board.state_dir).problems == []

    assert emulated_board.device.startswith(f"{board.BOARD_USER}@")
    with ssh.connect(
        emulated_board.device, identity=client_key, known_hosts=trusted_known_hosts
    ) as session:
        assert session.run("id -u; id -un; echo $HOME").stdout.split() == [
            str(board.BOARD_UID), board.BOARD_USER, emulated_board.home,
        ]  # fmt: skip
    root = emulated_board.device.replace(f"{board.BOARD_USER}@", "root@", 1)
    with pytest.raises(EdgecompileError, match="authentication failed"):
        ssh.connect(root, identity=client_key, known_hosts=trusted_known_hosts)


@emulator
def test_tune_tunnel_to_the_board_refuses_other_users(
    emulated_board: Any, client_key: Path, trusted_known_hosts: Path
) -> None:
    """The real tunnel to the board's RPC server: this user gets TVM's handshake reply, nobody
    gets a closed connection."""
    access = BoardAccess(
        device=emulated_board.device, identity=client_key, known_hosts=trusted_known_hosts
    )
    with tunnel.rpc_tunnel(access, remote_port=emulated_board.rpc_port) as (host, port):
        assert host == "127.0.0.1"
        assert _as_nobody(port) == "closed"
        assert _as_me(port) == _SUCCESS
