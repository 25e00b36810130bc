"""Round half to even without libm on 32-bit ARM before ARMv8 (``schedules/rounding.py``): the
rewrite gives ``nearbyintf``'s results bit for bit (checked on this host, whose float unit
rounds as ARMv7's), only the targets without a rounding instruction get it, and an armv7 int8
library rounds with vector arithmetic instead of a libm call per element."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecompile.schedules import rounding
from edgecompile.schedules.rounding import needs_round_without_libm, rewrite_rounds
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

#: Values where rounding goes wrong first: every half step the int8 requantization can meet
#: (ties to even, both signs), just below a half, the edges of the 2^23 trick, signed zeros,
#: a subnormal, infinities, NaN.
_EDGES = [
    *(k / 2 for k in range(-600, 601)),
    np.nextafter(np.float32(0.5), np.float32(0)),
    np.nextafter(np.float32(-2.5), np.float32(0)),
    2.0**22 + 0.5,
    2.0**23 - 0.5,
    -(2.0**23) + 0.5,
    2.0**23,
    2.0**24 + 2,
    -0.0,
    1e-40,
    -1e-40,
    np.inf,
    -np.inf,
    np.nan,
    3e38,
]


@pytest.mark.parametrize("lanes", [1, 4], ids=["scalar", "vector"])
def test_rewritten_round_is_nearbyint_bit_for_bit(
    lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tvm
    from tvm import s_tir, te, tirx

    values = np.concatenate(
        [
            np.array(_EDGES, np.float32),
            np.random.default_rng(0).uniform(-300, 300, 1000).astype(np.float32),
        ]
    )
    values = np.concatenate([values, np.zeros(-len(values) % 4, np.float32)])
    data = te.placeholder(values.shape, "float32")
    rounded = te.compute(values.shape, lambda i: tirx.round(data[i]), name="rounded")
    sch = s_tir.Schedule(te.create_prim_func([data, rounded]))
    if lanes > 1:
        _, inner = sch.split(sch.get_loops(sch.get_sblock("rounded"))[0], [None, lanes])
        sch.vectorize(inner)
    # Through the build's TIR pipeline, this host's target taken for one that needs the
    # rewrite: the pass sees the kernel where it does in a build (vectorized, lowered).
    rewritten = []

    def rewrite(func: tirx.PrimFunc) -> tirx.PrimFunc:
        rewritten.append(func.script())
        func = rewrite_rounds(func)
        rewritten.append(func.script())
        return func

    monkeypatch.setattr(rounding, "needs_round_without_libm", lambda target: True)
    monkeypatch.setattr(rounding, "rewrite_rounds", rewrite)
    kernel = tvm.compile(sch.mod, "llvm", tir_pipeline=register_tir_pipeline())
    before, after = rewritten
    assert "T.round(" in before
    assert bool(re.search(r"T\.round\(\w+\[T\.Ramp\(", before)) == (lanes > 1)  # a vector
    assert "T.round(" not in after and "llvm.copysign" in after
    out = tvm.runtime.tensor(np.full(values.shape, 7, np.float32))
    kernel(tvm.runtime.tensor(values), out)

    expected = np.rint(values)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert np.array_equal(np.signbit(out.numpy()), np.signbit(expected))  # -0.5 gives -0


def test_only_32_bit_arm_before_armv8_rounds_without_libm() -> None:
    """ARMv8 cores round with an instruction in 32-bit mode too (rpi3/rpi4-armv7)."""
    expected = {
        "armv7": True,
        "rpi3-armv7": False,
        "rpi4-armv7": False,
        "rpi4": False,
        "rpi5": False,
        "x86-64-v3": False,
    }
    actual = {b: needs_round_without_libm(resolve_target(b).tvm_target()) for b in expected}
    assert actual == expected


def test_armv7_int8_library_rounds_without_libm(
    tmp_path: Path, write_qdq_model: Callable[..., Path]
) -> None:
    """An armv7 int8 conv (its requantization, and the model's fp32 → uint8 quantize) calls no
    ``nearbyintf``: the rounding is NEON arithmetic (|x|, + 2^23, - 2^23, the sign's bit
    select, the compare), still on our schedule. Every 32-bit preset stays hard-float for the
    libm calls other kernels make (a board's libm reads a float argument from s0: passed in r0,
    LLVM's soft-float default, int8 outputs came out wrong under qemu-arm)."""
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import compile_relax
    from edgecompile.schedules.int8 import INT8_VMULL_SCHEDULE
    from edgecompile.schedules.pipeline import ScheduleReport

    from .test_int8_kernels import CASES, qdq_conv_model

    for board in ("armv7", "rpi3-armv7", "rpi4-armv7"):
        assert resolve_target(board).target["mfloat-abi"] == "hard"
    target = resolve_target("armv7").tvm_target()
    path = qdq_conv_model(CASES["pointwise"], tmp_path, write_qdq_model)
    executable, records = compile_relax(
        import_onnx(path, name="conv")[0].module, target, report=ScheduleReport()
    )

    assert [r["schedule"] for r in records] == [INT8_VMULL_SCHEDULE]
    asm = str(executable.mod.imports[0].inspect_source("asm"))
    assert not re.findall(r"^\s*bl\s+(nearbyintf|rintf|roundevenf)\b", asm, re.MULTILINE)
    for mnemonic in ("vabs.f32", "vcgt.f32", "vbif"):
        assert re.search(rf"^\t{re.escape(mnemonic)}\tq\d+", asm, re.MULTILINE), mnemonic
