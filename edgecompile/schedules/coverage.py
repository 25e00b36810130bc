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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgecompile.schedules.pipeline import TVM_DEFAULT
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
