"""The NEON blocked integer conv of ARM boards: ``sdot`` on rpi5 (``+dotprod``), the widening
``smull``/``sadalp`` sequence on rpi4 (``vmull``/``vpadal`` on 32-bit ARM); its packed constants
and shifted input (exact on this host), its instructions (the boards' assembly), and its
integers on the emulated cores. The same for the blocked depthwise conv on ARM (``smlal``;
``vmlal.s16`` on 32-bit ARM)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8 import (
    INT8_NEON_DEPTHWISE_SCHEDULE,
    INT8_SDOT_SCHEDULE,
    INT8_SMULL_SCHEDULE,
    INT8_VMLAL_DEPTHWISE_SCHEDULE,
    INT8_VMULL_SCHEDULE,
)
from edgecompile.schedules.int8.graph import QuantizedConv
from edgecompile.schedules.int8.neon import (
    IN_BLOCK,
    OUT_BLOCK,
    SMULL_PAIRS,
    Int8ConvSdot,
    Int8ConvSmull,
    Int8ConvVmull,
    Int8DepthwiseNeon,
    Int8DepthwiseVmlal,
    depthwise_pixels,
    neon_instruction,
    neon_integer_conv2d,
    pack_neon_depthwise_weight,
    pack_neon_weight,
    register_tile,
)
from edgecompile.schedules.pipeline import ScheduleReport
from edgecompile.schedules.spills import module_spills
from edgecompile.targets import resolve_target

from .test_int8_kernels import (
    CASES,
    SIZE,
    Conv,
    conv_input,
    output_codes,
    parameters,
    qdq_conv_model,
    reference,
)

#: The board, its instruction, the conv's schedule, and the core qemu emulates for it.
BOARDS = {
    "rpi5": ("sdot", INT8_SDOT_SCHEDULE, "cortex-a76"),
    "rpi4": ("smull", INT8_SMULL_SCHEDULE, "cortex-a72"),
    "armv7": ("vmull", INT8_VMULL_SCHEDULE, "max"),
}
#: The depthwise conv's schedule on each board, and its multiply-accumulate.
DEPTHWISE_BOARDS = {
    "rpi5": (INT8_NEON_DEPTHWISE_SCHEDULE, "smlal"),
    "rpi4": (INT8_NEON_DEPTHWISE_SCHEDULE, "smlal"),
    "armv7": (INT8_VMLAL_DEPTHWISE_SCHEDULE, "vmlal.s16"),
}
#: The widening instructions' names on each architecture: multiply, pairwise accumulate.
WIDENING = {"smull": ("smull", "sadalp"), "vmull": ("vmull.s8", "vpadal.s16")}
#: Shapes only the NEON kernels' tiles need, beside test_int8_kernels.CASES.
NEON_CASES = {"3x3-width16": Conv(7, 33, 3, activation="Relu", size=16)}


def random_plan(rng: np.random.Generator, **conv: Any) -> QuantizedConv:
    """A folded conv with random integers: uint8 input with a zero point, int8 weights
    (``groups``: a depthwise conv when it equals ``out_channels`` and ``in_channels`` is 1)."""
    out_channels, in_channels, kernel = conv["out_channels"], conv["in_channels"], conv["kernel"]
    pad = kernel // 2
    return QuantizedConv(
        data=None,
        data_zero_point=int(rng.integers(0, 256)),
        weight=rng.integers(-128, 128, (out_channels, in_channels, kernel, kernel)).astype(np.int8),
        bias=rng.integers(-20000, 20000, out_channels).astype(np.int32),
        multiplier=rng.uniform(1e-4, 4e-3, out_channels).astype(np.float32),
        out_zero_point=int(rng.integers(0, 256)),
        out_dtype="uint8",
        low=0,
        high=255,
        strides=(conv.get("stride", 1),) * 2,
        padding=(pad, pad, pad, pad),
        dilation=(1, 1),
        groups=conv.get("groups", 1),
        op_index=0,
    )


def numpy_conv(plan: QuantizedConv, x_q: np.ndarray) -> np.ndarray:
    """The folded conv in numpy: Σ (x - zp)·w in int64 (the padding a real 0), + bias, then
    the kernel's requantization (float32 multiply, clamp, round half to even). A depthwise
    conv (``plan.groups`` channels, one weight each) multiplies channel by channel."""
    top, left, bottom, right = plan.padding
    stride = plan.strides[0]
    data = np.pad(
        x_q.astype(np.int64) - plan.data_zero_point, [(0, 0), (0, 0), (top, bottom), (left, right)]
    )
    _, _, kernel_h, kernel_w = plan.weight.shape
    out_h = (data.shape[2] - kernel_h) // stride + 1
    out_w = (data.shape[3] - kernel_w) // stride + 1
    acc = np.zeros((x_q.shape[0], plan.weight.shape[0], out_h, out_w), np.int64)
    for ky in range(kernel_h):
        for kx in range(kernel_w):
            window = data[
                :, :, ky : ky + stride * out_h : stride, kx : kx + stride * out_w : stride
            ]
            taps = plan.weight[:, :, ky, kx].astype(np.int64)
            if plan.groups > 1:
                acc += taps[:, 0][None, :, None, None] * window
            else:
                acc += np.einsum("oc,nchw->nohw", taps, window)
    acc += plan.bias.astype(np.int64)[None, :, None, None]
    scaled = acc.astype(np.float32) * plan.multiplier[None, :, None, None]
    low, high = plan.low - plan.out_zero_point, plan.high - plan.out_zero_point
    return (np.rint(np.clip(scaled, low, high)) + plan.out_zero_point).astype(plan.out_dtype)


def assert_gives_numpy_integers(
    kernel: Any, plan: QuantizedConv, x_q: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> None:
    """``kernel(x_q, weight, bias, multiplier, out)`` writes exactly :func:`numpy_conv`'s
    integers, over data that spans the output range."""
    import tvm

    expected = numpy_conv(plan, x_q)
    args = [x_q, weight, bias, plan.multiplier, np.zeros(expected.shape, np.uint8)]
    tensors = [tvm.runtime.tensor(a) for a in args]
    kernel(*tensors)

    assert np.unique(expected).size > 10  # the data spans the output range
    np.testing.assert_array_equal(tensors[-1].numpy(), expected)


@pytest.mark.parametrize(
    "conv",
    [
        # An input block padded from 6 channels, three output blocks, one padded from 10.
        {"in_channels": 6, "out_channels": 10, "kernel": 3},
        {"in_channels": 13, "out_channels": 32, "kernel": 1},
        {"in_channels": 5, "out_channels": 9, "kernel": 3, "stride": 2},
    ],
)
@pytest.mark.parametrize("pairs", [1, SMULL_PAIRS], ids=["sdot", "smull"])
def test_shifted_input_and_packed_constants_give_the_same_integers(
    conv: dict[str, int], pairs: int
) -> None:
    """The NEON compute (input shifted to int8, zero point and shift in the bias, blocked
    weights; for smull two accumulators per channel) run on this host without its intrinsic:
    exactly the NCHW integers."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(conv["in_channels"])
    plan = random_plan(rng, **conv)
    # Inputs at both ends of uint8: the shift must neither wrap nor saturate.
    x_q = rng.integers(0, 256, (1, conv["in_channels"], SIZE, SIZE)).astype(np.uint8)
    x_q[0, 0, 0, :2] = (0, 255)
    weight, bias = pack_neon_weight(plan, pairs)
    assert weight.shape[4:] == ((OUT_BLOCK, IN_BLOCK) if pairs == 1 else (OUT_BLOCK, 2, 2))

    data = te.placeholder(x_q.shape, "uint8")
    weight_in = te.placeholder(weight.shape, "int8")
    bias_in = te.placeholder(bias.shape, "int32")
    multiplier = te.placeholder(plan.multiplier.shape, "float32")
    out = neon_integer_conv2d(data, weight_in, bias_in, multiplier, plan)
    kernel = tvm.compile(te.create_prim_func([data, weight_in, bias_in, multiplier, out]), "llvm")
    assert_gives_numpy_integers(kernel, plan, x_q, weight, bias)


