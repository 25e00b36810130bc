"""The zoo report: bench + profile over many models, and what predicts their latency.

:func:`report` builds each selected zoo model for this machine (and, when tuning records exist
for it, a second build with them applied), times it next to ONNX Runtime and torch
(:func:`edgecompile.benchmarking.bench_local`), splits its time by op class
(:func:`edgecompile.benchmarking.profile_local`) and writes ``index.md`` (tables, findings, the rank
correlations of multiply-adds and MAC with latency), ``results.csv`` and PNG plots.

One model's failure (a build TVM refuses, engines that disagree) is a row of the report, never
the end of it: a whole-zoo run takes tens of minutes and should not be lost to one model.

One job per module:

- :mod:`~edgecompile.reporting.pipeline` — :func:`report` itself: choosing models, the two phases,
  writing it all;
- :mod:`~edgecompile.reporting.results` — what a report holds (its engines, each model's result,
  a failed stage);
- :mod:`~edgecompile.reporting.builds` — first phase: costs and host builds (untuned, and tuned
  with the records), several models at once;
- :mod:`~edgecompile.reporting.measure` — second phase: each model benched and profiled alone,
  its kernels summed by op class;
- :mod:`~edgecompile.reporting.board` — the second phase on a board (``--device``): each build
  deployed as a bundle and timed by its native runner (and ORT, when the board's Python has it);
- :mod:`~edgecompile.reporting.stats` — Spearman rank correlations of costs with latency;
- :mod:`~edgecompile.reporting.tables` — ``results.csv``, ``index.md``, the terminal summary;
- :mod:`~edgecompile.reporting.plots` — the PNG plots.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from edgecompile.reporting.builds import tuned_engine_available, tuning_records
from edgecompile.reporting.pipeline import progress_stages, report, select_models
from edgecompile.reporting.results import DEFAULT_ENGINES, ENGINES, TUNED, ModelResult, ZooReport
from edgecompile.reporting.tables import format_summary

__all__ = [
    "DEFAULT_ENGINES",
    "ENGINES",
    "TUNED",
    "ModelResult",
    "ZooReport",
    "format_summary",
    "progress_stages",
    "report",
    "select_models",
    "tuned_engine_available",
    "tuning_records",
]


class _CallableModule(types.ModuleType):
    """``edgecompile.reporting`` names both this package and :func:`report`.

    Importing the package (the CLI does) makes the package attribute ``edgecompile.reporting``
    this module rather than the function the lazy API promises, so calls are forwarded.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> ZooReport:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
