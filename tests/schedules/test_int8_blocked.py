"""The channel-blocked integer conv (AVX-512 VNNI): its packed constants, its instruction, and
the NCHW kernel kept for targets without VNNI or AVX2. Numerics of every conv kind on the host
are in test_int8_kernels.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8 import INT8_SCHEDULE, INT8_VNNI_SCHEDULE
from edgecompile.schedules.int8.compute import IN_BLOCK, OUT_BLOCK, pack_weight
from edgecompile.schedules.int8.schedule import has_blocked_kernel
from edgecompile.schedules.pipeline import ScheduleReport
from edgecompile.targets import resolve_target

from .test_int8_kernels import CASES, SIZE, build_and_run, parameters, qdq_conv_model, reference


def test_packed_weight_and_bias_give_the_same_integers(folded_conv: Callable[..., Any]) -> None:
    """Raw uint8 inputs × the packed weight + the packed bias equal Σ (x - zp)·w + bias: the
    zero point's products left the bias, the padded channels add nothing."""
    rng = np.random.default_rng(0)
    out_channels, in_channels, kernel = 19, 6, 3
    weight = rng.integers(-128, 128, (out_channels, in_channels, kernel, kernel)).astype(np.int8)
    bias = rng.integers(-5000, 5000, out_channels).astype(np.int32)
    plan = folded_conv(weight, bias=bias, data_zero_point=117)
    window = rng.integers(0, 256, (in_channels, kernel, kernel))

    packed, packed_bias = pack_weight(plan)

    out_blocks, in_blocks = packed.shape[:2]
    assert packed.shape == (out_blocks, in_blocks, kernel, kernel, OUT_BLOCK, IN_BLOCK)
    assert (out_blocks * OUT_BLOCK, in_blocks * IN_BLOCK) == (32, 8)
    # The padded input channels hold the zero point, as the kernel's padding does.
    padded = np.full((in_blocks * IN_BLOCK, kernel, kernel), plan.data_zero_point)
    padded[:in_channels] = window
    blocked = padded.reshape(in_blocks, IN_BLOCK, kernel, kernel).transpose(0, 2, 3, 1)
    raw = np.einsum("cyxi,bcyxoi->bo", blocked, packed.astype(np.int64)).reshape(-1)
    actual = raw[:out_channels] + packed_bias
    expected = bias + np.einsum("cyx,ocyx->o", window - plan.data_zero_point, weight.astype(int))
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.skipif(
    not has_blocked_kernel(resolve_target("host").tvm_target()), reason="this host has no VNNI"
)
def test_blocked_conv_runs_on_vpdpbusd(
    tmp_path: Path, host_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """The host's blocked kernel multiplies with VNNI's instruction, not widened scalar code."""
    path = qdq_conv_model(CASES["pointwise-two-blocks"], tmp_path, write_qdq_model)
    model, _ = import_onnx(path, name="conv")
    executable, records = compile_relax(model.module, host_target, report=ScheduleReport())

    assert [r["schedule"] for r in records] == [INT8_VNNI_SCHEDULE]
    assert "vpdpbusd" in executable.mod.imports[0].inspect_source("asm")


def test_target_without_avx2_keeps_the_nchw_kernel(
    tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """x86-64-v2 (SSE4.2: no VNNI, no AVX2): the conv is folded to the NCHW kernel, still
    exact. AVX2's blocked kernels: test_int8_avx2.py."""
    target = resolve_target("x86-64-v2").tvm_target()
    assert not has_blocked_kernel(target)
    conv = CASES["pointwise-two-blocks"]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    x_q = np.random.default_rng(1).integers(0, 256, (1, conv.in_channels, SIZE, SIZE))
    x = ((x_q - int(params["x_zero_point"])) * np.float32(params["x_scale"])).astype(np.float32)

    actual, records = build_and_run(path, target, x)

    assert [r["schedule"] for r in records] == [INT8_SCHEDULE]
    y_scale, y_zp = np.float32(params["y_scale"]), int(params["y_zero_point"])
    actual_q = np.rint(actual / y_scale).astype(np.int64) + y_zp
    np.testing.assert_array_equal(actual_q, reference(conv, params, x_q))


def test_register_tile_keeps_enough_accumulators() -> None:
    """2 blocks × the largest dividing pixel count while that gives enough accumulators; a
    prime row (13) takes the whole row of one block instead of 2 × 1 accumulators."""
    from edgecompile.schedules.int8.schedule import vnni_register_tile

    assert vnni_register_tile(4, 56) == (2, 8)
    assert vnni_register_tile(3, 7) == (1, 7)
    assert vnni_register_tile(2, 13) == (1, 13)
    assert vnni_register_tile(63, 13) == (1, 13)
    assert vnni_register_tile(4, 111) == (2, 3)  # 111 = 3 × 37: no better whole divisor
