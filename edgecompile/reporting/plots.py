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
from edgecompile.reporting.measure import OP_CLASSES
from edgecompile.reporting.results import ENGINES, Correlation, ModelResult

PLOT_MULTIPLY_ADDS = "latency_vs_multiply_adds.png"
PLOT_MAC = "latency_vs_mac.png"
PLOT_OP_CLASSES = "time_by_op_class.png"


def _save(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # Agg without pyplot: no global backend switch in the caller
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


#: Up to this many models, every one is named beside its point; beyond it, only the
#: :data:`OUTLIERS` farthest from the trend, or the names would cover the points.
LABEL_ALL = 16
OUTLIERS = 8


def labelled_models(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Which of ``points`` (model, cost, latency) get their name written: all of a small zoo,
    else the ones farthest above or below the log-log least-squares line, the models a reader
    asks about ("why is this one so slow for its FLOPs?")."""
    if len(points) <= LABEL_ALL:
        return {model for model, _, _ in points}
    xs = np.log([x for _, x, _ in points])
    ys = np.log([y for _, _, y in points])
    slope, intercept = np.polyfit(xs, ys, 1) if np.ptp(xs) > 0 else (0.0, float(np.mean(ys)))
    residuals = np.abs(ys - (slope * xs + intercept))
    farthest = np.argsort(-residuals)[:OUTLIERS]
    return {points[i][0] for i in farthest}


def latency_figure(
    results: Sequence[ModelResult],
    engines: Sequence[str],
    threads: Sequence[int],
    found: Sequence[Correlation],
    *,
    cost: str,
) -> Any:
    """Latency against ``cost`` ("multiply_adds" or "memory_access"): a point per model and
    engine (marker: engine, colour: family), one panel per thread count, log axes, ρ in the
    engines' legend; the first engine's points carry their model's name
    (:func:`labelled_models`)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    label = "multiply-adds" if cost == "multiply_adds" else "MAC (elements)"
    figure = Figure(figsize=(6.5 * len(threads), 5.5))
    axes_list = figure.subplots(1, len(threads), squeeze=False)[0]
    markers = dict(zip(ENGINES, ("o", "D", "P", "s", "X", "^"), strict=True))
    families = sorted({result.family for result in results})
    colours = {family: f"C{index % 10}" for index, family in enumerate(families)}
    for axes, count in zip(axes_list, threads, strict=True):
        engine_handles = []
        named = False
        for engine in engines:
            points = [
                (result.model, result.family, getattr(result, cost), timing.median_ms)
                for result in results
                if (timing := result.timing(engine, count)) and getattr(result, cost)
            ]
            if not points:
                continue
            item = next((c for c in found if (c.engine, c.threads) == (engine, count)), None)
            rho = None
            if item is not None:
                rho = item.multiply_adds_rho if cost == "multiply_adds" else item.mac_rho
            legend = f"{engine} (ρ = {rho:+.2f})" if rho is not None else engine
            axes.scatter(
                [x for _, _, x, _ in points],
                [y for _, _, _, y in points],
                c=[colours[family] for _, family, _, _ in points],
                marker=markers[engine],
                alpha=0.75,
            )
            engine_handles.append(
                Line2D([], [], marker=markers[engine], color="grey", ls="", label=legend)
            )
            if not named:  # one name per model: beside the first engine's point
                named = True
                chosen = labelled_models([(m, x, y) for m, _, x, y in points])
                for model, _, x, y in points:
                    if model in chosen:
                        axes.annotate(
                            model, (x, y), xytext=(4, 3), textcoords="offset points",
                            fontsize=6.5, alpha=0.85,
                        )  # fmt: skip
        if engine_handles:
            axes.set_xscale("log")
            axes.set_yscale("log")
            engines_legend = axes.legend(
                handles=engine_handles, fontsize="small", loc="upper left", title="engine"
            )
            axes.add_artist(engines_legend)
            family_handles = [
                Line2D([], [], marker="o", color=colours[family], ls="", label=family)
                for family in families
            ]
            axes.legend(
                handles=family_handles, fontsize="x-small", loc="lower right", title="family"
            )
        else:
            axes.text(0.5, 0.5, "no measurements", ha="center", transform=axes.transAxes)
        axes.set_xlabel(label)
        axes.set_ylabel("median latency (ms)")
        axes.set_title(f"{count} thread{'s' if count > 1 else ''}")
        axes.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"Latency vs {label}, batch 1, one point per model and engine")
    return figure


def plot_latency(
    path: Path,
    results: Sequence[ModelResult],
    engines: Sequence[str],
    threads: Sequence[int],
    found: Sequence[Correlation],
    *,
    cost: str,
) -> None:
    """:func:`latency_figure` as a PNG at ``path``."""
    _save(latency_figure(results, engines, threads, found, cost=cost), path)


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
