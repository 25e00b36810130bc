"""The unpack of a model's output (ESPNet v2's logits, resized to the image in NCHW[x]c inside
the unpack's own kernel) runs a tile of ``lanes`` columns at a time, every channel of the tile
before the next: channel by channel along a whole row, each strided read went through a row of
blocks too large for L1. Loop order checked on the scheduled kernel; numerics against torch on
the host; compiled for rpi4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tvm import s_tir, tirx

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.cpu import cpu_info
from edgecompile.targets import resolve_target

from .test_blocked_resize import conv_resize_conv, reference
from .test_conv_schedules import TOLERANCE, run_module

# The ×2 output is 32 columns wide: whole tiles of 4, 8 and 16 lanes, more than one of each.
IMAGE = (1, 3, 5, 16)
CHANNELS = 19  # two blocks on 16 lanes, the second mostly padding, as ESPNet v2's logits


def conv_resize(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """3×3 conv → bilinear ×2 resize with aligned corners, the model's output."""
    return conv_resize_conv(directory, last_conv=False, image=IMAGE, middle=CHANNELS)


def unpack_loops(module: Any) -> tuple[list[Any], list[Any]]:
    """The loops around the output kernel's unpack block and around its resize block."""
    kernel = called_kernels(module)[-1]
    assert "unpack" in kernel and "resize" in kernel, kernel
    sch = s_tir.Schedule(module[kernel])
    unpack, resize = sch.get_sblock("unpack_nchwc"), sch.get_sblock("resize")
    return [sch.get(loop) for loop in sch.get_loops(unpack)], [
        sch.get(loop) for loop in sch.get_loops(resize)
    ]


def test_output_unpack_runs_tiles_of_lanes_with_every_channel(
    tmp_path: Path, host_target: Any
) -> None:
    path, weights = conv_resize(tmp_path)
    module, report = optimize(import_onnx(path, name="resize")[0].module, host_target)
    assert report.schedules.failed == {}
    lanes = cpu_info(host_target).lanes
    loops, resize_loops = unpack_loops(module)
    extents = [int(loop.extent) for loop in loops]
    # Rows (parallel), tiles of a row, channels, the tile's columns (vectorized).
    assert extents == [IMAGE[2] * 2, IMAGE[3] * 2 // lanes, CHANNELS, lanes], extents
    assert loops[0].kind == tirx.ForKind.PARALLEL
    assert loops[-1].kind == tirx.ForKind.VECTORIZED
    # The resize is computed per tile, under the same two loops.
    assert resize_loops[0].same_as(loops[0]) and resize_loops[1].same_as(loops[1])

    data = np.random.default_rng(8).standard_normal(IMAGE).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE


def test_rpi4_tiled_output_unpack_compiles(tmp_path: Path) -> None:
    path, _ = conv_resize(tmp_path)
    relax_model = import_onnx(path, name="resize")[0]
    target = resolve_target("rpi4").tvm_target()
    module, _ = optimize(relax_model.module, target)
    loops, _ = unpack_loops(module)
    assert [int(loop.extent) for loop in loops][1:] == [IMAGE[3] * 2 // 4, CHANNELS, 4]
    executable, _ = compile_relax(relax_model.module, target)
    assert executable is not None
