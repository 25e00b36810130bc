"""ESPNet v1 and v2 end to end on the emulated Cortex-A72 (rpi4: 4-lane NEON), against torch:
the sub-pixel transposed convs and dilated ESP branches (v1), the blocked PReLU / batch norm and
grouped EESP convs (v2). At 32×32, the smallest both downsample cleanly, to stay cheap enough
for the default run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompile.export import relative_error
from edgecompile.schedules.coverage import missed_schedules

SIZE = "32"


@pytest.mark.emulator
@pytest.mark.parametrize("name", ["espnet", "espnet_v2_x0_5"])
def test_espnet_matches_torch_on_the_emulated_board(
    name: str, rootfs: Path, tmp_path: Path
) -> None:
    from edgecompile.builder import build
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.export import example_input, load_torch_model, run_torch

    result = build(name, "rpi4", output_dir=tmp_path, input_size=SIZE)
    assert missed_schedules(result.artifact.manifest.schedules) == []
    spec = result.artifact.manifest.inputs[0]
    data = example_input(spec["shape"], seed=7)
    (actual,) = run_library_in_rootfs(
        rootfs, result.artifact.library, {spec["name"]: data}, cpu="cortex-a72", timeout=300
    )
    expected = run_torch(load_torch_model(name, input_size=SIZE), data)
    assert relative_error(actual, expected) <= 1e-4