def test_each_board_gets_its_instruction() -> None:
    """sdot where the core has the dot-product extension (the rpi5 preset says so), the
    widening sequence on the other ARM boards (32-bit ARM's names for it), none on x86."""
    assert "+dotprod" in resolve_target("rpi5").target["mattr"]
    expected = {
        "rpi5": "sdot",
        "rpi4": "smull",
        "rpi3": "smull",
        "jetson-nano-cpu": "smull",
        "aarch64": "smull",
        "armv7": "vmull",
        "rpi4-armv7": "vmull",
        "x86-64-v3": None,
    }
    actual = {board: neon_instruction(resolve_target(board).tvm_target()) for board in expected}
    assert actual == expected


@pytest.mark.parametrize(
    ("out_blocks", "out_w", "registers", "per_accumulator", "temporaries", "pixels_first", "tile"),
    [
        (8, 56, 30, 1, 0, False, (4, 4)),  # ties go to more output blocks
        (6, 56, 30, 1, 0, False, (2, 8)),  # 3 × 8 = 24 accumulators fit, not their 11 operands
        (9, 7, 30, 1, 0, False, (1, 7)),
        (4, 1, 30, 2, 2, False, (4, 1)),  # the classifier: one pixel
        (4, 56, 30, 2, 2, False, (4, 2)),
        (9, 9, 14, 2, 2, True, (1, 3)),  # 32-bit ARM: ties go to more pixels
    ],
)
def test_register_tile_fits_accumulators_and_operands(
    out_blocks: int,
    out_w: int,
    registers: int,
    per_accumulator: int,
    temporaries: int,
    pixels_first: bool,
    tile: tuple[int, int],
) -> None:
    blocks, pixels = register_tile(
        out_blocks, out_w, registers, per_accumulator, temporaries, pixels_first
    )
    assert (blocks, pixels) == tile
    assert out_blocks % blocks == 0 and out_w % pixels == 0
    assert blocks * pixels * per_accumulator + blocks + pixels + temporaries <= registers


