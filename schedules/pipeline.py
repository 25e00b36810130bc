"""The Relax pipeline with our schedules, and the per-op record of which schedule ran.

``tvm.compile(mod, target)`` on a CPU target runs ``relax.pipeline.default_build_pipeline``:
LegalizeOps and straight to VM lowering, with no FoldConstant, no fusion and no scheduling, so
every conv becomes naive loops and every ReLU a separate pass over memory. This pipeline is TVM's
own CPU pipeline (``tvm.relax.backend.cpu_generic``: legalize → FoldConstant → FuseOps →
FuseTIR) with two passes of ours around the fusion:

1. before legalization, :func:`~edgecompile.schedules.layout.blocked_layout` moves the pointwise
   and depthwise convs (and the elementwise ops between them) to NCHW[x]c, packing the weights;
2. after FuseTIR, ``dlight.ApplyDefaultSchedule`` with our rules schedules every fused PrimFunc
   holding one of those convs; the fused epilogues are inlined into the register tile.

Everything else keeps TVM's default lowering.

Trap: ``tvm.compile`` keeps CPU targets on the unfused pipeline on purpose (see
``relax/vm_build.py``): FuseOps can drop a ``call_pure_packed`` whose result is unused but whose
side effect matters. The imported CNN graphs have no such calls; should a model's graph make our
pipeline fail, :func:`compile_relax` falls back to ``tvm.compile``'s default and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecompile.schedules.cpu import CpuInfo, cpu_info
from edgecompile.schedules.layout import CONV2D, LayoutLog, make_mutator
from edgecompile.schedules.rules import DepthwiseNCHWc, PointwiseNCHWc, ScheduleLog

TVM_DEFAULT = "tvm-default"


@dataclass
class ScheduleReport:
    """What the pipeline did to each heavy op of ``main`` (see :func:`schedule_records`)."""

    layout: LayoutLog = field(default_factory=LayoutLog)
    schedules: ScheduleLog = field(default_factory=ScheduleLog)

    def schedule_of(self, op_index: int) -> str:
        return self.schedules.applied.get(op_index, TVM_DEFAULT)


def conv_indices(module: Any) -> dict[Any, int]:
    """Binding var of each conv2d in ``main`` → its index among ``heavy_ops(module)``."""
    from tvm import relax

    from edgecompile.importer import heavy_ops

    if "main" not in [gv.name_hint for gv in module.get_global_vars()]:
        return {}
    conv_entries = [op["index"] for op in heavy_ops(module) if op["op"] == "conv2d"]
    conv_vars = [
        binding.var
        for block in module["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and getattr(binding.value.op, "name", "") == CONV2D
    ]
    return dict(zip(conv_vars, conv_entries, strict=True))


def blocked_layout(cpu: CpuInfo, log: LayoutLog) -> Any:
    """The layout pass over ``main`` (see :mod:`edgecompile.schedules.layout`)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.BlockedLayout")
    def transform(module: Any, _context: Any) -> Any:
        indices = conv_indices(module)
        if not indices:
            return module
        mutator = make_mutator()(module, cpu, indices, log)
        main = module.get_global_var("main")
        mutator.builder_.update_func(main, mutator.visit_expr(module[main]))
        return mutator.builder_.get()

    return transform


def relax_pipeline(target: Any, report: ScheduleReport) -> Any:
    """TVM's CPU Relax pipeline with our layout pass and schedule rules spliced in."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    cpu = cpu_info(target)
    passes = [
        *cpu_generic.library_dispatch_passes(target),
        blocked_layout(cpu, report.layout),
        # Drops the Clip-bound arithmetic the layout pass folded, before FoldConstant compiles it.
        relax.transform.DeadCodeElimination(),
        *cpu_generic.legalize_passes(target),
        relax.transform.DeadCodeElimination(),
        dlight.ApplyDefaultSchedule(
            PointwiseNCHWc(report.schedules), DepthwiseNCHWc(report.schedules)
        ),
        *cpu_generic.dataflow_lower_passes(target),
        *cpu_generic.finalize_passes(target),
    ]

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.Pipeline")
    def pipeline(module: Any, _context: Any) -> Any:
        with target:
            return tvm.transform.Sequential(passes)(module)

    return pipeline


def optimize(module: Any, target: Any) -> tuple[Any, ScheduleReport]:
    """Run the Relax side of the pipeline only: the module handed to codegen, and the report.

    For inspecting the scheduled PrimFuncs (tests, ``--explain``); :func:`compile_relax` builds.
    """
    report = ScheduleReport()
    return relax_pipeline(target, report)(module), report


def compile_relax(
    module: Any, target: Any, *, custom_schedules: bool = True
) -> tuple[Any, list[dict[str, Any]]]:
    """``tvm.compile`` with (or, ``custom_schedules=False``, without) our schedules.

    Returns the VM executable and, per heavy op of ``main``, which schedule it got. Should our
    pipeline itself fail on some graph, the model still builds with TVM's default lowering and
    every record says why under ``fallback``: a new model must not stop building because of a
    schedule.
    """
    import tvm

    target = tvm.target.Target(target) if isinstance(target, str | dict) else target
    # The schedules are CPU (LLVM) schedules; any other target keeps TVM's default.
    if custom_schedules and target.kind.name == "llvm":
        report = ScheduleReport()
        try:
            executable = tvm.compile(
                module, target=target, relax_pipeline=relax_pipeline(target, report)
            )
        except Exception as exc:  # TVMError, ScheduleError, ...: anything in our passes
            reason = f"edgecompile pipeline failed: {_last_line(exc)}"
        else:
            return executable, schedule_records(module, report)
        records = [{**record, "fallback": reason} for record in schedule_records(module)]
        return tvm.compile(module, target=target), records
    return tvm.compile(module, target=target), schedule_records(module)


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def schedule_records(module: Any, report: ScheduleReport | None = None) -> list[dict[str, Any]]:
    """``heavy_ops(module)`` entries, each with the ``schedule`` that ran for it.

    ``"tvm-default"`` is TVM's untuned lowering. A conv one of our rules claimed but could not
    schedule also says why, under ``fallback``.
    """
    from edgecompile.importer import heavy_ops

    records = []
    for op in heavy_ops(module):
        record = {
            **op,
            "schedule": TVM_DEFAULT if report is None else report.schedule_of(op["index"]),
        }
        if report is not None and op["index"] in report.schedules.failed:
            record["fallback"] = report.schedules.failed[op["index"]]
        records.append(record)
    return records
