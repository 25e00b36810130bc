"""Stage 4: the build artifact — ``<model>.so`` plus ``manifest.json`` — and reading it back."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile._atomic import atomic_file
from edgecompile.errors import EdgecompileError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# ELF e_machine values of the architectures we build for.
_ELF_MACHINES = {0x28: "arm", 0xB7: "aarch64", 0x3E: "x86_64", 0xF3: "riscv"}


@dataclass(frozen=True)
class ElfInfo:
    arch: str
    bits: int


def elf_info(path: str | Path) -> ElfInfo:
    """Architecture and word size from the ELF header (never from the file name)."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise EdgecompileError(f"{str(path)!r} is not an ELF shared library", "rebuild it")
    bits = {1: 32, 2: 64}.get(header[4], 0)
    byteorder = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], byteorder)
    return ElfInfo(_ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}"), bits)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a device (or a later command) needs to know about a library without loading it."""

    model: str
    preset: str
    target: dict[str, Any]
    library: str
    library_sha256: str
    arch: str
    tvm_version: str
    edgecompile_version: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    weights: str
    records_digest: str | None
    schedules: list[dict[str, Any]]
    build_seconds: float
    verification: dict[str, Any] | None = None
    #: The tuning records the build applied: store, digest, record count, kernels they scheduled.
    records: dict[str, Any] | None = None
    #: The ``--schedules`` directory the build used: its files (sha256) and rules.
    user_schedules: dict[str, Any] | None = None
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Artifact:
    """A built model: a folder holding the library and its manifest."""

    directory: Path
    manifest: Manifest

    @property
    def library(self) -> Path:
        return self.directory / self.manifest.library


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def load_artifact(path: str | Path) -> Artifact:
    """An artifact folder, its manifest.json, or its .so (the manifest must sit beside it)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise EdgecompileError(
            f"no {MANIFEST} in {str(directory)!r}",
            "pass the folder `edgecompile build` wrote (e.g. build/shufflenet_v1-host)",
        )
    try:
        data = json.loads(manifest_path.read_text())
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise EdgecompileError(
            f"{str(manifest_path)!r} is not an edgecompile manifest: {exc}", "rebuild the artifact"
        ) from None
    artifact = Artifact(directory, manifest)
    if not artifact.library.is_file():
        raise EdgecompileError(f"library {str(artifact.library)!r} is missing", "rebuild it")
    return artifact


def pack_artifact(artifact: Artifact) -> Path:
    """``DIR.tar.gz`` holding the artifact folder, written atomically."""
    archive = artifact.directory.with_name(artifact.directory.name + ".tar.gz")
    with atomic_file(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(artifact.directory, arcname=artifact.directory.name)
    return archive
