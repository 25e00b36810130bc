"""The manifest says when it was built, what linked it and with which seed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from edgecompile.artifact import MANIFEST, load_artifact
from edgecompile.builder import build


def test_manifest_has_build_time_toolchain_and_seed(tiny_onnx: Path, tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    artifact = build(str(tiny_onnx), "rpi4", output_dir=tmp_path, seed=7).artifact
    after = datetime.now(UTC)
    stored = json.loads((artifact.directory / MANIFEST).read_text())
    built_at = datetime.fromisoformat(stored["built_at"])
    assert built_at.utcoffset() == timedelta(0)
    assert before <= built_at <= after
    assert stored["toolchain"]["linker"].startswith("zig cc -target aarch64-linux-gnu")
    assert stored["toolchain"]["version"] == f"zig {version('ziglang')}"
    assert stored["seed"] == 7
    assert load_artifact(artifact.directory).manifest == artifact.manifest


def test_a_manifest_from_before_these_fields_still_loads(tiny_onnx: Path, tmp_path: Path) -> None:
    artifact = build(str(tiny_onnx), "rpi4", output_dir=tmp_path).artifact
    path = artifact.directory / MANIFEST
    old = json.loads(path.read_text())
    for key in ("built_at", "toolchain", "seed"):
        del old[key]
    path.write_text(json.dumps(old))
    loaded = load_artifact(artifact.directory).manifest
    assert (loaded.built_at, loaded.toolchain, loaded.seed) == (None, None, None)
