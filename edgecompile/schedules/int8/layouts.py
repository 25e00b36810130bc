"""Which folded kernels hand each other the blocked uint8 activation ``[N, C/16, H, W, 16]``
instead of NCHW (:class:`.compute.Layouts`).

A folded conv's output is written blocked only when every reader of it is a folded kernel
that reads that layout: in the QDQ graph, each use of its ``quantize`` is a ``dequantize``
whose every use is the input of a folded blocked conv (dense or depthwise, uint8, on a target
with the blocked kernels), or integer glue (:mod:`.glue`) that runs blocked as well: a channel
concat of whole blocks (one block axis laid end to end), a max pool (uint8 lanes, one vector
per window element), a requantization, an integer residual add (:mod:`.add`: elementwise,
both its inputs blocked). A tensor anything else reads (fp32 glue, the model's output, an
NCHW kernel) stays NCHW, so no unpack is ever needed. In MobileNet v2 that is every tensor
from the stem to the last 1×1 conv: expand 1×1 → depthwise → project 1×1, the residual add
and the next block's expand; in SqueezeNet every tensor from the stem to the classifier's
conv (convs, concats, max pools) is blocked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from edgecompile.schedules.int8.compute import OUT_BLOCK, is_depthwise
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


@dataclass(frozen=True)
class GlueOp:
    """An op of the integer glue (:mod:`.glue`) that runs on the blocked uint8 layout as it
    runs on NCHW: a channel concat of whole blocks, a max pool (the lanes are channels, each
    pooled on its own), or a requantization ``quantize(dequantize(x))`` (elementwise)."""

    kind: str  # "concat", "max_pool", "requantize" or "add"
    inputs: tuple[Any, ...]  # the integer tensors it reads
    #: An integer residual add's constants (:class:`.add.QuantizedAdd`; elementwise, so it
    #: runs on the blocked layout as on NCHW).
    add: Any = None


def glue_ops(main: Any, module: Any = None) -> dict[Any, GlueOp]:
    """The bindings of ``main`` that are integer glue the blocked layout can run (see
    :class:`GlueOp`), by their var; the residual adds (:mod:`.add`) too, given the
    ``module`` that holds their PrimFuncs."""
    from tvm import relax

    from edgecompile.schedules.analysis import bindings_of, dtype_of, op_name, static_shape
    from edgecompile.schedules.int8.add import QuantizedAdd

    values = bindings_of(main)

    def integer_nchw(expr: Any) -> bool:
        shape = static_shape(expr)
        return dtype_of(expr) == "uint8" and shape is not None and len(shape) == 4

    found: dict[Any, GlueOp] = {}
    for var, value in values.items():
        if not isinstance(value, relax.Call) or not integer_nchw(var):
            continue
        name = op_name(value)
        if name == "relax.call_tir" and module is not None:
            add = QuantizedAdd.of_func(module[value.args[0]])
            parts = tuple(value.args[1].fields) if add is not None else ()
            if add is not None and all(integer_nchw(part) for part in parts):
                found[var] = GlueOp("add", parts, add)
        elif name == "relax.concat" and isinstance(value.args[0], relax.Tuple):
            parts = tuple(value.args[0].fields)
            whole_blocks = all(
                integer_nchw(part) and static_shape(part)[1] % OUT_BLOCK == 0 for part in parts
            )
            if int(value.attrs.axis) in (1, -3) and whole_blocks:
                found[var] = GlueOp("concat", parts)
        elif name == "relax.nn.max_pool2d":
            attrs = value.attrs
            plain = str(attrs.layout) == "NCHW" and str(attrs.out_layout) == "NCHW"
            if plain and all(int(d) == 1 for d in attrs.dilation):
                found[var] = GlueOp("max_pool", (value.args[0],))
        elif name == "relax.quantize":
            real = values.get(value.args[0])
            dequantized = isinstance(real, relax.Call) and op_name(real) == "relax.dequantize"
            if dequantized and integer_nchw(real.args[0]):
                found[var] = GlueOp("requantize", (real.args[0],))
    return found


def blocked_outputs(
    main: Any, plans: dict[Any, QuantizedConv], kinds: dict[Any, Any], glue: dict[Any, GlueOp]
) -> set[Any]:
    """The vars to hold blocked: ``quantize`` vars of ``plans`` (folded kernels' outputs) and
    vars of ``glue``.

    A tensor is blocked when it is not an output of ``main`` and every reader takes it blocked:
    a folded blocked conv (through a ``dequantize``), or a glue op whose own output is blocked;
    a glue op only when every input of it is blocked too. The largest such set: start from
    every candidate and drop those that break the rule until none does.

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

    def only_blocked_readers(var: Any, blocked: set[Any]) -> bool:
        if var in outputs or not readers[var]:
            return False
        for reader in readers[var]:
            if reader in glue:  # a concat or max pool reading the integers themselves
                if reader not in blocked:
                    return False
                continue
            value = values.get(reader)
            if getattr(getattr(value, "op", None), "name", None) != "relax.dequantize":
                return False
            if reader in outputs:
                return False
            # A dequantize nothing reads (the glue pass leaves them to DeadCodeElimination)
            # passes: its user loop is empty.
            for user in readers[reader]:
                requantized = user in glue and glue[user].kind == "requantize"
                if requantized and user in blocked:
                    continue
                if not reads_blocked(user, var):
                    return False
        return True

    blocked = {
        var for var, plan in plans.items() if kinds.get(var) is not None and not plan.matmul
    } | set(glue)
    while True:
        kept = {
            var
            for var in blocked
            if only_blocked_readers(var, blocked)
            and (var not in glue or all(source in blocked for source in glue[var].inputs))
        }
        if kept == blocked:
            return blocked
        blocked = kept
