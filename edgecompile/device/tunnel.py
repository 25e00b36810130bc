"""TVM RPC to a board through SSH: a server bound to the board's loopback, a local tunnel to it.

TVM RPC has no authentication: anyone who reaches the port can run code on the board. So the
server listens on the board's 127.0.0.1 only, and this machine reaches it through the SSH
connection (host key verified, key login) as a local port on its own 127.0.0.1. If no server
answers on the board, one is started over SSH: TVM's Python server when the board's Python has
TVM, else ``edgecompile-rpc-server`` (:mod:`edgecompile.native`), uploaded with the native runtime
it runs on -- so a board without Python, a 32-bit one included, is tuned the same way.

That local port is a way onto the board too, and 127.0.0.1 is shared by every user of this
machine. TVM's client speaks TCP only (no Unix sockets, whose permissions would settle it), so
the port is a random free one, open only while the tunnel is, and it serves only connections
whose socket belongs to this process's user (the kernel's TCP table records each socket's
owner); anyone else's is closed before a byte reaches the board.
"""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import os
import posixpath
import secrets
import select
import shlex
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecompile.artifact import sha256_file
from edgecompile.device import ssh
from edgecompile.device.access import BoardAccess
from edgecompile.device.probe import NATIVE, BoardInfo, board_kind, probe
from edgecompile.errors import EdgecompileError, last_line
from edgecompile.progress import SILENT, Progress

DEFAULT_RPC_PORT = 9090
#: TVM's import under qemu-user or on a Pi 3 takes tens of seconds before the server listens.
SERVER_START_TIMEOUT = 240.0
SERVER_LOG = "~/.edgecompile-rpc-server.log"
#: On a board without TVM Python: where the native runtime and its RPC server are installed, one
#: folder per build named as this machine's cache names it (arch, TVM, tvm-ffi, our sources), so
#: a board never runs a server of another TVM than the libraries it is sent.
NATIVE_SERVER_HOME = "~/.cache/edgecompile/native"


@contextlib.contextmanager
def rpc_tunnel(
    access: BoardAccess, *, remote_port: int = DEFAULT_RPC_PORT, progress: Progress = SILENT
) -> Iterator[tuple[str, int]]:
    """``(host, port)`` on this machine's loopback that reaches the RPC server on port
    ``remote_port`` of the board's loopback, over SSH to ``access.device`` (started with
    ``access.remote_python`` if none listens there). ``progress`` shows the cross-build of
    the native runtime a board without Python may need first (minutes, once per TVM version).

    The forwarding runs in a child process: TVM's RPC client keeps the GIL while it waits for
    a reply, so a forwarding thread in the caller's process would never pass the request on.
    """
    device = access.require_device("an RPC tunnel")
    with ssh.connect(device, **access.ssh_login()) as board:
        transport = board.client.get_transport()
        if not _listening(transport, remote_port):
            _start_server(board, access.remote_python, remote_port, progress)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_forward_in_child,
        args=(access, remote_port, theirs),
        name="edgecompile-tunnel",
        daemon=True,
    )
    child.start()
    try:
        if not ours.poll(FORWARDER_START_TIMEOUT):
            raise EdgecompileError(
                f"the SSH tunnel to {device} did not come up in {FORWARDER_START_TIMEOUT:.0f} s",
                "check the connection (edgecompile device setup --dry-run) and run again",
            )
        message = ours.recv()
        if message[0] == "error":
            raise EdgecompileError(message[1], message[2] or None)
        yield "127.0.0.1", int(message[1])
    finally:
        with contextlib.suppress(OSError, BrokenPipeError):
            ours.send("stop")
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
            child.join(timeout=5)


FORWARDER_START_TIMEOUT = 60.0


def _forward_in_child(access: BoardAccess, remote_port: int, pipe: Any) -> None:
    """The tunnel process: its own SSH connection, forwarding until the parent says stop (or
    goes away)."""
    device = str(access.device)  # rpc_tunnel checked it
    try:
        with (
            ssh.connect(device, **access.ssh_login()) as board,
            _Forwarder(board, remote_port) as port,
        ):
            pipe.send(("ready", port))
            with contextlib.suppress(EOFError, OSError):
                pipe.recv()
    except EdgecompileError as error:
        pipe.send(("error", error.problem, error.fix or ""))
    except Exception as error:  # anything else still ends the parent's wait with a reason
        pipe.send(("error", f"SSH tunnel to {device} failed: {error}", ""))


#: SSH's "administratively prohibited" channel-open failure: sshd refuses port forwarding.
_PROHIBITED = 1


def _listening(transport: Any, port: int) -> bool:
    import paramiko

    try:
        channel = transport.open_channel(
            "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=15
        )
    except paramiko.ChannelException as error:
        if error.code == _PROHIBITED:
            raise EdgecompileError(
                "the board's sshd refuses port forwarding, which reaching its RPC server needs",
                "set `AllowTcpForwarding local` in the board's /etc/ssh/sshd_config, or run "
                "the server yourself and pass --rpc through your own tunnel",
            ) from None
        return False
    except (paramiko.SSHException, OSError):
        return False
    channel.close()
    return True


