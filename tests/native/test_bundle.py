"""``build --bundle``: the library, its manifest, the runtime and the runner in one folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecompile.artifact import load_artifact
from edgecompile.errors import EdgecompileError
from edgecompile.native import bundle as bundling
from edgecompile.native import runtime


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_bundle_holds_library_runtime_runner_and_records_them(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4", "aarch64"))
    folder = bundling.bundle(artifact)
    assert folder == tmp_path / "tiny-rpi4-bundle"
    names = {"tiny.so", "libtvm_runtime.so", "edgecompile-runner", "manifest.json"}
    assert {p.name for p in folder.iterdir()} == names
    bundled = load_artifact(folder)  # still an artifact: run/deploy read it as one
    described = bundled.manifest.extra[bundling.MANIFEST_KEY]
    record = json.loads((cached_runtime / runtime.RECORD).read_text())
    assert described["tvm_version"] == record["tvm_version"]
    assert described["tvm_ffi_version"] == "f"  # the record's, not the installed tvm-ffi's
    for name in ("libtvm_runtime.so", "edgecompile-runner"):
        assert described["files"][name]["sha256"] == _sha256((folder / name).read_bytes())
    assert bundled.manifest.library_sha256 == artifact.manifest.library_sha256


def test_a_host_library_cannot_be_bundled_and_the_artifact_stays(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-host", "x86_64"))
    with pytest.raises(EdgecompileError) as caught:
        bundling.bundle(artifact)
    assert "x86_64" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "tiny-host-bundle").exists()
    assert artifact.library.is_file()


def test_a_damaged_cached_runtime_is_refused(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    (cached_runtime / runtime.RUNNER).write_bytes(b"changed")
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4", "aarch64"))
    with pytest.raises(EdgecompileError) as caught:
        bundling.bundle(artifact)
    assert "changed since its build" in str(caught.value)
    assert not (tmp_path / "tiny-rpi4-bundle").exists()


def test_bundle_for_a_host_target_is_refused_before_the_build(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    out = tmp_path / "out"
    line = cli_error(["build", "squeezenet1_1", "--target", "host", "--bundle", "-o", str(out)])
    assert "--bundle needs an aarch64 or armv7 target" in line and "rpi4" in line
    assert not out.exists()  # refused before anything was exported or compiled
