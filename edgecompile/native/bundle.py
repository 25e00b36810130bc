"""``build --bundle``: one folder a board without Python runs as it is -- the library, its
manifest, the native TVM runtime and ``edgecompile-runner`` (which finds the runtime beside
itself through its ``$ORIGIN`` rpath).

The manifest records the runtime's TVM and tvm-ffi versions and each file's sha256, so a board
(or ``deploy``) can tell a bundle's runtime from another one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from edgecompile._atomic import atomic_directory
from edgecompile.artifact import Artifact, load_artifact, sha256_file, write_manifest
from edgecompile.errors import EdgecompileError
from edgecompile.native.execute import check_runtime_version
from edgecompile.native.runtime import (
    ARCHES,
    RUNNER,
    RUNTIME_LIBRARY,
    ensure_runtime,
    read_record,
)
from edgecompile.progress import SILENT, Progress

#: The manifest's ``extra`` key describing the bundled runtime.
MANIFEST_KEY = "native_runtime"


def is_bundle(artifact: Artifact) -> bool:
    """Whether ``artifact`` is a bundle (its manifest describes a native runtime beside it)."""
    return isinstance(artifact.manifest.extra.get(MANIFEST_KEY), dict)


def bundled_files(artifact: Artifact) -> dict[str, str]:
    """``{file name: sha256}`` of the runtime files a bundle holds beside its library (the
    runner last), as its manifest records them; a file changed since is one line."""
    described = artifact.manifest.extra[MANIFEST_KEY]
    if described.get("tvm_version") != artifact.manifest.tvm_version:
        raise EdgecompileError(
            f"the bundle {str(artifact.directory)!r} holds the runtime of TVM "
            f"{described.get('tvm_version')}, its library was built with TVM "
            f"{artifact.manifest.tvm_version}",
            "rebuild the bundle: edgecompile build ... --bundle",
        )
    files = {name: facts["sha256"] for name, facts in described.get("files", {}).items()}
    if Path(RUNNER).name not in files:
        raise EdgecompileError(
            f"the bundle {str(artifact.directory)!r} names no {Path(RUNNER).name}",
            "rebuild it: edgecompile build ... --bundle",
        )
    for name, digest in files.items():
        path = artifact.directory / name
        if not path.is_file() or sha256_file(path) != digest:
            raise EdgecompileError(
                f"{str(path)!r} is missing or differs from the bundle's manifest",
                "rebuild the bundle: edgecompile build ... --bundle",
            )
    runner = files.pop(Path(RUNNER).name)
    return {**files, Path(RUNNER).name: runner}


def bundle_path(artifact: Artifact) -> Path:
    """``<model>-<preset>-bundle/`` beside the artifact's folder."""
    return artifact.directory.with_name(f"{artifact.directory.name}-bundle")


def bundle(artifact: str | Path | Artifact, *, progress: Progress = SILENT) -> Path:
    """Write the bundle of ``artifact`` (building the runtime first if it is not cached)."""
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    arch = artifact.manifest.arch
    if arch not in ARCHES:
        raise EdgecompileError(
            f"no native runtime for {artifact.manifest.model}'s {arch} library, so no bundle",
            "bundle a library for an aarch64 or armv7 board (e.g. --target rpi4 or rpi3-armv7); "
            f"the artifact in {str(artifact.directory)!r} is complete",
        )
    check_runtime_version(artifact)
    runtime = ensure_runtime(arch, progress=progress)
    record = read_record(runtime)
    for name, facts in record["files"].items():
        if sha256_file(runtime / name) != facts["sha256"]:
            raise EdgecompileError(
                f"the cached native runtime {str(runtime / name)!r} was changed since its build",
                f"delete {str(runtime)!r}; the next bundle rebuilds it",
            )
    final = bundle_path(artifact)
    with atomic_directory(final) as staged:
        shutil.copy2(artifact.library, staged / artifact.library.name)
        files = {}
        for name in (RUNTIME_LIBRARY, RUNNER):
            target = staged / Path(name).name  # flat: the runner's rpath has $ORIGIN first
            shutil.copy2(runtime / name, target)
            files[target.name] = record["files"][name]
        described = {
            "arch": record["arch"],
            "tvm_version": record["tvm_version"],
            "tvm_ffi_version": record["tvm_ffi_version"],
            "source_hash": record["source_hash"],
            "files": files,
        }
        manifest = dataclasses.replace(
            artifact.manifest, extra={**artifact.manifest.extra, MANIFEST_KEY: described}
        )
        write_manifest(staged, manifest)
    return final
