"""An emulated board as a service: sshd and TVM's RPC server inside the arm64 rootfs.

Why: ``edgecompile run --device`` / ``--rpc`` / ``--tracker`` talk to a board over SSH or TVM
RPC. Testing (and trying) that without hardware needs something that answers like a board. The
cached rootfs of :mod:`edgecompile.device.emulator` already has openssh-server and the same TVM,
so :func:`start_emulated_board` runs, through qemu-user (``QEMU_CPU`` = the board's core):

* ``sshd`` on ``127.0.0.1:<ssh_port>``: key login only (no passwords, no PAM), as the
  unprivileged ``pi`` user only (no root login), no forwarding but ``-L`` to the board's own
  loopback (a client's ``-R`` must not make anything listen), host key generated per state
  directory;
* ``python -m tvm.exec.rpc_server --host 127.0.0.1 --port <rpc_port>`` for direct clients;
* with ``tracker=``, a second RPC server registered under ``rpc_key``: TVM's server refuses
  direct clients once it registers with a tracker, so one process cannot serve both.

TVM RPC has no authentication: whoever reaches the port runs code as the server's user. So the
RPC servers run as ``pi`` too (never root: root in a chroot is root on this machine), and listen
on 127.0.0.1 only -- no other machine reaches them. The board shares this machine's loopback
(it is a chroot, not a network namespace, so the tracker and ``--rpc 127.0.0.1:PORT`` work), so
every local user can reach them: what they get is ``pi`` inside the chroot.

Everything runs in a private mount and PID namespace (``unshare``) whose first process is a
small supervisor script: the mounts it needs inside the chroot (/proc, /dev nodes, a tmpfs on
/run and /tmp, the state directory) exist only in that namespace, so the host's mount table and
other users of the shared rootfs never see them, and killing that one process makes the kernel
kill everything the board started and drop its mounts. The state file records PIDs (with their
start times, so a recycled PID is never signalled), ports and mounts.

A board without Python (``native=True``, and every armv7 board: an armhf rootfs under
qemu-arm) runs sshd only, from :mod:`edgecompile.device.native_rootfs`: what runs there is a
bundle's ``edgecompile-runner``.

Emulated latency says nothing about the real board: qemu translates every instruction.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.device import emulator
from edgecompile.errors import EdgecompileError, first_line

__all__ = [
    "DEFAULT_RPC_PORT",
    "DEFAULT_SSH_PORT",
    "EMULATION_WARNING",
    "BoardState",
    "BoardStatus",
    "default_state_dir",
    "generate_client_key",
    "start_emulated_board",
    "status",
    "stop",
]

DEFAULT_SSH_PORT = 2222
#: TVM's own default RPC port, so ``--rpc 127.0.0.1:9090`` reads as usual.
DEFAULT_RPC_PORT = 9090
#: The only account that may log in, and the one the RPC servers run as: unprivileged, like the
#: first user of Raspberry Pi OS (added to the cached rootfs by :func:`emulator.ensure_user`).
BOARD_USER = "pi"
BOARD_UID = 1000
STATE_FILE = "board.json"
LOG_FILE = "board.log"
#: Where the state directory's ``sshd/`` folder appears inside the chroot (on the /run tmpfs).
INSIDE = "/run/edgecompile-board"
EMULATION_WARNING = (
    "emulated board: qemu translates every ARM instruction on this x86 host, so its latency "
    "says nothing about the real board -- measure on hardware"
)

#: Board names the arm64 rootfs can emulate and qemu's name for their core.
_BOARD_CPUS = {
    "rpi3": "cortex-a53",
    "rpi4": "cortex-a72",
    "rpi5": "cortex-a76",
    "jetson-nano-cpu": "cortex-a57",
    "aarch64": "max",
}
#: 32-bit boards: an armhf rootfs without Python (no TVM wheel exists for armv7), always a
#: native board. qemu-arm has no Cortex-A53/A72 model, and these presets' libraries use the
#: ARMv8 AArch32 instructions those cores have, so "max".
_ARMV7_BOARD_CPUS = {"rpi3-armv7": "max", "rpi4-armv7": "max", "armv7": "max"}
#: The 32-bit boards' names (always without Python).
ARMV7_BOARDS = tuple(_ARMV7_BOARD_CPUS)
#: What :attr:`BoardState.kind` says: the board's Python has TVM, or it has no Python at all.
PYTHON_TVM = "python-tvm"
NATIVE = "native"

_SSHD_CONFIG = """\
# Written by edgecompile: an emulated {name} board, reachable from this machine only.
ListenAddress 127.0.0.1
Port {port}
HostKey {inside}/ssh_host_ed25519_key
AuthorizedKeysFile {inside}/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin no
AllowUsers {user}
UsePAM no
StrictModes yes
UseDNS no
# Local forwarding (-L) to the board's own loopback only: how `tune --device` reaches the RPC
# server bound there. No -R/-D: those would open listening sockets.
AllowTcpForwarding local
PermitOpen 127.0.0.1:*
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
GatewayPorts no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
PidFile none
LogLevel INFO
Subsystem sftp /usr/lib/openssh/sftp-server
"""

# The namespace's first process (host bash). Positional args, never interpolated into code:
#   $1 rootfs  $2 host dir bound at INSIDE  $3 qemu cpu  $4 venv python ("" for a board without
#   Python: no RPC servers)  $5 sshd port
#   $6 rpc port  $7 tracker host:port or ""  $8 rpc key  $9 tracked server's port
#   $10 uid of the board user (numeric: the host's chroot must not look the name up)
#   $11 its name  $12 its home inside the rootfs
# Any daemon exiting stops the board: a half-working board would fail tests confusingly.
_SUPERVISOR = r"""# edgecompile emulated board: first process of its mount + PID namespace.
set -eu
rootfs=$1 conf=$2 cpu=$3 python=$4 ssh_port=$5 rpc_port=$6 tracker=$7 rpc_key=$8 tracked_port=$9
uid=${10} user=${11} home=${12}
inside=/run/edgecompile-board
trap 'kill -TERM $(jobs -p) 2>/dev/null; wait; exit 0' TERM INT
mount -t proc edgecompile-proc "$rootfs/proc"
for node in null zero random urandom; do
    [ -e "$rootfs/dev/$node" ] || : > "$rootfs/dev/$node"
    mount --bind "/dev/$node" "$rootfs/dev/$node"
