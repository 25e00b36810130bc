"""The channel-blocked integer kernels on AVX2 without VNNI (the ``x86-64-v3`` target, which
this host runs natively): each kernel kind × shape class exact against the numpy integer
reference, the conv's exact ``vpmaddwd`` (never VNNI's ``vpdpbusd``, never the saturating
``vpmaddubsw``), and a small int8 model within 2 steps of ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.importer import import_onnx
from edgecompile.schedules.int8 import (
    INT8_AVX2_SCHEDULE,
    INT8_DEPTHWISE_SCHEDULE,
    INT8_SCHEDULE,
    output_steps,
)
from edgecompile.schedules.int8.compute import AVX2_IN_BLOCK, OUT_BLOCK, pack_weight
from edgecompile.schedules.int8.schedule import avx2_register_tile
from edgecompile.targets import resolve_target

from .test_int8_kernels import (
    CASES,
    Conv,
    build_and_run,
    conv_input,
    output_codes,
    parameters,
    qdq_conv_model,
    reference,
)


@pytest.fixture(scope="module")
def avx2_target() -> Any:
    return resolve_target("x86-64-v3").tvm_target()


def _expected_schedule(conv: Conv) -> str:
    if conv.groups == 1:
        return INT8_AVX2_SCHEDULE
    return INT8_DEPTHWISE_SCHEDULE if conv.groups == conv.in_channels else INT8_SCHEDULE


#: The x86 kernels' shape classes (test_int8_kernels.py): 1×1 and 3×3, stride 1 and 2, input
#: channels that leave a part pair (13, 3) and outputs a part block (33, 17), a prime width,
#: ReLU and ReLU6; the depthwise conv's 3×3/5×5, stride 1/2, part and whole blocks; and a
#: 7-wide output (MobileNet's last blocks) whose AVX2 tile is not the VNNI one.
AVX2_CASES = {
    **{
        name: CASES[name]
        for name in (
            "pointwise-two-blocks",
            "3x3-three-blocks",
            "3x3-stride2-relu6",
            "pointwise-width13",
            "depthwise-width13-relu6",
            "depthwise-stride2-width13",
            "depthwise-5x5-stride2-relu6",
        )
    },
    "3x3-stride2-width14": Conv(16, 32, 3, stride=2, activation="Clip", size=14),
}


@pytest.mark.parametrize("case", AVX2_CASES)
def test_avx2_kernels_are_exact(
    case: str, tmp_path: Path, avx2_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """Each kernel kind × shape class on x86-64-v3 equals the numpy integer reference."""
    conv = AVX2_CASES[case]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    x_q, x = conv_input(conv, params)

    actual, records = build_and_run(path, avx2_target, x)

    assert [r["schedule"] for r in records] == [_expected_schedule(conv)]
    actual_q = output_codes(actual, params)
    expected_q = reference(conv, params, x_q)
    assert np.unique(expected_q).size > 10  # the test data spans the output range
    np.testing.assert_array_equal(actual_q, expected_q)


def test_packed_pairs_are_vpmaddwd_operands(folded_conv: Callable[..., Any]) -> None:
    """The AVX2 weight: int16, ``[O/16, C/2, KH, KW, 16, 2]``: within a block, output
    channel o's two input channels at int16 lanes 2o and 2o+1 (``vpmaddwd`` sums exactly
    those two products into int32 lane o), the part pair and part block zero."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (19, 5, 3, 3)).astype(np.int8)

    packed, _ = pack_weight(folded_conv(weight), AVX2_IN_BLOCK)

    assert packed.dtype == np.int16 and packed.shape == (2, 3, 3, 3, OUT_BLOCK, AVX2_IN_BLOCK)
    lanes = packed[1, 0, 2, 1].reshape(-1)  # block 1, input channels 0-1, tap (2, 1)
    assert lanes[2 * 2] == weight[16 + 2, 0, 2, 1] and lanes[2 * 2 + 1] == weight[18, 1, 2, 1]
    assert not packed[:, 2, ..., 1].any()  # input channel 5 of 5: the pair's padding
    assert not packed[1, :, :, :, 3:].any()  # output channels 19..31


def _extreme_conv(folded_conv: Callable[..., Any]) -> tuple[Any, np.ndarray]:
    """A 3×3 conv whose every input pair sums past int16 (255 · 127 · 2 > 32767): the whole
    uint8 range against the whole int8 one, a zero point of 0 so nothing is taken off."""
    rng = np.random.default_rng(2)
    out_channels, in_channels = 24, 6
    weight = rng.choice(
        np.array([-128, -127, 127, 126], np.int8), (out_channels, in_channels, 3, 3)
    )
    weight[:8] = 127  # whole channels at the top of the range: every pair sum is 64 770
    weight[8:12] = -128
    # Outputs spread over the uint8 range: ±(255 · 128 · 54) scaled to ±120 around 128.
    multiplier = np.full(out_channels, 120 / (255 * 128 * in_channels * 9), np.float32)
    plan = folded_conv(weight, multiplier=multiplier, out_zero_point=128, padding=(1, 1, 1, 1))
    data = rng.choice(np.array([0, 254, 255], np.uint8), (1, in_channels, 8, 8))
    data[:, :, :4] = 255
    return plan, data


