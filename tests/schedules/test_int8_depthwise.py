"""The channel-blocked integer depthwise conv: its packed constants, which grouped convs it
takes, and its instructions on the host. Its numerics per shape class (3×3/5×5, stride 1/2, a
prime width, part blocks) are CASES in test_int8_kernels.py, exact against numpy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8 import INT8_DEPTHWISE_SCHEDULE
from edgecompile.schedules.int8.compute import OUT_BLOCK, is_depthwise, pack_depthwise_weight
from edgecompile.schedules.int8.schedule import has_blocked_kernel
from edgecompile.schedules.pipeline import ScheduleReport
from edgecompile.targets import resolve_target

from .test_int8_kernels import CASES, qdq_conv_model


def test_packed_depthwise_weight_and_bias_give_the_same_integers(
    folded_conv: Callable[..., Any],
) -> None:
    """Raw uint8 inputs × the packed weight + the packed bias equal Σ (x - zp)·w + bias per
    channel: the zero point's products left the bias, the part block's padding is zeros."""
    rng = np.random.default_rng(0)
    channels, kernel = 19, 5
    weight = rng.integers(-128, 128, (channels, 1, kernel, kernel)).astype(np.int8)
    bias = np.random.default_rng(3).integers(-5000, 5000, channels).astype(np.int32)
    plan = folded_conv(weight, bias=bias, groups=channels, data_zero_point=131)
    window = rng.integers(0, 256, (channels, kernel, kernel))

    packed, packed_bias = pack_depthwise_weight(plan)

    assert packed.shape == (2, kernel, kernel, OUT_BLOCK) and packed.dtype == np.int32
    assert not packed[1, :, :, channels - OUT_BLOCK :].any()
    lanes = packed.transpose(0, 3, 1, 2).reshape(-1, kernel, kernel)[:channels]
    actual = np.einsum("cyx,cyx->c", window, lanes.astype(np.int64)) + packed_bias
    expected = plan.bias + np.einsum("cyx,cyx->c", window - 131, weight[:, 0].astype(np.int64))
    np.testing.assert_array_equal(actual, expected)


def test_only_one_channel_per_group_is_depthwise(folded_conv: Callable[..., Any]) -> None:
    """A channel multiplier (two outputs per input channel) or a grouped conv with several
    channels per group keeps the NCHW kernel."""
    weight = np.ones((8, 1, 3, 3), np.int8)
    assert is_depthwise(folded_conv(weight, groups=8))
    assert not is_depthwise(folded_conv(weight, groups=4))  # 2 outputs per input channel
    assert not is_depthwise(folded_conv(np.ones((8, 2, 3, 3), np.int8), groups=4))
    assert not is_depthwise(folded_conv(np.ones((1, 1, 3, 3), np.int8), groups=1))


@pytest.mark.skipif(
    not has_blocked_kernel(resolve_target("host").tvm_target()), reason="this host has no VNNI"
)
def test_blocked_depthwise_multiplies_whole_vectors(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """On the host the depthwise conv is the blocked kernel: 16 channels' products in one
    vector multiply of widened uint8 inputs, not the NCHW kernel's per-pixel code."""
    conv = dataclasses.replace(CASES["depthwise-width13-relu6"], in_channels=32, out_channels=32)
    conv = dataclasses.replace(conv, groups=32)
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    model, _ = import_onnx(path, name="conv")
    executable, records = compile_relax(model.module, host_target, report=ScheduleReport())

    assert [r["schedule"] for r in records] == [INT8_DEPTHWISE_SCHEDULE]
    assembly = executable.mod.imports[0].inspect_source("asm")
    assert "vpmulld\t" in assembly and "zmm" in assembly
    assert "vpmovzxbd\t" in assembly


def test_row_tile_keeps_enough_accumulators() -> None:
    """Up to 14 pixels that divide the row; a prime row past that is one tile, not 1 pixel."""
    from edgecompile.schedules.int8.schedule import depthwise_row_tile

    assert [depthwise_row_tile(w) for w in (112, 56, 28, 7, 13)] == [14, 14, 14, 7, 13]
    assert depthwise_row_tile(17) == 17
    assert depthwise_row_tile(51) == 3  # 3 × 17: no whole row fits the registers