done
mount -t tmpfs -o mode=0755,size=16m edgecompile-run "$rootfs/run"
mkdir -m 0755 "$rootfs/run/sshd" "$rootfs$inside"
mkdir -m 1777 "$rootfs/run/lock"
mount --bind "$conf" "$rootfs$inside"
mount -t tmpfs -o mode=1777,size=1g edgecompile-tmp "$rootfs/tmp"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export LANG=C.UTF-8 QEMU_CPU="$cpu"
if [ ! -s "$conf/ssh_host_ed25519_key" ]; then
    chroot "$rootfs" /usr/bin/ssh-keygen -q -t ed25519 -N '' -C edgecompile-board \
        -f "$inside/ssh_host_ed25519_key"
fi
chroot "$rootfs" /usr/sbin/sshd -D -e -f "$inside/sshd_config" &
# A board without Python ($python empty) serves SSH only: what runs there comes in a bundle.
if [ -n "$python" ]; then
# The RPC servers (no authentication) run as the board user, never as root.
HOME=$home USER=$user LOGNAME=$user chroot --userspec="$uid:$uid" --groups="$uid" "$rootfs" \
    "$python" -m tvm.exec.rpc_server --host 127.0.0.1 \
    --port "$rpc_port" --port-end "$((rpc_port + 1))" &
if [ -n "$tracker" ]; then
    HOME=$home USER=$user LOGNAME=$user chroot --userspec="$uid:$uid" --groups="$uid" "$rootfs" \
        "$python" -m tvm.exec.rpc_server --host 127.0.0.1 \
        --port "$tracked_port" --port-end "$((tracked_port + 1))" \
        --tracker "$tracker" --key "$rpc_key" &
