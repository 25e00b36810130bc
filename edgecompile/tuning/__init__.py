"""Stage 3b: tune a model's kernels for one target with MetaSchedule, into that target's records.

model → export + import (as ``build`` does) → the fused module (our blocked layout, legalized and
fused: exactly the PrimFuncs a build compiles) → one task per distinct kernel → each kernel as an
untuned build compiles it (our schedule, else TVM's default lowering) measured and committed as
a record → MetaSchedule's evolutionary search (xgboost cost model) seeded with them → more
records → per kernel, the search's best records re-measured against the untuned schedule,
interleaved and repeated, and the verdict stored as the kernel's choice (``choices.json``), which
is all a later ``build`` applies.

One job per module:

- :mod:`~edgecompile.tuning.pipeline` — :func:`tune` itself: the stages in turn, one store writer,
  all within the time budget;
- :mod:`~edgecompile.tuning.budget` — the trial budget (``--trials``), the deadline
  (``--time-budget``), and the measured pace that sizes the search's rounds;
- :mod:`~edgecompile.tuning.tasks` — the fused module's kernels as tuning tasks, and their records;
- :mod:`~edgecompile.tuning.measure` — where candidates are built and timed: here, or on a board
  over RPC, a tracker or an SSH tunnel (a :class:`~edgecompile.device.access.BoardAccess`);
- :mod:`~edgecompile.tuning.building` — the candidate builder: one long-lived worker, stopping
  between candidates at the deadline;
- :mod:`~edgecompile.tuning.baseline` — every task as an untuned build compiles it, measured and
  committed as a record the search starts from;
- :mod:`~edgecompile.tuning.search` — MetaSchedule's evolutionary search over the tasks;
- :mod:`~edgecompile.tuning.scheduler` — which kernel the search works on next, and when it ends;
- :mod:`~edgecompile.tuning.monitor` — the search as it runs: budget, failures, status line;
- :mod:`~edgecompile.tuning.heartbeat` — the status line kept moving, on a terminal and in a pipe;
- :mod:`~edgecompile.tuning.verdict` — the search's best re-measured against the untuned schedule,
  and what a build uses;
- :mod:`~edgecompile.tuning.results` — :class:`TuneResult`, :class:`TaskOutcome`.

The worker processes run functions of :mod:`edgecompile._tune_workers`, which stays
outside this package: each fresh worker imports it by name, and inside the package that would
first run this ``__init__`` and everything it imports.
"""

from __future__ import annotations

from edgecompile.tuning.budget import DEFAULT_TRIALS_PER_TASK, MAX_TRIALS_PER_ROUND, parse_duration
from edgecompile.tuning.pipeline import TUNE_STAGES, tune
from edgecompile.tuning.results import TaskOutcome, TuneResult
from edgecompile.tuning.verdict import CONFIRM_MARGIN

__all__ = [
    "CONFIRM_MARGIN",
    "DEFAULT_TRIALS_PER_TASK",
    "MAX_TRIALS_PER_ROUND",
    "TUNE_STAGES",
    "TaskOutcome",
    "TuneResult",
    "parse_duration",
    "tune",
]
