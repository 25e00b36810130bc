"""``build``: a zoo model or ONNX file → ``<out>/<model>-<preset>/``, library and manifest."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tvm
from torch import nn

import edgecompile
from edgecompile import _atomic, builder
from edgecompile._atomic import atomic_directory, scratch_directory
from edgecompile.artifact import (
    MANIFEST,
    MANIFEST_VERSION,
    Artifact,
    ElfInfo,
    elf_info,
    load_artifact,
    pack_artifact,
)
from edgecompile.builder import BuildResult, artifact_name
from edgecompile.errors import EdgecompileError
from edgecompile.export import export_onnx, load_torch_model, relative_error
from edgecompile.runner import run
from edgecompile.schedules import assert_no_missed_schedules, pipeline
from edgecompile.targets import resolve_target
from edgecompile.toolchain import Toolchain
from edgecompile.zoo import get_model, list_models, model_info

# Cheap zoo models that between them have every conv class but grouped (see test_importer).
HOST_MODELS = ["squeezenet1_1", "shufflenet_v2_x0_5", "mobilenet_v3_small"]
TOLERANCE = 1e-4
ELF_BITS = {"aarch64": 64, "x86_64": 64, "arm": 32}

Build = Callable[..., BuildResult]


def conv_kind(conv: nn.Conv2d) -> str:
    if conv.groups == 1:
        return "pointwise" if conv.kernel_size == (1, 1) else "conv"
    return "depthwise" if conv.groups == conv.in_channels else "grouped"


def torch_output(name: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = get_model(name, seed=0)(torch.from_numpy(x))
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def leftovers(directory: Path) -> list[str]:
    """Temporary names the atomic writers use: ``.<name>.<random>.partial`` and ``.<name>.old-``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- host builds match ONNX Runtime and torch ----------------------------------------------------


@pytest.mark.parametrize("name", HOST_MODELS)
def test_host_build_matches_onnx_runtime_and_torch(name: str, build_once: Build) -> None:
    result = build_once(name, "host")
    verification = result.artifact.manifest.verification
    assert verification["status"] == "passed"
    assert result.max_relative_error is not None
    assert 0 <= result.max_relative_error <= TOLERANCE
    assert verification["max_relative_error"] == result.max_relative_error
    # Independently of the builder's own check: a new input, the library vs torch.
    shape = result.artifact.manifest.inputs[0]["shape"]
    x = np.random.default_rng(123).standard_normal(tuple(shape), dtype=np.float32)
    (actual,) = run(result.artifact, [x]).outputs
    assert relative_error(actual, torch_output(name, x)) <= TOLERANCE


@pytest.mark.parametrize("name", HOST_MODELS)
def test_manifest_schedules_match_the_torch_convolutions(name: str, build_once: Build) -> None:
    manifest = build_once(name, "host").artifact.manifest
    expected = collections.Counter(
        conv_kind(m) for m in get_model(name).modules() if isinstance(m, nn.Conv2d)
    )
    kinds = collections.Counter(s["kind"] for s in manifest.schedules if s["op"] == "conv2d")
    assert kinds == expected
    assert [s["index"] for s in manifest.schedules] == list(range(len(manifest.schedules)))
    for entry in manifest.schedules:
        assert {"index", "op", "kind", "shapes", "schedule"} <= set(entry)
        if entry["op"] == "conv2d":
            data, weight = entry["shapes"]
            assert weight[2:] == entry["kernel"]
            assert data[1] == weight[1] * entry["groups"]


