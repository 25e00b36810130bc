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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Knobs:
    """The choices of one schedule: constants (untuned) or sampling instructions (tunable)."""

    #: Tiles become ``sample_perfect_tile`` instructions whose decision is the analytic tile.
    tunable: bool = False
    #: A design space's fixed value of a choice between loop nests, by the choice's name.
    forced: dict[str, str] = field(default_factory=dict)

    def split(self, sch: Any, loop: Any, inner: int, max_inner: int) -> tuple[Any, Any]:
        """Split ``loop`` into ``(outer, inner)`` loops with ``inner`` iterations inside (it
        divides the loop's extent); tunable, any divisor up to ``max(inner, max_inner)``."""
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
        outer_loop, inner_loop = sch.split(loop, factors)
        return outer_loop, inner_loop

    def choose(self, name: str, default: str) -> str:
        """The value of the choice ``name``: the design space's, else the analytic ``default``."""
        return self.forced.get(name, default)


#: The untuned build's knobs: every choice the analytic constant, no sampling instruction.
FIXED = Knobs()
