"""Debian's glibc as the qemu sysroot of the native runner: offline is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecompile.errors import EdgecompileError
from edgecompile.native import sysroot


def test_the_sysroot_is_bullseye_glibc_per_debian_arch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    assert sysroot.sysroot_path("armv7") == tmp_path / "sysroot" / "debian-bullseye-armhf-glibc"
    assert sysroot.sysroot_path("aarch64").name == "debian-bullseye-arm64-glibc"


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_no_network_is_one_line_and_leaves_no_half_sysroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    # Port 9 (discard) on loopback: nothing listens, so apt fails at once, as offline.
    monkeypatch.setattr(sysroot, "MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(EdgecompileError) as caught:
        sysroot.ensure_sysroot("armv7", timeout=120)
    message = str(caught.value)
    assert "armhf glibc" in message and "\n" not in message
    assert not sysroot.sysroot_path("armv7").exists()