def test_manifest_has_every_field(build_once: Build) -> None:
    name = "squeezenet1_1"
    result = build_once(name, "host")
    artifact = result.artifact
    manifest = artifact.manifest
    assert artifact.directory.name == f"{name}-host"
    assert sorted(p.name for p in artifact.directory.iterdir()) == sorted([MANIFEST, f"{name}.so"])
    on_disk = json.loads((artifact.directory / MANIFEST).read_text())
    assert on_disk == manifest.to_dict()
    assert on_disk["library_sha256"] == hashlib.sha256(artifact.library.read_bytes()).hexdigest()
    assert on_disk["model"] == name and on_disk["preset"] == "host"
    assert on_disk["library"] == f"{name}.so"
    assert on_disk["arch"] == elf_info(artifact.library).arch == resolve_target("host").arch
    assert on_disk["target"] == dict(resolve_target("host").target)
    assert tvm.target.Target(on_disk["target"])  # the recorded target is usable as it is
    assert on_disk["tvm_version"] == tvm.__version__
    assert on_disk["edgecompile_version"] == edgecompile.__version__
    assert on_disk["manifest_version"] == MANIFEST_VERSION
    assert on_disk["build_seconds"] > 0
    assert "seed 0" in on_disk["weights"]
    height, width = model_info(name).input_size
    x = np.zeros((1, 3, height, width), np.float32)
    assert on_disk["inputs"] == [
        {"name": "input", "shape": [1, 3, height, width], "dtype": "float32"}
    ]
    assert [o["shape"] for o in on_disk["outputs"]] == [list(torch_output(name, x).shape)]
    assert [o["dtype"] for o in on_disk["outputs"]] == ["float32"]
    assert on_disk["schedules"], "no heavy ops recorded"
    assert on_disk["verification"]["seed"] == 0


def test_load_artifact_from_folder_manifest_or_library(build_once: Build) -> None:
    artifact = build_once("squeezenet1_1", "host").artifact
    for path in (artifact.directory, artifact.directory / MANIFEST, artifact.library):
        loaded = load_artifact(path)
        assert loaded.directory == artifact.directory
        assert loaded.manifest == artifact.manifest  # what build returned is what it wrote


# --- cross builds -------------------------------------------------------------------------------


@pytest.mark.parametrize("board", ["rpi4", "rpi4-armv7"])
def test_cross_build_has_the_boards_elf_and_skips_verification(
    board: str, build_once: Build
) -> None:
    preset = resolve_target(board)
    result = build_once("squeezenet1_1", board)
    manifest = result.artifact.manifest
    info = elf_info(result.artifact.library)
    assert info.arch == preset.arch == manifest.arch
    assert info.bits == ELF_BITS[preset.arch]
    assert result.artifact.directory.name == f"squeezenet1_1-{board}"
    assert manifest.preset == board and manifest.target == dict(preset.target)
    assert manifest.verification["status"] == "skipped"
    assert preset.arch in manifest.verification["reason"]
    assert result.max_relative_error is None
    assert (
        manifest.library_sha256 == hashlib.sha256(result.artifact.library.read_bytes()).hexdigest()
    )
    # Same network, same heavy ops, whatever the board.
    host = build_once("squeezenet1_1", "host").artifact.manifest
    assert [(s["op"], s["kind"]) for s in manifest.schedules] == [
        (s["op"], s["kind"]) for s in host.schedules
    ]


def test_rpi4_elf_is_aarch64_and_armv7_is_32_bit_arm(build_once: Build) -> None:
    """The header, not the folder name: the two boards' libraries really differ."""
    aarch64 = elf_info(build_once("squeezenet1_1", "rpi4").artifact.library)
    armv7 = elf_info(build_once("squeezenet1_1", "rpi4-armv7").artifact.library)
    assert (aarch64.arch, aarch64.bits) == ("aarch64", 64)
    assert (armv7.arch, armv7.bits) == ("arm", 32)


def test_elf_info_rejects_a_non_elf_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.so"
    path.write_bytes(b"#!/bin/sh\necho not a library\n")
    with pytest.raises(EdgecompileError, match="not an ELF"):
        elf_info(path)


# --- shapes -------------------------------------------------------------------------------------