def test_pair_sums_past_int16_stay_exact(folded_conv: Callable[..., Any], avx2_target: Any) -> None:
    """The kernel as the AVX2 rule schedules it, on inputs and weights whose pair sums
    ``vpmaddubsw`` would saturate, equals numpy; its assembly multiplies with ``vpmaddwd``,
    never VNNI's ``vpdpbusd`` (absent on AVX2) nor the saturating ``vpmaddubsw``."""
    import tvm
    from tvm import te

    from edgecompile.schedules.int8 import Int8ConvAvx2
    from edgecompile.schedules.int8.compute import blocked_integer_conv2d

    plan, values = _extreme_conv(folded_conv)
    weight_values, bias_values = pack_weight(plan, AVX2_IN_BLOCK)
    data = te.placeholder(values.shape, "uint8", name="data")
    weight = te.placeholder(weight_values.shape, "int16", name="weight")
    bias = te.placeholder(bias_values.shape, "int32", name="bias")
    multiplier = te.placeholder(plan.multiplier.shape, "float32", name="multiplier")
    out = blocked_integer_conv2d(data, weight, bias, multiplier, plan)
    func = te.create_prim_func([data, weight, bias, multiplier, out])

    scheduled = Int8ConvAvx2().try_schedule(func, avx2_target)
    kernel = tvm.compile(scheduled.mod, avx2_target)
    output = np.zeros([int(d) for d in out.shape], np.uint8)
    args = [values, weight_values, bias_values, plan.multiplier, output]
    tensors = [tvm.runtime.tensor(a) for a in args]
    kernel(*tensors)

    padded = np.pad(values[0].astype(np.int64), [(0, 0), (1, 1), (1, 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    acc = np.einsum("cyxij,ocij->oyx", windows, plan.weight.astype(np.int64))
    scaled = acc.astype(np.float32) * plan.multiplier[:, None, None]
    expected = np.rint(np.clip(scaled, -128, 127)).astype(np.int64) + 128
    assert np.ptp(expected[:8]) > 50  # the top-of-range channels spread over the outputs
    np.testing.assert_array_equal(tensors[-1].numpy()[0], expected)
    assembly = kernel.mod.inspect_source("asm")
    assert "vpmaddwd\t" in assembly
    assert "vpdpbusd" not in assembly and "vpmaddubsw" not in assembly


def test_avx2_register_tile_fits_sixteen_registers() -> None:
    """(block, pixel) pairs of two accumulators each, at most 6 (12 of 16 registers): 2 blocks
    × 3 pixels where they divide, a 7-wide row in 1-pixel steps of 2 blocks (no tile of 7
    fits), never the VNNI tile's 2 × 8."""
    assert avx2_register_tile(4, 56) == (2, 2)
    assert avx2_register_tile(4, 12) == (2, 3)
    assert avx2_register_tile(2, 7) == (2, 1)
    assert avx2_register_tile(1, 13) == (1, 1)
    assert all(
        blocks * pixels <= 6
        for out_blocks in (1, 2, 3, 4, 6)
        for width in (7, 13, 14, 28, 56, 111, 112)
        for blocks, pixels in [avx2_register_tile(out_blocks, width)]
    )


def test_small_model_stays_blocked_and_within_two_steps_of_onnxruntime(
    tmp_path: Path, avx2_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """MobileNet v2's block (expand 1×1 → depthwise 3×3 → project 1×1 + the residual add) on
    x86-64-v3: the convs hand each other the blocked layout as on VNNI, and the output is
    within the build's 2 steps of ONNX Runtime on the same QDQ model."""
    import onnxruntime as ort

    from .test_int8_layouts import _input, _output_step, inverted_residual
    from .test_int8_layouts import build_and_run as build_and_run_block

    path = inverted_residual(tmp_path, write_qdq_model, residual=True)
    x = _input(path)

    actual, report, records = build_and_run_block(path, avx2_target, x)

    assert report.int8.folded == {0, 1, 2}
    assert report.int8.blocked_outputs == {0, 1}  # the expand's and the depthwise's
    assert [r["schedule"] for r in records][:3] == [
        INT8_AVX2_SCHEDULE,
        INT8_DEPTHWISE_SCHEDULE,
        INT8_AVX2_SCHEDULE,
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    assert np.abs(actual - theirs).max() <= 2 * _output_step(path)


def test_integer_glue_runs_blocked(
    tmp_path: Path, avx2_target: Any, write_qdq_model: Callable[..., Path]
) -> None:
    """SqueezeNet's fire module and the max pool after it on x86-64-v3: blocked uint8 from the
    squeeze to the pool (the concat of whole blocks and the pool need no VNNI), the pool on
    the pool rule, within 2 steps of ONNX Runtime."""
    import onnxruntime as ort

    from edgecompile.schedules.compute import POOL

    from .test_int8_glue import _input as glue_input
    from .test_int8_glue import _run, fire_module

    path = fire_module(tmp_path, write_qdq_model)
    x = glue_input(path)

    actual, report, records = _run(path, avx2_target, x)

    assert report.int8.blocked_outputs == {0, 1, 2}  # squeeze, both expands
    assert next(r for r in records if r["op"] == "pool")["schedule"] == POOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    (step,) = output_steps(import_onnx(path, name="glue")[0].module)
    assert np.abs(actual - theirs).max() <= 2 * step
