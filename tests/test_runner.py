"""``run``: load a built library the way a board does, check its inputs, and fail cleanly."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompile.artifact import MANIFEST, Artifact, load_artifact
from edgecompile.builder import BuildResult
from edgecompile.errors import EdgecompileError
from edgecompile.export import relative_error, run_onnxruntime
from edgecompile.runner import run, run_library
from edgecompile.targets import resolve_target
from edgecompile.zoo import get_model

Build = Callable[..., BuildResult]
HOST_ARCH = resolve_target("host").arch


@pytest.fixture(scope="module")
def squeezenet(build_once: Build) -> Artifact:
    return build_once("squeezenet1_1", "host").artifact


@pytest.fixture(scope="module")
def tiny(build_once: Build, tiny_onnx: Path) -> Artifact:
    return build_once(str(tiny_onnx), "host").artifact


def one_line(excinfo: pytest.ExceptionInfo[EdgecompileError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_run_equals_onnx_runtime(tiny: Artifact, tiny_onnx: Path) -> None:
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8), dtype=np.float32)
    result = run(tiny, [x])
    (expected,) = run_onnxruntime(tiny_onnx, {"input": x})
    assert len(result.outputs) == 1
    assert result.outputs[0].shape == expected.shape
    np.testing.assert_allclose(result.outputs[0], expected, rtol=1e-5, atol=1e-6)
    assert result.seconds > 0


def test_run_equals_torch(squeezenet: Artifact) -> None:
    x = np.random.default_rng(9).standard_normal((1, 3, 224, 224), dtype=np.float32)
    (actual,) = run(squeezenet.directory, [x]).outputs
    with torch.no_grad():
        expected = get_model("squeezenet1_1", seed=0)(torch.from_numpy(x)).numpy()
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-4
    assert int(actual.argmax()) == int(expected.argmax())


def test_run_accepts_the_library_or_manifest_path(tiny: Artifact) -> None:
    x = np.ones((1, 3, 8, 8), np.float32)
    reference = run(tiny, [x]).outputs[0]
    for path in (tiny.library, tiny.directory / MANIFEST, str(tiny.directory)):
        np.testing.assert_array_equal(run(path, [x]).outputs[0], reference)


def test_run_accepts_non_contiguous_arrays(tiny: Artifact) -> None:
    base = np.random.default_rng(1).standard_normal((1, 3, 8, 16), dtype=np.float32)
    strided = base[:, :, :, ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(
        run(tiny, [strided]).outputs[0], run(tiny, [np.ascontiguousarray(strided)]).outputs[0]
    )


def test_seeded_random_inputs_and_threads(tiny: Artifact) -> None:
    first = run(tiny, seed=3).outputs[0]
    np.testing.assert_array_equal(run(tiny, seed=3, threads=1).outputs[0], first)
    assert not np.array_equal(run(tiny, seed=4).outputs[0], first)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([np.zeros((1, 3, 8, 9), np.float32)], "(1, 3, 8, 9)"),
        ([np.zeros((2, 3, 8, 8), np.float32)], "(2, 3, 8, 8)"),
        ([np.zeros((1, 3, 8, 8), np.float64)], "float64"),
        ([np.zeros((1, 3, 8, 8), np.int32)], "int32"),
        ([], "got 0"),
        ([np.zeros((1, 3, 8, 8), np.float32)] * 2, "got 2"),
    ],
    ids=["width", "batch", "float64", "int32", "none", "two"],
)
def test_wrong_inputs_are_errors(tiny: Artifact, inputs: list[np.ndarray], expected: str) -> None:
    with pytest.raises(EdgecompileError) as excinfo:
        run(tiny, inputs)
    assert expected in one_line(excinfo)


@pytest.mark.parametrize("board", ["rpi4", "rpi4-armv7"])
def test_foreign_library_is_an_error_not_a_crash(
    board: str, build_once: Build, tiny_onnx: Path
) -> None:
    preset = resolve_target(board)
    if preset.arch == HOST_ARCH:
        pytest.skip(f"this machine is {HOST_ARCH}: {board} libraries load here")
    artifact = build_once(str(tiny_onnx), board).artifact
    with pytest.raises(EdgecompileError) as excinfo:
        run(artifact)
    message = one_line(excinfo)
    assert preset.arch in message and HOST_ARCH in message
    with pytest.raises(EdgecompileError, match=preset.arch):
        run_library(artifact.library, [np.zeros((1, 3, 8, 8), np.float32)])


def copy_artifact(artifact: Artifact, destination: Path) -> Path:
    target = destination / artifact.directory.name
    shutil.copytree(artifact.directory, target)
    return target


def test_library_that_is_not_elf_is_an_error(tiny: Artifact, tmp_path: Path) -> None:
    folder = copy_artifact(tiny, tmp_path)
    (folder / tiny.manifest.library).write_bytes(b"\0" * 64)
    # the manifest agrees (sha256): what is refused is the file's kind, not a mismatch
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["library_sha256"] = hashlib.sha256(b"\0" * 64).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgecompileError, match="not an ELF"):
        run(folder)


def test_library_that_differs_from_its_manifest_is_not_loaded(
    tiny: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgecompile.runner

    folder = copy_artifact(tiny, tmp_path)
    with open(folder / tiny.manifest.library, "ab") as library:
        library.write(b"\0")
    monkeypatch.setattr(edgecompile.runner, "run_library", None)  # never reached
    with pytest.raises(EdgecompileError, match="does not match its manifest"):
        run(folder)


def test_missing_library_is_an_error(tiny: Artifact, tmp_path: Path) -> None:
    folder = copy_artifact(tiny, tmp_path)
    (folder / tiny.manifest.library).unlink()
    with pytest.raises(EdgecompileError, match="missing"):
        run(folder)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"model": "x"})], ids=["json", "keys"])
def test_broken_manifest_is_an_error(tiny: Artifact, tmp_path: Path, content: str) -> None:
    folder = copy_artifact(tiny, tmp_path)
    (folder / MANIFEST).write_text(content)
    with pytest.raises(EdgecompileError, match="not an edgecompile manifest"):
        load_artifact(folder)


def test_folder_without_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match=r"no manifest\.json"):
        run(tmp_path)
