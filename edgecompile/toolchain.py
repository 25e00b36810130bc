"""Linkers for each board: the pip-installed zig toolchain by default, or a system cross GCC.

TVM writes object code for the target itself (LLVM); the toolchain only links those objects into
a shared library the board's dynamic loader accepts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgecompile.errors import EdgecompileError
from edgecompile.targets import ZIG, BoardPreset

LinkFunction = Callable[..., None]


@dataclass(frozen=True)
class Toolchain:
    """How to link a library for one board."""

    command: tuple[str, ...]
    description: str

    def link(
        self, output: str, objects: Sequence[str], options: Sequence[str] | None = None
    ) -> None:
        argv = [*self.command, "-shared", "-fPIC", "-o", output, *objects, *(options or [])]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise EdgecompileError(
                f"linking with {self.description} failed: {detail[-1] if detail else 'no output'}",
                "run with a system cross compiler (--cc) or report the failing model",
            )

    def version(self) -> str:
        """For the manifest: the ziglang package's version, else the compiler's first
        ``--version`` line ("unknown" if it has none)."""
        if self.command[1:4] == ("-m", "ziglang", "cc"):
            from importlib.metadata import version

            return f"zig {version('ziglang')}"
        result = subprocess.run(
            [self.command[0], "--version"], capture_output=True, text=True, check=False
        )
        return (result.stdout.strip().splitlines() or ["unknown"])[0]

    def fcompile(self) -> LinkFunction:
        """The callable ``export_library(path, fcompile=...)`` expects."""

        def link(output: str, objects: Sequence[str], options: Sequence[str] | None = None) -> None:
            self.link(output, objects, options)

        link.output_format = "so"  # type: ignore[attr-defined]
        return link


# The oldest glibc the library may need: Raspberry Pi OS bullseye has 2.31, Jetson's L4T 2.27.
# zig otherwise links against a recent glibc's symbol versions, which older boards refuse.
GLIBC_VERSION = "2.27"


def zig_triple(llvm_triple: str) -> str:
    """LLVM's triple → zig's: every 32-bit ARM is ``arm``, and gnu ABIs carry a glibc version."""
    arch, _, rest = llvm_triple.partition("-")
    parts = rest.split("-")
    if len(parts) >= 3:  # arch-vendor-os-environment: zig has no vendor (e.g. conda's)
        parts = parts[1:]
    parts = [p for p in parts if p not in ("unknown", "pc", "none")]
    if arch.startswith(("armv", "arm")) and arch not in ("arm64",):
        arch = "arm"
    if arch == "arm64":
        arch = "aarch64"
    abi = next((p for p in parts if p != "linux"), "gnu")
    if abi.startswith("gnu"):
        abi = f"{abi}.{GLIBC_VERSION}"
    return f"{arch}-linux-{abi}"


def zig_cpu(mcpu: str | None) -> str | None:
    if not mcpu or mcpu == "generic":
        return None
    return mcpu.replace("-", "_")


def apt_package_for(compiler: str) -> str:
    """``aarch64-linux-gnu-g++`` → ``g++-aarch64-linux-gnu`` (Debian's naming)."""
    for tool in ("g++", "gcc"):
        suffix = f"-{tool}"
        if compiler.endswith(suffix):
            return f"{tool}-{compiler[: -len(suffix)]}"
    return compiler


def toolchain_for(preset: BoardPreset, cc: str | None = None) -> Toolchain:
    """The toolchain ``cc`` names (a compiler command or "zig"), else the preset's own."""
    choice = cc or preset.toolchain
    if choice == ZIG:
        triple = zig_triple(preset.triple)
        command = [sys.executable, "-m", "ziglang", "cc", "-target", triple]
        cpu = zig_cpu(preset.target.get("mcpu"))
        if cpu is not None:
            command.append(f"-mcpu={cpu}")
        return Toolchain(tuple(command), f"zig cc -target {triple}")
    if shutil.which(choice) is None:
        raise EdgecompileError(
            f"cross compiler {choice!r} is not installed",
            f"apt-get install {apt_package_for(choice)}, or drop --cc to use the bundled zig",
        )
    return Toolchain((choice,), choice)
