"""Which runner a board gets (its TVM Python, or a bundle's native runner) and the checks a
bundle meets before it is shipped: no board needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecompile.artifact import load_artifact
from edgecompile.device import remote
from edgecompile.device.deploy import artifact_for_board
from edgecompile.device.probe import (
    NATIVE,
    PYTHON_TVM,
    BoardInfo,
    board_kind,
    check_compatible,
    check_native_compatible,
)
from edgecompile.errors import EdgecompileError
from edgecompile.native import bundle as bundling


def _board(**changes: Any) -> BoardInfo:
    info = BoardInfo(
        machine="aarch64", home="/home/pi", python3=None, python=None, python_bits=None,
        tvm_version=None, tvm_ffi_version=None, cpu_model=None, cores=4, governor=None,
        os="Debian GNU/Linux 12 (bookworm)", emulated=True, glibc="glibc 2.36", userland_bits=64,
    )  # fmt: skip
    return replace(info, **changes)


def test_a_board_is_native_unless_its_python_has_tvm() -> None:
    assert board_kind(_board()) == NATIVE
    assert board_kind(_board(python3="/usr/bin/python3", python="/usr/bin/python3")) == NATIVE
    with_tvm = _board(python="/opt/venv/bin/python", tvm_version="0.27.0.post1")
    assert board_kind(with_tvm) == PYTHON_TVM
    assert with_tvm.to_dict()["kind"] == PYTHON_TVM  # in every --json that carries the board


def test_a_board_without_tvm_python_gets_the_bundle_written_beside_the_artifact(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4"))
    shipped = artifact_for_board(artifact, _board(), native=None)
    assert shipped.directory == tmp_path / "tiny-rpi4-bundle"
    assert bundling.is_bundle(shipped)
    assert list(bundling.bundled_files(shipped)) == ["libtvm_runtime.so", "edgecompile-runner"]


def test_a_named_python_without_tvm_is_refused_not_replaced_by_the_native_runner(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    """--remote-python names the Python to use: without TVM the user hears so (as the tunnel
    says), rather than getting another runner than the one asked for."""
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4"))
    named = _board(python3="/usr/bin/python3", python="/usr/bin/python3", python_bits=64)
    assert artifact_for_board(artifact, named, None, "/usr/bin/python3") is artifact
    assert not (tmp_path / "tiny-rpi4-bundle").exists()
    with pytest.raises(EdgecompileError, match=r"has no Python with TVM.*build --bundle"):
        check_compatible(artifact.manifest, named, "pi@board")


def test_a_tvm_board_keeps_the_python_path_unless_native_is_asked(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    artifact = load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4"))
    tvm_board = _board(python="/opt/venv/bin/python", tvm_version="0.27.0.post1")
    assert artifact_for_board(artifact, tvm_board, native=None) is artifact
    assert not (tmp_path / "tiny-rpi4-bundle").exists()
    assert bundling.is_bundle(artifact_for_board(artifact, tvm_board, native=True))


def test_a_bundle_cannot_be_forced_through_python(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    bundled = load_artifact(
        bundling.bundle(load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4")))
    )
    assert artifact_for_board(bundled, _board(), native=None) is bundled
    with pytest.raises(EdgecompileError, match="is a bundle"):
        artifact_for_board(bundled, _board(), native=False)


def test_a_changed_runtime_file_in_a_bundle_is_refused_before_shipping(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    bundled = load_artifact(
        bundling.bundle(load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4")))
    )
    (bundled.directory / "edgecompile-runner").write_bytes(b"tampered")
    with pytest.raises(EdgecompileError, match=r"edgecompile-runner.*differs from the bundle"):
        bundling.bundled_files(bundled)


def test_a_bundle_whose_runtime_is_another_tvm_is_refused(
    tmp_path: Path, cached_runtime: Path, stand_in_artifact: Callable[..., Path]
) -> None:
    folder = bundling.bundle(load_artifact(stand_in_artifact(tmp_path / "tiny-rpi4")))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["extra"][bundling.MANIFEST_KEY]["tvm_version"] = "0.0.1"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgecompileError, match=r"runtime of TVM 0\.0\.1") as raised:
        bundling.bundled_files(load_artifact(folder))
    assert "\n" not in str(raised.value)


class _Manifest:
    model, preset, tvm_version = "shufflenet_v1", "rpi3-armv7", "0.27.0.post1"

    def __init__(self, arch: str) -> None:
        self.arch = arch


def test_an_armv7_bundle_fits_a_32_bit_userland_on_a_64_bit_kernel_without_python() -> None:
    # Raspberry Pi OS 32-bit: uname says aarch64, getconf LONG_BIT says 32, no Python at all
    check_native_compatible(_Manifest("arm"), _board(userland_bits=32), "pi@board")
    with pytest.raises(EdgecompileError, match=r"aarch64 \(32-bit userland\)"):
        check_native_compatible(_Manifest("aarch64"), _board(userland_bits=32), "pi@board")
    with pytest.raises(EdgecompileError, match="32-bit ARM"):
        check_native_compatible(_Manifest("arm"), _board(userland_bits=64), "pi@board")


def test_native_is_refused_over_rpc() -> None:
    from edgecompile.device.access import BoardAccess

    with pytest.raises(EdgecompileError, match="over SSH, not TVM RPC"):
        remote.run_on_device(Path("unused"), BoardAccess(rpc="127.0.0.1:9090"), native=True)