def _start_server(
    board: ssh.BoardConnection, remote_python: str | None, port: int, progress: Progress = SILENT
) -> None:
    info = probe(board, remote_python=remote_python)
    log = ssh.remote_path(SERVER_LOG)
    if board_kind(info) == NATIVE and remote_python is None:
        server = install_native_server(board, info, progress)
        # Loopback only is the server's own rule; exactly this port: the tunnel is the way in.
        program = f"{ssh.remote_path(server)} --port {int(port)}"
        name, by_hand = "native RPC server", f"{server} --port {int(port)}"
    elif board_kind(info) == NATIVE:
        raise EdgecompileError(
            f"{remote_python} on {board.settings.label} has no TVM to start an RPC server",
            f"run `edgecompile device setup {board.settings.label}` first, or leave out "
            "--remote-python: a board without TVM Python gets edgecompile's native server",
        )
    else:
        assert info.python is not None
        # Loopback only, and exactly this port (--port-end): the tunnel is the only way in.
        program = (
            f"{shlex.quote(info.python)} -m tvm.exec.rpc_server --host 127.0.0.1 "
            f"--port {int(port)} --port-end {int(port) + 1}"
        )
        name, by_hand = "TVM RPC server", "python -m tvm.exec.rpc_server --host 127.0.0.1"
    board.check(
        f"nohup {program} > {log} 2>&1 < /dev/null &",
        f"starting the {name}",
        f"start it yourself on the board: {by_hand}",
    )
    transport = board.client.get_transport()
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if _listening(transport, port):
            return
        time.sleep(2.0)
    tail = last_line(board.run(f"tail -n 3 {log}").stdout) or "no log"
    raise EdgecompileError(
        f"the {name} on {board.settings.label} did not start listening on port {port} "
        f"within {SERVER_START_TIMEOUT:.0f} s: {tail}",
        f"look at {SERVER_LOG} on the board, or pick another --remote-port",
    )


def native_arch(info: BoardInfo) -> str:
    """The native runtime a board runs: ``aarch64``, or ``arm`` for a 32-bit ARM userland
    (under a 64-bit kernel too); anything else has none."""
    machine = info.machine
    if machine in ("aarch64", "arm64") and info.userland_bits != 32:
        return "aarch64"
    if machine.startswith("arm") or machine in ("aarch64", "arm64"):  # 32-bit userland
        return "arm"
    raise EdgecompileError(
        f"the board has no TVM Python and edgecompile's native RPC server is built for ARM "
        f"boards only, not {machine}",
        "install TVM's Python on the board (edgecompile device setup) to tune on it",
    )


def install_native_server(
    board: ssh.BoardConnection, info: BoardInfo, progress: Progress = SILENT
) -> str:
    """The path of ``edgecompile-rpc-server`` on the board, with the native runtime beside it
    (``bin/`` and ``lib/``, as the cache holds them): built here if need be, uploaded unless
    the board already has this very build (sha256), checked after the upload and moved into
    place only whole."""
    from edgecompile.native.runtime import (
        GLIBC_VERSION,
        RPC_SERVER,
        RUNTIME_LIBRARY,
        ensure_runtime,
        read_record,
    )

    arch = native_arch(info)
    glibc = (info.glibc or "").rpartition(" ")[2]
    if glibc and _version(glibc) < _version(GLIBC_VERSION):
        raise EdgecompileError(
            f"{board.settings.label} has glibc {glibc}; edgecompile's native RPC server needs "
            f"{GLIBC_VERSION} or newer",
            "upgrade the board's OS (Raspberry Pi OS bullseye or newer), or install TVM's "
            "Python there (edgecompile device setup)",
        )
    local = ensure_runtime(arch, progress=progress)  # a cold build: minutes, announced
    record = read_record(local)
    folder = posixpath.join(_home_path(NATIVE_SERVER_HOME, info.home), local.name)
    files = [(local / name, posixpath.join(folder, name)) for name in (RUNTIME_LIBRARY, RPC_SERVER)]
    wanted = {remote: record["files"][name]["sha256"] for name, (_, remote) in
              zip((RUNTIME_LIBRARY, RPC_SERVER), files, strict=True)}  # fmt: skip
    server = files[-1][1]
    if _remote_sha256(board, list(wanted)) == wanted and _is_executable(board, server):
        return server
    token = secrets.token_hex(4)
    staged = {remote: f"{remote}.partial-{token}" for _, remote in files}
    folders = sorted({shlex.quote(posixpath.dirname(remote)) for _, remote in files})
    board.check(  # and what an interrupted upload left
        f"mkdir -p -- {' '.join(folders)} && "
        f"rm -f -- {' '.join(f'{place}/*.partial-*' for place in folders)}",
        f"creating {folder} for the native RPC server",
        "check that the user may write in its home folder",
    )
    try:
        for path, remote in files:
            if sha256_file(path) != wanted[remote]:
                raise EdgecompileError(
                    f"the cached native runtime {str(path)!r} was changed since its build",
                    f"delete {str(local)!r}; the next tune rebuilds it",
                )
            with board.translate_errors(f"uploading {path.name}"):
                board.sftp.put(str(path), staged[remote], confirm=True)
        received = _remote_sha256(board, list(staged.values()))
        for remote, temporary in staged.items():
            if received.get(temporary) != wanted[remote]:
                raise EdgecompileError(
                    f"the upload of {posixpath.basename(remote)} arrived corrupted on "
                    f"{board.settings.label}",
                    "run again; if it repeats, check the board's storage (SD card) for errors",
                )
        board.check(
            f"chmod 755 -- {shlex.quote(staged[server])} && "
            + " && ".join(f"mv -f -- {shlex.quote(t)} {shlex.quote(r)}" for r, t in staged.items()),
            "moving the native RPC server into place",
            f"check permissions in {folder}",
        )
    except EdgecompileError:
        if board.alive:  # the final names were never touched; leave no partial files
            board.run("rm -f -- " + " ".join(map(shlex.quote, staged.values())))
        raise
    return server


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _home_path(path: str, home: str) -> str:
    """``~/x`` on the board as an absolute path, from the home folder it reported."""
    return posixpath.join(home, path[2:]) if path.startswith("~/") else path


