"""Stage 4: the build artifact — ``<model>.so`` plus ``manifest.json`` — and reading it back."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import types
import typing
from dataclasses import MISSING as dataclasses_missing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecompile._atomic import atomic_file
from edgecompile._names import plain_name_problem
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
    #: When the build finished (UTC, ISO 8601), what linked it, and the seed of its weights
    #: and check inputs; None in manifests written before these fields.
    built_at: str | None = None
    toolchain: dict[str, Any] | None = None
    seed: int | None = None
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


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    dict: (dict,),
    list: (list,),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _json_types(annotation: Any) -> tuple[type, ...]:
    """The JSON value types a field annotated ``annotation`` accepts (``X | None`` adds None)."""
    hint = typing.get_type_hints(Manifest)[annotation]
    accepted: list[type] = []
    for part in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        part = typing.get_origin(part) or part
        accepted.extend((type(None),) if part is type(None) else _JSON_TYPES[part])
    return tuple(accepted)


def _is_tensor_spec(spec: Any) -> bool:
    return (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("dtype"), str)
        and isinstance(spec.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"])
    )


def manifest_problem(data: Any) -> str | None:
    """Why ``data`` (a parsed manifest.json) is no manifest we can trust, or None.

    Its names become paths (here, and on a board at deploy): ``library``, ``model``, ``preset``
    and ``extra.onnx`` must be plain names, or a manifest could make ``deploy`` write outside
    its folder.
    """
    if not isinstance(data, dict):
        return f"holds a {type(data).__name__}, not an object"
    known = {f.name: f for f in fields(Manifest)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        return f"unknown field(s) {', '.join(map(repr, unknown[:3]))}"
    for name, spec in known.items():
        if name not in data:
            if spec.default is dataclasses_missing and spec.default_factory is dataclasses_missing:
                return f"no {name!r}"
            continue
        # bool is an int to Python, never to a manifest
        if isinstance(data[name], bool) or not isinstance(data[name], _json_types(name)):
            return f"{name!r} is a {type(data[name]).__name__}"
    for key in ("inputs", "outputs"):
        for spec in data[key]:
            if not _is_tensor_spec(spec):
                return f"{key} holds {str(spec)[:40]!r}, not a name, shape and dtype"
    for name in ("library", "model", "preset"):
        problem = plain_name_problem(data[name])
        if problem is not None:
            return f"{name} {data[name]!r} {problem}"
    onnx = data.get("extra", {}).get("onnx")
    if onnx is not None and (problem := plain_name_problem(onnx)) is not None:
        return f"extra.onnx {onnx!r} {problem}"
    if not _SHA256.fullmatch(data["library_sha256"]):
        return "library_sha256 is not a sha256 (64 hex digits)"
    return None


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
        data = json.loads(manifest_path.read_bytes().decode("utf-8"))
        problem = manifest_problem(data)
    except (OSError, ValueError, RecursionError) as exc:  # JSON, UTF-8: ValueErrors
        problem = str(exc)
    if problem is not None:
        raise EdgecompileError(
            f"{str(manifest_path)!r} is not an edgecompile manifest: {problem}",
            "rebuild the artifact",
        )
    artifact = Artifact(directory, Manifest(**data))
    if not artifact.library.is_file():
        raise EdgecompileError(f"library {str(artifact.library)!r} is missing", "rebuild it")
    return artifact


def pack_artifact(artifact: Artifact) -> Path:
    """``DIR.tar.gz`` holding the artifact folder, written atomically."""
    archive = artifact.directory.with_name(artifact.directory.name + ".tar.gz")
    with atomic_file(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(artifact.directory, arcname=artifact.directory.name)
    return archive