def test_indexed_sdot_tile_counts_one_input_per_four_pixels() -> None:
    """With 4 pixels per input load the operands shrink: 3 blocks × 8 pixels (24 + 3 + 2
    registers) fits where the broadcast one (24 + 3 + 8) did not; only whole loads, and no
    tile at all for a row of 7."""
    assert register_tile(6, 56, 30) == (2, 8)
    assert register_tile(6, 56, 30, pixels_per_load=4) == (3, 8)
    assert register_tile(8, 16, 30, pixels_per_load=4) == (4, 4)
    assert register_tile(8, 7, 30, pixels_per_load=4) is None


def _kernel_instructions(asm: str) -> list[str]:
    """The mnemonics of the integer conv's vector instructions (AArch64: a ``v<n>.`` operand, as
    its scalar ``smull`` computes addresses; 32-bit ARM: a ``v`` mnemonic) in a module's
    assembly."""
    mnemonics, inside = [], False
    for line in asm.splitlines():
        if re.match(r"^[\w.$]+:", line) and not line.startswith(".L"):
            inside = "int8_conv2d" in line
        elif inside and re.match(r"^\t(v|[a-z].*\bv\d+\.)", line):
            mnemonics.append(line.split()[0])
    return mnemonics


@pytest.mark.parametrize("board", BOARDS)
def test_board_library_multiplies_with_its_instruction(
    board: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The board's integer conv is tensorized: sdot on rpi5; on rpi4 smull with each product
    vector pairwise-accumulated by sadalp, and never sdot (an A72 cannot run it); armv7 the
    same as vmull.s8/vpadal.s16. No int32 vector multiply (a kernel widened to int32 first),
    and no vector register spilled."""
    instruction, schedule, _ = BOARDS[board]
    target = resolve_target(board).tvm_target()
    model, _ = import_onnx(
        qdq_conv_model(CASES["3x3-three-blocks"], tmp_path, write_qdq_model), name="conv"
    )
    executable, records = compile_relax(model.module, target, report=ScheduleReport())

    assert [r["schedule"] for r in records] == [schedule]
    mnemonics = _kernel_instructions(str(executable.mod.imports[0].inspect_source("asm")))
    assert not {"mul", "mla", "vmul.i32", "vmla.i32"} & set(mnemonics)
    if instruction == "sdot":
        assert mnemonics.count("sdot") >= 4
        assert "smull" not in mnemonics
    else:
        multiply, accumulate = WIDENING[instruction]
        assert "sdot" not in mnemonics
        assert mnemonics.count(multiply) >= 4
        assert mnemonics.count(accumulate) == mnemonics.count(multiply)
    spills = module_spills(executable, target)
    assert not [s for name, s in spills.items() if "int8_conv2d" in name and s.spills]


@pytest.mark.parametrize(
    ("conv", "indexed"),
    [
        (Conv(16, 32, 1, activation="Relu", size=16), True),
        (Conv(7, 16, 3, size=16), True),
        # Stride 2: 4 pixels' inputs are not 16 adjacent bytes.
        (Conv(8, 16, 3, stride=2, size=16), False),
    ],
    ids=["pointwise", "3x3", "3x3-stride2"],
)
def test_rpi5_sdot_reads_four_pixels_per_load(
    conv: Conv, indexed: bool, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """On rpi5 a tile of 4 adjacent pixels (stride 1) loads their inputs once, 16 bytes, and
    multiplies each pixel's 4 with the indexed sdot (``v.4b[i]``) instead of a broadcast load
    per pixel; a stride-2 conv keeps the broadcast. No vector register spilled."""
    target = resolve_target("rpi5").tvm_target()
    model, _ = import_onnx(qdq_conv_model(conv, tmp_path, write_qdq_model), name="conv")
    executable, records = compile_relax(model.module, target, report=ScheduleReport())

    assert [r["schedule"] for r in records] == [INT8_SDOT_SCHEDULE]
    asm = str(executable.mod.imports[0].inspect_source("asm"))
    sdots = [line for line in asm.splitlines() if re.match(r"^\tsdot\t", line)]
    indexed_sdots = [line for line in sdots if re.search(r"\.4b\[[0-3]\]", line)]
    assert sdots
    assert len(indexed_sdots) == (len(sdots) if indexed else 0)
    spills = module_spills(executable, target)
    assert not [s for name, s in spills.items() if "int8_conv2d" in name and s.spills]


@pytest.mark.parametrize(
    "conv",
    [
        # A part block (20 of 32 lanes) and a prime width: 1-pixel tiles.
        {"channels": 20, "kernel": 3, "stride": 1, "size": 13},
        {"channels": 33, "kernel": 5, "stride": 2, "size": 14},  # 7 wide: one 7-pixel tile
        {"channels": 16, "kernel": 3, "stride": 1, "size": 16},  # two 8-pixel tiles (4 on ARMv7)
    ],
    ids=["3x3-part-block-prime", "5x5-stride2", "3x3-whole-tiles"],
)
@pytest.mark.parametrize("rule", [Int8DepthwiseNeon, Int8DepthwiseVmlal], ids=["a64", "armv7"])
def test_neon_depthwise_gives_the_numpy_integers_on_this_host(
    conv: dict[str, int], rule: type[Int8DepthwiseNeon]
) -> None:
    """The NEON depthwise conv's compute (int16 weights, the input widened to int16 as it is
    packed, the zero point in the bias) under its schedule (4 channels × a row of pixels),
    compiled for this host: exactly the numpy integers (the boards run it below)."""
    import tvm
    from tvm import s_tir, te

    from edgecompile.schedules.int8.compute import DEPTHWISE_ACC, NCHW, blocked_integer_depthwise

    channels, size = conv["channels"], conv["size"]
    rng = np.random.default_rng(channels)
    plan = random_plan(
        rng,
        out_channels=channels,
        in_channels=1,
        kernel=conv["kernel"],
        stride=conv["stride"],
        groups=channels,
    )
    x_q = rng.integers(0, 256, (1, channels, size, size)).astype(np.uint8)
    x_q[0, 0, 0, :2] = (0, 255)
    weight, bias = pack_neon_depthwise_weight(plan)
    assert weight.dtype == np.int16 and weight.shape[-1] == 16

    data = te.placeholder(x_q.shape, "uint8")
    weight_in = te.placeholder(weight.shape, "int16")
    bias_in = te.placeholder(bias.shape, "int32")
    multiplier = te.placeholder(plan.multiplier.shape, "float32")
    out = blocked_integer_depthwise(data, weight_in, bias_in, multiplier, plan, NCHW)
    func = te.create_prim_func([data, weight_in, bias_in, multiplier, out])
    sch = s_tir.Schedule(func)
    sch = rule()._schedule(
        sch, sch.get_sblock(DEPTHWISE_ACC), sch.get_sblock("int8_requantize"), lanes=4
    )
    kernel = tvm.compile(sch.mod, "llvm")
    assert_gives_numpy_integers(kernel, plan, x_q, weight, bias)


def test_depthwise_row_tile_divides_the_row_within_the_registers() -> None:
    """Up to 8 pixels on AArch64 (4 on 32-bit ARM): the largest that divides the row."""
    assert [depthwise_pixels(w, Int8DepthwiseNeon.max_pixels) for w in (112, 56, 28, 14, 7)] == [
        8,
        8,
        7,
        7,
        7,
    ]
    assert [depthwise_pixels(w, Int8DepthwiseVmlal.max_pixels) for w in (112, 28, 7, 13)] == [
        4,
        4,
        1,
        1,
    ]


@pytest.mark.parametrize("board", DEPTHWISE_BOARDS)
def test_board_depthwise_multiplies_int16_lanes(
    board: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The board's depthwise conv is the blocked kernel: each tap one widening multiply-
    accumulate of int16 lanes into int32 (smlal; vmlal.s16 on 32-bit ARM), never an int32
    vector multiply (an input widened to int32 first), and no vector register spilled."""
    schedule, multiply_accumulate = DEPTHWISE_BOARDS[board]
    target = resolve_target(board).tvm_target()
    conv = CASES["depthwise-5x5-stride2-relu6"]
    model, _ = import_onnx(qdq_conv_model(conv, tmp_path, write_qdq_model), name="conv")
    executable, records = compile_relax(model.module, target, report=ScheduleReport())

    assert [r["schedule"] for r in records] == [schedule]
    mnemonics = _kernel_instructions(str(executable.mod.imports[0].inspect_source("asm")))
    assert not {"mul", "mla", "vmul.i32", "vmla.i32"} & set(mnemonics)
    # 25 taps into each pixel's accumulator: the first may be a plain widening multiply.
    assert mnemonics.count(multiply_accumulate) >= conv.kernel**2 - 1
    spills = module_spills(executable, target)
    assert not [s for name, s in spills.items() if "int8_conv2d" in name and s.spills]


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("board", "case"),
    [
        # 16 wide: tiles of 4 adjacent pixels, the indexed sdot.
        ("rpi5", "3x3-width16"),
        pytest.param("rpi5", "3x3-three-blocks", marks=pytest.mark.slow),  # 9 wide: broadcast
        # The depthwise kernel (smlal on both boards), ~30-60 s each: slow, as its arithmetic
        # is checked on this host above under the same schedule, and its instructions.
        pytest.param("rpi4", "depthwise-5x5-stride2-relu6", marks=pytest.mark.slow),
        pytest.param("rpi5", "depthwise-width13-relu6", marks=pytest.mark.slow),
        # ~30 s each (TVM's Python under qemu): the widening kernel's run is in the slow set,
        # its arithmetic checked on this host above and its instructions on rpi4's assembly.
        pytest.param("rpi4", "3x3-stride2-relu6", marks=pytest.mark.slow),
    ],
)
def test_board_kernel_is_exact_on_the_emulated_core(
    board: str, case: str, rootfs: Path, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The board's library, run on qemu's model of its core, gives the numpy integers."""
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.toolchain import toolchain_for

    _, schedule, cpu = BOARDS[board]
    preset = resolve_target(board)
    conv = {**CASES, **NEON_CASES}[case]
    if conv.groups > 1:
        schedule = DEPTHWISE_BOARDS[board][0]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    x_q, x = conv_input(conv, params)  # steps the model's quantize gives back
    model, _ = import_onnx(path, name="conv")
    executable, records = compile_relax(model.module, preset.tvm_target())
    assert [r["schedule"] for r in records] == [schedule]
    library = tmp_path / f"conv_{board}.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())

    (actual,) = run_library_in_rootfs(rootfs, library, {"x": x}, cpu=cpu)

    expected = reference(conv, params, x_q)
    assert np.unique(expected).size > 10
    np.testing.assert_array_equal(output_codes(actual, params), expected)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("case", "schedule"),
    [
        ("3x3-stride2-relu6", INT8_VMULL_SCHEDULE),
        ("depthwise-5x5-stride2-relu6", INT8_VMLAL_DEPTHWISE_SCHEDULE),
    ],
)
def test_armv7_kernel_is_exact_under_qemu_arm(
    case: str, schedule: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The 32-bit library (vmull/vpadal; the depthwise conv's vmlal.s16) through the native
    runner under qemu-arm: the numpy integers. Slow: a cold cache builds the armhf runtime
    (minutes)."""
    import shutil

    from edgecompile.builder import build
    from edgecompile.native.execute import QEMU, run_native

    if shutil.which(QEMU["arm"][0]) is None:
        pytest.skip(f"needs {QEMU['arm'][0]}")
    conv = CASES[case]
    path = qdq_conv_model(conv, tmp_path, write_qdq_model)
    params = parameters(path)
    x_q, x = conv_input(conv, params)
    artifact = build(str(path), "armv7", output_dir=tmp_path / "build", verify=False).artifact
    assert [s["schedule"] for s in artifact.manifest.schedules] == [schedule]

    (actual,) = run_native(artifact, [x]).outputs

    expected = reference(conv, params, x_q)
    np.testing.assert_array_equal(output_codes(actual, params), expected)


def _residual_model(folder: Path, write_qdq_model: Callable[..., Path], width: int) -> Path:
    """x → 1×1 conv (16 → 16) → + x: the QDQ residual block whose add FuseOps puts into the
    conv's kernel (mobilenet_v2's projections), ``width`` pixels a row."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    shape = [1, 16, width, width]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["conv"]),
            helper.make_node("Add", ["conv", "x"], ["y"]),
        ],
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(
                (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32), "w"
            ),
            numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b"),
        ],
    )
    calibration = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    return write_qdq_model(graph, folder / "residual.onnx", calibration)


@pytest.mark.parametrize("board", BOARDS)
def test_residual_add_is_computed_on_the_conv_tile(
    board: str, tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """The integer residual add fused into a NEON conv's kernel runs on the tile's requantized
    values, in the tile's loop: as a loop of its own over a row of 56, LLVM unrolled it whole
    and spilled on rpi5 (mobilenet_v2's fused_int8_conv2d8_int8_add, 9 stack accesses). On
    armv7 (no VFPv4) the add's arithmetic is float64, not a libm ``fmaf`` call per element
    (int8/add.py), and still spills nothing."""
    from tvm import tirx

    from edgecompile.schedules.int8.add import ADD_KERNEL_NAME
    from edgecompile.schedules.int8.schedule import narrowed
    from edgecompile.schedules.pipeline import fused_module

    instruction, schedule, _ = BOARDS[board]
    target = resolve_target(board).tvm_target()
    path = _residual_model(tmp_path, write_qdq_model, 56)
    module = import_onnx(path, name="residual")[0].module
    rule = {"sdot": Int8ConvSdot, "smull": Int8ConvSmull, "vmull": Int8ConvVmull}[instruction]()
    fused, _ = fused_module(module, target)
    (func,) = [
        narrowed(f.with_attr("global_symbol", "main"))
        for gv, f in fused.functions_items()
        if isinstance(f, tirx.PrimFunc) and ADD_KERNEL_NAME in gv.name_hint
    ]
    scheduled = rule.try_schedule(func, target)
    blocks = re.findall(r'T\.sblock\("(\w+)"', scheduled.mod.script())
    assert "int8_requantize" in blocks and not [b for b in blocks if ADD_KERNEL_NAME in b]

    executable, records = compile_relax(module, target, report=ScheduleReport())
    assert schedule in [r["schedule"] for r in records]
    asm = str(executable.mod.imports[0].inspect_source("asm"))
    assert not re.findall(r"^\s*bl\s+fmaf\b", asm, re.MULTILINE)
    spills = module_spills(executable, target)
    assert [name for name in spills if ADD_KERNEL_NAME in name]
    assert not [s for name, s in spills.items() if s.spills]
