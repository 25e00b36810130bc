"""A QDQ residual add (``quantize(dequantize(a) + dequantize(b))``) in an int8 build: computed
on the integers as ONNX Runtime's QLinearAdd rounds (int8/add.py), so it matches ORT on the
same QDQ model exactly, where the fp32 chain differed by a step near half steps (the first
difference from ORT in mnasnet_a1, 3 output steps by its end)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax
from edgecompile.schedules.int8.add import ADD_KERNEL_NAME, QuantizedAdd, integer_adds
from edgecompile.schedules.pipeline import ScheduleReport
from edgecompile.targets import resolve_target

# Scales in the ratios 1/2 and 3/2 to the output's: many of the 256 × 256 input pairs sum to
# a real half step, which QLinearAdd's exact products round to even, and the fp32 chain's
# rounding errors push either way (4807 of the pairs differ).
A = (0.1, 131)
B = (0.3, 97)
OUT = (0.2, 120)
SHAPE = (1, 256, 16, 16)  # every pair (a, b) of uint8 values once


#: Scales whose ratios have full significands: the products are inexact in float32, and only
#: the fused rounding gives ORT's result everywhere (an unfused float32 product-sum misses it in
#: 2 of the pairs, a sum rounded once from float64 with no float32 step between in 1).
FULL_RATIOS = ((0.06331266, 237), (0.02863258, 3), (0.06490985, 32))


def qdq_add_model(
    folder: Path,
    b_shape: tuple[int, ...] = SHAPE,
    float_output: bool = False,
    scales: tuple[tuple[float, int], ...] = (A, B, OUT),
) -> Path:
    """``a_q, b_q`` (uint8) → DequantizeLinear each → Add → QuantizeLinear → ``c_q``: the chain
    ORT's quantizer leaves around a residual add, and ORT fuses into QLinearAdd.
    ``float_output``: the add's float result is an output of the model too. ``scales``: a's,
    b's and the output's (scale, zero point)."""
    constants = []
    for name, (scale, zero_point) in zip(("a", "b", "c"), scales, strict=True):
        constants.append(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"))
        constants.append(numpy_helper.from_array(np.array(zero_point, np.uint8), f"{name}_zp"))
    nodes = [
        helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zp"], ["a"]),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "c_scale", "c_zp"], ["c_q"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_add",
        [
            helper.make_tensor_value_info("a_q", TensorProto.UINT8, SHAPE),
            helper.make_tensor_value_info("b_q", TensorProto.UINT8, b_shape),
        ],
        [
            helper.make_tensor_value_info("c_q", TensorProto.UINT8, SHAPE),
            *([helper.make_tensor_value_info("c", TensorProto.FLOAT, SHAPE)] * float_output),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "add.int8.onnx"
    onnx.save(model, str(path))
    return path


def every_pair() -> tuple[np.ndarray, np.ndarray]:
    values = np.arange(256, dtype=np.uint8)
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.reshape(SHAPE), b.reshape(SHAPE)


def fp32_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the QDQ graph says literally (and our build computed before): dequantize, add in
    float32, divide by the output scale, round half to even."""
    real = (a.astype(np.float32) - A[1]) * np.float32(A[0])
    real = real + (b.astype(np.float32) - B[1]) * np.float32(B[0])
    return np.clip(np.rint(real / np.float32(OUT[0])) + OUT[1], 0, 255).astype(np.uint8)


