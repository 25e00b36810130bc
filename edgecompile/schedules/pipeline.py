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

The TIR is then lowered by :data:`~edgecompile.schedules.tir.TIR_PIPELINE` (TVM's, with the
register tiles kept on the stack).

Everything else keeps TVM's default lowering.

Trap: ``tvm.compile`` keeps CPU targets on the unfused pipeline on purpose (see
``relax/vm_build.py``): FuseOps can drop a ``call_pure_packed`` whose result is unused but whose
side effect matters. The imported CNN graphs have no such calls; should a model's graph make our
pipeline fail, :func:`compile_relax` falls back to ``tvm.compile``'s default and says so.

A rule of ours that raises anything but :class:`~edgecompile.schedules.rules.ScheduleFailed` (a
bug: an index out of range on a kernel shape it never met) costs only that kernel: it goes to
the next rule, else TVM's default, and :attr:`ScheduleReport.rule_errors` keeps the rule and the
exception (the manifest's ``rule_errors``, ``build --explain``, one warning line). Before, it
failed the whole pipeline: ShuffleNet v1's misaligned concat cost 10 zoo models every schedule
(up to 29x ORT), and only a full zoo run noticed. With ``EDGECOMPILE_STRICT_RULES=1`` (the test
suite sets it) the exception is raised instead, as :class:`RuleCrashed`, so a test meeting a rule
bug fails on it with its traceback rather than passing on a slower kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecompile._interrupts import keep_interrupts_through_ffi, raise_if_interrupt
from edgecompile.errors import EdgecompileError, last_line
from edgecompile.schedules.analysis import has_main, prim_funcs, root_children, sblocks
from edgecompile.schedules.compute import OP_INDEX_ATTR
from edgecompile.schedules.concat_in_place import concat_in_place
from edgecompile.schedules.cpu import cpu_info
from edgecompile.schedules.int8 import (
    INT8_UNSCHEDULED,
    Int8ConvAvx2,
    Int8ConvBlocked,
    Int8ConvNCHW,
    Int8ConvSdot,
    Int8ConvSmull,
    Int8ConvVmull,
    Int8DepthwiseBlocked,
    Int8DepthwiseNeon,
    Int8DepthwiseVmlal,
    Int8Log,
    fold_int8_convs,
)
from edgecompile.schedules.int8.add import integer_adds
from edgecompile.schedules.int8.glue import integer_glue
from edgecompile.schedules.layout import blocked_layout
from edgecompile.schedules.plan import LayoutLog
from edgecompile.schedules.rules import (
    SCHEDULED_BY_ATTR,
    DepthwiseNCHWc,
    PointwiseNCHWc,
    ScheduleFailed,
    ScheduleLog,
)
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.schedules.vector_sigmoid import vector_sigmoid

TVM_DEFAULT = "tvm-default"
#: The ``fallback`` of every op when our pipeline itself failed and TVM's default built the model.
PIPELINE_FAILED = "edgecompile pipeline failed"
#: A PrimFunc scheduled by a MetaSchedule tuning record (the best measured for this target).
TUNED = "metaschedule"
#: How a ``fallback`` reason from a rule's unexpected exception starts (see :class:`RuleError`).
RULE_ERROR = "rule error"
#: The manifest's ``extra`` key listing every :class:`RuleError` of a build (glue kernels too).
RULE_ERRORS_KEY = "rule_errors"
#: Set to 1 (the test suite does) to raise a rule's unexpected exception instead of falling back.
STRICT_RULES_ENV = "EDGECOMPILE_STRICT_RULES"


def strict_rules() -> bool:
    """Whether a rule's unexpected exception is raised (:data:`STRICT_RULES_ENV`)."""
    return os.environ.get(STRICT_RULES_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class RuleError:
    """A rule of ours that raised something other than "not mine" / "mine but it failed" on one
    kernel: a bug in the rule. The kernel went on to the next rule, else TVM's default."""

    kernel: str
    rule: str
    #: ``<ExceptionType>: <last line of its message>``.
    error: str
    #: The heavy op (index into ``main``'s heavy ops) the kernel computes; None for glue kernels.
    layer: int | None = None

    def __str__(self) -> str:
        return f"{RULE_ERROR} in {self.rule}: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "rule": self.rule, "error": self.error, "layer": self.layer}


class RuleCrashed(RuntimeError):
    """Strict mode (:data:`STRICT_RULES_ENV`): a rule's unexpected exception, raised out of the
    build; its ``__cause__`` is the exception itself, with the rule's traceback."""

    def __init__(self, error: RuleError) -> None:
        super().__init__(
            f"{error} (kernel {error.kernel}; {STRICT_RULES_ENV}=1 raises it instead of "
            "falling back to TVM's default)"
        )
        self.error = error


@dataclass
class ScheduleReport:
    """What the pipeline did to each heavy op of ``main`` (see :func:`schedule_records`)."""

    layout: LayoutLog = field(default_factory=LayoutLog)
    schedules: ScheduleLog = field(default_factory=ScheduleLog)
    #: Fused PrimFunc name → the heavy op (index into ``main``'s heavy ops) it computes.
    kernel_ops: dict[str, int] = field(default_factory=dict)
    #: The kind (``heavy_ops``' "op") of each heavy op of ``main``, in order.
    heavy_op_kinds: list[str] = field(default_factory=list)
    #: Fused PrimFuncs a tuning record scheduled (any kernel, heavy or not).
    kernels_from_records: list[str] = field(default_factory=list)
    #: Fused PrimFunc → the user schedule (``user:<name>``) that scheduled it, heavy or not.
    user_kernels: dict[str, str] = field(default_factory=dict)
    #: A user rule's bug, kept here because TVM's FFI may re-wrap it on the way out of the pass.
    user_error: EdgecompileError | None = None
    #: A QDQ model's convs folded into integer kernels, and those kept in fp32 with the reason.
    int8: Int8Log = field(default_factory=Int8Log)
    #: Kernels a rule of ours raised on (a bug in the rule): each fell back on its own.
    rule_errors: list[RuleError] = field(default_factory=list)
    #: Strict mode's exception, kept here because TVM's FFI may re-wrap it on the way out.
    rule_crash: RuleCrashed | None = None

    def schedule_of(self, op_index: int) -> str:
        return self.schedules.applied.get(op_index, TVM_DEFAULT)


def fusion_passes(target: Any, report: ScheduleReport) -> list[Any]:
    """Layout, legalization and fusion: the module whose fused PrimFuncs get scheduled.

    Tuning extracts its tasks from this module (:func:`fused_module`), so a record's workload is
    exactly the PrimFunc a build later looks up.
    """
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return [
        *cpu_generic.library_dispatch_passes(target),
        note_heavy_ops(report),
        # Before the layout pass, which then sees the dead fp32 chains still in place: every
        # heavy op keeps its index.
        # A residual add ORT fuses into QLinearAdd, rounded as it rounds (int8/add.py).
        integer_adds(report.int8, target),
        # Moves, concats and max pools on the integers, not in fp32 (int8/glue.py).
        integer_glue(report.int8),
        fold_int8_convs(report.int8, target),
        blocked_layout(cpu_info(target), report.layout),
        # Drops the Clip-bound arithmetic the layout pass folded, before FoldConstant compiles it.
        relax.transform.DeadCodeElimination(),
        # Before TVM's legalization, whose sigmoid calls libm's expf once per vector lane.
        vector_sigmoid(),
        *cpu_generic.legalize_passes(target),
        relax.transform.DeadCodeElimination(),
        detach_op_indices(report),
    ]


def note_heavy_ops(report: ScheduleReport) -> Any:
    """Remember the kinds of ``main``'s heavy ops, to name the kernels TVM lowers later."""
    import tvm

    from edgecompile.importer import heavy_ops

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.NoteHeavyOps")
    def transform(module: Any, _context: Any) -> Any:
        report.heavy_op_kinds = [op["op"] for op in heavy_ops(module)] if has_main(module) else []
        return module

    return transform


#: Heavy-op kind → the name LegalizeOps + FuseOps give the kernel holding it.
_KERNEL_NAME_PATTERNS = {
    "conv2d": re.compile(r"conv2d(?!_transpose)"),
    "conv2d_transpose": re.compile(r"conv2d_transpose"),
    "matmul": re.compile(r"matmul"),
    "pool": re.compile(r"pool2d"),
}


def _claim_lowered_kernels(module: Any, report: ScheduleReport) -> None:
    """Map the kernels TVM's own lowering made (no op-index annotation) to heavy ops.

    ``main`` keeps its ops in order through fusion, so the n-th unclaimed kernel named after a
    kind is the n-th unclaimed heavy op of that kind.
    """
    from tvm import relax

    claimed = set(report.kernel_ops.values())
    waiting = {
        kind: [i for i, k in enumerate(report.heavy_op_kinds) if k == kind and i not in claimed]
        for kind in _KERNEL_NAME_PATTERNS
    }
    if not has_main(module):
        return
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not call.args:
                continue
            callee = getattr(call.args[0], "name_hint", None)
            if callee is None or callee in report.kernel_ops:
                continue
            for kind, pattern in _KERNEL_NAME_PATTERNS.items():
                if pattern.search(callee) and waiting[kind]:
                    report.kernel_ops[callee] = waiting[kind].pop(0)
                    break


def detach_op_indices(report: ScheduleReport) -> Any:
    """Move each conv block's heavy-op index out of the PrimFunc into ``report.kernel_ops``.

    The index tells the report which layer a kernel is, but as a block annotation it would make
    two identical layers structurally different: MetaSchedule would tune them as two tasks and
    never reuse one model's records for the same layer in another.
    """
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.DetachOpIndices")
    def transform(module: Any, _context: Any) -> Any:
        for gvar, func in prim_funcs(module):
            found = root_children(func)
            if found is None:  # no root block: not made by LegalizeOps, holds none of our convs
                continue
            sch, blocks = found
            tagged = [b for b in blocks if OP_INDEX_ATTR in sch.get(b).annotations]
            for block in tagged:
                report.kernel_ops[gvar.name_hint] = int(sch.get(block).annotations[OP_INDEX_ATTR])
                sch.unannotate(block, OP_INDEX_ATTR)
            if tagged:
                module[gvar] = sch.mod["main"]
        _claim_lowered_kernels(module, report)
        return module

    return transform


def apply_schedule_rules(report: ScheduleReport, extra_rules: Sequence[Any] = ()) -> Any:
    """The user's ``extra_rules`` then ours on every fused PrimFunc not scheduled yet (by a
    tuning record), logged per op.

    dlight's ``ApplyDefaultSchedule`` with logging: it cannot tell which PrimFunc is which
    layer, nor a rule that declined from one that failed. A user rule that fails hands the
    PrimFunc on to the next rule (the user overrides ours, but a broken override must not cost
    the layer our schedule); one of ours that fails leaves TVM's default, as before. One of
    ours that raises anything else (a bug) hands this PrimFunc on to the next rule and is kept
    in ``report.rule_errors``: it costs that kernel, not the model (strict mode raises it).
    """
    import tvm

    from edgecompile.schedules.user import UserRule

    rules = schedule_rules(extra_rules)

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.ApplyScheduleRules")
    def transform(module: Any, _context: Any) -> Any:
        target = tvm.target.Target.current(allow_none=False)
        log = report.schedules
        for gvar, func in prim_funcs(module):
            index = report.kernel_ops.get(gvar.name_hint)
            if bool(func.attrs.get("tirx.is_scheduled", False)):
                report.kernels_from_records.append(gvar.name_hint)
                if index is not None:
                    log.applied[index] = _record_schedule_name(func)
                continue
            failures = []
            for rule in rules:
                user = isinstance(rule, UserRule)
                try:
                    sch = rule.try_schedule(func, target)
                except ScheduleFailed as failure:
                    failures.append(str(failure))
                    if user:
                        continue
                    break
                except EdgecompileError as error:  # a user rule's bug, named by UserRule
                    report.user_error = error
                    raise
                except Exception as exc:  # a bug in one of our rules: this kernel pays, not all
                    raise_if_interrupt(exc)
                    error = RuleError(
                        gvar.name_hint,
                        getattr(rule, "schedule_name", "") or type(rule).__name__,
                        f"{type(exc).__name__}: {last_line(str(exc)) or '(no message)'}",
                        index,
                    )
                    if strict_rules():
                        report.rule_crash = RuleCrashed(error)
                        raise report.rule_crash from exc
                    report.rule_errors.append(error)
                    failures.append(str(error))
                    continue
                if sch is not None:
                    module[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    if user:
                        report.user_kernels[gvar.name_hint] = rule.schedule_name
                    if index is not None:
                        log.applied[index] = rule.schedule_name
                    break
            if failures and index is not None:
                log.failed[index] = "; ".join(failures)
        return module

    return transform


def _record_schedule_name(func: Any) -> str:
    """``metaschedule``, and the untuned schedule its best record descends from, if marked
    (the search starts from our schedules and TVM's default, and keeps their marks)."""
    names = [
        str(block.annotations[SCHEDULED_BY_ATTR])
        for block in sblocks(func.body)
        if SCHEDULED_BY_ATTR in block.annotations
    ]
    return f"{TUNED} from {names[0]}" if names else TUNED


def schedule_rules(extra: Sequence[Any] = ()) -> list[Any]:
    """The rules in the order they are tried on each fused PrimFunc: ``extra`` first, then ours.

    ``extra``: user rules -- :class:`~edgecompile.schedules.user.UserRule` objects (as
    ``load_user_schedules(dir).rules`` returns), rule objects with ``try_schedule``, or
    functions ``(func, target) -> Schedule | None``; they come back as ``UserRule`` objects, so
    a caller tells them from ours with ``isinstance`` and their errors name the rule.
    """
    from edgecompile.schedules.rules import (
        BlockedElementwise,
        DenseConvNCHWc,
        GroupedNCHWc,
        GroupedPixels,
        PackedMatmul,
        PoolNCHWc,
        TransposedConvNCHWc,
        UnpackNCHWc,
    )
    from edgecompile.schedules.user import user_rules

    return [
        *user_rules(extra),
        Int8ConvBlocked(),
        Int8ConvAvx2(),
        Int8ConvSdot(),
        Int8ConvSmull(),
        Int8ConvVmull(),
        Int8DepthwiseBlocked(),
        Int8DepthwiseNeon(),
        Int8DepthwiseVmlal(),
        Int8ConvNCHW(),
        PointwiseNCHWc(),
        DepthwiseNCHWc(),
        GroupedNCHWc(),
        GroupedPixels(),
        DenseConvNCHWc(),
        TransposedConvNCHWc(),
        PackedMatmul(),
        PoolNCHWc(),
        UnpackNCHWc(),
        BlockedElementwise(),
    ]


def relax_pipeline(
    target: Any, report: ScheduleReport, database: Any = None, extra_rules: Sequence[Any] = ()
) -> Any:
    """TVM's CPU Relax pipeline with our layout pass and schedule rules spliced in.

    With a MetaSchedule ``database``, every fused PrimFunc that has a record for this target
    takes the best record's schedule first; the rules only see the rest (dlight skips a
    PrimFunc already marked scheduled). ``extra_rules`` (user rules, see
    :func:`schedule_rules`) are tried before ours.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.Pipeline")
    def pipeline(module: Any, _context: Any) -> Any:
        with target, contextlib.ExitStack() as scope:
            if database is not None:
                scope.enter_context(database)
            # Built here: MetaScheduleApplyDatabase reads the current target when constructed.
            passes = [
                *fusion_passes(target, report),
                *([relax.transform.MetaScheduleApplyDatabase()] if database is not None else []),
                apply_schedule_rules(report, extra_rules),
                *cpu_generic.dataflow_lower_passes(target),
                # Needs the explicit output tensors CallTIRRewrite makes; before memory planning.
                concat_in_place(),
                *cpu_generic.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(module)

    return pipeline


def fused_module(module: Any, target: Any) -> tuple[Any, ScheduleReport]:
    """``module`` after :func:`fusion_passes`: one PrimFunc per future kernel, unscheduled."""
    import tvm

    report = ScheduleReport()
    with target:
        return tvm.transform.Sequential(fusion_passes(target, report))(module), report


def optimize(
    module: Any, target: Any, extra_rules: Sequence[Any] = ()
) -> tuple[Any, ScheduleReport]:
    """Run the Relax side of the pipeline only: the module handed to codegen, and the report.

    For inspecting the scheduled PrimFuncs (tests, user schedules); :func:`compile_relax`
    builds.
    """
    report = ScheduleReport()
    return relax_pipeline(target, report, extra_rules=extra_rules)(module), report


def compile_relax(
    module: Any,
    target: Any,
    *,
    custom_schedules: bool = True,
    database: Any = None,
    report: ScheduleReport | None = None,
    extra_rules: Sequence[Any] = (),
) -> tuple[Any, list[dict[str, Any]]]:
    """``tvm.compile`` with (or, ``custom_schedules=False``, without) our schedules.

    ``database``: a MetaSchedule database of tuning records for this very target; a fused
    PrimFunc with a record takes the best one (which may be our own schedule, measured).
    ``report``: filled in with the details (layout plans, kernels scheduled by records).
    ``extra_rules``: user rules tried before ours (see :func:`schedule_rules`).

    Returns the VM executable and, per heavy op of ``main``, which schedule it got. Should our
    pipeline itself fail on some graph, the model still builds with TVM's default lowering and
    every record says why under ``fallback``: a new model must not stop building because of a
    schedule (a rule's exception costs only its kernel: ``report.rule_errors``; strict mode,
    :func:`strict_rules`, raises :class:`RuleCrashed` instead). Not so with user rules: a user
    rule's bug, or a failure once user rules scheduled kernels, is an
    :class:`~edgecompile.errors.EdgecompileError` -- the user asked for those schedules, and a
    build quietly without them would be measured as if it had them. Nor with an interrupt
    (Ctrl-C, SIGTERM), however TVM's FFI wrapped it: it is re-raised as one.
    """
    import tvm

    target = tvm.target.Target(target) if isinstance(target, str | dict) else target
    # The schedules are CPU (LLVM) schedules; any other target keeps TVM's default.
    if custom_schedules and target.kind.name == "llvm":
        report = report if report is not None else ScheduleReport()
        # Ctrl-C in one of our passes must come back as itself, not as the RuntimeError the
        # fallback below would take for a failing pass (a slow build, reported as a good one).
        keep_interrupts_through_ffi()
        try:
            pipeline = relax_pipeline(target, report, database, extra_rules)
            executable = tvm.compile(
                module, target=target, relax_pipeline=pipeline, tir_pipeline=register_tir_pipeline()
            )
        except Exception as exc:  # TVMError, ScheduleError, ...: anything in our passes
            raise_if_interrupt(exc)
            if report.rule_crash is not None:  # strict mode: a rule's bug, with its traceback
                raise report.rule_crash from report.rule_crash.__cause__
            if report.user_error is not None:
                raise report.user_error from None
            if report.user_kernels:
                raise _user_schedules_broke(report, extra_rules, exc) from None
            reason = f"{PIPELINE_FAILED}: {last_line(exc)}"
        else:
            return executable, schedule_records(module, report)
        records = [{**record, "fallback": reason} for record in schedule_records(module)]
        return tvm.compile(module, target=target), records
    return tvm.compile(module, target=target), schedule_records(module)


def _user_schedules_broke(
    report: ScheduleReport, extra_rules: Sequence[Any], exc: BaseException
) -> EdgecompileError:
    """The one-line error for a compile that failed after user rules scheduled kernels: TVM's
    message rarely names the kernel, so name the rules that ran and their files."""
    from edgecompile.schedules.user import user_rules

    ran = set(report.user_kernels.values())
    files = sorted({rule.source for rule in user_rules(extra_rules) if rule.schedule_name in ran})
    return EdgecompileError(
        f"compiling failed after user schedule(s) {', '.join(sorted(ran))} ran "
        f"({', '.join(files)}): {last_line(exc)}",
        "check that the schedule keeps a valid PrimFunc (try it on the kernel with "
        "edgecompile.schedules.optimize), or drop --schedules",
    )


def schedule_records(module: Any, report: ScheduleReport | None = None) -> list[dict[str, Any]]:
    """``heavy_ops(module)`` entries, each with the ``schedule`` that ran for it.

    ``"tvm-default"`` is TVM's untuned lowering. A conv one of our rules claimed but could not
    schedule also says why, under ``fallback``; so does a user rule that gave up, and a conv the
    layout pass kept out of the blocked layout (its reason: why no rule of ours could claim it).
    """
    from edgecompile.importer import heavy_ops

    # The fused kernel holding each op: the name `profile` times it under.
    kernels = {} if report is None else {op: name for name, op in report.kernel_ops.items()}
    records = []
    for op in heavy_ops(module):
        record = {
            **op,
            "schedule": TVM_DEFAULT if report is None else report.schedule_of(op["index"]),
        }
        if op["index"] in kernels:
            record["kernel_name"] = kernels[op["index"]]
        if report is not None and op["index"] in report.int8.folded:
            record["int8"] = True  # `build --explain`'s int8 column, whatever schedule ran it
            if record["schedule"] == TVM_DEFAULT:  # our integer compute, no rule scheduled it
                record["schedule"] = INT8_UNSCHEDULED
        elif report is not None and op["index"] in report.int8.moved:
            record["int8"] = True  # a max pool on the integers (int8/glue.py)
        elif report is not None and op["index"] in report.int8.kept:
            record["int8_fallback"] = report.int8.kept[op["index"]]
        if report is not None and op["index"] in report.schedules.failed:
            record["fallback"] = report.schedules.failed[op["index"]]
        elif report is not None and record["schedule"] == TVM_DEFAULT:
            plan = report.layout.plans.get(op["index"])
            if plan is not None and plan.reason:
                record["fallback"] = plan.reason
        records.append(record)
    if report is not None and records:
        # The concats and adds the integer passes judged (no heavy ops): under the heavy op
        # each follows, for `build --explain` (one before every heavy op: under the first).
        for verdict in report.int8.glue.values():
            records[max(verdict["after"], 0)].setdefault("int8_glue", []).append(verdict)
    return records
