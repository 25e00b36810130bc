"""ESPNet v2's pyramid pools: ``adaptive_avg_pool2d`` to a size that does not divide the input,
which torch exports as transpose → gather of constant windows → transpose → mean (scale 1.5:
windows of one size) or masked sums (scale 0.1: windows of several sizes). On a blocked value
the first is one blocked kernel (``window_mean_nchwc``), the second gathers its windows straight
from the blocked tensor (``window_gather``), not after an unpack to ``(H, W, N, C)`` -- those
unpacks and the transposes back were 21% of espnet_v2_seg's time. Numerics against torch on
the host; compile for rpi4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.export import TorchModel, export_onnx, relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.targets import resolve_target

from .test_conv_schedules import TOLERANCE, run_module

# (input height, width), pooled sizes → the kernel that takes each pool. 6 × 9 → 4 × 6:
# windows of 2 that overlap (1.5 is the ratio both ways); 4 × 8 → 5 × 5: windows of 1 to 3;
# 8 × 16 → 5 × 8 and 5 × 5 (ESPNet v2's pyramid at scales 0.5 and 0.1 at 1/8 of 64 × 128):
# two gathers of one transpose.
CASES = {
    "same_windows": ((6, 9), ((4, 6),), "window_mean_nchwc"),
    "mixed": ((4, 8), ((5, 5),), "window_gather"),
    "two_pools": ((8, 16), ((5, 8), (5, 5)), "window_gather"),
}
# 21 channels leave padding lanes on 4, 8 and 16 lanes.
MIDDLE, OUT = 21, 5


class ConvPoolConv(nn.Module):
    """3×3 conv → adaptive average pools (as ESPNet v2's ``EfficientPyramidPool``), joined
    side by side → 1×1 conv."""

    def __init__(self, sizes: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.sizes = sizes
        self.first = nn.Conv2d(3, MIDDLE, 3, padding=1, bias=False)
        self.last = nn.Conv2d(MIDDLE, OUT, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        pooled = [F.adaptive_avg_pool2d(x, size) for size in self.sizes]
        return self.last(pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=3))


def exported(directory: Path, case: str) -> tuple[Any, nn.Module, tuple[int, ...]]:
    (height, width), sizes, _ = CASES[case]
    torch.manual_seed(3)
    module = ConvPoolConv(sizes).eval()
    image = (1, 3, height, width)
    model = TorchModel("pyramid_pool", module, image, "classification", "test")
    onnx_model = export_onnx(model, directory / "pyramid_pool.onnx")
    return import_onnx(onnx_model.path, name="pyramid_pool")[0], module, image


@pytest.mark.parametrize("case", list(CASES))
def test_adaptive_pool_of_blocked_value_reads_it_blocked_and_matches_torch(
    case: str, tmp_path: Path, host_target: Any
) -> None:
    relax_model, module, image = exported(tmp_path, case)
    optimized, report = optimize(relax_model.module, host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(optimized)
    # No transpose or TVM gather left, and the only unpack is the model's output.
    assert not [c for c in calls if "transpose" in c or "gather_nd" in c], calls
    assert [c for c in calls if "unpack" in c] == [calls[-1]], calls
    _, sizes, kernel = CASES[case]
    assert len([c for c in calls if kernel in c]) == len(sizes), calls

    data = np.random.default_rng(5).standard_normal(image).astype("float32")
    actual = run_module(optimized, host_target, data)
    with torch.no_grad():
        expected = module.double()(torch.from_numpy(data.astype("float64"))).numpy()
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("case", ["same_windows", "mixed"])
def test_rpi4_window_kernels_compile(case: str, tmp_path: Path) -> None:
    relax_model, _, _ = exported(tmp_path, case)
    target = resolve_target("rpi4").tvm_target()
    optimized, _ = optimize(relax_model.module, target)
    assert [c for c in called_kernels(optimized) if CASES[case][2] in c]
    executable, _ = compile_relax(relax_model.module, target)
    assert executable is not None


def test_large_index_tensors_built_from_broadcast_grids_are_read_as_constants() -> None:
    """At 512 × 1024 the importer hands the pool's indices over as two broadcast grids joined on
    a last axis (concat of expand_dims of broadcast_to of constants), not one constant: the top
    pyramid level's pool stayed an unpack + transpose (9.7% of espnet_v2_seg) until read so."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of
    from edgecompile.schedules.patterns import _constant_tensor

    rows = np.arange(3, dtype="int64").reshape(3, 1, 1, 1)
    cols = np.arange(4, dtype="int64").reshape(1, 1, 4, 1)
    shape = (3, 2, 4, 2)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1,), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            grids = [
                builder.emit(
                    relax.op.expand_dims(
                        builder.emit(relax.op.broadcast_to(relax.const(grid), shape)), -1
                    )
                )
                for grid in (rows, cols)
            ]
            indices = builder.emit_output(relax.op.concat(grids, axis=-1))
        builder.emit_func_output(indices)
    main = builder.get()["main"]
    bindings = bindings_of(main)
    expected = np.stack([np.broadcast_to(rows, shape), np.broadcast_to(cols, shape)], axis=-1)
    np.testing.assert_array_equal(_constant_tensor(indices, bindings), expected)