fi
fi
echo "edgecompile-board: started"
status=0
wait -n || status=$?
echo "edgecompile-board: a board process exited (status $status); stopping the board" >&2
kill -TERM $(jobs -p) 2>/dev/null || true
wait || true
exit 1
"""

#: The mounts the supervisor makes, relative to the rootfs (recorded in the state file).
_MOUNTS = (
    "proc",
    "dev/null",
    "dev/zero",
    "dev/random",
    "dev/urandom",
    "run",
    INSIDE.lstrip("/"),
    "tmp",
)


@dataclass(frozen=True)
class BoardProcess:
    """One process the board started, identified by PID *and* start time (PIDs get reused)."""

    role: str
    pid: int
    started: float


@dataclass(frozen=True)
class BoardState:
    """What ``board.json`` records: enough to find, check and stop a running board."""

    name: str
    cpu: str
    rootfs: str
    state_dir: str
    host: str
    user: str
    ssh_port: int
    rpc_port: int
    tracker: str | None
    rpc_key: str
    tracked_rpc_port: int | None
    unshare: BoardProcess
    init: BoardProcess
    pid_namespace: int
    processes: list[BoardProcess]
    mounts: list[str]
    host_key_fingerprint: str
    started_at: str
    #: :data:`PYTHON_TVM` (TVM's Python and RPC servers) or :data:`NATIVE` (sshd only).
    kind: str = PYTHON_TVM

    @property
    def device(self) -> str:
        """The ``--device`` value for this board."""
        return f"{self.user}@{self.host}:{self.ssh_port}"

    @property
    def rpc(self) -> str:
        """The ``--rpc`` value for this board's direct RPC server."""
        return f"{self.host}:{self.rpc_port}"

    @property
    def home(self) -> str:
        """The login user's home on the board (``~`` of ``--device``/``--remote-dir``)."""
        return "/root" if self.user == "root" else f"/home/{self.user}"

    def host_path(self, board_path: str) -> Path:
        """Where an absolute path on the board is on this machine (not for /tmp, /run or
        /proc: those are mounts of the board's own namespace)."""
        return Path(self.rootfs) / board_path.lstrip("/")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoardState:
        data = dict(data)
        data["unshare"] = BoardProcess(**data["unshare"])
        data["init"] = BoardProcess(**data["init"])
        data["processes"] = [BoardProcess(**p) for p in data["processes"]]
        return cls(**data)


@dataclass(frozen=True)
class BoardStatus:
    """A board's state file checked against the processes actually running."""

    state_dir: Path
    running: bool
    state: BoardState | None
    listening: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "running": self.running,
            "state": self.state.to_dict() if self.state else None,
            "listening": self.listening,
            "problems": self.problems,
        }


def default_state_dir(name: str = "rpi4") -> Path:
    """``<cache>/boards/<name>``: host keys persist there, so known_hosts stays valid across
    restarts of the same board."""
    return emulator.default_cache_dir() / "boards" / name


