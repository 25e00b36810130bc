"""What a board is (arch, Python, TVM, CPU), asked over SSH in one round trip, and whether an
artifact fits it.

Why: before anything is loaded, the board is checked: ``uname -m`` and the pointer width of its
Python against the manifest's arch, python3 present, and the TVM version of the board's venv
equal to the manifest's (a TVM library is only loadable by the runtime that built it).
"""

from __future__ import annotations

import contextlib
import json
import shlex
from dataclasses import asdict, dataclass
from typing import Any

from edgecompile.device.ssh import BoardConnection, remote_path, split_sections
from edgecompile.errors import EdgecompileError

__all__ = [
    "NATIVE",
    "PYTHON_CANDIDATES",
    "PYTHON_TVM",
    "BoardInfo",
    "arch_name",
    "board_kind",
    "check_compatible",
    "check_native_compatible",
    "probe",
]

#: The two kinds of board :func:`board_kind` tells apart: one whose Python has TVM (runs a
#: library through it, and TVM's own RPC server), and one that runs only what a bundle brings
#: (``edgecompile-runner``, and the native RPC server).
PYTHON_TVM = "python-tvm"
NATIVE = "native"

#: Where a board's TVM usually lives, tried in order when ``remote_python`` is not given:
#: a venv of our own in the home directory, the emulated board's, then the system python3.
PYTHON_CANDIDATES = ("~/edgecompile-venv/bin/python", "/opt/edgecompile-venv/bin/python", "python3")

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
    #: ``getconf GNU_LIBC_VERSION`` (``glibc 2.36``): what a native bundle is checked against.
    glibc: str | None = None
    #: ``getconf LONG_BIT``: 32 on a 32-bit userland under a 64-bit kernel, without Python.
    userland_bits: int | None = None

    @property
    def kind(self) -> str:
        return board_kind(self)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


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
echo "@@glibc"; getconf GNU_LIBC_VERSION 2>/dev/null || true
echo "@@bits"; getconf LONG_BIT 2>/dev/null || true
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
    sections = split_sections(output)

    def first(name: str) -> str | None:
        values = sections.get(name)
        return values[0] if values else None

    python_info: dict[str, Any] = {}
    raw = first("python")
    if raw:
        with contextlib.suppress(ValueError):
            python_info = json.loads(raw)
    cores = first("cores")
    bits = first("bits")
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
        glibc=first("glibc"),
        userland_bits=int(bits) if bits and bits.isdigit() else None,
    )


def board_kind(info: BoardInfo) -> str:
    """:data:`PYTHON_TVM` when the board's Python has TVM, else :data:`NATIVE`: what runs a
    library there (and which RPC server can serve it)."""
    return PYTHON_TVM if info.python and info.tvm_version else NATIVE


# --------------------------------------------------------------------------------------------
# whether an artifact fits it


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
    _check_arch(manifest, info, where, info.python_bits)
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
            f"apache-tvm=={manifest.tvm_version}; or pass --remote-python; or ship "
            "`edgecompile build --bundle`'s folder, which needs no Python there)",
        )
    if info.tvm_version != manifest.tvm_version:
        raise EdgecompileError(
            f"{where} has TVM {info.tvm_version} ({info.python}) but the library was built "
            f"with TVM {manifest.tvm_version}, and TVM libraries only load in the runtime "
            "that built them",
            f"install apache-tvm=={manifest.tvm_version} on the board, or rebuild with TVM "
            f"{info.tvm_version}",
        )


def check_native_compatible(manifest: Any, info: BoardInfo, where: str) -> None:
    """Refuse before uploading a bundle: wrong arch (kernel and userland, the latter from
    ``getconf LONG_BIT`` as no Python is needed)."""
    _check_arch(manifest, info, where, info.userland_bits)


def _check_arch(manifest: Any, info: BoardInfo, where: str, bits: int | None) -> None:
    arch = manifest.arch
    wanted_bits = _BITS.get(arch)
    machine_ok = info.machine in _MACHINES.get(arch, {arch})
    bits_ok = bits is None or wanted_bits is None or bits == wanted_bits
    if not machine_ok or not bits_ok:
        board = info.machine + (f" ({bits}-bit userland)" if bits else "")
        raise EdgecompileError(
            f"{manifest.model}-{manifest.preset} is {arch_name(arch)} library but {where} is "
            f"{board}",
            f"rebuild for the board: edgecompile build {manifest.model} --target "
            f"{_suggest_preset(info, bits)}",
        )


def arch_name(arch: str) -> str:
    """``aarch64`` -> ``a 64-bit ARM (aarch64)``: what the manifest's arch means to a person."""
    names = {"aarch64": "a 64-bit ARM (aarch64)", "arm": "a 32-bit ARM (armv7)"}
    return names.get(arch, f"an {arch}" if arch[:1] in "aeiou" else f"a {arch}")


def _suggest_preset(info: BoardInfo, bits: int | None) -> str:
    if info.machine in ("aarch64", "arm64") and bits != 32:
        return "rpi4 (or another 64-bit preset)"
    if info.machine.startswith("arm") or bits == 32:
        return "rpi4-armv7 (or another 32-bit preset)"
    return "<a preset for " + info.machine + ">"
