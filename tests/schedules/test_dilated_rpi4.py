"""ESP modules' dilated 3×3 branches on the rpi4 preset (4-lane NEON): every dilation the issue
names (2, 4, 8), on a prime width, scheduled by our dense conv rule and compiled for AArch64.
The host numerics of the same shapes are in ``test_transposed_conv.py``; this is their NEON
build, which before covered dilation 4 only."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompile.schedules import DENSE, assert_no_missed_schedules, compile_relax
from edgecompile.targets import resolve_target

from .test_transposed_conv import Layer, import_layers, weights_for


@pytest.mark.parametrize("dilation", [2, 8])
def test_dilated_branch_compiles_for_rpi4(dilation: int, tmp_path: Path) -> None:
    layers = [Layer(12, 12, 3, pad=dilation, dilation=dilation, relu=True)]
    relax_module = import_layers(layers, weights_for(layers), (1, 12, 19, 13), tmp_path)
    executable, records = compile_relax(relax_module, resolve_target("rpi4").tvm_target())
    assert [r["schedule"] for r in records] == [DENSE]
    assert [r.get("dilation") for r in records] == [[dilation, dilation]]
    assert_no_missed_schedules(records, f"rpi4 dilation {dilation}")
    assert executable is not None
