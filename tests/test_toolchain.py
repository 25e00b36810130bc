"""Linkers per board: zig's triple and CPU names, a system ``--cc``, and real links read back."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from edgecompile.artifact import elf_info
from edgecompile.errors import EdgecompileError
from edgecompile.targets import BoardPreset, list_presets, resolve_target
from edgecompile.toolchain import (
    GLIBC_VERSION,
    apt_package_for,
    toolchain_for,
    zig_cpu,
    zig_triple,
)

PRESETS = list_presets()
PRESET_IDS = [preset.name for preset in PRESETS]
# What zig calls each architecture's Linux triple (zig names every 32-bit ARM "arm"); the glibc
# version pins the oldest C library the board may have.
GLIBC = f".{GLIBC_VERSION}"
ZIG_TRIPLE_FOR_ARCH = {
    "aarch64": f"aarch64-linux-gnu{GLIBC}",
    "arm": f"arm-linux-gnueabihf{GLIBC}",
    "x86_64": f"x86_64-linux-gnu{GLIBC}",
}
ELF_BITS = {"aarch64": 64, "x86_64": 64, "arm": 32}


@tvm.script.ir_module
class TinyModule:
    """relu(x @ w + 1): one matmul, one broadcast add, one activation."""

    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 3), "float32")) -> R.Tensor(
        (4, 3), "float32"
    ):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.add(y, R.const(1.0, "float32"))
            out = R.nn.relu(z)
            R.output(out)
        return out


def link_tiny(preset: BoardPreset, path: Path, cc: str | None = None) -> Path:
    executable = tvm.compile(TinyModule, target=preset.tvm_target())
    executable.export_library(str(path), fcompile=toolchain_for(preset, cc).fcompile())
    return path


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_zig_triple_for_every_preset(preset: BoardPreset) -> None:
    expected = ZIG_TRIPLE_FOR_ARCH[preset.arch]
    assert zig_triple(preset.triple) == expected
    toolchain = toolchain_for(preset)
    command = list(toolchain.command)
    assert command[:4] == [sys.executable, "-m", "ziglang", "cc"]
    assert command[command.index("-target") + 1] == expected
    mcpu = [arg for arg in command if arg.startswith("-mcpu=")]
    if preset.target.get("mcpu") in (None, "generic"):
        assert mcpu == []
    else:
        assert mcpu == [f"-mcpu={str(preset.target['mcpu']).replace('-', '_')}"]


@pytest.mark.parametrize(
    ("llvm", "zig"),
    [
        ("aarch64-linux-gnu", "aarch64-linux-gnu"),
        ("arm64-linux-gnu", "aarch64-linux-gnu"),
        ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu"),
        ("armv7l-linux-gnueabihf", "arm-linux-gnueabihf"),
        ("armv7a-linux-gnueabihf", "arm-linux-gnueabihf"),
        ("armv8l-linux-gnueabihf", "arm-linux-gnueabihf"),  # TVM's arm/rasp4b
        ("arm-none-linux-gnueabihf", "arm-linux-gnueabihf"),
        ("x86_64-pc-linux-gnu", "x86_64-linux-gnu"),
        ("x86_64-conda-linux-gnu", "x86_64-linux-gnu"),  # TVM's own default triple
    ],
)
def test_zig_triple_mapping(llvm: str, zig: str) -> None:
    assert zig_triple(llvm) == zig + GLIBC


def test_zig_cpu_names() -> None:
    assert zig_cpu("cortex-a72") == "cortex_a72"
    assert zig_cpu("generic") is None
    assert zig_cpu(None) is None


@pytest.mark.parametrize(
    ("compiler", "package"),
    [
        ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    ],
)
def test_missing_cc_names_the_apt_package(
    compiler: str, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert apt_package_for(compiler) == package
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: the compiler is surely missing
    with pytest.raises(EdgecompileError) as excinfo:
        toolchain_for(resolve_target("rpi4"), cc=compiler)
    message = str(excinfo.value)
    assert "\n" not in message
    assert compiler in message
    assert f"apt-get install {package}" in message


def test_preset_toolchain_from_a_board_file_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = tmp_path / "board.toml"
    board.write_text(
        '[b]\ntoolchain = "aarch64-linux-gnu-g++"\n'
        'target = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n'
    )
    preset = resolve_target(str(board))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgecompileError, match="g\\+\\+-aarch64-linux-gnu"):
        toolchain_for(preset)
    # --cc zig overrides the board's own compiler.
    assert "ziglang" in toolchain_for(preset, cc="zig").command


# zig builds its libc start-up files once per (triple, CPU) — ~25 s each on a fresh machine — so
# the default run links for one board per architecture and the rest are the slow matrix.
LINK_DEFAULT = {"rpi4", "rpi4-armv7", "host"}


@pytest.mark.parametrize(
    "preset",
    [
        pytest.param(p, id=p.name, marks=() if p.name in LINK_DEFAULT else pytest.mark.slow)
        for p in PRESETS
    ],
)
def test_real_link_has_the_boards_elf_header(preset: BoardPreset, tmp_path: Path) -> None:
    library = link_tiny(preset, tmp_path / "tiny.so")
    info = elf_info(library)
    assert info.arch == preset.arch
    assert info.bits == ELF_BITS[preset.arch]


def test_host_link_loads_and_computes(tmp_path: Path) -> None:
    from edgecompile.runner import run_library

    library = link_tiny(resolve_target("host"), tmp_path / "tiny.so")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8), dtype=np.float32)
    w = rng.standard_normal((8, 3), dtype=np.float32)
    (out,) = run_library(library, [x, w])
    np.testing.assert_allclose(out, np.maximum(x @ w + 1, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no system gcc to pass as --cc")
def test_system_cc_links_for_the_host(tmp_path: Path) -> None:
    host = resolve_target("host")
    toolchain = toolchain_for(host, cc="gcc")
    assert toolchain.command == ("gcc",)
    library = link_tiny(host, tmp_path / "tiny.so", cc="gcc")
    assert elf_info(library).arch == host.arch


def test_failed_link_is_an_edgecompile_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.o"
    garbage.write_bytes(b"not an object file\n" * 4)
    toolchain = toolchain_for(resolve_target("rpi4"))
    with pytest.raises(EdgecompileError) as excinfo:
        toolchain.link(str(tmp_path / "out.so"), [str(garbage)])
    message = str(excinfo.value)
    assert "\n" not in message
    assert toolchain.description in message
    assert not (tmp_path / "out.so").exists()
