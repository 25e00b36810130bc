"""``edgecompile build --explain``: which schedule each layer got, and why not ours.

Reads only the manifest's per-op ``schedules`` records (see
:func:`edgecompile.schedules.schedule_records`), so it explains a build from its artifact alone,
long after the build, and ``--json`` holds the same data. Its ``layer`` and ``kernel`` columns
are ``edgecompile profile``'s: a slow kernel there is found here by either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from edgecompile._table import format_table

#: Who scheduled an op, in the order the summary line counts them.
OURS, USER, RECORDS, DEFAULT = "ours", "user", "records", "tvm-default"
SOURCES = (OURS, USER, RECORDS, DEFAULT)
HEADERS = (
    "layer", "kernel", "op", "kind", "input", "weight", "groups", "ksize", "stride", "by",
    "schedule", "fallback",
)  # fmt: skip


def schedule_source(schedule: str) -> str:
    """``ours``, ``user``, ``records`` or ``tvm-default`` for a manifest ``schedule`` value."""
    from edgecompile.schedules.pipeline import TUNED, TVM_DEFAULT
    from edgecompile.schedules.user import USER_PREFIX

    if schedule == TVM_DEFAULT:
        return DEFAULT
    if schedule.startswith(USER_PREFIX):
        return USER
    if schedule.startswith(TUNED):  # "metaschedule" or "metaschedule from <rule>"
        return RECORDS
    return OURS


def _dims(value: Sequence[int] | None, sep: str = "x") -> str:
    return sep.join(map(str, value)) if value else "-"


def _op(record: Mapping[str, Any]) -> str:
    """The op with a pool's type: ``avg_pool`` reads better than ``pool`` beside ``pointwise``."""
    pool = record.get("pool")
    return f"{pool}_pool" if record["op"] == "pool" and pool else str(record["op"])


def _kind(record: Mapping[str, Any]) -> str:
    # The manifest's "conv" is a dense K×K conv; beside pointwise/depthwise/grouped, say so.
    kind = str(record.get("kind", "-"))
    return "dense" if kind == "conv" else kind


def _short(schedule: str) -> str:
    # Our rules are all "edgecompile.<name>": the prefix only widens the column.
    return schedule.replace("edgecompile.", "")


def explain_rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """One row per heavy op, in the order of :data:`HEADERS`."""
    rows = []
    for record in records:
        shapes = record.get("shapes") or []
        strides = record.get("strides")
        rows.append(
            (
                str(record["index"]),
                # The fused kernel holding the op, as `profile` names it ("-": older manifests).
                str(record.get("kernel_name", "-")),
                _op(record),
                _kind(record),
                _dims(shapes[0] if shapes else None),
                _dims(shapes[1] if len(shapes) > 1 else None),
                str(record["groups"]) if "groups" in record else "-",
                _dims(record.get("kernel")),
                _dims(strides, ",") if strides else "-",
                schedule_source(str(record["schedule"])),
                _short(str(record["schedule"])),
                # Last, so a long reason widens no column but its own (format_table strips).
                str(record.get("fallback", "")),
            )
        )
    return rows


def explain_summary(records: Sequence[Mapping[str, Any]]) -> str:
    """``N ops: K by our schedules, U by user schedules, T by tuning records, D TVM default``."""
    counts = Counter(schedule_source(str(r["schedule"])) for r in records)
    return (
        f"{len(records)} ops: {counts[OURS]} by our schedules, {counts[USER]} by user "
        f"schedules, {counts[RECORDS]} by tuning records, {counts[DEFAULT]} TVM default"
    )


def format_explain(records: Sequence[Mapping[str, Any]]) -> str:
    """The table, a blank line, the summary."""
    if not records:
        return explain_summary(records)
    return f"{format_table(HEADERS, explain_rows(records))}\n\n{explain_summary(records)}"