def unfused(add: QuantizedAdd, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """QLinearAdd's arithmetic with each product rounded before its sum (no FMA)."""
    inner = b.astype(np.float32) * add.ratio_b + add.fixed
    return np.clip(np.rint(a.astype(np.float32) * add.ratio_a + inner), 0, 255).astype(np.uint8)


#: A libm ``fmaf`` call in a listing (32-bit ARM ``bl``, x86 ``call``/``jmp``, via the PLT or not).
FMAF_CALL = re.compile(r"^\s*(bl|blx|b|call|callq|jmp)\s+(fmaf|fmaf@PLT)\s*$", re.MULTILINE)

#: Each set of scales with the arithmetic, close to ORT's, that it shows is not ORT's.
SCALES = {
    "half-steps": ((A, B, OUT), lambda add, a, b: fp32_chain(a, b)),
    "full-ratios": (FULL_RATIOS, unfused),
}


def ort_add(path: Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"a_q": a, "b_q": b})[0]


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("preset", ["host", "x86-64-v2"])
def test_qdq_add_matches_onnx_runtime_exactly(tmp_path: Path, preset: str, scales: str) -> None:
    """``x86-64-v2`` (no FMA; it runs on this host too) computes the add in float64, without a
    libm ``fmaf`` call per element, and still exactly as ORT."""
    import tvm
    from tvm import relax

    parameters, near_miss = SCALES[scales]
    add = QuantizedAdd.of(*parameters, "uint8")
    path = qdq_add_model(tmp_path, scales=parameters)
    a, b = every_pair()
    theirs = ort_add(path, a, b)
    # The data reaches the rounding cases where an arithmetic close to ORT's parts from it.
    assert np.any(near_miss(add, a, b) != theirs)

    model, _ = import_onnx(path, name="add")
    report = ScheduleReport()
    executable, _ = compile_relax(model.module, resolve_target(preset).tvm_target(), report=report)
    assert not FMAF_CALL.findall(str(executable.mod.imports[0].inspect_source("asm")))
    machine = relax.VirtualMachine(executable, tvm.cpu())
    ours = machine["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(add.reference(a, b), theirs)


@pytest.mark.parametrize(
    ("b_shape", "float_output", "folds"),
    [
        (SHAPE, False, True),
        # A broadcast add (one value per channel): not the residual add, left in fp32.
        ((1, SHAPE[1], 1, 1), False, False),
        # Its float sum read by something else too: ORT does not fuse that chain either.
        (SHAPE, True, False),
    ],
    ids=["residual", "broadcast", "sum-also-read"],
)
def test_only_the_chain_ort_fuses_becomes_an_integer_add(
    tmp_path: Path, b_shape: tuple[int, ...], float_output: bool, folds: bool
) -> None:
    path = qdq_add_model(tmp_path, b_shape=b_shape, float_output=float_output)
    model, _ = import_onnx(path, name="add")
    rewritten = integer_adds()(model.module)
    kernels = [gvar.name_hint for gvar in rewritten.get_global_vars()]
    assert any(name.startswith(ADD_KERNEL_NAME) for name in kernels) == folds


def test_float64_sums_are_used_only_where_every_sum_is_exact() -> None:
    """Without FMA an add is computed in float64 only where both product-sums are exact there
    for every input pair (then its single rounding is the fma's); a ratio some 2^30 below the
    other's leaves low bits of ``a · r_a`` that no float64 sum with ``b``'s part can hold, and
    that add keeps ``llvm.fma``. A target with FMA always does."""
    close = QuantizedAdd.of(A, B, OUT, "uint8")
    far = QuantizedAdd.of((0.0731 * 2.0**-30, 131), B, OUT, "uint8")  # a full significand
    assert close.exact_in_float64() and not far.exact_in_float64()
    assert close.for_target(fma=False).in_float64
    assert not far.for_target(fma=False).in_float64
    assert not close.for_target(fma=True).in_float64


@pytest.mark.emulator
@pytest.mark.parametrize("scales", SCALES)
def test_armv7_add_is_exact_under_qemu_arm_without_fmaf(
    tmp_path: Path, scales: str, no_emulator: Callable[[str], None]
) -> None:
    """armv7 (no VFPv4: LLVM made each ``llvm.fma`` a libm ``fmaf`` call) computes the add with
    VFP float64 arithmetic instead; its library, through the native runner under qemu-arm,
    gives ORT's result for all 65 536 pairs (the host's ORT, the one builds are checked
    against). Skipped off CI where the armhf runtime is not cached (building it takes
    minutes; CI's prebuild makes it)."""
    import shutil

    from edgecompile.builder import build
    from edgecompile.native.execute import QEMU, run_native
    from edgecompile.native.runtime import is_built, runtime_path

    if shutil.which(QEMU["arm"][0]) is None:
        no_emulator(f"needs {QEMU['arm'][0]}")
    if not is_built(runtime_path("arm")):
        no_emulator("the armhf native runtime is not built (python -m edgecompile.device.prebuild)")
    path = qdq_add_model(tmp_path, scales=SCALES[scales][0])
    a, b = every_pair()
    model, _ = import_onnx(path, name="add")
    target = resolve_target("armv7").tvm_target()
    executable, _ = compile_relax(model.module, target, report=ScheduleReport())
    asm = str(executable.mod.imports[0].inspect_source("asm"))
    assert not FMAF_CALL.findall(asm)
    assert re.search(r"^\tvmul\.f64\t", asm, re.MULTILINE)
    artifact = build(str(path), "armv7", output_dir=tmp_path / "build", verify=False).artifact

    (ours,) = run_native(artifact, [a, b]).outputs

    np.testing.assert_array_equal(ours, ort_add(path, a, b))
