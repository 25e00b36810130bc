"""How a schedule rule asks for each of its choices, so the same rule is both the untuned build's
schedule and a MetaSchedule design space.

A rule computes its analytic choice (a tile, a loop order) and asks :class:`Knobs` to apply it.
:data:`FIXED` applies it as a constant: no sampling instruction, so the untuned build is exactly
what it was before knobs existed. A tunable :class:`Knobs` writes a tile as
``sample_perfect_tile`` carrying the analytic value as its decision and splits through the
sampled variables, so a trace replayed with a mutated decision (MetaSchedule's MutateTileSize)
really changes the tile.

A choice between loop nests (a loop order) cannot be a sampling instruction: a trace has no
branches, so the ``reorder`` it replays is the one recorded whatever a categorical sample
decided. Such a choice is fixed per design space instead (:attr:`Knobs.forced`): the rule
builds one design space per option.

The unroll depth is a knob MetaSchedule's own mutator evolves (MutateUnroll): a
``sample_categorical`` over :data:`UNROLL_STEPS` annotated on the root block as
``meta_schedule.unroll_explicit``, which the postprocessor RewriteParallelVectorizeUnroll turns
into ``pragma_auto_unroll_max_step`` on each reduction block's outermost loop: loop nests up to
that many steps unrolled whole, on top of the loops the rule unrolls itself. Its default, 0,
adds nothing (the postprocessor then only removes the annotation): the untuned build's code.
The parallel split stays the rule's: MutateParallel's annotation only fuses outer loops that
are not parallel yet, and ours always are.

A tunable :class:`Knobs` also remembers the names of the tiles it sampled, in order
(:attr:`Knobs.names`); the rule writes them on its block (:data:`KNOBS_ATTR`), so a record's
trace says which decision is which knob (``records show``) without TVM or the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Block annotation of a design space's point: the names of its sampled tiles, in the order of
#: their ``sample_perfect_tile`` instructions, comma-separated.
KNOBS_ATTR = "edgecompile.knobs"
#: Auto-unroll depths the search may choose (MetaSchedule's own CPU choices, 0 first: none).
UNROLL_STEPS = (0, 16, 64, 512)
#: The unroll knob's name (``records show``) and the annotation MutateUnroll looks for.
UNROLL_KNOB = "unroll steps"
UNROLL_ATTR = "meta_schedule.unroll_explicit"


@dataclass(frozen=True)
class Knobs:
    """The choices of one schedule: constants (untuned) or sampling instructions (tunable)."""

    #: Tiles become ``sample_perfect_tile`` instructions whose decision is the analytic tile.
    tunable: bool = False
    #: A design space's fixed value of a choice between loop nests, by the choice's name.
    forced: dict[str, str] = field(default_factory=dict)
    #: The knobs sampled so far (tunable only), by name: what :data:`KNOBS_ATTR` records.
    names: list[str] = field(default_factory=list, compare=False)

    def split(
        self, sch: Any, loop: Any, inner: int, max_inner: int, name: str = "tile"
    ) -> tuple[Any, Any]:
        """Split ``loop`` into ``(outer, inner)`` loops with ``inner`` iterations inside (it
        divides the loop's extent); tunable, any divisor up to ``max(inner, max_inner)``, the
        knob called ``name``."""
        if not self.tunable:
            outer_loop, inner_loop = sch.split(loop, [None, inner])
            return outer_loop, inner_loop
        extent = int(sch.get(loop).extent)
        if extent % inner:
            raise ValueError(f"a tile of {inner} does not divide the loop's {extent}")
        factors = sch.sample_perfect_tile(
            loop,
            n=2,
            max_innermost_factor=max(inner, max_inner),
            decision=[extent // inner, inner],
        )
        self.names.append(name)
        outer_loop, inner_loop = sch.split(loop, factors)
        return outer_loop, inner_loop

    def unroll(self, sch: Any, root: Any) -> None:
        """Tunable: the auto-unroll depth of the kernel (``root``, its root block), 0 by
        default; untuned: nothing (the rule's own unrolling only)."""
        if not self.tunable:
            return
        depth = sch.sample_categorical(
            candidates=list(UNROLL_STEPS),
            probs=[1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS),
            decision=0,
        )
        sch.annotate(root, UNROLL_ATTR, depth)

    def choose(self, name: str, default: str) -> str:
        """The value of the choice ``name``: the design space's, else the analytic ``default``."""
        return self.forced.get(name, default)


#: The untuned build's knobs: every choice the analytic constant, no sampling instruction.
FIXED = Knobs()
