"""Shipping an artifact to a board over SSH (paramiko), safely.

Why each rule:

* Host keys are checked against known_hosts like OpenSSH does. An unknown key is refused
  unless the caller says ``accept_new_host_key=True`` (then it is recorded, never accepted
  silently); a *changed* key is always refused, because that is what a man-in-the-middle looks
  like and a deploy runs code as the board's user.
* ``~/.ssh/config`` is honoured (HostName, Port, User, IdentityFile, UserKnownHostsFile,
  ConnectTimeout), so ``--device pi`` works exactly as ``ssh pi`` does. ProxyJump and
  ProxyCommand are refused with a clear error rather than silently bypassed.
* A deploy uploads to temporary names, checks the library's sha256 *on the board* against the
  manifest, then renames into place: a dropped connection or a full disk never leaves a half
  library under the final name (and never breaks the copy that was there).
* Before anything is loaded, the board is checked: ``uname -m`` and the pointer width of its
  Python against the manifest's arch, python3 present, and the TVM version of the board's venv
  equal to the manifest's (a TVM library is only loadable by the runtime that built it).
* Every remote command is built with :func:`shlex.quote`.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import posixpath
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.artifact import MANIFEST, Artifact, load_artifact, sha256_file
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError, last_line

__all__ = [
    "DEFAULT_REMOTE_DIR",
    "BoardConnection",
    "BoardInfo",
    "CommandResult",
    "Deployment",
    "DeviceAddress",
    "SSHSettings",
    "check_compatible",
    "connect",
    "deploy",
    "deploy_on",
    "parse_device",
    "probe",
    "remote_path",
    "resolve_settings",
]

DEFAULT_REMOTE_DIR = "~/edgecompile"
#: Where a board's TVM usually lives, tried in order when ``remote_python`` is not given:
#: a venv of our own in the home directory, the emulated board's, then the system python3.
PYTHON_CANDIDATES = ("~/edgecompile-venv/bin/python", "/opt/edgecompile-venv/bin/python", "python3")
#: Room kept free beside the upload (sftp and the rename need a little).
_SPACE_MARGIN = 256 * 1024
_PARTIAL = ".partial-"

# Prints one JSON line: what the board's Python is, and which TVM it holds (without importing
# TVM, which takes seconds on a small board).
_PYTHON_INFO = """\
import importlib.metadata as md, importlib.util, json, platform, struct, sys
def version(*names):
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            pass
    return None
