"""Which heavy ops of a build went to TVM's default lowering although a rule of ours claims their
class: the check that turns a silent fallback (a slower build, recorded in the manifest and
nowhere else) into a failing test.

It reads only the manifest's per-op ``schedules`` records (see
:func:`~edgecompile.schedules.pipeline.schedule_records`), so it can judge any artifact::

    from edgecompile.schedules import assert_no_missed_schedules

    assert_no_missed_schedules(result.artifact.manifest.schedules, "mobilenet_v2 for host")

Our rules claim every conv2d (pointwise, depthwise, grouped, dense K×K, dilated or not), every
conv2d_transpose, the classifier's matmul and max/average pools. An op of those classes on
``tvm-default`` is *missed* unless its recorded reason is one the design accepts
(:data:`BY_DESIGN`) or a gap we know of and keep (:data:`KNOWN_GAPS`). Not claimed at all, so
never missed: adaptive average pools (no rule of ours for them).

Worse than a missed op: a build whose pipeline failed as a whole (every op on TVM's default),
or kernels a rule of ours raised on (the manifest's ``extra["rule_errors"]``, glue kernels
too). :func:`build_fallback` says which, in one line, for the build's warning, ``bench``'s
note and the zoo report's flag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgecompile.schedules.pipeline import PIPELINE_FAILED, RULE_ERRORS_KEY, TVM_DEFAULT
from edgecompile.schedules.plan import (
    MODEL_INPUT,
    PIXELS_OUTPUT,
    PLAIN_INPUT,
    POOL_VARIANTS,
    TRANSPOSED_UNSUPPORTED,
)

#: The op classes (see :func:`op_class`) a rule of ours schedules.
CLAIMED = frozenset(
    {
        "pointwise",
        "depthwise",
        "grouped",
        "conv",
        "conv2d_transpose",
        "matmul",
        "max_pool",
        "avg_pool",
    }
)
NO_REASON = "no reason recorded"

#: Fallbacks the design chooses: (reason pattern, why TVM's lowering is right there).
BY_DESIGN: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(re.escape(PLAIN_INPUT + MODEL_INPUT)),
        "a pool on the image: packing 3 channels into a whole block costs more than it saves",
    ),
    (
        re.compile("|".join(re.escape(variant) for variant in POOL_VARIANTS)),
        "a pool variant our pool compute does not implement: TVM's pool, on the blocked layout",
    ),
)
#: Fallbacks that are gaps of ours, known and kept for now: (reason pattern, what is missing).
KNOWN_GAPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(re.escape(PIXELS_OUTPUT)),
        "a grouped conv with few output channels per group writes NCHW: a pool after it too",
    ),
    (
        re.compile(re.escape(TRANSPOSED_UNSUPPORTED)),
        "grouped or dilated transposed convs (no zoo model has one) keep TVM's lowering",
    ),
)


@dataclass(frozen=True)
class Fallback:
    """One op of a claimed class that went to ``tvm-default``, and why (the manifest's reason)."""

    index: int
    op_class: str
    reason: str

    def __str__(self) -> str:
        return f"op #{self.index} ({self.op_class}): {self.reason}"


def op_class(record: Mapping[str, Any]) -> str:
    """``pointwise``, ``depthwise``, ``grouped``, ``conv`` (dense K×K), ``conv2d_transpose``,
    ``matmul``, or ``<type>_pool`` (``max``, ``avg``, ``adaptive_avg``) for a manifest record."""
    kind = str(record.get("kind") or record.get("op", ""))
    if kind == "pool":
        return f"{record.get('pool', '')}_pool"
    return kind


def _matches(reason: str, patterns: tuple[tuple[re.Pattern[str], str], ...]) -> bool:
    return any(pattern.search(reason) for pattern, _ in patterns)


def fallbacks(records: Iterable[Mapping[str, Any]]) -> list[Fallback]:
    """Every op of a class a rule of ours claims that went to TVM's default lowering."""
    return [
        Fallback(int(record["index"]), op_class(record), str(record.get("fallback") or NO_REASON))
        for record in records
        if record.get("schedule") == TVM_DEFAULT and op_class(record) in CLAIMED
    ]


def missed_schedules(records: Iterable[Mapping[str, Any]]) -> list[Fallback]:
    """The :func:`fallbacks` that are neither by design (:data:`BY_DESIGN`) nor a known gap
    (:data:`KNOWN_GAPS`): an op one of our rules should have scheduled."""
    return [
        fallback
        for fallback in fallbacks(records)
        if not _matches(fallback.reason, BY_DESIGN) and not _matches(fallback.reason, KNOWN_GAPS)
    ]


def assert_no_missed_schedules(records: Iterable[Mapping[str, Any]], what: str = "") -> None:
    """Raise AssertionError, one line per op, if :func:`missed_schedules` finds any."""
    missed = missed_schedules(records)
    if missed:
        where = f" in {what}" if what else ""
        lines = "\n".join(f"  {fallback}" for fallback in missed)
        raise AssertionError(
            f"{len(missed)} op(s){where} went to TVM's default lowering where a rule of ours "
            f"should have applied:\n{lines}"
        )


def pipeline_failure(records: Iterable[Mapping[str, Any]]) -> str | None:
    """The reason our pipeline failed as a whole (TVM's default built every op), if it did."""
    for record in records:
        reason = str(record.get("fallback", ""))
        if reason.startswith(PIPELINE_FAILED):
            return reason
    return None


def rule_errors(extra: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The kernels a rule of ours raised on, from a manifest's ``extra`` (``kernel``, ``rule``,
    ``error``, ``layer``: see :class:`~edgecompile.schedules.pipeline.RuleError`)."""
    return list((extra or {}).get(RULE_ERRORS_KEY) or [])


def format_rule_error(error: Mapping[str, Any]) -> str:
    """``<kernel> (layer N): <rule> raised <Type>: <message>``."""
    layer = error.get("layer")
    where = f" (layer {layer})" if layer is not None else ""
    return f"{error['kernel']}{where}: {error['rule']} raised {error['error']}"


def build_fallback(
    records: Iterable[Mapping[str, Any]], extra: Mapping[str, Any] | None
) -> str | None:
    """One line when a build lost schedules to a failure rather than a decision: our pipeline
    failed as a whole, or rules of ours raised on some kernels (a bug either way); else None."""
    failure = pipeline_failure(records)
    if failure is not None:
        return failure
    errors = rule_errors(extra)
    if not errors:
        return None
    plural = "" if len(errors) == 1 else "s"
    return (
        f"{len(errors)} kernel{plural} fell back after a schedule rule raised "
        f"(first: {format_rule_error(errors[0])})"
    )
