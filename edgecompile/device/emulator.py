"""An emulated aarch64 board: qemu-user plus an arm64 Debian root filesystem holding TVM.

Why: a library cross-compiled for a Raspberry Pi 4 cannot be loaded on the x86 host, yet its
numbers should be checked before anyone flashes a board. Registering Debian's
``qemu-aarch64-static`` in the kernel's binfmt_misc (with the F flag, so the interpreter is
opened once at registration and needs no copy inside the rootfs) lets ``chroot`` run arm64
binaries transparently. The rootfs carries a venv with the *same* apache-tvm and apache-tvm-ffi
versions as the host, because a TVM library is only loadable by the runtime it was built for.

Everything here needs root (binfmt_misc, ``chroot``, ``mmdebstrap``). The rootfs is built once
(~5 minutes, ~0.7 GiB) and then reused from the cache directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompile._cache import cache_root
from edgecompile.errors import EdgecompileError, last_line

__all__ = [
    "DEFAULT_CPU",
    "VENV",
    "default_cache_dir",
    "ensure_binfmt",
    "ensure_rootfs",
    "ensure_user",
    "rootfs_path",
    "run_in_rootfs",
    "run_library_in_rootfs",
]

#: qemu's name for the Raspberry Pi 4's core; QEMU_CPU selects the instruction set it emulates.
DEFAULT_CPU = "cortex-a72"
#: The venv inside the rootfs that holds TVM's runtime (a venv, so Debian's python stays clean).
VENV = "/opt/edgecompile-venv"
#: Debian release of the rootfs: Raspberry Pi OS is bookworm-based, so this matches real boards.
SUITE = "bookworm"
#: Bumped whenever the rootfs recipe changes, so older caches are rebuilt instead of reused.
ROOTFS_FORMAT = 1
#: File at the top of a finished rootfs; its presence (with matching versions) means "complete".
MARKER = "edgecompile-rootfs.json"

#: Debian packages inside the rootfs. openssh-server lets the same tree act as an SSH target.
_ROOTFS_DEBS = ("python3", "python3-venv", "openssh-server")
#: Extra wheels beyond TVM itself: numpy for I/O; cloudpickle and psutil for TVM's RPC server.
_EXTRA_WHEELS = ("numpy", "cloudpickle", "psutil")
#: Python of the suite: wheels are fetched for it before the (slow) bootstrap, to fail fast.
SUITE_PYTHON = "3.11"
#: Bookworm ships glibc 2.36. pip does not widen ``--platform manylinux_2_36_aarch64`` to older
#: glibc tags (apache-tvm is tagged 2_27/2_28, psutil 2014), so every tag is passed explicitly.
_WHEEL_PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37)))
#: Where wheels are staged inside the rootfs during the build (deleted afterwards).
_WHEELS_INSIDE = "/tmp/edgecompile-wheels"

_BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class _Qemu:
    """One qemu-user binfmt registration: its name, Debian's line for it, the static qemu, and
    the ELF header (with the mask that ignores the fields which vary: OS ABI, padding, ET_EXEC
    vs ET_DYN) -- the same values qemu's own scripts use."""

    name: str
    static: str
    magic: str
    mask: str

    @property
    def conf(self) -> Path:
        """The registration line Debian's qemu-user-static ships; preferred as it matches that
        qemu."""
        return Path(f"/usr/lib/binfmt.d/{self.name}.conf")


_ELF_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
#: Per ``uname -m`` family (as :mod:`edgecompile.native.runtime` names them): 64-bit and 32-bit ARM.
_QEMUS = {
    "aarch64": _Qemu(
        "qemu-aarch64",
        "qemu-aarch64-static",
        r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        _ELF_MASK,
    ),
    "arm": _Qemu(
        "qemu-arm",
        "qemu-arm-static",
        r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        _ELF_MASK,
    ),
}

#: ELF e_machine values worth naming when someone feeds the wrong library to the board.
_ELF_MACHINES = {3: "x86 (i386)", 8: "MIPS", 20: "PowerPC", 40: "32-bit ARM", 62: "x86-64"}
_EM_AARCH64 = 183

#: PATH inside the rootfs: the venv first, so ``python`` means the one with TVM.
_ROOTFS_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_INSTALL_HINT = "bash .ci/install-emulator-deps.sh (or apt-get install qemu-user-static mmdebstrap)"