tvm = importlib.util.find_spec("tvm") is not None
print(json.dumps({
    "executable": sys.executable,
    "python": platform.python_version(),
    "machine": platform.machine(),
    "bits": struct.calcsize("P") * 8,
    "tvm": version("apache-tvm", "tvm") if tvm else None,
    "tvm_ffi": version("apache-tvm-ffi") if tvm else None,
    "numpy": version("numpy"),
}))
"""


# --------------------------------------------------------------------------------------------
# addresses and settings


@dataclass(frozen=True)
class DeviceAddress:
    """``user@host:port`` as typed; None where the user left it to ~/.ssh/config."""

    user: str | None
    host: str
    port: int | None


def parse_device(spec: str) -> DeviceAddress:
    """Parse ``[user@]host[:port]``; IPv6 literals go in brackets: ``pi@[::1]:2222``."""
    text = spec.strip()
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            raise EdgecompileError(f"bad device {spec!r}: empty user", "use user@host[:port]")
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise EdgecompileError(f"bad device {spec!r}", "write IPv6 hosts as user@[::1]:22")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise EdgecompileError(f"bad device {spec!r}", "write IPv6 hosts as user@[::1]:22")
    else:
        host = text
    if not host or any(c.isspace() for c in host):
        raise EdgecompileError(f"bad device {spec!r}: no host", "use user@host[:port]")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise EdgecompileError(f"bad port in {spec!r}", "use user@host:PORT with 1-65535")
        port = int(port_text)
    return DeviceAddress(user, host, port)


@dataclass(frozen=True)
class SSHSettings:
    """Everything needed to open the connection, after ~/.ssh/config was applied."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[Path]
    known_hosts: Path
    system_known_hosts: list[Path]
    timeout: float

    @property
    def host_key_name(self) -> str:
        """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve_settings(
    device: str,
    *,
    identity: str | Path | None = None,
    known_hosts: str | Path | None = None,
    ssh_config: str | Path | None = None,
    timeout: float | None = None,
) -> SSHSettings:
    """Apply ``~/.ssh/config`` (or ``ssh_config``) to ``device``; explicit values win.

    Raises:
        EdgecompileError: a bad device string, an unreadable config, or ProxyJump/ProxyCommand
            (not supported: refusing beats connecting directly behind the user's back).
    """
    import paramiko

    address = parse_device(device)
    config_path = Path(ssh_config).expanduser() if ssh_config else Path.home() / ".ssh" / "config"
    options: dict[str, Any] = {}
    if config_path.is_file():
        try:
            options = paramiko.SSHConfig.from_path(str(config_path)).lookup(address.host)
        except Exception as error:  # paramiko raises ConfigParseError and plain exceptions
            raise EdgecompileError(
                f"cannot read {config_path}: {error}", "fix the file, or pass --device user@host"
            ) from None
    for unsupported in ("proxyjump", "proxycommand"):
        value = str(options.get(unsupported, "")).strip()
        if value and value.lower() != "none":
            raise EdgecompileError(
                f"{config_path} sets {unsupported} for {address.host}; edgecompile connects "
                "directly and does not support jump hosts",
                "open a tunnel yourself (ssh -L 2222:board:22 jump) and use --device "
                "user@127.0.0.1:2222",
            )
    hostname = str(options.get("hostname", address.host))
    port = address.port or int(options.get("port", 22))
    user = address.user or options.get("user") or getpass.getuser()
    identities: list[Path] = []
    if identity is not None:
        identities = [Path(identity).expanduser()]
        if not identities[0].is_file():
            raise EdgecompileError(
                f"identity file {str(identity)!r} does not exist", "pass the private key's path"
            )
    else:
        identities = [
            Path(p).expanduser()
            for p in options.get("identityfile", [])
            if Path(p).expanduser().is_file()
        ]
    if known_hosts is not None:
        user_known = Path(known_hosts).expanduser()
    elif options.get("userknownhostsfile"):
        user_known = Path(str(options["userknownhostsfile"]).split()[0]).expanduser()
    else:
        user_known = Path.home() / ".ssh" / "known_hosts"
    system_known = [Path("/etc/ssh/ssh_known_hosts")] if known_hosts is None else []
    connect_timeout = timeout or float(options.get("connecttimeout", 15))
    return SSHSettings(
        alias=address.host,
        hostname=hostname,
        port=port,
        user=str(user),
        identity_files=identities,
        known_hosts=user_known,
        system_known_hosts=system_known,
        timeout=connect_timeout,
    )


def _fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` form, the one ``ssh-keygen -lf`` prints on the board."""
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _host_key_policy(settings: SSHSettings, accept_new: bool) -> Any:
    """A paramiko policy for hosts *absent* from known_hosts (paramiko itself raises
    BadHostKeyException when a known host presents another key, of any type)."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            fingerprint = f"{key.get_name()} {_fingerprint(key)}"
            if not accept_new:
                raise EdgecompileError(
                    f"the host key of {hostname} ({fingerprint}) is not in {settings.known_hosts}",
                    "compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the "
                    "board, then pass --accept-new-host-key to trust and record it",
                )
            _record_host_key(settings.known_hosts, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


def _record_host_key(path: Path, hostname: str, key: Any) -> None:
    """Append one known_hosts line (never rewrite the file: paramiko's save() would drop
    comments and entries it cannot parse, such as @cert-authority lines)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = path.read_bytes() if path.exists() else b""
        with path.open("ab") as handle:
            if existing and not existing.endswith(b"\n"):
                handle.write(b"\n")
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n".encode())
        path.chmod(0o600)
    except OSError as error:
        raise EdgecompileError(
            f"cannot record the host key in {path}: {error.strerror}",
            "make the file writable, or pass a writable --known-hosts",
        ) from None


# --------------------------------------------------------------------------------------------
# the connection


@dataclass(frozen=True)
class CommandResult:
    """A remote command's exit status and its output (decoded, with errors replaced)."""

    exit_status: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        """Where the reason of a failed command is: the last line of stderr, else stdout's."""
        return last_line(self.stderr) or last_line(self.stdout) or f"exit status {self.exit_status}"


class BoardConnection:
    """An open SSH connection to a board: commands, SFTP, and the settings it came from."""

    def __init__(self, client: Any, settings: SSHSettings) -> None:
        self.client = client
        self.settings = settings
        self._sftp: Any = None

    def __enter__(self) -> BoardConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._sftp is not None:
                self._sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    @property
    def sftp(self) -> Any:
        if self._sftp is None:
            with self.translate_errors("opening SFTP"):
                self._sftp = self.client.open_sftp()
        return self._sftp

    @contextlib.contextmanager
    def translate_errors(self, what: str) -> Iterator[None]:
        """Turn a dropped connection mid-operation into one EdgecompileError line."""
        import paramiko

        try:
            yield
        except EdgecompileError:
            raise
        except (EOFError, paramiko.SSHException, OSError) as error:
            if isinstance(error, TimeoutError) and self.alive:
                raise EdgecompileError(
                    f"{self.settings.label} stopped answering while {what}",
                    "check the board (load, network) and run again",
                ) from None
            # An SFTP error status (OSError on a live link): the board refused, e.g. disk full.
            if isinstance(error, OSError) and not isinstance(error, ConnectionError) and self.alive:
                reason = error.strerror or str(error) or type(error).__name__
                raise EdgecompileError(
                    f"{what} on {self.settings.label} failed: {reason}",
                    "check free space and permissions on the board",
                ) from None
            raise EdgecompileError(
                f"the connection to {self.settings.label} dropped while {what} "
                f"({type(error).__name__}: {error or 'closed'})",
                "check the network and the board, then run again (nothing was installed under "
                "the final name)",
            ) from None

    def run(
        self, command: str, *, timeout: float = 120.0, what: str | None = None
    ) -> CommandResult:
        """Run ``command`` (already quoted) through the user's shell; never raises on exit
        status. Reads stdout and stderr together, so a chatty stderr cannot deadlock us."""
        label = what or f"running {command.split()[0] if command.split() else command}"
        with self.translate_errors(label):
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("connection closed")
            channel = transport.open_session(timeout=self.settings.timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if channel.recv_ready():
                    out += channel.recv(65536)
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                elif channel.exit_status_ready():
                    while channel.recv_ready():
                        out += channel.recv(65536)
                    while channel.recv_stderr_ready():
                        err += channel.recv_stderr(65536)
                    break
                elif channel.closed or not transport.is_active():
                    raise EOFError("channel closed before the command finished")
                elif time.monotonic() > deadline:
                    channel.close()
                    raise EdgecompileError(
                        f"{label} on {self.settings.label} took longer than {timeout:.0f} s",
                        "the board may be overloaded; run again, or raise the timeout",
                    )
                else:
                    time.sleep(0.01)
            status = channel.recv_exit_status()
            channel.close()
        return CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, command: str, what: str, fix: str, *, timeout: float = 120.0) -> str:
        """Run and return stdout; a nonzero exit becomes an EdgecompileError naming ``what``."""
        result = self.run(command, timeout=timeout, what=what)
        if result.exit_status != 0:
            raise EdgecompileError(
                f"{what} on {self.settings.label} failed: {result.last_error_line()}", fix
            )
        return result.stdout


def connect(
    device: str,
    *,
    identity: str | Path | None = None,
    accept_new_host_key: bool = False,
    known_hosts: str | Path | None = None,
    ssh_config: str | Path | None = None,
    timeout: float | None = None,
) -> BoardConnection:
    """Open an SSH connection with strict host-key checking; key (or agent) login only.

    Raises:
        EdgecompileError: one line for each way it fails: unknown host name, unreachable
            host, refused or timed-out connection, not an SSH server, unknown or changed host
            key, authentication failed, unreadable identity file.
    """
    import paramiko

    settings = resolve_settings(
        device, identity=identity, known_hosts=known_hosts, ssh_config=ssh_config, timeout=timeout
    )
    if identity is not None:
        _check_identity(settings.identity_files[0])
    client = paramiko.SSHClient()
    for path in settings.system_known_hosts:
        if path.is_file():
            with contextlib.suppress(OSError):
                client.load_system_host_keys(str(path))
    if settings.known_hosts.is_file():
        try:
            client.load_host_keys(str(settings.known_hosts))
        except OSError as error:
            raise EdgecompileError(
                f"cannot read {settings.known_hosts}: {error.strerror}", "fix its permissions"
            ) from None
    client.set_missing_host_key_policy(_host_key_policy(settings, accept_new_host_key))
    target = f"{settings.hostname}:{settings.port}"
    try:
        client.connect(
            settings.hostname,
            port=settings.port,
            username=settings.user,
            key_filename=[str(p) for p in settings.identity_files] or None,
            look_for_keys=not settings.identity_files,
            allow_agent=identity is None,
            # TCP connect and key exchange get 2 s more than the banner wait: with equal limits
            # paramiko's start_client may give up first, and a silent server then surfaces
            # later as a baffling "No existing session".
            timeout=settings.timeout + 2,
            banner_timeout=settings.timeout,
            auth_timeout=settings.timeout,
        )
    except EdgecompileError:
        client.close()
        raise
    except paramiko.BadHostKeyException as error:
        client.close()
        raise EdgecompileError(
            f"the host key of {settings.host_key_name} CHANGED: the board offered "
            f"{error.key.get_name()} {_fingerprint(error.key)}, {settings.known_hosts} has "
            f"{error.expected_key.get_name()} {_fingerprint(error.expected_key)} -- someone "
            "may be intercepting the connection",
            "if the board was reinstalled, check its key and remove the old one with "
            f"ssh-keygen -R {shlex.quote(settings.host_key_name)} -f "
            f"{shlex.quote(str(settings.known_hosts))}",
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        keys = ", ".join(str(p) for p in settings.identity_files) or "the default keys and agent"
        raise EdgecompileError(
            f"authentication failed for {settings.user}@{target} (tried {keys}; password login "
            "is not supported)",
            "pass --identity with a key listed in the board's ~/.ssh/authorized_keys, and check "
            "the user name",
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError as error:
        client.close()
        codes = {e.errno for e in error.errors.values()}
        if codes == {errno.EHOSTUNREACH}:
            raise _unreachable(settings) from None
        raise EdgecompileError(
            f"connection to {target} refused",
            f"is sshd running on the board, on port "
            f"{settings.port}? (use user@host:PORT for another port)",
        ) from None
    except socket.gaierror:
        client.close()
        raise EdgecompileError(
            f"cannot resolve host name {settings.hostname!r}",
            "check the spelling, the board's address, or the Host entry in ~/.ssh/config",
        ) from None
    except TimeoutError:
        client.close()
        raise EdgecompileError(
            f"connection to {target} timed out (ConnectTimeout {settings.timeout:.0f} s)",
            "check that the board is on and reachable (and the port), or raise ConnectTimeout",
        ) from None
    except paramiko.SSHException as error:
        client.close()
        text = str(error)
        if "banner" in text.lower():
            raise EdgecompileError(
                f"{target} accepted the connection but sent no SSH greeting within "
                f"{settings.timeout:.0f} s ({text})",
                "check the port is sshd's, and that the board is not overloaded",
            ) from None
        if "no existing session" in text.lower():
            raise EdgecompileError(
                f"the SSH handshake with {target} did not complete within {settings.timeout:.0f} s",
                "check the port is sshd's, and that the board is not overloaded",
            ) from None
        raise EdgecompileError(
            f"SSH to {target} failed: {text}", "check the board's sshd and the port"
        ) from None
    except OSError as error:
        client.close()
        if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise _unreachable(settings) from None
        raise EdgecompileError(
            f"cannot connect to {target}: {error.strerror or error}",
            "check the board's address and that it is on the network",
        ) from None
    return BoardConnection(client, settings)


def _check_identity(path: Path) -> None:
    """Load the key once up front: paramiko reports a bad key file as a vague SSHException
    in the middle of authentication."""
    import paramiko

    try:
        paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException:
        raise EdgecompileError(
            f"the identity file {path} is encrypted and no passphrase was given",
            "load it into ssh-agent (ssh-add KEY) and drop --identity",
        ) from None
    except (paramiko.SSHException, ValueError, UnicodeDecodeError) as error:
        raise EdgecompileError(
            f"{path} is not a usable private key ({error})",
            "pass an OpenSSH private key file (not the .pub)",
        ) from None
    except OSError as error:
        raise EdgecompileError(f"cannot read {path}: {error.strerror}", "check it") from None


def _unreachable(settings: SSHSettings) -> EdgecompileError:
    return EdgecompileError(
        f"host {settings.hostname} is unreachable (no route)",
        "check the board is on and on this network (ping it), and its address",
    )


# --------------------------------------------------------------------------------------------
# what the board is


@dataclass(frozen=True)
class BoardInfo:
    """What a board says about itself; the CPU fields describe it in benchmark reports."""

    machine: str
    home: str
    python3: str | None
    python: str | None
    python_bits: int | None
    tvm_version: str | None
    tvm_ffi_version: str | None
    cpu_model: str | None
    cores: int | None
    governor: str | None
    os: str | None
    emulated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def remote_path(path: str, home: str | None = None) -> str:
    """Quote a remote path for the shell; ``~`` / ``~/x`` become ``"$HOME"`` (or ``home``)."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        base = shlex.quote(home) if home is not None else '"$HOME"'
        return base + ("/" + shlex.quote(rest) if rest else "")
    if path.startswith("~"):
        raise EdgecompileError(
            f"remote path {path!r}: ~user is not supported", "use ~/dir or an absolute path"
        )
    return shlex.quote(path)


def _absolute(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    return path


def _cpu_fields(cpuinfo: str) -> tuple[str | None, bool]:
    """(model, looks-emulated) from /proc/cpuinfo. x86 fields on an ARM board mean qemu-user
    passed the host's file through: the board is emulated."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    model = fields.get("Model") or fields.get("model name") or fields.get("Hardware")
    if model is None and "CPU part" in fields:
        model = f"ARM CPU part {fields['CPU part']}"
    return model, "vendor_id" in fields


def probe(
    board: BoardConnection, *, remote_python: str | None = None, timeout: float = 120.0
) -> BoardInfo:
    """Ask the board, in one round trip, what it is and which Python/TVM it has."""
    candidates = [remote_python] if remote_python else list(PYTHON_CANDIDATES)
    tries = " ".join(
        remote_path(c) if "/" in c else shlex.quote(c) for c in candidates
    )  # bare names are looked up in PATH by `command -v`
    script = f"""\
echo "@@home"; printf '%s\\n' "$HOME"
echo "@@machine"; uname -m
echo "@@python3"; command -v python3 || true
echo "@@cores"; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || true
echo "@@governor"; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || true
echo "@@os"; (. /etc/os-release 2>/dev/null && printf '%s\\n' "$PRETTY_NAME") || true
echo "@@python"
for candidate in {tries}; do
    exe=$(command -v "$candidate" 2>/dev/null) || continue
    [ -x "$exe" ] || continue
    info=$("$exe" -c {shlex.quote(_PYTHON_INFO)} 2>/dev/null) || continue
    case "$info" in *'"tvm": null'*) first=${{first:-$info}}; continue;; esac
    printf '%s\\n' "$info"; found=1; break
done
[ -n "${{found:-}}" ] || [ -z "${{first:-}}" ] || printf '%s\\n' "$first"
echo "@@cpuinfo"; cat /proc/cpuinfo 2>/dev/null || true
"""
    output = board.check(
        script,
        "probing the board",
        "check that the user's login shell is a POSIX shell",
        timeout=timeout,
    )
    sections: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        else:
            sections.setdefault(current, []).append(line)

    def first(name: str) -> str | None:
        values = [v.strip() for v in sections.get(name, []) if v.strip()]
        return values[0] if values else None

    python_info: dict[str, Any] = {}
    raw = first("python")
    if raw:
        with contextlib.suppress(ValueError):
            python_info = json.loads(raw)
    cores = first("cores")
    model, emulated = _cpu_fields("\n".join(sections.get("cpuinfo", [])))
    return BoardInfo(
        machine=first("machine") or "unknown",
        home=first("home") or "/",
        python3=first("python3"),
        python=python_info.get("executable"),
        python_bits=python_info.get("bits"),
        tvm_version=python_info.get("tvm"),
        tvm_ffi_version=python_info.get("tvm_ffi"),
        cpu_model=model,
        cores=int(cores) if cores and cores.isdigit() else None,
        governor=first("governor"),
        os=first("os"),
        emulated=emulated,
    )


#: ``uname -m`` values a library of each manifest arch can run on (with a matching userland).
_MACHINES = {
    "aarch64": {"aarch64", "arm64", "armv8b", "armv8l"},
    "arm": {"armv6l", "armv7l", "armv7", "armv8l", "aarch64", "arm64"},
    "x86_64": {"x86_64", "amd64"},
}
_BITS = {"aarch64": 64, "arm": 32, "x86_64": 64, "riscv": 64}


def check_compatible(manifest: Any, info: BoardInfo, where: str) -> None:
    """Refuse before loading: wrong arch (kernel *and* userland), no python3, no TVM, or a
    TVM version other than the one that built the library.

    A 64-bit kernel may run a 32-bit userland (Raspberry Pi OS 32-bit does), so the pointer
    width of the board's Python decides between aarch64 and arm when ``uname -m`` says aarch64.
    """
    arch = manifest.arch
    wanted_bits = _BITS.get(arch)
    machine_ok = info.machine in _MACHINES.get(arch, {arch})
    bits_ok = info.python_bits is None or wanted_bits is None or info.python_bits == wanted_bits
    if not machine_ok or not bits_ok:
        board = info.machine + (f" ({info.python_bits}-bit userland)" if info.python_bits else "")
        raise EdgecompileError(
            f"{manifest.model}-{manifest.preset} is {arch_name(arch)} library but {where} is "
            f"{board}",
            f"rebuild for the board: edgecompile build {manifest.model} --target "
            f"{_suggest_preset(info)}",
        )
    if not info.python3:
        raise EdgecompileError(
            f"{where} has no python3", "install it on the board: sudo apt-get install python3"
        )
    if info.python is None or info.tvm_version is None:
        searched = (
            f"{info.python} has no apache-tvm"
            if info.python
            else f"looked for {', '.join(PYTHON_CANDIDATES)}"
        )
        raise EdgecompileError(
            f"{where} has no Python with TVM ({searched})",
            f"run: edgecompile device setup {where} (or on the board: python3 -m venv "
            f"~/edgecompile-venv && ~/edgecompile-venv/bin/pip install "
            f"apache-tvm=={manifest.tvm_version}; or pass --remote-python)",
        )
    if info.tvm_version != manifest.tvm_version:
        raise EdgecompileError(
            f"{where} has TVM {info.tvm_version} ({info.python}) but the library was built "
            f"with TVM {manifest.tvm_version}, and TVM libraries only load in the runtime "
            "that built them",
            f"install apache-tvm=={manifest.tvm_version} on the board, or rebuild with TVM "
            f"{info.tvm_version}",
        )


def arch_name(arch: str) -> str:
    """``aarch64`` -> ``a 64-bit ARM (aarch64)``: what the manifest's arch means to a person."""
    names = {"aarch64": "a 64-bit ARM (aarch64)", "arm": "a 32-bit ARM (armv7)"}
    return names.get(arch, f"an {arch}" if arch[:1] in "aeiou" else f"a {arch}")


def _suggest_preset(info: BoardInfo) -> str:
    if info.machine in ("aarch64", "arm64") and info.python_bits != 32:
        return "rpi4 (or another 64-bit preset)"
    if info.machine.startswith("arm") or info.python_bits == 32:
        return "rpi4-armv7 (or another 32-bit preset)"
    return "<a preset for " + info.machine + ">"


# --------------------------------------------------------------------------------------------
# deploy


@dataclass(frozen=True)
class Deployment:
    """Where an artifact now lives on the board, and what the board is."""

    device: str
    directory: str
    library: str
    manifest: str
    uploaded: bool
    seconds: float
    board: BoardInfo = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "board": self.board.to_dict()}


ProgressCallback = Callable[[int, int], None]


def deploy(
    artifact: str | Path | Artifact,
    access: BoardAccess,
    *,
    progress: ProgressCallback | None = None,
) -> Deployment:
    """Copy an artifact over SSH to ``access.device`` (``user@host[:port]``), under
    ``access.remote_dir`` (default ``~/edgecompile``), atomically.

    The board gets ``<remote_dir>/<artifact folder name>/<model>.so`` and ``manifest.json``.
    An identical library already there is not uploaded again. ``access.remote_python`` is
    the board's Python with TVM (default: the first of :data:`PYTHON_CANDIDATES` there).

    Args:
        progress: Called with (bytes sent, total) during the library upload.

    Raises:
        EdgecompileError: connection problems (see :func:`connect`), an incompatible board
            (see :func:`check_compatible`), not enough disk space, a checksum mismatch, or a
            dropped connection (the final name is untouched in every case).
    """
    device = access.require_device("deploy")
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    with connect(device, **access.ssh_login()) as board:
        return deploy_on(
            board,
            artifact,
            remote_dir=access.remote_dir or DEFAULT_REMOTE_DIR,
            remote_python=access.remote_python,
            progress=progress,
        )


def deploy_on(
    board: BoardConnection,
    artifact: Artifact,
    *,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    remote_python: str | None = None,
    progress: ProgressCallback | None = None,
    info: BoardInfo | None = None,
) -> Deployment:
    """:func:`deploy` on an open connection (``run``/``bench`` reuse theirs)."""
    started = time.perf_counter()
    manifest = artifact.manifest
    local_sha = sha256_file(artifact.library)
    if local_sha != manifest.library_sha256:
        raise EdgecompileError(
            f"{artifact.library} does not match its manifest (sha256 {local_sha[:12]}... vs "
            f"{manifest.library_sha256[:12]}...)",
            "rebuild the artifact; never edit the .so by hand",
        )
    where = board.settings.label
    info = info or probe(board, remote_python=remote_python)
    check_compatible(manifest, info, where)

    directory = posixpath.join(_absolute(remote_dir, info.home), artifact.directory.name)
    library = posixpath.join(directory, manifest.library)
    manifest_path = posixpath.join(directory, MANIFEST)
    local_manifest = artifact.directory / MANIFEST
    manifest_sha = sha256_file(local_manifest)
    size = artifact.library.stat().st_size + local_manifest.stat().st_size
    q_dir, q_lib, q_manifest = (shlex.quote(p) for p in (directory, library, manifest_path))
    # Create the folder, clear partial uploads a dropped connection left (our names only),
    # report free space and what is installed now.
    state = board.check(
        f"mkdir -p -- {q_dir} && cd -- {q_dir} && "
        f"rm -f -- {shlex.quote('.' + manifest.library + _PARTIAL)}* "
        f"{shlex.quote('.' + MANIFEST + _PARTIAL)}* && "
        f"df -Pk . | tail -n 1 && "
        f"(sha256sum -- {q_lib} {q_manifest} 2>/dev/null || true)",
        f"preparing {directory}",
        "check that the user may write there, or pass --remote-dir",
    )
    lines = state.strip().splitlines()
    free = _free_bytes(lines[0] if lines else "")
    installed = _sha256_lines("\n".join(lines[1:]))
    if installed.get(library) == local_sha and installed.get(manifest_path) == manifest_sha:
        return Deployment(
            where, directory, library, manifest_path, False, time.perf_counter() - started, info
        )
    if free is not None and free < size + _SPACE_MARGIN:
        raise _disk_full(where, directory, free, size)

    token = secrets.token_hex(4)
    tmp_lib = posixpath.join(directory, f".{manifest.library}{_PARTIAL}{token}")
    tmp_manifest = posixpath.join(directory, f".{MANIFEST}{_PARTIAL}{token}")
    try:
        _upload(board, artifact.library, tmp_lib, progress)
        _upload(board, local_manifest, tmp_manifest, None)
        sums = _sha256_lines(
            board.check(
                f"sha256sum -- {shlex.quote(tmp_lib)} {shlex.quote(tmp_manifest)}",
                "checking the upload's sha256",
                "install coreutils on the board (sha256sum)",
            )
        )
        received = [sums.get(tmp_lib, "missing"), sums.get(tmp_manifest, "missing")]
        if received != [manifest.library_sha256, manifest_sha]:
            raise EdgecompileError(
                f"the upload arrived corrupted on {where} (library sha256 {received[0][:12]}... "
                f"instead of {manifest.library_sha256[:12]}...)",
                "run again; if it repeats, check the board's storage (SD card) for errors",
            )
        board.check(
            f"mv -f -- {shlex.quote(tmp_lib)} {q_lib} && "
            f"mv -f -- {shlex.quote(tmp_manifest)} {q_manifest}",
            "moving the upload into place",
            f"check permissions in {directory}",
        )
    except EdgecompileError:
        if not board.alive:
            raise  # the partial files are cleared by the next deploy to this folder
        # Remove our temporary files (the final names were never touched), then say "disk
        # full" if that is why: sftp-server reports ENOSPC only as a generic "Failure".
        free_now: int | None = None
        with contextlib.suppress(EdgecompileError):
            board.run(f"rm -f -- {shlex.quote(tmp_lib)} {shlex.quote(tmp_manifest)}")
            free_now = _free_bytes(board.run(f"df -Pk -- {q_dir} | tail -n 1").stdout)
        if free_now is not None and free_now < size + _SPACE_MARGIN:
            raise _disk_full(where, directory, free_now, size) from None
        raise
    return Deployment(
        where, directory, library, manifest_path, True, time.perf_counter() - started, info
    )


def _sha256_lines(output: str) -> dict[str, str]:
    """``{path: sha256}`` from sha256sum's ``HASH  PATH`` lines."""
    sums: dict[str, str] = {}
    for line in output.splitlines():
        digest, _, path = line.partition("  ")
        if path:
            sums[path] = digest.lstrip("\\")
    return sums


def _free_bytes(df_line: str) -> int | None:
    """Available bytes from a POSIX ``df -Pk`` line (4th column, in KiB)."""
    parts = df_line.split()
    if len(parts) >= 4 and parts[3].isdigit():
        return int(parts[3]) * 1024
    return None


def _disk_full(where: str, directory: str, free: int, size: int) -> EdgecompileError:
    return EdgecompileError(
        f"not enough space on {where}: {free / 2**20:.1f} MiB free in {directory}, the "
        f"artifact needs {(size + _SPACE_MARGIN) / 2**20:.1f} MiB",
        "free space on the board, or pass --remote-dir on a larger filesystem",
    )


def _upload(
    board: BoardConnection, local: Path, remote: str, progress: ProgressCallback | None
) -> None:
    """SFTP put with size confirmation (paramiko stats the result); errors name the file."""
    with board.translate_errors(f"uploading {local.name}"):
        board.sftp.put(str(local), remote, callback=progress, confirm=True)
