"""Shipping artifacts over SSH: host keys, logins, atomic deploys, board checks, run and bench.

The board is the emulated rpi4 of ``conftest.emulated_board`` (sshd in the arm64 rootfs under
qemu, 127.0.0.1 only). Failures that cannot be produced on loopback without touching the host's
network (no route, DNS) are produced by failing the socket calls paramiko makes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paramiko
import psutil
import pytest

from edgecompile.artifact import MANIFEST, Artifact, load_artifact, sha256_file
from edgecompile.device import ssh
from edgecompile.device.access import BoardAccess
from edgecompile.device.deploy import Deployment, deploy
from edgecompile.device.probe import BoardInfo, check_compatible, probe
from edgecompile.device.remote import bench_on_device, run_on_device
from edgecompile.errors import EdgecompileError
from edgecompile.export import example_input, relative_error

# --------------------------------------------------------------------------------------------
# no board needed


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pi@raspberrypi.local", ssh.DeviceAddress("pi", "raspberrypi.local", None)),
        ("root@127.0.0.1:2222", ssh.DeviceAddress("root", "127.0.0.1", 2222)),
        ("board", ssh.DeviceAddress(None, "board", None)),
        ("board:2200", ssh.DeviceAddress(None, "board", 2200)),
        ("pi@[::1]:22", ssh.DeviceAddress("pi", "::1", 22)),
        ("me@corp@host", ssh.DeviceAddress("me@corp", "host", None)),
    ],
)
def test_parse_device(spec: str, expected: ssh.DeviceAddress) -> None:
    assert ssh.parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["pi@", "@host", "host:0", "host:99999", "host:x", "::1", "a b"])
def test_parse_device_rejects(spec: str) -> None:
    with pytest.raises(EdgecompileError, match="bad"):
        ssh.parse_device(spec)


def test_ssh_config_is_honoured(tmp_path: Path) -> None:
    key = tmp_path / "id_board"
    key.write_text("unused")
    config = tmp_path / "config"
    config.write_text(
        f"Host pi4\n  HostName 127.0.0.5\n  Port 2202\n  User pi\n  IdentityFile {key}\n"
        f"  UserKnownHostsFile {tmp_path / 'kh'}\n  ConnectTimeout 7\n"
    )
    settings = ssh.resolve_settings("pi4", ssh_config=config)
    assert (settings.hostname, settings.port, settings.user) == ("127.0.0.5", 2202, "pi")
    assert settings.identity_files == [key]
    assert settings.known_hosts == tmp_path / "kh"
    assert settings.timeout == 7
    assert settings.host_key_name == "[127.0.0.5]:2202"
    explicit = ssh.resolve_settings("admin@pi4:2300", ssh_config=config)
    assert (explicit.user, explicit.port) == ("admin", 2300)  # the command line wins


def test_jump_hosts_are_refused_not_bypassed(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host pi4\n  HostName 10.0.0.9\n  ProxyJump bastion\n")
    with pytest.raises(EdgecompileError, match="proxyjump") as raised:
        ssh.resolve_settings("pi4", ssh_config=config)
    assert raised.value.fix and "ssh -L" in raised.value.fix


def _fail_socket(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make every socket paramiko opens fail to connect with ``error`` (no packet leaves)."""

    class FailingSocket(socket.socket):
        def connect(self, address: Any) -> None:
            raise error

    monkeypatch.setattr(paramiko.client.socket, "socket", FailingSocket)


def test_unreachable_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fail_socket(monkeypatch, OSError(errno.EHOSTUNREACH, "No route to host"))
    with pytest.raises(EdgecompileError, match="unreachable") as raised:
        ssh.connect("pi@127.0.0.1:2222", known_hosts=tmp_path / "kh")
    assert raised.value.fix and "ping" in raised.value.fix


def test_connect_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fail_socket(monkeypatch, TimeoutError("timed out"))
    with pytest.raises(EdgecompileError, match=r"timed out \(ConnectTimeout 3 s\)"):
        ssh.connect("pi@127.0.0.1:2222", known_hosts=tmp_path / "kh", timeout=3)


def test_unknown_host_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(paramiko.client.socket, "getaddrinfo", no_dns)
    with pytest.raises(EdgecompileError, match="cannot resolve host name 'nosuchboard'"):
        ssh.connect("pi@nosuchboard", known_hosts=tmp_path / "kh")