# Runs inside the rootfs with the venv's python: argv = work dir, entry name, number of inputs.
_RUNNER = """\
import pathlib
import sys

import numpy as np
import tvm
from tvm import relax

work, entry, count = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
device = tvm.cpu()
vm = relax.VirtualMachine(tvm.runtime.load_module(str(work / "lib.so")), device)
args = [tvm.runtime.tensor(np.load(work / f"input{i}.npy"), device) for i in range(count)]
result = vm[entry](*args)


def flatten(value):
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [np.asarray(value)]
    return [array for item in value for array in flatten(item)]


outputs = flatten(result)
for i, array in enumerate(outputs):
    np.save(work / f"output{i}.npy", array, allow_pickle=False)
(work / "count").write_text(str(len(outputs)))
"""

# Runs inside the freshly built rootfs: proves the venv imports and reports what it holds.
_VERIFY = """\
import importlib.metadata as md
import json
import platform
import sys

import cloudpickle, numpy, psutil, tvm, tvm.relax, tvm_ffi  # noqa: F401

names = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "cloudpickle", "psutil")
print(json.dumps({
    "machine": platform.machine(),
    "python": platform.python_version(),
    "packages": {name: md.version(name) for name in names},
}))
"""


# --------------------------------------------------------------------------------------------
# binfmt_misc


def _require_root(what: str) -> None:
    """Fail early with a fix, rather than with a raw EPERM from deep inside a command."""
    if os.geteuid() != 0:
        raise EdgecompileError(f"{what} needs root", "run as root (e.g. with sudo)")


def _qemu_interpreter(qemu: _Qemu = _QEMUS["aarch64"]) -> str | None:
    """The qemu-user path to register, or None when qemu-user-static is missing."""
    return shutil.which(qemu.static) or shutil.which(qemu.static, path="/usr/bin")


def _binfmt_entry(qemu: _Qemu = _QEMUS["aarch64"]) -> dict[str, str] | None:
    """The kernel's view of our binfmt entry (``enabled``, ``flags``, ...), None if absent."""
    try:
        text = (_BINFMT_DIR / qemu.name).read_text()
    except (FileNotFoundError, PermissionError):
        return None
    entry: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        entry[key] = value.strip() if value else key
    return entry


def _binfmt_ok(entry: dict[str, str] | None) -> bool:
    """Usable for chroot only if enabled *and* fix-binary (F): without F the kernel would look
    for the interpreter path inside the chroot, where no qemu exists."""
    if entry is None or "enabled" not in entry:
        return False
    status = _BINFMT_DIR / "status"
    if status.exists() and status.read_text().strip() != "enabled":
        return False
    return "F" in entry.get("flags:", "")


def _registration_line(interpreter: str, qemu: _Qemu = _QEMUS["aarch64"]) -> str:
    """Debian's own line (flags OPF) when present, else an equivalent one; always with F."""
    if qemu.conf.exists():
        for raw in qemu.conf.read_text().splitlines():
            line = raw.strip()
            if line.startswith(f":{qemu.name}:"):
                fields = line.split(":")
                if Path(fields[6]).exists():
                    if "F" not in fields[7]:
                        fields[7] += "F"
                    return ":".join(fields)
    return f":{qemu.name}:M::{qemu.magic}:{qemu.mask}:{interpreter}:F"


