"""Hand-written TIR schedules for the convolutions of mobile CNNs, applied without tuning.

Pointwise (1×1), depthwise, grouped (with ShuffleNet's channel shuffle folded into the channel
order), dense K×K and transposed (as sub-pixel) convolutions run in the channel-blocked NCHW[x]c
layout with pre-packed weights and a register tile sized from the target (vector lanes and
registers), on x86 and ARM alike; everything else keeps TVM's default lowering. Entry points:

- :func:`compile_relax` — ``tvm.compile`` with the schedules, plus which schedule each op got;
- :func:`optimize` — the Relax pipeline alone, to inspect the scheduled PrimFuncs;
- :func:`relax_pipeline` — the pipeline as a pass, for ``tvm.compile(..., relax_pipeline=...)``;
- :mod:`edgecompile.schedules.user` — schedules of your own (``build --schedules DIR``), tried
  before ours;
- :func:`missed_schedules` / :func:`assert_no_missed_schedules` — from a manifest's per-op
  records, the ops a rule of ours should have scheduled that went to TVM's default lowering.

Modules, one job each: ``pipeline`` (the Relax pipeline and the per-op report), ``layout`` (the
NCHW[x]c rewrite of ``main``), ``plan`` (what the rewrite decides per op), ``patterns`` (frontend
idioms it recognises), ``channels`` (lane orders), ``packing`` (weights packed in numpy),
``compute`` (the blocked TE computes), ``rules`` (their TIR schedules), ``user`` (user rules),
``analysis`` (read-only IR queries shared by all of them), ``coverage`` (the fallback check),
``cpu`` (what the target's CPU offers), ``tir`` (the TIR lowering), ``vector_sigmoid`` (sigmoid
without libm calls).
"""

from __future__ import annotations

from edgecompile.schedules.compute import (
    DENSE,
    DEPTHWISE,
    GROUPED,
    MATMUL,
    POINTWISE,
    POOL,
    TRANSPOSED,
)
from edgecompile.schedules.coverage import assert_no_missed_schedules, missed_schedules
from edgecompile.schedules.cpu import CpuInfo, cpu_info
from edgecompile.schedules.pipeline import (
    TVM_DEFAULT,
    ScheduleReport,
    compile_relax,
    optimize,
    relax_pipeline,
    schedule_records,
)

__all__ = [
    "DENSE",
    "DEPTHWISE",
    "GROUPED",
    "MATMUL",
    "POINTWISE",
    "POOL",
    "TRANSPOSED",
    "TVM_DEFAULT",
    "CpuInfo",
    "ScheduleReport",
    "assert_no_missed_schedules",
    "compile_relax",
    "cpu_info",
    "missed_schedules",
    "optimize",
    "relax_pipeline",
    "schedule_records",
]
