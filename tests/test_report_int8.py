"""The report's int8 ratios: when it times ``tvm-int8`` and ``ort-int8``, its CSV, index.md and
terminal summary show our int8 build over ORT's int8 and over our fp32, per model and as the
geomean the issue's bars are set on. Written from made-up timings: no model is built or timed."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.reporting.results import ModelResult, ZooReport
from edgecompile.reporting.stats import engine_ratio, geomean, int8_ratios
from edgecompile.reporting.tables import format_summary, write_csv, write_index

THREADS = (1, 2)
ENGINES = ("tvm", "tvm-int8", "ort", "ort-int8")
#: Median ms per (model, engine, threads): chosen so no two ratios coincide.
MEDIANS = {
    ("a", "tvm"): 10.0,
    ("a", "tvm-int8"): 4.0,
    ("a", "ort"): 12.0,
    ("a", "ort-int8"): 5.0,
    ("b", "tvm"): 20.0,
    ("b", "tvm-int8"): 12.0,
    ("b", "ort"): 18.0,
    ("b", "ort-int8"): 8.0,
}


def timing(engine: str, threads: int, median: float, ort: float | None) -> EngineTiming:
    stats = dict.fromkeys(("median_ms", "p90_ms", "min_ms", "mean_ms"), median)
    return EngineTiming.from_stats(engine, threads, stats, None, ort)


def result(model: str, engines: tuple[str, ...] = ENGINES) -> ModelResult:
    timings = []
    for count in THREADS:
        scale = 1.0 / count  # 2 threads: every engine twice as fast, ratios the same
        ort = MEDIANS[(model, "ort")] * scale
        for engine in engines:
            timings.append(timing(engine, count, MEDIANS[(model, engine)] * scale, ort))
    return ModelResult(model=model, family="f", input_size=(32, 32), timings=timings)


def zoo(
    folder: Path,
    models: list[ModelResult],
    engines: tuple[str, ...] = ENGINES,
    threads: tuple[int, ...] = THREADS,
) -> ZooReport:
    machine = {
        "date": "today",
        "cpu": "a CPU",
        "cores": 2,
        "llvm_cpu": "znver4",
        "versions": {"tvm": "0"},
        "python": "3",
        "load_average": [1.0, 1.0, 1.0],
    }
    return ZooReport(
        output_dir=str(folder),
        index=str(folder / "index.md"),
        results_csv=str(folder / "results.csv"),
        plots=[],
        target="host",
        threads=list(threads),
        engines=list(engines),
        repeat=3,
        warmup=1,
        seed=0,
        machine=machine,
        models=models,
        correlations=[],
        notes=[],
        wall_seconds=60.0,
    )


def test_ratios_are_medians_of_the_same_thread_count_and_geomean_skips_missing() -> None:
    a = result("a")
    assert engine_ratio(a, "tvm-int8", "ort-int8", 1) == pytest.approx(4.0 / 5.0)
    assert engine_ratio(a, "tvm-int8", "tvm", 2) == pytest.approx(0.4)
    assert engine_ratio(a, "tvm-int8", "torch", 1) is None  # not timed
    assert geomean([0.5, None, 2.0]) == pytest.approx(1.0)
    assert geomean([None]) is None
    assert int8_ratios(["tvm", "ort"]) == []  # no int8 engine: no int8 columns
    assert [over for _, _, over in int8_ratios(["tvm", "tvm-int8", "ort"])] == ["tvm"]


def test_csv_has_the_int8_ratios_on_the_int8_rows(tmp_path: Path) -> None:
    report = zoo(tmp_path, [result("a"), result("b")])
    write_csv(Path(report.results_csv), report.models, report.engines, report.threads)
    with open(report.results_csv, newline="") as handle:
        rows = {(r["model"], r["engine"], r["threads"]): r for r in csv.DictReader(handle)}
    row = rows[("b", "tvm-int8", "2")]
    assert float(row["ratio_to_ort_int8"]) == pytest.approx(12.0 / 8.0)
    assert float(row["ratio_to_fp32"]) == pytest.approx(12.0 / 20.0)
    assert float(rows[("b", "ort-int8", "1")]["ratio_to_fp32"]) == pytest.approx(8.0 / 18.0)
    assert rows[("b", "ort-int8", "1")]["ratio_to_ort_int8"] == ""  # only ours over ORT's
    assert rows[("a", "tvm", "1")]["ratio_to_fp32"] == ""  # an fp32 engine


def test_index_has_an_int8_table_with_a_geomean_row(tmp_path: Path) -> None:
    report = zoo(tmp_path, [result("a"), result("b")])
    write_index(Path(report.index), report)
    text = Path(report.index).read_text()
    assert "## int8" in text
    header = next(line for line in text.splitlines() if line.startswith("| model | 1T int8"))
    assert header.split(" | ")[1:3] == ["1T int8 vs ORT int8", "1T int8 vs fp32"]
    # Per model, each thread count: int8 / ORT int8, int8 / fp32.
    assert "| a | 0.80× | 0.40× | 0.80× | 0.40× |" in text
    assert "| b | 1.50× | 0.60× | 1.50× | 0.60× |" in text
    to_ort, to_fp32 = math.sqrt(0.8 * 1.5), math.sqrt(0.4 * 0.6)
    assert f"| geomean | {to_ort:.2f}× | {to_fp32:.2f}× | {to_ort:.2f}× | {to_fp32:.2f}× |" in text


def test_summary_shows_the_int8_ratios_and_their_geomean(tmp_path: Path) -> None:
    summary = format_summary(zoo(tmp_path, [result("a"), result("b")]))
    assert "tvm-int8/ort-int8@1" in summary and "tvm-int8/tvm@2" in summary
    assert f"geomean at 1 thread(s): tvm-int8/ort-int8 {math.sqrt(0.8 * 1.5):.2f}x" in summary


def test_a_report_without_the_int8_engines_has_no_int8_ratios(tmp_path: Path) -> None:
    fp32 = ("tvm", "ort")
    report = zoo(tmp_path, [result("a", fp32)], fp32)
    write_index(Path(report.index), report)
    assert "## int8" not in Path(report.index).read_text()
    summary = format_summary(report)
    assert "tvm-int8/" not in summary and "geomean" not in summary
