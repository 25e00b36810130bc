"""The emulated aarch64 board, shared by every device test (built once, then cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecompile.device import emulator
from edgecompile.errors import EdgecompileError


@pytest.fixture(scope="session")
def as_root() -> None:
    """Skips the test unless it runs as root, as binfmt_misc and chroot need."""
    if os.geteuid() != 0:
        pytest.skip("the emulated board needs root (binfmt_misc, chroot)")


@pytest.fixture(scope="session")
def rootfs(as_root: None) -> Path:
    """The cached arm64 rootfs, built on first use; skips where it cannot be built."""
    try:
        return emulator.ensure_rootfs(progress=lambda line: print(f"[rootfs] {line}"))
    except EdgecompileError as error:
        pytest.skip(f"cannot build the emulated board's rootfs (no network or tools?): {error}")