def test_refused_connection(free_ports: Callable[[], int], tmp_path: Path) -> None:
    port = free_ports()  # nothing listens there
    with pytest.raises(EdgecompileError, match=rf"connection to 127.0.0.1:{port} refused"):
        ssh.connect(f"root@127.0.0.1:{port}", known_hosts=tmp_path / "kh")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections but never says anything (a hung sshd)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_silent_server_times_out(silent_server: int, tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="sent no SSH greeting within 2 s"):
        ssh.connect(f"root@127.0.0.1:{silent_server}", known_hosts=tmp_path / "kh", timeout=2)


def test_private_key_check_catches_a_pub_file(client_key: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="not a usable private key"):
        ssh.connect(
            "root@127.0.0.1:2222",
            identity=client_key.with_name(client_key.name + ".pub"),
            known_hosts=tmp_path / "kh",
        )


def _board(machine: str, bits: int, **changes: Any) -> BoardInfo:
    info = BoardInfo(
        machine=machine,
        home="/home/pi",
        python3="/usr/bin/python3",
        python="/home/pi/edgecompile-venv/bin/python",
        python_bits=bits,
        tvm_version="0.27.0.post1",
        tvm_ffi_version="0.1.14.post0",
        cpu_model="Raspberry Pi 4 Model B Rev 1.4",
        cores=4,
        governor="ondemand",
        os="Debian GNU/Linux 12 (bookworm)",
        emulated=False,
    )
    return replace(info, **changes)


class _Manifest:
    model, preset, tvm_version = "shufflenet_v1", "rpi4", "0.27.0.post1"

    def __init__(self, arch: str) -> None:
        self.arch = arch


@pytest.mark.parametrize(
    ("arch", "machine", "bits", "problem"),
    [
        ("aarch64", "armv7l", 32, r"64-bit ARM \(aarch64\) library but pi is armv7l"),
        ("arm", "aarch64", 64, r"32-bit ARM \(armv7\) library but pi is aarch64"),
        # Raspberry Pi OS 32-bit runs a 64-bit kernel: uname says aarch64, userland is 32-bit
        ("aarch64", "aarch64", 32, r"aarch64 \(32-bit userland\)"),
        ("aarch64", "x86_64", 64, "library but pi is x86_64"),
    ],
)
def test_wrong_arch_is_refused_both_ways(arch: str, machine: str, bits: int, problem: str) -> None:
    with pytest.raises(EdgecompileError, match=problem):
        check_compatible(_Manifest(arch), _board(machine, bits), "pi")


def test_32_bit_userland_on_64_bit_kernel_takes_armv7_libraries() -> None:
    check_compatible(_Manifest("arm"), _board("aarch64", 32), "pi")  # no error


def test_board_without_python3_or_tvm() -> None:
    with pytest.raises(EdgecompileError, match="has no python3") as raised:
        check_compatible(_Manifest("aarch64"), _board("aarch64", 64, python3=None), "pi")
    assert raised.value.fix and "apt-get install python3" in raised.value.fix
    no_tvm = _board("aarch64", 64, python=None, tvm_version=None)
    with pytest.raises(EdgecompileError, match="no Python with TVM") as raised:
        check_compatible(_Manifest("aarch64"), no_tvm, "pi")
    assert raised.value.fix and "apache-tvm==0.27.0.post1" in raised.value.fix


# --------------------------------------------------------------------------------------------
# against the emulated board

emulator = pytest.mark.emulator


