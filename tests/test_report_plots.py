"""The report's latency plots name their models: every one in a small zoo, the outliers of a
large one, with a legend of families."""

from __future__ import annotations

from pathlib import Path

from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.reporting.plots import (
    LABEL_ALL,
    OUTLIERS,
    labelled_models,
    latency_figure,
    plot_latency,
)
from edgecompile.reporting.results import Correlation, ModelResult


def result(model: str, family: str, multiply_adds: int, ms: float) -> ModelResult:
    timings = [
        EngineTiming(engine, 1, ms * factor, ms, ms, ms, None, None)
        for engine, factor in (("tvm", 1.0), ("ort", 1.3))
    ]
    return ModelResult(
        model=model,
        family=family,
        input_size=(224, 224),
        multiply_adds=multiply_adds,
        memory_access=multiply_adds // 10,
        timings=timings,
    )


ZOO = [
    result("mobilenet_v2", "mobilenet", 300_000_000, 20.0),
    result("mobilenet_v1", "mobilenet", 570_000_000, 30.0),
    result("squeezenet1_1", "squeezenet", 350_000_000, 15.0),
]
FOUND = [Correlation("tvm", 1, 3, 0.5, 0.5), Correlation("ort", 1, 3, 0.5, 0.5)]


def texts(figure) -> list[str]:
    return [text.get_text() for axes in figure.axes for text in axes.texts]


def test_every_model_of_a_small_zoo_is_named_once_per_panel() -> None:
    figure = latency_figure(ZOO, ["tvm", "ort"], [1], FOUND, cost="multiply_adds")
    assert sorted(texts(figure)) == sorted(r.model for r in ZOO)
    legends = [t.get_text() for c in figure.axes[0].get_children() if hasattr(c, "get_texts")
               for t in c.get_texts()]  # fmt: skip
    assert {"mobilenet", "squeezenet"} <= set(legends)
    assert any(text.startswith("tvm (ρ = +0.50)") for text in legends)


def test_a_large_zoo_names_only_the_outliers() -> None:
    # latency grows with cost, except a few models far off the line
    points = [(f"m{i}", 1e6 * (i + 1), 1.0 * (i + 1)) for i in range(LABEL_ALL + 10)]
    slow = [(f"slow{i}", 1e6 * (i + 3), 50.0 * (i + 3)) for i in range(3)]
    chosen = labelled_models(points + slow)
    assert len(chosen) == OUTLIERS
    assert {"slow0", "slow1", "slow2"} <= chosen


def test_the_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "latency.png"
    plot_latency(path, ZOO, ["tvm", "ort"], [1, 2], FOUND, cost="memory_access")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