def ensure_binfmt(arch: str = "aarch64") -> None:
    """Make the kernel run ``arch`` (``aarch64`` or ``arm``) ELF files through qemu-user-static,
    with the F flag.

    Idempotent and cheap when already set up (one read of a /proc file), so callers may invoke
    it before every run: registrations vanish on reboot and on a freshly started container.
    Mounts binfmt_misc at /proc/sys/fs/binfmt_misc when systemd has not done so.

    Raises:
        EdgecompileError: not root (and no usable registration yet), qemu-user-static missing,
            or the kernel refused the mount or the registration.
    """
    qemu = _QEMUS[arch]
    # The default entry is called without arguments, as tests replace these helpers.
    args = () if arch == "aarch64" else (qemu,)
    if _binfmt_ok(_binfmt_entry(*args)):
        return
    interpreter = _qemu_interpreter(*args)
    if interpreter is None:
        raise EdgecompileError(
            f"{qemu.static} is not installed, so {arch} code cannot be emulated",
            "apt-get install qemu-user-static",
        )
    _require_root(f"registering {qemu.name} in binfmt_misc")
    if not (_BINFMT_DIR / "register").exists():
        mount = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(_BINFMT_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mount.returncode != 0 and not (_BINFMT_DIR / "register").exists():
            raise EdgecompileError(
                f"cannot mount binfmt_misc at {_BINFMT_DIR}: {_last_line(mount.stderr)}",
                "run on a host (or privileged container) whose kernel allows binfmt_misc",
            )
    status = _BINFMT_DIR / "status"
    if status.read_text().strip() != "enabled":
        status.write_text("1")
    entry = _binfmt_entry(*args)
    if entry is not None and not _binfmt_ok(entry):
        # Registered without F (or disabled): replace it, since flags cannot be edited.
        (_BINFMT_DIR / qemu.name).write_text("-1")
    if _binfmt_entry(*args) is None:
        try:
            (_BINFMT_DIR / "register").write_text(_registration_line(interpreter, qemu))
        except OSError as error:
            # EEXIST: another process registered it between our check and our write.
            if not _binfmt_ok(_binfmt_entry(*args)):
                raise EdgecompileError(
                    f"the kernel refused the {qemu.name} binfmt registration: {error}",
                    "check that binfmt_misc is writable (privileged container or host)",
                ) from error
    if not _binfmt_ok(_binfmt_entry(*args)):
        raise EdgecompileError(
            f"{qemu.name} is registered in binfmt_misc but not enabled with the F flag",
            f"echo -1 > {_BINFMT_DIR / qemu.name} and run again",
        )


# --------------------------------------------------------------------------------------------
# rootfs


def default_cache_dir() -> Path:
    """edgecompile's cache root (``$EDGECOMPILE_CACHE``): one place for everything rebuilt only
    when versions change, so a second CI run on the same machine is fast."""
    return cache_root()


def _host_versions() -> dict[str, str]:
    """The host's TVM versions, which the rootfs must match for libraries to load there."""
    versions: dict[str, str] = {}
    for name in ("apache-tvm", "apache-tvm-ffi"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise EdgecompileError(
                f"{name} is not installed on the host", f"pip install {name}"
            ) from error
    return versions


def rootfs_path(cache_dir: Path | None = None) -> Path:
    """Where :func:`ensure_rootfs` keeps the rootfs for the host's TVM version."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    tvm_version = _host_versions()["apache-tvm"]
    return cache / "rootfs" / f"debian-{SUITE}-arm64-tvm{tvm_version}"


def _marker_matches(rootfs: Path, versions: Mapping[str, str]) -> bool:
    """A rootfs is reusable only if it finished building with the same recipe and versions."""
    try:
        marker = json.loads((rootfs / MARKER).read_text())
    except (OSError, ValueError):
        return False
    packages = marker.get("packages", {})
    return marker.get("format") == ROOTFS_FORMAT and all(
        packages.get(name) == version for name, version in versions.items()
    )


def ensure_rootfs(
    cache_dir: Path | None = None, *, progress: Callable[[str], None] | None = None
) -> Path:
    """Return an arm64 Debian rootfs whose venv (:data:`VENV`) holds the host's TVM versions.

    The first call builds it (~5 minutes: aarch64 wheels downloaded on the host first, so a
    missing wheel or network fails fast; then mmdebstrap; then an offline pip install inside
    the chroot); later calls find the marker file and return at once. The build happens in a
    hidden sibling directory renamed into place at the end, under a file lock, so an interrupted
    or concurrent build never leaves a half rootfs behind the final name.

    Args:
        cache_dir: Parent of ``rootfs/``; defaults to :func:`default_cache_dir`.
        progress: Called with one short line per build stage (nothing is printed otherwise).

    Raises:
        EdgecompileError: not root, tools missing, or a build step failed (e.g. no network).
    """
    say = progress or (lambda _message: None)
    versions = _host_versions()
    final = rootfs_path(cache_dir)
    if _marker_matches(final, versions):
        return final
    _require_root("building the arm64 rootfs (chroot, mmdebstrap)")
    ensure_binfmt()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if _marker_matches(final, versions):  # someone else finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            _remove_tree(stale)
        partial = final.parent / f".{final.name}.partial-{os.getpid()}"
        try:
            _build_rootfs(partial, versions, say)
            if final.exists():  # outdated recipe or versions: swap, then delete the old one
                old = final.parent / f".{final.name}.partial-old-{os.getpid()}"
                final.rename(old)
                partial.rename(final)
                _remove_tree(old)
            else:
                partial.rename(final)
        except BaseException:
            _remove_tree(partial)
            raise
    say(f"rootfs ready at {final}")
    return final


def ensure_user(rootfs: Path, name: str, uid: int) -> str:
    """Give ``rootfs`` an unprivileged login account ``name`` (uid = gid = ``uid``, shell bash,
    home ``/home/<name>`` owned by it) and return that home; a no-op when it already has one.

    Why here and not in the build recipe: a cached rootfs gains the account in place (under the
    rootfs's lock), so no rebuild is needed. The shadow entry is ``*``: no password can match
    it, yet the account is not locked (``!``), which would make sshd refuse key logins too.

    Raises:
        EdgecompileError: not root, or the uid already belongs to another account.
    """
    rootfs = Path(rootfs)
    home = f"/home/{name}"
    etc = rootfs / "etc"
    entries = {
        "passwd": f"{name}:x:{uid}:{uid}:edgecompile board user:{home}:/bin/bash",
        "group": f"{name}:x:{uid}:",
        "shadow": f"{name}:*:{int(time.time() // 86400)}:0:99999:7:::",
    }
    if (rootfs / home.lstrip("/")).is_dir() and all(
        _account_line(etc / file, name) for file in entries
    ):
        return home
    _require_root(f"adding the {name!r} account to the arm64 rootfs")
    with _locked(rootfs.parent / f".{rootfs.name}.lock"):
        for file, line in entries.items():
            path = etc / file
            if _account_line(path, name):
                continue
            text = path.read_text()
            owner = _account_with_id(text, uid) if file != "shadow" else None
            if owner is not None:
                raise EdgecompileError(
                    f"id {uid} already belongs to {owner!r} in {path}, so {name!r} cannot have it",
                    "rebuild the rootfs: delete it and run again",
                )
            partial = path.with_name(f".{path.name}.edgecompile-partial")
            partial.write_text(
                text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
            )
            shutil.copystat(path, partial)
            stat = path.stat()
            os.chown(partial, stat.st_uid, stat.st_gid)
            os.replace(partial, path)
        directory = rootfs / home.lstrip("/")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(directory, uid, uid)
    return home


def _account_line(path: Path, name: str) -> bool:
    """Whether the passwd-style file ``path`` has an entry for ``name``."""
    try:
        return any(line.split(":", 1)[0] == name for line in path.read_text().splitlines())
    except FileNotFoundError:
        return False


def _account_with_id(text: str, number: int) -> str | None:
    """The name whose id (third field of a passwd or group line) is ``number``, if any."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == str(number):
            return fields[0]
    return None


def _build_rootfs(target: Path, versions: Mapping[str, str], say: Callable[[str], None]) -> None:
    """Fetch the wheels, bootstrap Debian into ``target``, add the TVM venv, verify, mark."""
    start = time.monotonic()
    requirements = [f"{name}=={version}" for name, version in versions.items()]
    requirements += list(_EXTRA_WHEELS)
    with tempfile.TemporaryDirectory(prefix="edgecompile-wheels-") as download:
        # Wheels first: a missing wheel or no PyPI fails in seconds, not after the bootstrap.
        say(f"downloading aarch64 wheels for python {SUITE_PYTHON}: {' '.join(requirements)}")
        platforms = [arg for tag in _WHEEL_PLATFORMS for arg in ("--platform", tag)]
        _host_command(
            [
                sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                "--only-binary=:all:", *platforms, "--python-version", SUITE_PYTHON,
                "--implementation", "cp", "--dest", download, *requirements,
            ],
            "downloading the aarch64 wheels",
            "check network access to PyPI, and that these versions have manylinux aarch64 wheels",
            timeout=1800,
        )  # fmt: skip

        _bootstrap(target, say)
        probe = _checked(
            run_in_rootfs(
                target,
                ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                timeout=300,
            ),
            "running python3 in the new rootfs",
        )
        if probe.stdout.strip() != SUITE_PYTHON:
            raise EdgecompileError(
                f"the {SUITE} rootfs has python {probe.stdout.strip()}, not {SUITE_PYTHON}",
                "update SUITE_PYTHON in edgecompile/device/emulator.py",
            )
        wheels = target / _WHEELS_INSIDE.lstrip("/")
        shutil.copytree(download, wheels)

    say(f"creating {VENV} inside the rootfs (emulated, ~1 min)")
    _checked(
        run_in_rootfs(target, ["/usr/bin/python3", "-m", "venv", VENV], timeout=1800),
        f"creating {VENV} in the rootfs",
    )
    say("installing the wheels into the venv (emulated, ~1-2 min)")
    _checked(
        run_in_rootfs(
            target,
            [
                f"{VENV}/bin/pip", "install", "--no-index", "--disable-pip-version-check",
                "--find-links", _WHEELS_INSIDE, *requirements,
            ],
            timeout=3600,
        ),
        "installing TVM into the rootfs venv",
    )  # fmt: skip
    shutil.rmtree(wheels)

    say("checking that TVM imports on the emulated board")
    verified = _checked(
        run_in_rootfs(target, [f"{VENV}/bin/python", "-c", _VERIFY], timeout=1800),
        "importing TVM inside the rootfs",
    )
    report = json.loads(verified.stdout.strip().splitlines()[-1])
    marker = {
        "format": ROOTFS_FORMAT,
        "suite": SUITE,
        "arch": "arm64",
        "venv": VENV,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.monotonic() - start),
        **report,
    }
    (target / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _bootstrap(target: Path, say: Callable[[str], None]) -> None:
    """Debian's minimal arm64 base via mmdebstrap (fast, no leftovers), else debootstrap."""
    include = ",".join(_ROOTFS_DEBS)
    attempts: list[tuple[str, list[str]]] = []
    if shutil.which("mmdebstrap"):
        attempts.append(
            (
                "mmdebstrap",
                [
                    "mmdebstrap", "--variant=minbase", "--arch=arm64",
                    f"--include={include}", SUITE, str(target),
                ],
            )
        )  # fmt: skip
    if shutil.which("debootstrap"):
        attempts.append(
            (
                "debootstrap",
                [
                    "debootstrap", "--arch=arm64", "--variant=minbase",
                    f"--include={include}", SUITE, str(target), "http://deb.debian.org/debian",
                ],
            )
        )  # fmt: skip
    if not attempts:
        raise EdgecompileError("neither mmdebstrap nor debootstrap is installed", _INSTALL_HINT)
    failures: list[str] = []
    for name, argv in attempts:
        say(f"bootstrapping Debian {SUITE} arm64 with {name} (~4 min)")
        _remove_tree(target)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
        if result.returncode == 0:
            return
        failures.append(f"{name}: {_last_line(result.stderr or result.stdout)}")
    _remove_tree(target)
    raise EdgecompileError(
        f"bootstrapping the arm64 rootfs failed ({'; '.join(failures)})",
        "check network access to deb.debian.org and run " + _INSTALL_HINT,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock: two test processes must not bootstrap into the same cache."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mounts_below(path: Path) -> list[Path]:
    """Mount points at or under ``path``, deepest first (the order to unmount them)."""
    root = os.path.realpath(path)
    found: list[Path] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a (partial) rootfs; unmount first so rmtree never descends into the host's /proc
    or /dev through a mount an interrupted bootstrap left behind."""
    if not path.exists() and not path.is_symlink():
        return
    for point in _mounts_below(path):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    if _mounts_below(path):
        raise EdgecompileError(
            f"{path} still has mounts inside it, so it was not deleted",
            f"umount them (grep {path} /proc/self/mountinfo) and delete it by hand",
        )
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# running


def _last_line(text: str | None) -> str:
    """The last non-empty line: for Python and most tools, the one that names the error."""
    return last_line(text) or "no error output"


def _checked(
    result: subprocess.CompletedProcess[str], what: str
) -> subprocess.CompletedProcess[str]:
    """Turn a failed rootfs command into an EdgecompileError naming the step and its error."""
    if result.returncode != 0:
        raise EdgecompileError(
            f"{what} failed (exit {result.returncode}): {_last_line(result.stderr)}",
            "retry (the partial rootfs was removed); if it fails again, check " + _INSTALL_HINT,
        )
    return result


def _host_command(argv: Sequence[str], what: str, fix: str, *, timeout: float) -> None:
    """Run a host command whose output only matters when it fails."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise EdgecompileError(f"{what} failed: {_last_line(result.stderr)}", fix)


@contextlib.contextmanager
def _proc_mounted(rootfs: Path) -> Iterator[None]:
    """Mount /proc in the rootfs for the duration, unless it already is (then leave it)."""
    proc = rootfs / "proc"
    if os.path.ismount(proc):
        yield
        return
    proc.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], check=False, capture_output=True)


def run_in_rootfs(
    rootfs: Path,
    argv: Sequence[str],
    *,
    cpu: str = DEFAULT_CPU,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    mount_proc: bool = False,
    arch: str = "aarch64",
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``rootfs`` via ``chroot``, emulating ``cpu``; capture its output.

    The environment starts clean (PATH with the venv first, HOME, LANG, ``QEMU_CPU``) plus
    ``env``: the host's PYTHONPATH, PIP_* or venv settings would break the arm64 python.
    The exit code is returned, not raised on, so callers decide what a failure means.

    Args:
        rootfs: A tree from :func:`ensure_rootfs` (any arm64 rootfs works).
        argv: Command and arguments, as paths inside the rootfs.
        cpu: qemu CPU model (``cortex-a72`` = Raspberry Pi 4, ``cortex-a76`` = Pi 5).
        timeout: Seconds before the command is killed.
        env: Extra environment variables for the command.
        mount_proc: Mount /proc during the run. Plain Python and TVM work without it; tools
            that list processes (psutil, TVM's RPC server killing its workers) need it.
        arch: The rootfs's architecture (``aarch64``, or ``arm`` for an armhf rootfs): which
            qemu the kernel must know.

    Raises:
        EdgecompileError: the rootfs is missing, not root, binfmt cannot be set up, or the
            command timed out.
    """
    rootfs = Path(rootfs)
    if not (rootfs / "usr").is_dir():
        raise EdgecompileError(
            f"{rootfs} is not a root filesystem", "build one with edgecompile's ensure_rootfs()"
        )
    _require_root("running commands in an emulated rootfs (chroot)")
    ensure_binfmt(arch)
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    environment = {
        "PATH": _ROOTFS_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "QEMU_CPU": cpu,
        **(env or {}),
    }
    mounted = _proc_mounted(rootfs) if mount_proc else contextlib.nullcontext()
    try:
        with mounted:
            return subprocess.run(
                [chroot, str(rootfs), *argv],
                capture_output=True,
                text=True,
                env=environment,
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired as error:
        raise EdgecompileError(
            f"{' '.join(argv)} did not finish within {timeout} s on the emulated {cpu}",
            "raise the timeout: emulation runs about 10-50x slower than the host",
        ) from error


def _elf_machine(library: Path) -> int:
    """ELF e_machine of ``library``, checked on the host so a wrong-architecture library gets
    a clear message instead of the board's misleading "cannot open shared object file"."""
    with library.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise EdgecompileError(
            f"{library} is not an ELF shared library",
            "export the compiled module with export_library(<name>.so, fcompile=...)",
        )
    order = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], order)


def run_library_in_rootfs(
    rootfs: Path,
    library: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    cpu: str = DEFAULT_CPU,
    entry: str = "main",
    timeout: float | None = None,
) -> list[np.ndarray]:
    """Run a cross-compiled TVM Relax library on the emulated board; return its outputs.

    The library and inputs go to a private temp dir under the rootfs's /tmp, the rootfs venv
    loads it with ``tvm.runtime.load_module`` into a ``relax.VirtualMachine`` on ``tvm.cpu()``
    and calls ``vm[entry]`` with the inputs in the dict's order; tuple results are flattened
    into the returned list. The temp dir is removed afterwards, even on failure.

    Raises:
        EdgecompileError: the library is not an aarch64 ELF file, or the run failed (the
            message carries the last line of the board's stderr).
    """
    library = Path(library)
    if not library.is_file():
        raise EdgecompileError(f"{library} does not exist", "compile and export the model first")
    machine = _elf_machine(library)
    if machine != _EM_AARCH64:
        name = _ELF_MACHINES.get(machine, f"ELF machine {machine}")
        raise EdgecompileError(
            f"{library.name} is built for {name}, but the emulated board is aarch64",
            'compile for {"kind": "llvm", "mtriple": "aarch64-linux-gnu", ...} and link with '
            "an aarch64 linker (zig c++ -target aarch64-linux-gnu)",
        )
    (Path(rootfs) / "tmp").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgecompile-run-", dir=Path(rootfs) / "tmp"))
    try:
        inside = "/tmp/" + work.name
        shutil.copyfile(library, work / "lib.so")
        for i, array in enumerate(inputs.values()):
            np.save(work / f"input{i}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (work / "run.py").write_text(_RUNNER)
        result = run_in_rootfs(
            rootfs,
            [f"{VENV}/bin/python", f"{inside}/run.py", inside, entry, str(len(inputs))],
            cpu=cpu,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise EdgecompileError(
                f"running {library.name} on the emulated {cpu} failed: {_last_line(result.stderr)}",
                "check the library was built for aarch64 with the host's TVM version, and the "
                f"entry {entry!r} and input shapes",
            )
        count = int((work / "count").read_text())
        return [np.load(work / f"output{i}.npy", allow_pickle=False) for i in range(count)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
