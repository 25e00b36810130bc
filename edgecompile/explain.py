"""``edgecompile build --explain``: which schedule each layer got, and why not ours.

Reads only the manifest's per-op ``schedules`` records (see
:func:`edgecompile.schedules.schedule_records`), so it explains a build from its artifact alone,
long after the build, and ``--json`` holds the same data. Its ``layer`` and ``kernel`` columns
are ``edgecompile profile``'s: a slow kernel there is found here by either. An int8 build (a QDQ
model, ``build --int8``) gets one more column: ``int8`` for an op folded into an integer kernel
(a max pool moved onto the integers too), else ``fp32: <why>``; and a row, below the layer it
follows, for each concat and residual add the integer passes judged (``int8_glue``: no heavy
op, so no layer of its own: its layer reads ``<layer>+``).
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
#: The int8 column's header; it goes before ``fallback``, whose reasons are the longest.
INT8_HEADER = "int8"
#: The int8 column of an op the folding pass has no integer kernel for (avg pools, ...).
NO_INT8_KERNEL = "fp32: no int8 kernel for {op} yet"
#: The ``kind`` of a concat's or add's row: glue between the layers' kernels.
GLUE_KIND = "glue"


def is_int8_build(records: Sequence[Mapping[str, Any]]) -> bool:
    """Built from a QDQ model: the folding pass gave some op a verdict, int8 or kept fp32."""
    return any("int8" in r or "int8_fallback" in r or "int8_glue" in r for r in records)


def int8_cell(record: Mapping[str, Any]) -> str:
    """``int8``, or ``fp32: <why>`` (the folding pass's reason, our pipeline's failure, or that
    no kernel exists)."""
    from edgecompile.schedules.pipeline import PIPELINE_FAILED

    if record.get("int8"):
        return "int8"
    if "int8_fallback" in record:
        return f"fp32: {record['int8_fallback']}"
    if str(record.get("fallback", "")).startswith(PIPELINE_FAILED):
        # TVM's lowering built the whole QDQ model: dequantized weights, float convs.
        return f"fp32: {PIPELINE_FAILED} (see fallback)"
    return NO_INT8_KERNEL.format(op=_op(record))


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


def headers_for(records: Sequence[Mapping[str, Any]], int8: bool | None = None) -> tuple[str, ...]:
    """:data:`HEADERS`, with :data:`INT8_HEADER` before ``fallback`` for an int8 build (``int8``;
    None: as the records say, :func:`is_int8_build`)."""
    if not (is_int8_build(records) if int8 is None else int8):
        return HEADERS
    return (*HEADERS[:-1], INT8_HEADER, HEADERS[-1])


def explain_rows(
    records: Sequence[Mapping[str, Any]], int8: bool | None = None
) -> list[tuple[str, ...]]:
    """One row per heavy op, in the order of :func:`headers_for`."""
    int8 = is_int8_build(records) if int8 is None else int8
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
                *([int8_cell(record)] if int8 else []),
                # Last, so a long reason widens no column but its own (format_table strips).
                str(record.get("fallback", "")),
            )
        )
        if int8:
            rows.extend(_glue_row(record["index"], glue) for glue in record.get("int8_glue", []))
    return rows


def _glue_row(layer: int, glue: Mapping[str, Any]) -> tuple[str, ...]:
    """A concat's or add's row: no kernel or schedule of its own (TVM fuses it, or it runs in
    place), only its verdict. ``<layer>+``: it follows that layer (before the first: under it)."""
    shapes = glue.get("shapes") or []
    after = int(glue.get("after", layer))
    return (
        f"{layer}+" if after >= 0 else f"<{layer}",
        "-",
        str(glue["op"]),
        GLUE_KIND,
        _dims(shapes[0] if shapes else None),
        _dims(shapes[1] if len(shapes) > 1 else None),
        *("-",) * 5,
        int8_cell(glue),
        "",
    )


def _glue(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [glue for record in records for glue in record.get("int8_glue", [])]


def explain_summary(records: Sequence[Mapping[str, Any]], int8: bool | None = None) -> str:
    """``N ops: K by our schedules, U by user schedules, T by tuning records, D TVM default``."""
    counts = Counter(schedule_source(str(r["schedule"])) for r in records)
    summary = (
        f"{len(records)} ops: {counts[OURS]} by our schedules, {counts[USER]} by user "
        f"schedules, {counts[RECORDS]} by tuning records, {counts[DEFAULT]} TVM default"
    )
    if is_int8_build(records) if int8 is None else int8:
        folded = sum(1 for r in records if r.get("int8"))
        summary += f"; {folded} in int8, {len(records) - folded} in fp32"
        glue = _glue(records)
        if glue:
            on_integers = sum(1 for g in glue if g.get("int8"))
            summary += f"; concats/adds: {on_integers} in int8, {len(glue) - on_integers} in fp32"
    return summary


def format_explain(
    records: Sequence[Mapping[str, Any]],
    int8: bool | None = None,
    rule_errors: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The table, a blank line, the summary. ``int8``: built from a QDQ model (the manifest
    knows; None: as the records say, which they cannot when our pipeline failed as a whole).
    ``rule_errors`` (the manifest's, see :func:`edgecompile.schedules.coverage.rule_errors`):
    the kernels a rule of ours raised on, listed after the summary -- glue kernels have no
    row of their own, and a layer's row shows only the start of its reason."""
    text = explain_summary(records, int8)
    if records:
        table = format_table(headers_for(records, int8), explain_rows(records, int8))
        text = f"{table}\n\n{text}"
    if rule_errors:
        from edgecompile.schedules.coverage import format_rule_error

        text += (
            f"\n{len(rule_errors)} kernel(s) fell back after a schedule rule raised "
            "(a bug in the rule: please report it):\n"
            + "\n".join(f"  {format_rule_error(error)}" for error in rule_errors)
        )
    return text
