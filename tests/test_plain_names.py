"""Names read from files become paths only as plain names (issue #19.3): a preset's table name
(``build -o OUT``), a manifest's ``library`` (``deploy``); records and import payloads are in
test_records.py. Each refusal is one line, and nothing outside the place is touched."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecompile._names import MAX_NAME_LENGTH, check_plain_name, plain_name_problem, safe_name
from edgecompile.artifact import MANIFEST, Artifact, Manifest, load_artifact
from edgecompile.errors import EdgecompileError

BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "../../x",
    "a/b",
    "/etc",
    "a\\b",
    ".hidden",
    "-rf",
    "x..y",
    "a\x00b",
    "a\nb",
    "tab\there",
    "semi;colon",
    "$(reboot)",
    "space name",
    "é",
    "x" * (MAX_NAME_LENGTH + 1),
]
GOOD_NAMES = ["rpi4", "rpi4-armv7", "jetson-nano-cpu", "mobilenet_v2", "model.so", "a+b", "_x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_in_one_line(name: str) -> None:
    assert plain_name_problem(name) is not None
    with pytest.raises(EdgecompileError) as raised:
        check_plain_name(name, "preset name", "board.toml")
    assert "\n" not in str(raised.value) and "board.toml" in str(raised.value)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_names_pass(name: str) -> None:
    assert check_plain_name(name, "preset name", "board.toml") == name


@pytest.mark.parametrize("text", [*BAD_NAMES, *GOOD_NAMES])
def test_safe_name_is_always_plain(text: str) -> None:
    assert plain_name_problem(safe_name(text)) is None


@pytest.mark.parametrize("value", [None, 3, ["a"]])
def test_a_name_that_is_not_text(value: Any) -> None:
    assert "not a text" in (plain_name_problem(value) or "")


def test_preset_name_cannot_make_build_replace_a_folder_outside_out(
    tmp_path: Path, tiny_onnx: Path, cli_error: Callable[[list[str]], str]
) -> None:
    """Before: ``build -o OUT`` with this preset replaced (and deleted) ``victim/``, a sibling
    of OUT, by the artifact."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    preset = tmp_path / "evil.toml"
    preset.write_text('["../../../victim"]\ntarget = { kind = "llvm" }\n')
    out = tmp_path / "out"
    line = cli_error(["build", str(tiny_onnx), "--target", str(preset), "-o", str(out)])
    assert "preset name '../../../victim'" in line
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "mine"
    assert not out.exists()


@pytest.fixture()
def artifact_copy(build_once: Callable[..., Any], tiny_onnx: Path, tmp_path: Path) -> Path:
    built = build_once(str(tiny_onnx), "host").artifact
    copy = tmp_path / "board" / "art" / built.directory.name
    shutil.copytree(built.directory, copy)
    return copy


def _edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / MANIFEST
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"library": "../../x.so"}, "library '../../x.so' contains a path separator"),
        ({"library": "/tmp/x.so"}, "contains a path separator"),
        ({"library": ".x.so"}, "starts with '.'"),
        ({"model": "../m"}, "model '../m'"),
        ({"preset": "a b"}, "preset 'a b'"),
        ({"extra": {"onnx": "../../m.onnx"}}, "extra.onnx"),
        ({"library_sha256": "../x"}, "not a sha256"),
        ({"inputs": "x"}, "'inputs' is a str"),
        ({"inputs": [{"name": "x", "shape": "1,3", "dtype": "float32"}]}, "not a name, shape"),
        ({"build_seconds": True}, "'build_seconds' is a bool"),
        ({"nonsense": 1}, "unknown field"),
    ],
)
def test_untrusted_manifest_is_refused(
    artifact_copy: Path, changes: dict[str, Any], expected: str
) -> None:
    _edit_manifest(artifact_copy, **changes)
    with pytest.raises(EdgecompileError, match="is not an edgecompile manifest") as raised:
        load_artifact(artifact_copy)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("text", [b"\xff\xfe", b"[1, 2]", b"null", b'{"model": 1}', b"[" * 100_000])
def test_manifest_that_is_not_one(artifact_copy: Path, text: bytes) -> None:
    (artifact_copy / MANIFEST).write_bytes(text)
    with pytest.raises(EdgecompileError, match="is not an edgecompile manifest"):
        load_artifact(artifact_copy)


def test_the_built_manifest_loads(artifact_copy: Path) -> None:
    assert load_artifact(artifact_copy).manifest.library.endswith(".so")


def test_deploy_refuses_a_library_name_outside_its_folder(
    artifact_copy: Path, cli_error: Callable[[list[str]], str]
) -> None:
    """Before: the manifest's ``../../x.so`` made ``deploy`` write outside the deploy folder
    on the board. Refused before any connection (the board address does not exist)."""
    _edit_manifest(artifact_copy, library="../../x.so")
    library = next(artifact_copy.glob("*.so"))
    shutil.copy(library, artifact_copy.parent.parent / "x.so")  # what the name points at
    line = cli_error(["deploy", str(artifact_copy), "--device", "nobody@192.0.2.1"])
    assert "library '../../x.so'" in line


def test_deploy_on_checks_an_artifact_made_in_python(artifact_copy: Path) -> None:
    from edgecompile.device.deploy import deploy_on

    loaded = load_artifact(artifact_copy)
    data = {**loaded.manifest.to_dict(), "library": "../../x.so"}
    evil = Artifact(artifact_copy, Manifest(**data))
    with pytest.raises(EdgecompileError, match=re.escape("library '../../x.so'")):
        deploy_on(None, evil)  # type: ignore[arg-type]  # refused before the board is used
