"""The SSH connection to a board (paramiko): where the board is, whether its host key is the
one we trust, and running commands on it.

Why each rule:

* Host keys are checked against known_hosts like OpenSSH does. An unknown key is refused
  unless the caller says ``accept_new_host_key=True`` (then it is recorded, never accepted
  silently); a *changed* key is always refused, because that is what a man-in-the-middle looks
  like and a deploy runs code as the board's user.
* ``~/.ssh/config`` is honoured (HostName, Port, User, IdentityFile, UserKnownHostsFile,
  ConnectTimeout), so ``--device pi`` works exactly as ``ssh pi`` does. ProxyJump and
  ProxyCommand are refused with a clear error rather than silently bypassed.
* Every remote command is built with :func:`shlex.quote` (paths through :func:`remote_path`).

What the board is: :mod:`edgecompile.device.probe`; shipping an artifact to it:
:mod:`edgecompile.device.deploy`.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import io
import json
import posixpath
import shlex
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgecompileError, last_line

__all__ = [
    "BoardConnection",
    "CommandResult",
    "DeviceAddress",
    "SSHSettings",
    "connect",
    "parse_device",
    "remote_path",
    "resolve_settings",
    "split_sections",
]


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


# --------------------------------------------------------------------------------------------
# host keys


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

    def json_report(self, job: str) -> dict[str, Any]:
        """The JSON object a board job prints as its last line of stdout; one line naming
        ``job`` (e.g. "the board's runner") when it printed none (killed, or crashed late)."""
        try:
            return json.loads(last_line(self.stdout))
        except ValueError:
            raise EdgecompileError(
                f"{job} printed no report: {self.last_error_line()}",
                "run again; report it if it repeats",
            ) from None


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

    @contextlib.contextmanager
    def temporary_folder(self) -> Iterator[str]:
        """A fresh folder under the board's /tmp for one job, removed afterwards (when the
        connection still lives: a dropped one leaves it to the board's /tmp cleaning)."""
        work = self.check(
            "mktemp -d /tmp/edgecompile-run.XXXXXX",
            "creating a temporary folder",
            "check /tmp on the board is writable and not full",
        ).strip()
        try:
            yield work
        finally:
            if self.alive:
                self.run(f"rm -rf -- {shlex.quote(work)}")

    def put_arrays(self, folder: str, arrays: Iterable[Any]) -> list[str]:
        """Upload ``arrays`` as ``folder/input<i>.npy``; their board paths, in order."""
        import numpy as np

        paths = []
        with self.translate_errors("uploading the inputs"):
            for index, array in enumerate(arrays):
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=False)
                buffer.seek(0)
                paths.append(f"{folder}/input{index}.npy")
                self.sftp.putfo(buffer, paths[-1])
        return paths

    def get_array(self, path: str) -> Any:
        """The ``.npy`` file at ``path`` on the board, as a numpy array (no pickles)."""
        import numpy as np

        buffer = io.BytesIO()
        with self.translate_errors("downloading the outputs"):
            self.sftp.getfo(path, buffer)
        buffer.seek(0)
        return np.load(buffer, allow_pickle=False)

    def get_outputs(self, paths: Iterable[str], work: str, *, job: str, fix: str) -> list[Any]:
        """The ``.npy`` outputs a job in ``work`` reported writing, in order. Each path must be
        directly in ``work``: the report is the board's word, not to be trusted to fetch any
        other file; else one line naming ``job``, with ``fix``."""
        outputs = []
        for path in paths:
            if posixpath.dirname(path) != work:
                raise EdgecompileError(f"{job} reported an output outside {work}: {path!r}", fix)
            outputs.append(self.get_array(path))
        return outputs

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
    except Exception as error:
        client.close()
        explained = None if isinstance(error, EdgecompileError) else _connect_error(error, settings)
        if explained is None:
            raise
        raise explained from None
    return BoardConnection(client, settings)


def _connect_error(error: Exception, settings: SSHSettings) -> EdgecompileError | None:
    """The one line (and fix) for a failed ``SSHClient.connect``; None for an error we do not
    know (raised as it is). Subclasses come before their bases: BadHostKeyException and
    AuthenticationException are SSHExceptions; NoValidConnectionsError, gaierror and
    TimeoutError are OSErrors."""
    import paramiko

    target = f"{settings.hostname}:{settings.port}"
    if isinstance(error, paramiko.BadHostKeyException):
        return EdgecompileError(
            f"the host key of {settings.host_key_name} CHANGED: the board offered "
            f"{error.key.get_name()} {_fingerprint(error.key)}, {settings.known_hosts} has "
            f"{error.expected_key.get_name()} {_fingerprint(error.expected_key)} -- someone "
            "may be intercepting the connection",
            "if the board was reinstalled, check its key and remove the old one with "
            f"ssh-keygen -R {shlex.quote(settings.host_key_name)} -f "
            f"{shlex.quote(str(settings.known_hosts))}",
        )
    if isinstance(error, paramiko.AuthenticationException):
        keys = ", ".join(str(p) for p in settings.identity_files) or "the default keys and agent"
        return EdgecompileError(
            f"authentication failed for {settings.user}@{target} (tried {keys}; password login "
            "is not supported)",
            "pass --identity with a key listed in the board's ~/.ssh/authorized_keys, and check "
            "the user name",
        )
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {e.errno for e in error.errors.values()}
        if codes == {errno.EHOSTUNREACH}:
            return _unreachable(settings)
        return EdgecompileError(
            f"connection to {target} refused",
            f"is sshd running on the board, on port "
            f"{settings.port}? (use user@host:PORT for another port)",
        )
    if isinstance(error, socket.gaierror):
        return EdgecompileError(
            f"cannot resolve host name {settings.hostname!r}",
            "check the spelling, the board's address, or the Host entry in ~/.ssh/config",
        )
    if isinstance(error, TimeoutError):
        return EdgecompileError(
            f"connection to {target} timed out (ConnectTimeout {settings.timeout:.0f} s)",
            "check that the board is on and reachable (and the port), or raise ConnectTimeout",
        )
    if isinstance(error, paramiko.SSHException):
        text = str(error)
        if "banner" in text.lower():
            return EdgecompileError(
                f"{target} accepted the connection but sent no SSH greeting within "
                f"{settings.timeout:.0f} s ({text})",
                "check the port is sshd's, and that the board is not overloaded",
            )
        if "no existing session" in text.lower():
            return EdgecompileError(
                f"the SSH handshake with {target} did not complete within {settings.timeout:.0f} s",
                "check the port is sshd's, and that the board is not overloaded",
            )
        return EdgecompileError(
            f"SSH to {target} failed: {text}", "check the board's sshd and the port"
        )
    if isinstance(error, OSError):
        if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return _unreachable(settings)
        return EdgecompileError(
            f"cannot connect to {target}: {error.strerror or error}",
            "check the board's address and that it is on the network",
        )
    return None


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
# writing commands for the board and reading their output


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


def split_sections(output: str) -> dict[str, list[str]]:
    """The stripped, non-blank lines of each part of a script's output, by the part's name: a
    script that asks a board several things in one round trip marks each answer with a line
    ``@@name`` (lines before the first mark go under ``""``)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        elif line.strip():
            sections.setdefault(current, []).append(line.strip())
    return sections
