"""The report's PNG plots: latency against multiply-adds and MAC, and time by op class.

Drawn with matplotlib's Agg canvas without pyplot, so no global backend is switched in the
caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile._atomic import atomic_file
from edgecompile.report.measure import OP_CLASSES
from edgecompile.report.results import ENGINES, Correlation, ModelResult

PLOT_MULTIPLY_ADDS = "latency_vs_multiply_adds.png"
PLOT_MAC = "latency_vs_mac.png"
PLOT_OP_CLASSES = "time_by_op_class.png"


def _save(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # Agg without pyplot: no global backend switch in the caller
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_latency(
    path: Path,
    results: Sequence[ModelResult],
    engines: Sequence[str],
    threads: Sequence[int],
    found: Sequence[Correlation],
    *,
    cost: str,
) -> None:
    """Latency against ``cost`` ("multiply_adds" or "memory_access"): a point per model and
    engine, one panel per thread count, log axes, ρ in the legend."""
    from matplotlib.figure import Figure

    label = "multiply-adds" if cost == "multiply_adds" else "MAC (elements)"
    figure = Figure(figsize=(5.5 * len(threads), 4.5))
    axes_list = figure.subplots(1, len(threads), squeeze=False)[0]
    markers = dict(zip(ENGINES, ("o", "D", "s", "^"), strict=True))
    for axes, count in zip(axes_list, threads, strict=True):
        plotted = False
        for engine in engines:
            points = [
                (getattr(result, cost), timing.median_ms)
                for result in results
                if (timing := result.timing(engine, count)) and getattr(result, cost)
            ]
            if not points:
                continue
            item = next((c for c in found if (c.engine, c.threads) == (engine, count)), None)
            rho = item.multiply_adds_rho if cost == "multiply_adds" else item.mac_rho
            legend = f"{engine} (ρ = {rho:+.2f})" if rho is not None else engine
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, label=legend, marker=markers[engine], alpha=0.75)
            plotted = True
        if plotted:
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no measurements", ha="center", transform=axes.transAxes)
        axes.set_xlabel(label)
        axes.set_ylabel("median latency (ms)")
        axes.set_title(f"{count} thread{'s' if count > 1 else ''}")
        axes.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"Latency vs {label}, batch 1, one point per model and engine")
    _save(figure, path)


def plot_op_classes(path: Path, results: Sequence[ModelResult]) -> None:
    """Stacked horizontal bars: each model's profiled TVM time split by op class.

    Bars are shares of each model's own time, its total written beside it: latencies span two
    orders of magnitude across the zoo, and absolute bars would flatten every fast model.
    """
    from matplotlib.figure import Figure

    profiled = [result for result in results if sum(result.op_class_ms.values()) > 0]
    figure = Figure(figsize=(10, 1.8 + 0.32 * max(len(profiled), 1)))
    axes = figure.subplots()
    if profiled:
        names = [result.model for result in profiled]
        totals = np.array([sum(result.op_class_ms.values()) for result in profiled])
        left = np.zeros(len(profiled))
        for op_class in OP_CLASSES:
            shares = 100 * np.array([r.op_class_ms.get(op_class, 0.0) for r in profiled]) / totals
            axes.barh(names, shares, left=left, label=op_class)
            left += shares
        for row, total in enumerate(totals):
            axes.text(101, row, f"{total:.1f} ms", va="center", fontsize="small")
        axes.set_xlim(0, 115)
        axes.invert_yaxis()  # first model on top, as in the tables
        axes.set_xlabel("share of TVM time per inference (%, profiled kernels; total at right)")
        axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        axes.text(0.5, 0.5, "no profiles", ha="center", transform=axes.transAxes)
    axes.set_title("Where TVM's time goes, by op class")
    axes.grid(True, axis="x", alpha=0.3)
    _save(figure, path)