def _remote_sha256(board: ssh.BoardConnection, paths: list[str]) -> dict[str, str]:
    """``{path: sha256}`` of those of ``paths`` that exist on the board."""
    output = board.run("sha256sum -- " + " ".join(map(shlex.quote, paths)) + " 2>/dev/null").stdout
    sums = {}
    for line in output.splitlines():
        digest, _, path = line.partition("  ")
        if path:
            sums[path] = digest.lstrip("\\")
    return sums


def _is_executable(board: ssh.BoardConnection, path: str) -> bool:
    return board.run(f"test -x {shlex.quote(path)}").exit_status == 0


#: The kernel's tables of TCP sockets (IPv4, and IPv6 with v4-mapped addresses).
_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
#: The column of /proc/net/tcp holding the owner's uid, and the one holding the socket's inode.
_UID_COLUMN, _INODE_COLUMN = 7, 9


def _table_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` (address as 32-bit words in this machine's byte order, port in hex)
    as ``(127.0.0.1, 8080)``; a v4-mapped IPv6 address comes back as the IPv4 one."""
    address, _, port = text.partition(":")
    raw = b"".join(
        struct.pack("=I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8)
    )
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the client socket of the TCP connection from ``peer`` to ``local`` (both
    on this machine), or None when no open socket has it.

    The client's row of the kernel's TCP table has the peer's address as its own and ours as
    the remote one. Only a row with an inode counts: a socket already closed (orphaned, or in
    TIME_WAIT, which the kernel lists as uid 0) says nothing about who made it -- a stranger
    could otherwise connect, send, close, and pass as root.
    """
    want = (ipaddress.ip_address(peer[0]), int(peer[1]))
    ours = (ipaddress.ip_address(local[0]), int(local[1]))
    for table in _TCP_TABLES:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) <= _INODE_COLUMN or fields[_INODE_COLUMN] == "0":
                continue
            try:
                if _table_address(fields[1]) == want and _table_address(fields[2]) == ours:
                    return int(fields[_UID_COLUMN])
            except ValueError:
                continue
    return None


class _Forwarder:
    """A listening socket on 127.0.0.1 whose connections, from this user's processes only, are
    piped over SSH to the board."""

    def __init__(self, board: ssh.BoardConnection, remote_port: int) -> None:
        self.board = board
        self.remote_port = remote_port
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        #: Connections closed because another user's process made them.
        self.refused = 0

    def __enter__(self) -> int:
        accept = threading.Thread(target=self._accept, name="edgecompile-tunnel", daemon=True)
        accept.start()
        self.threads.append(accept)
        return int(self.server.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.server.close()
        for thread in self.threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                readable, _, _ = select.select([self.server], [], [], 0.5)
                if not readable:
                    continue
                client, peer = self.server.accept()
            except OSError:
                return
            if peer_uid(peer, self.server.getsockname()) != os.geteuid():
                self.refused += 1
                client.close()
                continue
            transport = self.board.client.get_transport()
            try:
                channel = transport.open_channel(
                    "direct-tcpip", ("127.0.0.1", self.remote_port), peer, timeout=30
                )
            except Exception:  # board gone: the RPC client sees a closed connection and says so
                client.close()
                continue
            # One blocking thread per direction: select() on a paramiko channel missed data
            # here (its readiness pipe), stalling TVM's RPC mid-session.
            for source, sink in ((client, channel), (channel, client)):
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                pump.start()
                self.threads.append(pump)

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while not self.closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, EOFError):
            pass
        finally:
            # Closing both ends also ends the other direction's blocking recv.
            for end in (source, sink):
                with contextlib.suppress(Exception):
                    end.close()