def test_batch_and_input_size_change_the_manifest_shapes(build_once: Build) -> None:
    result = build_once("squeezenet1_1", "host", batch=2, input_size="160")
    manifest = result.artifact.manifest
    assert manifest.inputs[0]["shape"] == [2, 3, 160, 160]
    x = np.zeros((2, 3, 160, 160), np.float32)
    assert list(manifest.outputs[0]["shape"]) == list(torch_output("squeezenet1_1", x).shape)
    first_conv = next(s for s in manifest.schedules if s["op"] == "conv2d")
    assert first_conv["shapes"][0] == [2, 3, 160, 160]
    assert manifest.verification["status"] == "passed"
    default = build_once("squeezenet1_1", "host").artifact.manifest
    assert default.inputs[0]["shape"] != manifest.inputs[0]["shape"]


def test_input_size_as_an_int_from_python(tiny_onnx: Path, tmp_path: Path) -> None:
    result = edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path, input_size=12)
    assert result.artifact.manifest.inputs[0]["shape"] == [1, 3, 12, 12]


@pytest.mark.parametrize("batch", [0, -1])
def test_bad_batch_is_an_error_for_onnx_files_too(
    batch: int, tiny_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(EdgecompileError, match="batch"):
        edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path, batch=batch)
    assert list(tmp_path.iterdir()) == []


def test_target_json_without_triple_builds_and_verifies(tiny_onnx: Path, tmp_path: Path) -> None:
    result = edgecompile.build(str(tiny_onnx), '{"kind": "llvm"}', output_dir=tmp_path)
    assert result.artifact.manifest.verification["status"] == "passed"
    assert elf_info(result.artifact.library).arch == resolve_target("host").arch


def test_artifact_names() -> None:
    assert artifact_name("squeezenet1_1") == "squeezenet1_1"
    assert artifact_name("mnasnet1_0") == "mnasnet_b1"  # torchvision's name for the zoo model
    assert artifact_name("models/my net.onnx") == "my_net"
    assert artifact_name("mypkg.models:build_net") == "build_net"


# --- atomic output ------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def raise_boom(*args: Any, **kwargs: Any) -> None:
    raise Boom("injected failure")


@pytest.mark.parametrize(
    "where",
    ["write_manifest", "link", "verify", "interrupt"],
)
def test_failed_build_leaves_nothing(
    where: str, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error: type[BaseException] = Boom
    if where == "write_manifest":
        monkeypatch.setattr(builder, "write_manifest", raise_boom)
    elif where == "link":
        monkeypatch.setattr(Toolchain, "link", raise_boom)
    elif where == "verify":
        monkeypatch.setattr(builder, "verify_library", lambda *a, **k: 1.0)
        error = EdgecompileError
    else:

        def interrupt(*args: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(builder, "write_manifest", interrupt)
        error = KeyboardInterrupt
    out = tmp_path / "out"
    with pytest.raises(error):
        edgecompile.build(str(tiny_onnx), "host", output_dir=out)
    assert not (out / "tiny-host").exists()
    assert list(out.iterdir()) == []


def test_nan_error_fails_verification(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder, "verify_library", lambda *a, **k: float("nan"))
    with pytest.raises(EdgecompileError, match="differs from ONNX Runtime"):
        edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_good_artifact_survives_a_failed_rebuild(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path).artifact
    before = {p.name: p.read_bytes() for p in good.directory.iterdir()}

    with monkeypatch.context() as patch:
        patch.setattr(builder, "write_manifest", raise_boom)
        with pytest.raises(Boom):
            edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path, batch=2)
    assert {p.name: p.read_bytes() for p in good.directory.iterdir()} == before
    assert load_artifact(good.directory).manifest.inputs[0]["shape"] == [1, 3, 8, 8]
    assert leftovers(tmp_path) == []

    # A successful rebuild replaces it whole, and cleans up after itself.
    edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path, batch=2)
    assert load_artifact(good.directory).manifest.inputs[0]["shape"] == [2, 3, 8, 8]
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-host"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_abandoned_siblings_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    final = tmp_path / "model-host"
    dead = dead_pid()
    abandoned = [
        tmp_path / f".model-host.{dead}-abc123.partial",  # a SIGKILLed build's staging
        tmp_path / f".model-host.old-{dead}",  # an earlier version's aside folder
    ]
    for path in abandoned:
        path.mkdir()
        (path / "lib.so").write_bytes(b"half")
    (tmp_path / f".model-host.{dead}-file1.partial").write_bytes(b"half")  # atomic_file's
    others = [tmp_path / f".other-host.{dead}-abc123.partial", tmp_path / ".model-host.keep"]
    for path in others:
        path.mkdir()
    with atomic_directory(final) as live:
        (live / "lib.so").write_bytes(b"new")
        # A second writer of the same name, meanwhile: ours is alive (pid and lock), kept.
        with atomic_directory(final) as racing:
            assert live.exists()
            (racing / "lib.so").write_bytes(b"racing")
    assert (final / "lib.so").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model-host", *(p.name for p in others)]
    )