def generate_client_key(path: Path, comment: str = "edgecompile") -> str:
    """Write an ed25519 key pair (``path``, ``path.pub``) and return the public key line.

    Uses ``cryptography`` (a paramiko dependency) because paramiko cannot generate ed25519
    keys and the host may lack ``ssh-keygen``. Existing keys are reused, not overwritten.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = path.with_name(path.name + ".pub")
    if path.exists() and public.exists():
        return public.read_text().strip()
    key = Ed25519PrivateKey.generate()
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + f" {comment}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_bytes)
    public.write_text(public_line + "\n")
    return public_line


def _public_key_line(authorized_key: str | Path) -> str:
    """Accept a public key line or a path to a ``.pub`` file; reject private keys early."""
    text = str(authorized_key).strip()
    if not text.startswith(("ssh-", "ecdsa-", "sk-")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise EdgecompileError(
                f"authorized key {text!r} is neither a public key line nor a file",
                "pass the .pub file of the key you will log in with",
            )
        text = path.read_text().strip()
    if "PRIVATE KEY" in text or not text.startswith(("ssh-", "ecdsa-", "sk-")):
        raise EdgecompileError(
            "the authorized key is not an OpenSSH public key",
            "pass the .pub file (e.g. ~/.ssh/id_ed25519.pub), never the private key",
        )
    return first_line(text)


def _fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint, so a user can compare it with what ssh shows."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _check_port_free(port: int, what: str, option: str) -> None:
    """Fail before starting anything: a daemon that cannot bind would take the board down."""
    if not 0 < port < 65536:
        raise EdgecompileError(f"{what} port {port} is out of range", f"pass {option} 1024-65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            reason = "is in use" if error.errno == errno.EADDRINUSE else f"failed: {error}"
            raise EdgecompileError(
                f"127.0.0.1:{port} ({what}) {reason}", f"pick another port with {option}"
            ) from None


def _process_started(pid: int) -> float | None:
    """Start time of ``pid`` (psutil's create_time), None if gone or a zombie."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def _alive(process: BoardProcess) -> bool:
    """True only for the very process we started (same PID and same start time)."""
    started = _process_started(process.pid)
    return started is not None and abs(started - process.started) < 0.5


def _pid_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _board_processes(init_pid: int) -> list[Any]:
    """Every process below the namespace's init (daemons, their sessions and workers)."""
    import psutil

    try:
        return psutil.Process(init_pid).children(recursive=True)
    except psutil.Error:
        return []


def _listening(processes: list[Any]) -> dict[str, list[str]]:
    """``{"127.0.0.1:2222": ["sshd"], ...}``: which board process listens where."""
    import psutil

    found: dict[str, list[str]] = {}
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        label = _role_of(cmdline)
        if label not in ("sshd", "rpc-server", "rpc-server (tracker)"):
            # TVM's rpc_server listens from a PopenWorker child: name it after its parent.
            with contextlib.suppress(psutil.Error):
                label = _role_of(process.parent().cmdline())
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                address = f"{connection.laddr.ip}:{connection.laddr.port}"
                found.setdefault(address, [])
                if label not in found[address]:
                    found[address].append(label)
    return found


def _role_of(cmdline: list[str]) -> str:
    """Name a board process from its command line (qemu prepends its own path)."""
    text = " ".join(cmdline)
    if "tvm.exec.rpc_server" in text:
        return "rpc-server (tracker)" if "--tracker" in text else "rpc-server"
    if "/usr/sbin/sshd" in text:
        return "sshd"
    return os.path.basename(cmdline[0]) if cmdline else "?"


def _write_state(state_dir: Path, state: BoardState) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


def _read_state(state_dir: Path) -> BoardState | None:
    try:
        return BoardState.from_dict(json.loads((state_dir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as error:
        raise EdgecompileError(
            f"{state_dir / STATE_FILE} is not a board state file ({error})",
            "stop the board's processes by hand and delete the file",
        ) from None


def _log_tail(state_dir: Path, lines: int = 3) -> str:
    try:
        text = (state_dir / LOG_FILE).read_text(errors="replace")
    except OSError:
        return "no log"
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "empty log"


def start_emulated_board(
    name: str = "rpi4",
    *,
    ssh_port: int = DEFAULT_SSH_PORT,
    rpc_port: int = DEFAULT_RPC_PORT,
    state_dir: str | Path | None = None,
    authorized_key: str | Path,
    tracker: str | None = None,
    rpc_key: str | None = None,
    tracked_rpc_port: int | None = None,
    rootfs: Path | None = None,
    timeout: float = 240.0,
    native: bool = False,
) -> BoardState:
    """Start an emulated board (sshd + TVM RPC server) in the background; return its state.

    Returns once sshd and every RPC server listen (emulated TVM takes ~15 s to import). The
    processes outlive the caller; stop them with :func:`stop` (``edgecompile device stop``).

    Args:
        name: An aarch64 preset (``rpi4``, ``rpi5``, ``rpi3``, ``jetson-nano-cpu``,
            ``aarch64``), or an armv7 one (``rpi3-armv7``, ``rpi4-armv7``, ``armv7``: always
            native); it picks the emulated core.
        ssh_port: sshd's port on 127.0.0.1 (log in as ``pi`` with ``authorized_key``).
        rpc_port: The direct TVM RPC server's port on 127.0.0.1.
        state_dir: Holds board.json, board.log, the host key and sshd's config; defaults to
            :func:`default_state_dir`.
        authorized_key: The public key (a line, or a ``.pub`` path) allowed to log in.
        tracker: ``host:port`` of a TVM RPC tracker: then a second RPC server registers there
            under ``rpc_key`` (default: the board name) on ``tracked_rpc_port`` (rpc_port + 1).
        rootfs: An arm64 rootfs; defaults to :func:`emulator.ensure_rootfs` (built if missing),
            or for a native board :func:`native_rootfs.ensure_native_rootfs`.
        timeout: Seconds to wait for the daemons to listen.
        native: A board without Python (sshd only; ``run``/``bench --device`` then use the
            native runner of a bundle). Always so for the armv7 boards.

    Raises:
        EdgecompileError: not root, an unknown or 32-bit board, a port in use, the board is
            already running from this state directory, or a daemon failed to start (the message
            carries the end of board.log).
    """
    if name not in _BOARD_CPUS and name not in _ARMV7_BOARD_CPUS:
        raise EdgecompileError(
            f"cannot emulate {name!r}",
            f"use one of {', '.join([*_BOARD_CPUS, *_ARMV7_BOARD_CPUS])}",
        )
    arch = "arm" if name in _ARMV7_BOARD_CPUS else "aarch64"
    native = native or arch == "arm"
    if native and tracker:
        raise EdgecompileError(
            f"the emulated {name} without Python runs no TVM RPC server to register",
            "drop --tracker (or emulate a board with Python: no --native)",
        )
    if os.geteuid() != 0:
        raise EdgecompileError(
            "the emulated board needs root (namespaces, mounts, chroot)", "run it as root"
        )
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EdgecompileError("unshare is not installed", "apt-get install util-linux")
    directory = Path(state_dir) if state_dir is not None else default_state_dir(name)
    directory = directory.expanduser().resolve()
    existing = status(directory)
    if existing.running:
        raise EdgecompileError(
            f"a board is already running from {directory} (ssh port {existing.state.ssh_port})"
            if existing.state
            else f"a board is already running from {directory}",
            f"stop it first: edgecompile device stop --dir {directory}",
        )
    public_line = _public_key_line(authorized_key)
    tracked_port = None
    key = rpc_key or name
    if tracker:
        tracked_port = tracked_rpc_port or rpc_port + 1
        if tracked_port in (rpc_port, ssh_port):
            raise EdgecompileError(
                f"the tracked RPC server's port {tracked_port} collides with another port",
                "pick distinct --ssh-port/--rpc-port",
            )
    if ssh_port == rpc_port:
        raise EdgecompileError(f"ssh and rpc ports are both {ssh_port}", "pick two ports")
    _check_port_free(ssh_port, "sshd", "--ssh-port")
    if native:
        rpc_port = 0  # nothing listens for RPC on a board without Python
    else:
        _check_port_free(rpc_port, "TVM RPC server", "--rpc-port")
    if tracked_port is not None:
        _check_port_free(tracked_port, "tracked TVM RPC server", "--rpc-port")

    if rootfs is not None:
        root = Path(rootfs)
    elif native:
        from edgecompile.device.native_rootfs import ensure_native_rootfs

        root = ensure_native_rootfs(arch)
    else:
        root = emulator.ensure_rootfs()
    home = emulator.ensure_user(root, BOARD_USER, BOARD_UID)
    emulator.ensure_binfmt(arch)
    cpu = {**_BOARD_CPUS, **_ARMV7_BOARD_CPUS}[name]

    if not directory.exists():  # it will hold the client's private key: ours alone
        directory.mkdir(mode=0o700, parents=True)
    sshd_dir = directory / "sshd"
    sshd_dir.mkdir(mode=0o711, exist_ok=True)
    # sshd reads authorized_keys as the login user, so pi must pass through this folder (not
    # list it: the host's private key sits here, 0600); StrictModes wants neither writable by
    # others.
    sshd_dir.chmod(0o711)
    (sshd_dir / "sshd_config").write_text(
        _SSHD_CONFIG.format(name=name, port=ssh_port, inside=INSIDE, user=BOARD_USER)
    )
    authorized = sshd_dir / "authorized_keys"
    authorized.write_text(public_line + "\n")
    authorized.chmod(0o644)
    (directory / STATE_FILE).unlink(missing_ok=True)
    script = directory / "supervisor.sh"  # a file, so `ps` shows a short command line
    script.write_text(_SUPERVISOR)

    log = (directory / LOG_FILE).open("w")
    with log:
        supervisor = subprocess.Popen(
            [
                unshare, "--mount", "--pid", "--fork", "--propagation", "private",
                "--kill-child", "bash", str(script),
                str(root), str(sshd_dir), cpu, "" if native else f"{emulator.VENV}/bin/python",
                str(ssh_port),
                str(rpc_port), tracker or "", key, str(tracked_port or 0),
                str(BOARD_UID), BOARD_USER, home,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed by the terminal's Ctrl-C after we return
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )  # fmt: skip
    try:
        return _wait_until_ready(
            supervisor,
            directory=directory,
            name=name,
            cpu=cpu,
            rootfs=root,
            ssh_port=ssh_port,
            rpc_port=rpc_port,
            tracker=tracker,
            rpc_key=key,
            tracked_port=tracked_port,
            timeout=timeout,
            kind=NATIVE if native else PYTHON_TVM,
        )
    except BaseException:
        _kill_tree(supervisor.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=10)
        (directory / STATE_FILE).unlink(missing_ok=True)
        raise


def _kill_tree(unshare_pid: int) -> None:
    """SIGKILL the namespace init below our own ``unshare`` child (the kernel then kills the
    rest of the namespace), then unshare itself. Used only for a board we are starting."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(unshare_pid).children():
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        os.kill(unshare_pid, signal.SIGKILL)


def _wait_until_ready(
    supervisor: subprocess.Popen[bytes],
    *,
    directory: Path,
    name: str,
    cpu: str,
    rootfs: Path,
    ssh_port: int,
    rpc_port: int,
    tracker: str | None,
    rpc_key: str,
    tracked_port: int | None,
    timeout: float,
    kind: str = PYTHON_TVM,
) -> BoardState:
    """Poll until every daemon listens where it should, then write and return the state."""
    import psutil

    wanted = {f"127.0.0.1:{ssh_port}": "sshd"}
    if kind == PYTHON_TVM:
        wanted[f"127.0.0.1:{rpc_port}"] = "rpc-server"
    if tracked_port is not None:
        wanted[f"127.0.0.1:{tracked_port}"] = "rpc-server (tracker)"
    deadline = time.monotonic() + timeout
    init_pid: int | None = None
    while True:
        if supervisor.poll() is not None:
            raise EdgecompileError(
                f"the emulated {name} stopped while starting: {_log_tail(directory)}",
                f"see {directory / LOG_FILE}",
            )
        if init_pid is None:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(supervisor.pid).children()
                init_pid = children[0].pid if children else None
        if init_pid is not None:
            processes = _board_processes(init_pid)
            listening = _listening(processes)
            if all(address in listening for address in wanted):
                break
        if time.monotonic() > deadline:
            raise EdgecompileError(
                f"the emulated {name} did not come up within {timeout:.0f} s: "
                f"{_log_tail(directory)}",
                f"see {directory / LOG_FILE}; a slow machine may need a longer timeout",
            )
        time.sleep(0.5)

    daemons = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            role = _role_of(process.cmdline())
            if role in wanted.values() and process.ppid() == init_pid:
                daemons.append(BoardProcess(role, process.pid, process.create_time()))
    host_key = (directory / "sshd" / "ssh_host_ed25519_key.pub").read_text().strip()
    namespace = _pid_namespace(init_pid)
    started = _process_started(init_pid)
    unshare_started = _process_started(supervisor.pid)
    if namespace is None or started is None or unshare_started is None:
        raise EdgecompileError(
            f"the emulated {name} stopped while starting: {_log_tail(directory)}",
            f"see {directory / LOG_FILE}",
        )
    state = BoardState(
        name=name,
        cpu=cpu,
        rootfs=str(rootfs),
        state_dir=str(directory),
        host="127.0.0.1",
        user=BOARD_USER,
        ssh_port=ssh_port,
        rpc_port=rpc_port,
        tracker=tracker,
        rpc_key=rpc_key,
        tracked_rpc_port=tracked_port,
        unshare=BoardProcess("unshare", supervisor.pid, unshare_started),
        init=BoardProcess("supervisor", init_pid, started),
        pid_namespace=namespace,
        processes=daemons,
        mounts=[str(rootfs / mount) for mount in _MOUNTS],
        host_key_fingerprint=_fingerprint(host_key),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        kind=kind,
    )
    _write_state(directory, state)
    return state


def status(state_dir: str | Path | None = None, name: str = "rpi4") -> BoardStatus:
    """Check a board's recorded processes against reality; never changes anything.

    A board counts as running only if its supervisor is the very process recorded (PID, start
    time and PID namespace match), so a reused PID is never mistaken for the board.
    """
    directory = Path(state_dir) if state_dir is not None else default_state_dir(name)
    directory = directory.expanduser().resolve()
    state = _read_state(directory)
    if state is None:
        return BoardStatus(directory, False, None)
    problems: list[str] = []
    running = _alive(state.init) and _pid_namespace(state.init.pid) == state.pid_namespace
    listening: dict[str, list[str]] = {}
    if running:
        for process in state.processes:
            if not _alive(process):
                problems.append(f"{process.role} (pid {process.pid}) is not running")
        listening = _listening(_board_processes(state.init.pid))
        for address in listening:
            if not address.startswith("127.0.0.1:"):
                problems.append(f"something in the board listens on {address}")
        problems += _rpc_servers_as_root(state)
    else:
        problems.append("the board is not running (stale state file)")
    return BoardStatus(directory, running, state, listening, problems)


def _rpc_servers_as_root(state: BoardState) -> list[str]:
    """Problems if an RPC server (reachable by every local user, no authentication) runs with
    root's rights."""
    import psutil

    found = []
    for process in state.processes:
        if not process.role.startswith("rpc-server") or not _alive(process):
            continue
        with contextlib.suppress(psutil.Error):
            if 0 in psutil.Process(process.pid).uids():
                found.append(f"{process.role} (pid {process.pid}) runs as root")
    return found


def stop(state_dir: str | Path | None = None, name: str = "rpi4", *, timeout: float = 15.0) -> bool:
    """Stop the board recorded in ``state_dir``; return False if none was running.

    Signals only the recorded supervisor (after checking PID, start time and namespace):
    SIGTERM lets it stop sshd and the RPC servers; if it lingers, SIGKILL on the namespace's
    init makes the kernel kill every process of the board. Its mounts lived only in the
    board's mount namespace, so they are gone with it; the state file is removed, the host
    key and log are kept (same host key next time).
    """
    directory = Path(state_dir) if state_dir is not None else default_state_dir(name)
    directory = directory.expanduser().resolve()
    current = status(directory)
    state = current.state
    if state is None:
        return False
    if current.running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.init.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(state.init) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(state.init):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.init.pid, signal.SIGKILL)
            while _alive(state.init) and time.monotonic() < deadline + 10:
                time.sleep(0.2)
        if _alive(state.init):
            raise EdgecompileError(
                f"the board's supervisor (pid {state.init.pid}) did not stop",
                f"kill -9 {state.init.pid} by hand",
            )
    # unshare exits with its child; reap it when it is ours, so it leaves no zombie.
    if _alive(state.unshare):
        deadline = time.monotonic() + 5
        while _alive(state.unshare) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(state.unshare.pid, os.WNOHANG)
            time.sleep(0.1)
    with contextlib.suppress(ChildProcessError, ProcessLookupError):
        os.waitpid(state.unshare.pid, os.WNOHANG)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return current.running