def _random_ed25519_line(name: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{name} {line.decode()}\n"


@emulator
def test_unknown_host_key_is_refused_then_accepted_and_recorded(
    emulated_board: Any, client_key: Path, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(EdgecompileError, match="is not in") as raised:
        ssh.connect(emulated_board.device, identity=client_key, known_hosts=known_hosts)
    assert emulated_board.host_key_fingerprint in str(raised.value)
    assert "--accept-new-host-key" in (raised.value.fix or "")
    assert not known_hosts.exists()

    with ssh.connect(
        emulated_board.device,
        identity=client_key,
        known_hosts=known_hosts,
        accept_new_host_key=True,
    ) as board:
        assert board.run("uname -m").stdout.strip() == "aarch64"
    recorded = known_hosts.read_text().splitlines()
    assert len(recorded) == 1
    assert recorded[0].startswith(f"[127.0.0.1]:{emulated_board.ssh_port} ssh-ed25519 ")
    # the recorded key is the board's: its fingerprint matches the one the board reported
    blob = base64.b64decode(recorded[0].split()[2])
    assert ssh._fingerprint(paramiko.Ed25519Key(data=blob)) == emulated_board.host_key_fingerprint

    with ssh.connect(emulated_board.device, identity=client_key, known_hosts=known_hosts):
        pass  # known now: no flag needed, nothing appended
    assert known_hosts.read_text().splitlines() == recorded


@emulator
@pytest.mark.parametrize("other_type", [False, True], ids=["same-type", "other-type"])
def test_changed_host_key_is_always_refused(
    emulated_board: Any, client_key: Path, tmp_path: Path, other_type: bool
) -> None:
    known_hosts = tmp_path / "known_hosts"
    name = f"[127.0.0.1]:{emulated_board.ssh_port}"
    if other_type:  # a MITM with an ECDSA key must not pass as "unknown" either
        key = paramiko.ECDSAKey.generate()
        known_hosts.write_text(f"{name} {key.get_name()} {key.get_base64()}\n")
    else:
        known_hosts.write_text(_random_ed25519_line(name))
    before = known_hosts.read_text()
    with pytest.raises(EdgecompileError, match="CHANGED") as raised:
        ssh.connect(
            emulated_board.device,
            identity=client_key,
            known_hosts=known_hosts,
            accept_new_host_key=True,  # even so
        )
    assert "ssh-keygen -R" in (raised.value.fix or "")
    assert known_hosts.read_text() == before


@emulator
def test_bad_key_fails_authentication(
    emulated_board: Any, trusted_known_hosts: Path, tmp_path: Path
) -> None:
    from edgecompile.device.board import generate_client_key

    stranger = tmp_path / "id_stranger"
    generate_client_key(stranger)
    failed = rf"authentication failed for {emulated_board.user}@127\.0\.0\.1"
    with pytest.raises(EdgecompileError, match=failed):
        ssh.connect(emulated_board.device, identity=stranger, known_hosts=trusted_known_hosts)


@emulator
def test_password_login_is_disabled(emulated_board: Any, trusted_known_hosts: Path) -> None:
    client = paramiko.SSHClient()
    client.load_host_keys(str(trusted_known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadAuthenticationType) as raised:
        client.connect(
            "127.0.0.1",
            port=emulated_board.ssh_port,
            username=emulated_board.user,
            password="raspberry",
            look_for_keys=False,
            allow_agent=False,
            timeout=30,
        )
    client.close()
    assert raised.value.allowed_types == ["publickey"]


@emulator
def test_ssh_config_alias_reaches_the_board(
    emulated_board: Any, client_key: Path, trusted_known_hosts: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(
        f"Host emulated-pi\n  HostName 127.0.0.1\n  Port {emulated_board.ssh_port}\n"
        f"  User {emulated_board.user}\n  IdentityFile {client_key}\n"
        f"  UserKnownHostsFile {trusted_known_hosts}\n"
    )
    with ssh.connect("emulated-pi", ssh_config=config) as board:
        info = probe(board)
    assert info.machine == "aarch64" and info.python_bits == 64
    assert info.tvm_version == "0.27.0.post1"
    assert info.home == emulated_board.home


@pytest.fixture
def remote_dir(emulated_board: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh folder under the board's home: (``~/...`` for deploy, its path on the host)."""
    name = f"edgecompile-tests/{tmp_path.name}"
    host_path = emulated_board.host_path(f"{emulated_board.home}/{name}")
    yield f"~/{name}", host_path
    shutil.rmtree(host_path, ignore_errors=True)


def _variant(artifact: Artifact, tmp_path: Path, *, pad: int = 0, **manifest: Any) -> Artifact:
    """A copy of ``artifact`` whose library has ``pad`` extra bytes (same folder name, another
    sha256) and whose manifest has ``manifest`` changed."""
    copy = tmp_path / "variant" / artifact.directory.name
    shutil.copytree(artifact.directory, copy)
    library = copy / artifact.manifest.library
    if pad:
        with library.open("ab") as handle:
            handle.write(b"\0" * pad)
    data = json.loads((copy / MANIFEST).read_text())
    data.update(library_sha256=sha256_file(library), **manifest)
    (copy / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return load_artifact(copy)


@emulator
def test_deploy_is_checked_atomic_and_idempotent(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    remote_dir: tuple[str, Path],
) -> None:
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    remote, host_path = remote_dir
    first = deploy(
        artifact,
        BoardAccess(
            device=emulated_board.device,
            identity=client_key,
            known_hosts=trusted_known_hosts,
            remote_dir=remote,
        ),
    )
    assert first.uploaded
    library = f"{remote[2:]}/shufflenet_v1-rpi4/shufflenet_v1.so"
    assert first.library == f"{emulated_board.home}/{library}"
    on_board = host_path / "shufflenet_v1-rpi4"
    assert sorted(p.name for p in on_board.iterdir()) == ["manifest.json", "shufflenet_v1.so"]
    assert sha256_file(on_board / "shufflenet_v1.so") == artifact.manifest.library_sha256
    assert (on_board / MANIFEST).read_bytes() == (artifact.directory / MANIFEST).read_bytes()
    assert first.board.tvm_version == artifact.manifest.tvm_version

    again = deploy(
        artifact,
        BoardAccess(
            device=emulated_board.device,
            identity=client_key,
            known_hosts=trusted_known_hosts,
            remote_dir=remote,
        ),
    )
    assert not again.uploaded  # same sha256 on the board: nothing sent


@emulator
def test_dropped_connection_mid_upload_leaves_no_final_file(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    remote_dir: tuple[str, Path],
    tmp_path: Path,
) -> None:
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    remote, host_path = remote_dir
    final = host_path / "shufflenet_v1-rpi4" / "shufflenet_v1.so"
    sshd = next(p for p in emulated_board.processes if p.role == "sshd")

    def cut_the_cable(sent: int, total: int) -> None:
        if sent > 1 << 20:  # 1 MiB in: kill the board's side of this connection
            for session in psutil.Process(sshd.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    session.kill()  # may already be exiting from the previous call's kill

    def deploy_to_board(candidate: Artifact, progress: Any = None) -> Deployment:
        return deploy(
            candidate,
            BoardAccess(
                device=emulated_board.device,
                identity=client_key,
                known_hosts=trusted_known_hosts,
                remote_dir=remote,
            ),
            progress=progress,
        )

    with pytest.raises(EdgecompileError, match="dropped while uploading") as raised:
        deploy_to_board(artifact, cut_the_cable)
    assert "nothing was installed under the final name" in (raised.value.fix or "")
    assert not final.exists()

    # With a good copy installed, a dropped upload of a new version keeps the good copy.
    deploy_to_board(artifact)
    newer = _variant(artifact, tmp_path, pad=1 << 20)
    with pytest.raises(EdgecompileError, match="dropped while uploading"):
        deploy_to_board(newer, cut_the_cable)
    assert sha256_file(final) == artifact.manifest.library_sha256
    leftovers = [p.name for p in final.parent.iterdir() if ".partial-" in p.name]
    assert leftovers, "expected the dropped upload's partial file (cleared by the next deploy)"

    assert deploy_to_board(newer).uploaded
    assert sha256_file(final) == newer.manifest.library_sha256
    assert sorted(p.name for p in final.parent.iterdir()) == ["manifest.json", "shufflenet_v1.so"]


@pytest.fixture
def tiny_disk(emulated_board: Any, client_key: Path, trusted_known_hosts: Path) -> Iterator[str]:
    """A 1 MiB tmpfs on the board (in its own mount namespace), as a full SD card would be."""
    import subprocess

    from edgecompile.device.board import BOARD_UID

    # The board user is not root: the tmpfs is mounted from here, in the board's namespace.
    path = "/tmp/edgecompile-tiny-disk"
    on_host = f"{emulated_board.rootfs}{path}"
    in_board = ["nsenter", f"--target={emulated_board.init.pid}", "--mount", "--"]
    subprocess.run(
        [*in_board, "sh", "-c", f"mkdir -p {on_host} && mount -t tmpfs -o "
         f"size=1m,uid={BOARD_UID},mode=0755 edgecompile-tiny {on_host}"],
        check=True,
    )  # fmt: skip
    yield path
    subprocess.run([*in_board, "sh", "-c", f"umount {on_host} && rmdir {on_host}"], check=True)


@emulator
def test_disk_full_is_refused_before_and_during_upload(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    tiny_disk: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    artifact = board_artifacts("shufflenet_v1", "rpi4")

    def deploy_to_tiny_disk() -> None:
        deploy(
            artifact,
            BoardAccess(
                device=emulated_board.device,
                identity=client_key,
                known_hosts=trusted_known_hosts,
                remote_dir=tiny_disk,
            ),
        )

    def listing() -> str:
        with ssh.connect(
            emulated_board.device, identity=client_key, known_hosts=trusted_known_hosts
        ) as board:
            return board.check(f"ls -A {tiny_disk}/shufflenet_v1-rpi4", "ls", "")

    with pytest.raises(EdgecompileError, match=r"not enough space on .*MiB free in") as raised:
        deploy_to_tiny_disk()  # the df pre-check refuses: nothing is sent
    assert "--remote-dir" in (raised.value.fix or "")
    assert listing().split() == []

    # If the pre-check is fooled (another writer filled the disk meanwhile), the real ENOSPC
    # of the upload is reported the same way, and the partial file is removed.
    from edgecompile.device.deploy import _free_bytes as real_free

    calls: list[str] = []

    def first_df_lies(line: str) -> int | None:
        calls.append(line)
        return 1 << 40 if len(calls) == 1 else real_free(line)

    monkeypatch.setattr("edgecompile.device.deploy._free_bytes", first_df_lies)
    with pytest.raises(EdgecompileError, match=r"not enough space on .*MiB free in"):
        deploy_to_tiny_disk()
    assert len(calls) == 2
    assert listing().split() == []


@emulator
def test_armv7_library_is_refused_on_the_aarch64_board(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    remote_dir: tuple[str, Path],
) -> None:
    armv7 = board_artifacts("shufflenet_v1", "rpi4-armv7")
    assert armv7.manifest.arch == "arm"
    with pytest.raises(EdgecompileError, match=r"32-bit ARM \(armv7\) library but .* aarch64"):
        deploy(
            armv7,
            BoardAccess(
                device=emulated_board.device,
                identity=client_key,
                known_hosts=trusted_known_hosts,
                remote_dir=remote_dir[0],
            ),
        )
    assert not remote_dir[1].exists()  # refused before anything was written


@emulator
def test_tvm_version_mismatch_is_refused(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    remote_dir: tuple[str, Path],
    tmp_path: Path,
) -> None:
    older = _variant(board_artifacts("shufflenet_v1", "rpi4"), tmp_path, tvm_version="0.26.0")
    with pytest.raises(
        EdgecompileError, match=r"has TVM 0\.27\.0\.post1 .* built with TVM 0\.26\.0"
    ) as raised:
        deploy(
            older,
            BoardAccess(
                device=emulated_board.device,
                identity=client_key,
                known_hosts=trusted_known_hosts,
                remote_dir=remote_dir[0],
            ),
        )
    assert "apache-tvm==0.26.0" in (raised.value.fix or "")
    assert not remote_dir[1].exists()


@emulator
def test_board_without_tvm_python_is_refused(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
) -> None:
    with pytest.raises(EdgecompileError, match="has no Python with TVM"):
        deploy(
            board_artifacts("shufflenet_v1", "rpi4"),
            BoardAccess(
                device=emulated_board.device,
                identity=client_key,
                known_hosts=trusted_known_hosts,
                remote_python="/usr/bin/python3",  # Debian's python3: no TVM in it
            ),
        )


@emulator
@pytest.mark.parametrize("model", ["shufflenet_v1", "mobilenet_v2"])
def test_run_over_ssh_matches_torch(
    model: str,
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    torch_reference: Callable[..., np.ndarray],
) -> None:
    artifact = board_artifacts(model, "rpi4")
    x = example_input(artifact.manifest.inputs[0]["shape"], seed=7)
    result = run_on_device(
        artifact,
        BoardAccess(
            device=emulated_board.device,
            identity=client_key,
            known_hosts=trusted_known_hosts,
            remote_dir="~/edgecompile-tests/runs",
        ),
        [x],
    )
    expected = torch_reference(model, x)
    assert len(result.outputs) == 1
    assert result.outputs[0].shape == expected.shape
    assert relative_error(result.outputs[0], expected) <= 1e-4
    assert result.transport == "ssh" and result.seconds > 0
    assert result.board["machine"] == "aarch64" and result.board["emulated"] is True


@emulator
def test_bench_over_ssh(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
) -> None:
    result = bench_on_device(
        board_artifacts("shufflenet_v1", "rpi4"),
        BoardAccess(
            device=emulated_board.device,
            identity=client_key,
            known_hosts=trusted_known_hosts,
            remote_dir="~/edgecompile-tests/runs",
        ),
        repeat=4,
        warmup=1,
        threads=2,
    )
    assert len(result.times_ms) == 4 and all(t > 0 for t in result.times_ms)
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms <= result.max_ms
    assert result.min_ms <= result.mean_ms <= result.max_ms and result.std_ms >= 0
    assert result.threads == 2  # TVM_NUM_THREADS reached the board's runtime
    assert result.board["cores"] and result.board["cpu_model"]
    assert result.board["emulated"] is True
    assert "says nothing about the real board" in result.notes[0]