def test_abandoned_scratch_folders_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    abandoned = tmp_path / f"{builder.SCRATCH_PREFIX}{dead_pid()}-abcd1234"
    abandoned.mkdir()
    unrelated = tmp_path / "edgecompile-tune-x"  # another prefix: not ours to judge
    unrelated.mkdir()
    with scratch_directory(builder.SCRATCH_PREFIX) as scratch:
        assert scratch.parent == tmp_path and not abandoned.exists()
        with pytest.raises(KeyboardInterrupt), scratch_directory(builder.SCRATCH_PREFIX) as other:
            raise KeyboardInterrupt
        assert not other.exists() and scratch.exists()  # a live build's scratch is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edgecompile-tune-x"]


def test_folder_is_replaced_without_the_exchange_call_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing (not Linux, old libc, a file system without it)."""
    monkeypatch.setattr(_atomic, "_renameat2", lambda *args: False)
    final = tmp_path / "model-host"
    for content in (b"old", b"new"):
        with atomic_directory(final) as staging:
            (staging / "lib.so").write_bytes(content)
    assert (final / "lib.so").read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def failing_pass(error: BaseException) -> Callable[[Any], Any]:
    """A stand-in for the first pass of our pipeline that raises ``error`` inside TVM."""

    def make(_report: Any) -> Any:
        @tvm.transform.module_pass(opt_level=0, name="edgecompile.Injected")
        def transform(module: Any, _context: Any) -> Any:
            raise error

        return transform

    return make


def test_interrupt_in_a_pass_interrupts_the_build(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TVM's FFI used to hand Ctrl-C in a pass back as RuntimeError: the pipeline took it for a
    failure, built with TVM's default lowering and replaced the artifact with a slow one."""
    good = edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path).artifact
    before = {p.name: p.read_bytes() for p in good.directory.iterdir()}
    monkeypatch.setattr(pipeline, "note_heavy_ops", failing_pass(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path, batch=2)
    assert {p.name: p.read_bytes() for p in good.directory.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_pipeline_failure_falls_back_and_says_so_on_stderr(
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgecompile.cli import main

    monkeypatch.setattr(pipeline, "note_heavy_ops", failing_pass(ValueError("injected failure")))
    main(["build", str(tiny_onnx), "--target", "host", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    assert "verified against ONNX Runtime" in captured.out
    assert captured.err.strip().splitlines() == [
        "warning: all 1 heavy ops fell back to TVM's default lowering (slower): "
        "edgecompile pipeline failed: injected failure"
    ]
    (record,) = load_artifact(tmp_path / "tiny-host").manifest.schedules
    assert record["schedule"] == "tvm-default"
    assert record["fallback"] == "edgecompile pipeline failed: injected failure"


def test_main_exit_codes_for_interrupts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecompile._interrupts import Terminated
    from edgecompile.cli import main

    for raised, code, message in (
        (KeyboardInterrupt(), 130, "Interrupted."),
        (Terminated(signal.SIGTERM), 143, "Terminated."),
        (EdgecompileError("bad input", "fix it"), 2, "Error: bad input (fix it)"),
    ):
        monkeypatch.setattr(builder, "build", lambda *a, raised=raised, **k: _raise(raised))
        with pytest.raises(SystemExit) as exited:
            main(["build", "squeezenet1_1"])
        assert exited.value.code == code
        assert capsys.readouterr().err.strip().splitlines()[-1] == message


def _raise(error: BaseException) -> None:
    raise error


def test_output_dir_under_a_file_is_an_error(tiny_onnx: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(EdgecompileError) as excinfo:
        edgecompile.build(str(tiny_onnx), "host", output_dir=blocker / "out")
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(blocker / "out") in message and "-o" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_an_error(tiny_onnx: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(EdgecompileError, match="not writable"):
            edgecompile.build(str(tiny_onnx), "host", output_dir=locked)
    finally:
        locked.chmod(0o755)


def test_artifact_is_readable_like_any_other_folder(tiny_onnx: Path, tmp_path: Path) -> None:
    """Staged in a mkdtemp() folder (mode 0700), the artifact must still get the umask's mode."""
    artifact = edgecompile.build(str(tiny_onnx), "host", output_dir=tmp_path).artifact
    assert stat.S_IMODE(artifact.directory.stat().st_mode) == 0o777 & ~umask()
    assert stat.S_IMODE((artifact.directory / MANIFEST).stat().st_mode) == 0o666 & ~umask()


# --- packing ------------------------------------------------------------------------------------


def test_pack_artifact_holds_library_and_manifest(build_once: Build, tmp_path: Path) -> None:
    source = build_once("squeezenet1_1", "rpi4").artifact
    # Pack a copy, so the shared artifact's folder stays as the other tests expect it.
    copy = Artifact(tmp_path / source.directory.name, source.manifest)
    shutil.copytree(source.directory, copy.directory)
    archive = pack_artifact(copy)
    assert archive == tmp_path / "squeezenet1_1-rpi4.tar.gz"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o666 & ~umask()
    with tarfile.open(archive, "r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == sorted(
            [
                "squeezenet1_1-rpi4",
                "squeezenet1_1-rpi4/manifest.json",
                "squeezenet1_1-rpi4/squeezenet1_1.so",
            ]
        )
        library = tar.extractfile("squeezenet1_1-rpi4/squeezenet1_1.so").read()
        manifest = json.loads(tar.extractfile("squeezenet1_1-rpi4/manifest.json").read())
    assert hashlib.sha256(library).hexdigest() == manifest["library_sha256"]
    assert manifest == source.manifest.to_dict()
    assert leftovers(tmp_path) == []


# --- the model matrix ---------------------------------------------------------------------------


def family_representatives() -> set[str]:
    """One model per zoo family (its first in registry order): the slice of the model matrix
    every run builds; the rest of the matrix is ``pytest -m slow``."""
    first: dict[str, str] = {}
    for name in list_models():
        first.setdefault(model_info(name).family, name)
    return set(first.values())


MATRIX_SLICE = family_representatives()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name in MATRIX_SLICE else pytest.mark.slow)
        for name in list_models()
    ],
)
def test_every_zoo_model_builds_for_host_and_rpi4(name: str, tmp_path: Path) -> None:
    # Export once (checked against torch), then build that ONNX for both boards: the same
    # pipeline as build(name, ...) minus a second export.
    onnx_path = tmp_path / f"{name}.onnx"
    export_onnx(load_torch_model(name), onnx_path)
    host = edgecompile.build(str(onnx_path), "host", output_dir=tmp_path)
    board = edgecompile.build(str(onnx_path), "rpi4", output_dir=tmp_path)
    try:
        assert host.artifact.manifest.verification["status"] == "passed"
        assert host.max_relative_error is not None
        assert host.max_relative_error <= TOLERANCE
        assert elf_info(host.artifact.library).arch == resolve_target("host").arch
        assert elf_info(board.artifact.library) == ElfInfo("aarch64", 64)
        # Every op one of our rules claims got our schedule on both architectures.
        assert_no_missed_schedules(host.artifact.manifest.schedules, f"{name} for host")
        assert_no_missed_schedules(board.artifact.manifest.schedules, f"{name} for rpi4")
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 144 libraries add up
