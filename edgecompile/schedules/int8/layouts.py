"""Which folded kernels hand each other the blocked uint8 activation ``[N, C/16, H, W, 16]``
instead of NCHW (:class:`.compute.Layouts`).

A folded conv's output is written blocked only when every reader of it is a folded kernel
that reads that layout: in the QDQ graph, each use of its ``quantize`` is a ``dequantize``
whose every use is the input of a folded blocked conv (dense or depthwise, uint8, on a target
with the blocked kernels). A tensor anything else reads (fp32 glue such as a residual add, a
pool, a concat, the model's output, an NCHW kernel) stays NCHW, so no unpack is ever needed.
In MobileNet v2's blocks that is expand 1×1 → depthwise → project 1×1: two of the three
boundaries, and the depthwise conv's input and output, need no repacking.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from edgecompile.schedules.int8.compute import is_depthwise
from edgecompile.schedules.int8.graph import QuantizedConv


def blocked_kind(plan: QuantizedConv, input_dtype: str, blocked_target: bool) -> str | None:
    """``"conv"`` or ``"depthwise"``: the blocked kernel ``plan`` runs as; None for the NCHW
    one (a target without the blocked kernels, an int8 input, a grouped conv that is not
    depthwise). The blocked kernels multiply a uint8 input, its zero point folded into the
    bias."""
    if not blocked_target or input_dtype != "uint8":
        return None
    if plan.groups == 1:
        return "conv"
    return "depthwise" if is_depthwise(plan) else None


def blocked_outputs(main: Any, plans: dict[Any, QuantizedConv], kinds: dict[Any, Any]) -> set[Any]:
    """The ``quantize`` vars of ``plans`` (folded kernels' outputs) to write blocked.

    ``kinds``: each plan's :func:`blocked_kind`, by the same key."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of

    values = bindings_of(main)
    readers: dict[Any, list[Any]] = defaultdict(list)
    for var, value in values.items():
        for used in relax.analysis.free_vars(value):
            readers[used].append(var)
    outputs = set(relax.analysis.free_vars(main.body.body))
    folded_by_conv = {plan.conv: key for key, plan in plans.items() if plan.conv is not None}

    def reads_blocked(reader: Any, produced: Any) -> bool:
        """``reader`` is a folded blocked conv whose input is ``produced``, dequantized."""
        key = folded_by_conv.get(reader)
        if key is None or kinds.get(key) is None or plans[key].matmul:
            return False
        return plans[key].data.same_as(produced)

    def only_blocked_readers(var: Any) -> bool:
        if var in outputs or not readers[var]:
            return False
        for dequantize in readers[var]:
            value = values.get(dequantize)
            if getattr(getattr(value, "op", None), "name", None) != "relax.dequantize":
                return False
            if dequantize in outputs or not readers[dequantize]:
                return False
            if not all(reads_blocked(reader, var) for reader in readers[dequantize]):
                return False
        return True

    return {
        var
        for var, plan in plans.items()
        if kinds.get(var) is not None and not plan.matmul and only_blocked_readers(var)
    }
