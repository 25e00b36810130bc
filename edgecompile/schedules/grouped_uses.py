"""What reads each grouped conv's output, for the two choices the layout pass makes about it: the
output's lane order (:func:`~edgecompile.schedules.channels.grouped_layout`: the plain order, or
each group padded to whole blocks) and whether a 1×1 conv with few output channels per group
runs blocked or over pixels (:func:`~edgecompile.schedules.plan.grouped_schedule`).

Both were decided from the conv alone, and ShuffleNet v1 paid for it around the conv: a padded
order that met the unit's input in the residual add (or the pooled shortcut in a concat) sent
both to NCHW and back (an unpack of each, the add in NCHW, a pack after), and a compress conv
sent over pixels wrote NCHW, where the channel shuffle after it became a transpose kernel and
the depthwise conv a pack. Plain Relax queries, before the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import relax

from edgecompile.schedules.analysis import CONV2D, is_const, op_name, static_shape, uses
from edgecompile.schedules.patterns import shuffle_chain

#: Ops a conv's epilogue is made of: lane by lane on one activation, so its readers are the
#: conv's readers (the frontend's Clip arrives as ``call_tir``).
_LANEWISE = frozenset({"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.call_tir"})
_BINARY = frozenset(
    {
        "relax.add",
        "relax.subtract",
        "relax.multiply",
        "relax.divide",
        "relax.maximum",
        "relax.minimum",
    }
)


@dataclass(frozen=True)
class GroupedOutputUse:
    """How a grouped conv's output is read, past its epilogue (bias, activation).

    ``plain_order``: it meets another tensor lane by lane where only the plain channel order
    matches without a pass over memory -- a residual add, or a concat it fills whole blocks of
    (which then runs in place) -- so the plain order is worth some extra
    multiply-adds (how many: :func:`~edgecompile.schedules.channels.grouped_layout`);
    ``shuffled``: a channel shuffle reads it.
    """

    plain_order: bool = False
    shuffled: bool = False


#: An output read only through its lane order (convs, pools, the epilogue): either layout fits.
ANY_ORDER = GroupedOutputUse()


def grouped_output_uses(main: Any, block: int) -> dict[Any, GroupedOutputUse]:
    """Var of each grouped (not depthwise) conv2d of ``main`` → :class:`GroupedOutputUse`."""
    use_counts, last_reader = uses(main)
    readers: dict[Any, list[tuple[Any, Any]]] = {}
    convs = []
    for binding_block in main.body.blocks:
        for binding in binding_block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if op_name(value) == CONV2D and _grouped(value):
                convs.append(binding.var)
            for arg in _var_args(value):
                readers.setdefault(arg, []).append((binding.var, value))
    found = {}
    for conv in convs:
        shape = static_shape(conv)
        whole_blocks = shape is not None and len(shape) == 4 and shape[1] % block == 0
        plain, shuffled = False, False
        frontier = [conv]
        while frontier:
            var = frontier.pop()
            for reader, call in readers.get(var, []):
                name = op_name(call)
                if name == "relax.concat":
                    plain |= whole_blocks
                elif name == "relax.reshape":
                    shuffled |= shuffle_chain(reader, call, use_counts, last_reader) is not None
                elif name in _LANEWISE:
                    frontier.append(reader)
                elif name in _BINARY:
                    other = [arg for arg in call.args if not arg.same_as(var)]
                    if all(_per_channel(arg, shape) for arg in other):
                        frontier.append(reader)  # a bias or a scale: still the conv's epilogue
                    else:
                        plain = True  # a residual: the other side is in the plain order
        found[conv] = GroupedOutputUse(plain, shuffled)
    return found


def _grouped(call: Any) -> bool:
    groups = int(call.attrs.groups)
    weight = static_shape(call.args[1])
    return groups > 1 and weight is not None and weight[1] > 1  # depthwise: 1 input per group


def _var_args(call: Any) -> list[Any]:
    args = call.fields if isinstance(call, relax.Tuple) else call.args
    found = []
    for arg in args:
        items = arg.fields if isinstance(arg, relax.Tuple) else [arg]
        found += [item for item in items if isinstance(item, relax.Var)]
    return found


def _per_channel(arg: Any, shape: tuple[int, ...] | None) -> bool:
    """A constant, or a broadcast of one value per channel (or less): not another activation."""
    if is_const(arg):
        return True
    other = static_shape(arg)
    return (
        other is not None
        and shape is not None
        and all(d == 1 for i, d in enumerate(other) if i != len(other) - 3)
    )
