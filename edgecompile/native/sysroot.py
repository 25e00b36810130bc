"""The smallest honest board for the native runner under qemu-user: Debian's glibc, nothing
else (no Python, no TVM), as a sysroot for ``qemu-<arch>-static -L``.

Debian bullseye's ``libc6`` is glibc 2.31, the oldest the native runtime promises to run on
(Raspberry Pi OS bullseye), so running there also proves the glibc floor. The packages are
fetched by ``mmdebstrap --variant=extract`` (apt unpacks them; no package scripts run, so no
emulation is needed), once per architecture, into the cache, atomically.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgecompile._atomic import atomic_directory
from edgecompile._cache import cache_root
from edgecompile.errors import EdgecompileError
from edgecompile.native.runtime import canonical_arch

#: glibc 2.31: Raspberry Pi OS bullseye's, the floor the runtime is built for.
SUITE = "bullseye"
MIRROR = "http://deb.debian.org/debian"
#: libgcc-s1: glibc's pthread_cancel loads libgcc_s; nothing else is needed by the runner.
PACKAGES = ("libc6", "libgcc-s1")
#: Debian's name of each architecture (as :data:`edgecompile.native.runtime.ARCHES` names them).
DEBIAN_ARCH = {"aarch64": "arm64", "arm": "armhf"}
#: The dynamic loader every finished sysroot holds.
LOADER = {"aarch64": "lib/ld-linux-aarch64.so.1", "arm": "lib/ld-linux-armhf.so.3"}


def sysroot_path(arch: str) -> Path:
    debian = DEBIAN_ARCH[canonical_arch(arch).name]
    return cache_root() / "sysroot" / f"debian-{SUITE}-{debian}-glibc"


def ensure_sysroot(arch: str, *, timeout: float = 600) -> Path:
    """Debian's glibc for ``arch`` (``aarch64`` or ``arm``/``armv7``), downloaded once."""
    name = canonical_arch(arch).name
    final = sysroot_path(name)
    if (final / LOADER[name]).exists():
        return final
    if shutil.which("mmdebstrap") is None:
        raise EdgecompileError(
            "mmdebstrap is not installed, so Debian's glibc cannot be fetched for qemu",
            "apt-get install mmdebstrap",
        )
    debian = DEBIAN_ARCH[name]
    with atomic_directory(final) as staged:
        argv = [
            "mmdebstrap",
            "--variant=extract",
            f"--arch={debian}",
            f"--include={','.join(PACKAGES)}",
            "--quiet",
            SUITE,
            str(staged),
            # main only: bullseye-security would make apt fail on mirrors without it
            f"deb {MIRROR} {SUITE} main",
        ]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise EdgecompileError(
                f"downloading Debian {SUITE}'s {debian} glibc took over {timeout:.0f} s",
                "check the network (deb.debian.org) and run again",
            ) from None
        if result.returncode != 0 or not (staged / LOADER[name]).exists():
            raise EdgecompileError(
                f"cannot download Debian {SUITE}'s {debian} glibc: {_reason(result)}",
                "connect to the network once (deb.debian.org); it is cached afterwards",
            )
    return final


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["mmdebstrap gave no reason"])[0].removeprefix("E: ")
