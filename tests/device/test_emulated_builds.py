"""Libraries built for a Raspberry Pi 4 compute what torch computes, on the emulated Cortex-A72."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompile.artifact import elf_info
from edgecompile.builder import build
from edgecompile.device import emulator
from edgecompile.export import example_input, load_torch_model, relative_error, run_torch

pytestmark = pytest.mark.emulator


@pytest.mark.parametrize("name", ["shufflenet_v1", "mobilenet_v2", "squeezenet1_1"])
def test_rpi4_library_matches_torch_on_the_emulated_board(
    name: str, rootfs: Path, tmp_path: Path
) -> None:
    result = build(name, "rpi4", output_dir=tmp_path)
    library = result.artifact.library
    assert elf_info(library).arch == "aarch64"

    spec = result.artifact.manifest.inputs[0]
    data = example_input(spec["shape"], seed=7)
    (board_output,) = emulator.run_library_in_rootfs(
        rootfs, library, {spec["name"]: data}, cpu="cortex-a72", timeout=600
    )
    expected = run_torch(load_torch_model(name), data)
    assert board_output.shape == expected.shape
    assert relative_error(board_output, expected) <= 1e-4
