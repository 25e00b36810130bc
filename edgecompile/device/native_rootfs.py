"""Root filesystems of boards WITHOUT Python: Debian bookworm with openssh-server and nothing
else, arm64 or armhf, for the native runtime (``build --bundle``) to prove itself on.

Why a second kind of rootfs: the emulated rpi4 of :mod:`edgecompile.device.emulator` carries
python3 and a TVM venv, so a test passing there cannot tell whether the native runner needed
them. Here ``python3`` must be absent (the build fails otherwise), and the 32-bit armhf tree is
what Raspberry Pi OS 32-bit boards are: no apache-tvm wheel exists for them at all.

Built once per architecture (mmdebstrap ``minbase`` + openssh-server, package scripts run under
qemu-user through binfmt_misc: armhf 755 s, arm64 809 s on a 2-core machine at load 10-13;
~170 / ~220 MB), cached beside the arm64 TVM rootfs, finished only when its marker file (same
format as the TVM rootfs's) is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from edgecompile.device import emulator
from edgecompile.errors import EdgecompileError, last_line

__all__ = [
    "DEBIAN_ARCH",
    "NATIVE_CPU",
    "ROOTFS_FORMAT",
    "ensure_native_rootfs",
    "native_rootfs_path",
]

#: Bumped whenever the recipe changes, so older caches are rebuilt instead of reused.
ROOTFS_FORMAT = 1
#: Debian's name of each architecture (as :mod:`edgecompile.native.runtime` names them).
DEBIAN_ARCH = {"aarch64": "arm64", "arm": "armhf"}
#: What qemu emulates while building: the Pi 4's core; qemu-arm has no Cortex-A53/A72 model.
NATIVE_CPU = {"aarch64": emulator.DEFAULT_CPU, "arm": "max"}
#: openssh-server only: the board is reached over SSH and runs what a bundle brings.
_DEBS = ("openssh-server",)

# Runs inside the finished tree: proves it has no Python and reports its glibc and word size.
_VERIFY = (
    "set -e; "
    "for p in /usr/bin/python3 /usr/bin/python /usr/local/bin/python3; do "
    '[ ! -e "$p" ] || { echo "python found: $p" >&2; exit 3; }; done; '
    "getconf GNU_LIBC_VERSION; getconf LONG_BIT; uname -m"
)


def native_rootfs_path(arch: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`ensure_native_rootfs` keeps the tree for ``arch`` (``aarch64``/``arm``)."""
    cache = cache_dir if cache_dir is not None else emulator.default_cache_dir()
    return cache / "rootfs" / f"debian-{emulator.SUITE}-{DEBIAN_ARCH[arch]}-native"


def _marker_matches(rootfs: Path, arch: str) -> bool:
    try:
        marker = json.loads((rootfs / emulator.MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("format") == ROOTFS_FORMAT
        and marker.get("arch") == DEBIAN_ARCH[arch]
        and marker.get("python") is None
    )


def ensure_native_rootfs(
    arch: str,
    cache_dir: Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """An arm64 (``aarch64``) or armhf (``arm``) Debian rootfs with sshd and no Python.

    Built in a hidden sibling under a file lock and renamed into place at the end, so an
    interrupted or concurrent build never leaves a half tree behind the final name.

    Raises:
        EdgecompileError: not root, tools missing, no network, or the tree holds a Python.
    """
    if arch not in DEBIAN_ARCH:
        raise EdgecompileError(
            f"no Python-less rootfs for {arch!r}", f"use one of {', '.join(DEBIAN_ARCH)}"
        )
    say = progress or (lambda _message: None)
    final = native_rootfs_path(arch, cache_dir)
    if _marker_matches(final, arch):
        return final
    emulator._require_root(f"building the {DEBIAN_ARCH[arch]} rootfs (chroot, mmdebstrap)")
    emulator.ensure_binfmt(arch)
    if shutil.which("mmdebstrap") is None:
        raise EdgecompileError("mmdebstrap is not installed", emulator._INSTALL_HINT)
    final.parent.mkdir(parents=True, exist_ok=True)
    with emulator._locked(final.parent / f".{final.name}.lock"):
        if _marker_matches(final, arch):  # someone else finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            emulator._remove_tree(stale)
        partial = final.parent / f".{final.name}.partial-{os.getpid()}"
        try:
            _build(partial, arch, say)
            if final.exists():  # an outdated recipe: swap, then delete the old one
                old = final.parent / f".{final.name}.partial-old-{os.getpid()}"
                final.rename(old)
                partial.rename(final)
                emulator._remove_tree(old)
            else:
                partial.rename(final)
        except BaseException:
            emulator._remove_tree(partial)
            raise
    say(f"rootfs ready at {final}")
    return final


def _build(target: Path, arch: str, say: Callable[[str], None]) -> None:
    debian = DEBIAN_ARCH[arch]
    start = time.monotonic()
    say(
        f"building the {debian} rootfs without Python (once, ~5-15 min): bootstrapping Debian "
        f"{emulator.SUITE} with openssh-server"
    )
    argv = [
        "mmdebstrap", "--variant=minbase", f"--arch={debian}", f"--include={','.join(_DEBS)}",
        # no documentation or translations: a board's runtime needs none of them
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
        emulator.SUITE, str(target),
    ]  # fmt: skip
    environment = {**os.environ, "QEMU_CPU": NATIVE_CPU[arch]}
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=3600, check=False, env=environment
    )
    if result.returncode != 0:
        raise EdgecompileError(
            f"bootstrapping the {debian} rootfs failed: "
            f"{last_line(result.stderr or result.stdout) or 'no output'}",
            "check network access to deb.debian.org and run " + emulator._INSTALL_HINT,
        )
    checked = emulator.run_in_rootfs(
        target, ["/bin/sh", "-c", _VERIFY], cpu=NATIVE_CPU[arch], arch=arch, timeout=300
    )
    if checked.returncode != 0:
        raise EdgecompileError(
            f"the new {debian} rootfs is not a Python-less board: "
            f"{last_line(checked.stderr) or 'no output'}",
            "report it: the recipe in edgecompile/device/native_rootfs.py needs a fix",
        )
    glibc, bits, machine = _verified(checked.stdout)
    marker = {
        "format": ROOTFS_FORMAT,
        "suite": emulator.SUITE,
        "arch": debian,
        "python": None,
        "machine": machine,
        "userland_bits": int(bits),
        "glibc": glibc,
        "packages": list(_DEBS),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.monotonic() - start),
    }
    (target / emulator.MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _verified(stdout: str) -> tuple[str, str, str]:
    """(glibc version, word size, ``uname -m``) from the verify script's three lines."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    glibc = lines[-3].split()[-1]  # "glibc 2.36"
    return glibc, lines[-2], lines[-1]
