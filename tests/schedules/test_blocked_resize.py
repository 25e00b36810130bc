"""ESPNet v2's decoder upsampling: a bilinear resize (scale 2, align_corners) of a blocked conv
output stays in NCHW[x]c -- not an unpack fused with TVM's NCHW resize (42% of
espnet_v2_seg's time as glue). Numerics against torch on the host; compile for rpi4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.compute import ceil_div
from edgecompile.schedules.cpu import cpu_info
from edgecompile.schedules.pipeline import PIPELINE_FAILED
from edgecompile.schedules.rules import SCHEDULED_BY_ATTR, UnpackNCHWc
from edgecompile.targets import resolve_target

from .test_conv_schedules import TOLERANCE, run_module, save_graph

IMAGE = (1, 3, 11, 13)  # odd sizes: the align_corners weights are not all halves
MIDDLE, OUT = 21, 5  # 21 channels: padding lanes on 4, 8 and 16 lanes


def conv_resize_conv(
    directory: Path,
    last_conv: bool = True,
    image: tuple[int, int, int, int] = IMAGE,
    middle: int = MIDDLE,
) -> tuple[Path, dict[str, np.ndarray]]:
    """3×3 conv to ``middle`` channels → bilinear ×2 resize with aligned corners (as
    ``nn.Upsample`` in zoo/espnet_v2.py exports) → 1×1 conv; without ``last_conv`` the resize
    is the output, as ESPNet v2's logits are."""
    rng = np.random.default_rng(41)
    weights = {
        "w0": rng.standard_normal((middle, image[1], 3, 3)).astype("float32") / 4,
        "w1": rng.standard_normal((OUT, middle, 1, 1)).astype("float32") / 4,
        "scales": np.array([1.0, 1.0, 2.0, 2.0], dtype="float32"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "Resize",
            ["c0", "", "scales"],
            ["up"],
            mode="linear",
            coordinate_transformation_mode="align_corners",
        ),
        helper.make_node("Conv", ["up", "w1"], ["output"]),
    ]
    double = [image[2] * 2, image[3] * 2]
    output = {"output": [1, OUT, *double]}
    if not last_conv:
        nodes[-1:] = []
        nodes[-1].output[0] = "output"
        del weights["w1"]
        output = {"output": [1, middle, *double]}
    path = save_graph(directory / "upsample.onnx", nodes, weights, {"input": list(image)}, output)
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    x = F.conv2d(torch.from_numpy(data.astype("float64")), t["w0"], padding=1)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.conv2d(up, t["w1"]).numpy() if "w1" in t else up.numpy()


def unpacks_and_resizes(calls: list[str]) -> tuple[list[str], list[str]]:
    return [c for c in calls if "unpack" in c], [c for c in calls if "resize" in c]


def test_resize_of_blocked_value_stays_blocked_and_matches_torch(
    tmp_path: Path, host_target: Any
) -> None:
    path, weights = conv_resize_conv(tmp_path)
    module, report = optimize(import_onnx(path, name="upsample")[0].module, host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(module)
    unpacks, resizes = unpacks_and_resizes(calls)
    # The only unpack is the model's output; the resize reads and writes the blocked layout.
    assert unpacks == [calls[-1]], calls
    assert len(resizes) == 1 and "nchwc" in resizes[0], calls

    data = np.random.default_rng(42).standard_normal(IMAGE).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE


def _resize_loop_extents(func: Any) -> list[int]:
    """Extents of the loops around the scheduled kernel's resize block, outermost first."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    return [int(sch.get(loop).extent) for loop in sch.get_loops(sch.get_sblock("resize"))]


@pytest.mark.parametrize("last_conv", [True, False])
def test_each_resized_pixel_computes_its_channel_blocks_together(
    last_conv: bool, tmp_path: Path, host_target: Any
) -> None:
    """In the resize's own kernel and inside the output's unpack, the loop over channel blocks
    runs inside the loop over pixels (then lanes): a pixel's source indices and weights,
    most of the resize's instructions, are computed once for all its blocks."""
    path, _ = conv_resize_conv(tmp_path, last_conv=last_conv)
    module, _ = optimize(import_onnx(path, name="upsample")[0].module, host_target)
    kernel = next(name for name in called_kernels(module) if "resize" in name)
    lanes = cpu_info(host_target).lanes
    blocks = ceil_div(MIDDLE, lanes)
    width = 2 * IMAGE[3]
    *_, pixels, channel_blocks, lane = _resize_loop_extents(module[kernel])
    assert (pixels, channel_blocks, lane) == (width, blocks, lanes)


def test_rpi4_blocked_resize_compiles(tmp_path: Path) -> None:
    path, _ = conv_resize_conv(tmp_path)
    relax_model = import_onnx(path, name="upsample")[0]
    target = resolve_target("rpi4").tvm_target()
    module, _ = optimize(relax_model.module, target)
    calls = called_kernels(module)
    unpacks, resizes = unpacks_and_resizes(calls)
    assert unpacks == [calls[-1]] and len(resizes) == 1, calls
    executable, _ = compile_relax(relax_model.module, target)
    assert executable is not None


def test_resized_output_is_resampled_row_by_row_in_its_unpack(
    tmp_path: Path, host_target: Any
) -> None:
    """The resize as the model's output: one kernel, which our unpack schedule takes, the
    blocked resize computed a row at a time inside its row loop."""
    path, weights = conv_resize_conv(tmp_path, last_conv=False)
    module, report = optimize(import_onnx(path, name="upsample")[0].module, host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(module)
    assert len(calls) == 2 and "resize2d_nchwc" in calls[-1] and "unpack" in calls[-1], calls
    scheduled = module[calls[-1]].script()
    assert f'"{SCHEDULED_BY_ATTR}": "{UnpackNCHWc.schedule_name}"' in scheduled
    assert "T.parallel" in scheduled and "T.vectorized" in scheduled

    data = np.random.default_rng(43).standard_normal(IMAGE).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE


@pytest.mark.parametrize("model", ["shufflenet_v1_g2_x0_25", "shufflenet_v1_g4_x0_25"])
def test_a_kernel_without_blocks_is_declined_not_a_failed_pipeline(
    model: str, tmp_path: Path
) -> None:
    # ShuffleNet v1 with 2 or 4 groups concatenates blocked parts whose channels do not fill
    # whole blocks: a hand-written concat of vector shuffles, no block under its root. The
    # unpack rule once indexed its last block and failed the whole pipeline (every heavy op of
    # 18 zoo models fell back to TVM's default, up to 29x slower than ORT).
    from edgecompile.builder import prepare_model

    relax_model, _, _ = prepare_model(model, tmp_path, input_size=(32, 32))
    _, records = compile_relax(relax_model.module, resolve_target("host").tvm_target())
    assert records and not [
        r for r in records if "fallback" in r and PIPELINE_FAILED in r["fallback"]
    ]
