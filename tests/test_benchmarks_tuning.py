"""benchmarks/tuning.py, issue #15's unattended done-when run: its summary math, --resume, and a
failing pair recorded and run past -- with fake builds, tunes and timings (no TVM, no tuning)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tuning.py"


@pytest.fixture(scope="module")
def tuning():
    spec = importlib.util.spec_from_file_location("benchmarks_tuning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def write_results(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def curve(
    model: str, target: str, attempt: str, points: list[tuple[float, float, float]], *,
    budget: float = 600.0, end: str | None = "done", won: float = 0.3, native: float = 5.0,
    ort: float = 12.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """A pair's lines: ``points`` are (planned seconds, tuned ms, untuned ms)."""
    base = {"model": model, "target": target, "attempt": attempt}
    entries = [{**base, "kind": "start", "budget_seconds": budget}]
    for step, (planned, tuned, untuned) in enumerate(points):
        entries.append(
            {**base, "kind": "point", "step": step, "planned_seconds": planned,
             "tuning_seconds": planned * 0.98, "tuned_ms": tuned, "untuned_ms": untuned,
             "native_ms": native, "ort_ms": ort, "won_share": won}
        )  # fmt: skip
    if end == "done":
        entries.append({**base, "kind": "done"})
    elif end is not None:
        entries.append({**base, "kind": "failed", "reason": end})
    return entries


def test_summary_geomeans_early_gain_and_failures(tuning, tmp_path):
    entries = [
        # gain 0.1 by half of 600 s, 0.15 at the end: 67% of it early
        *curve("a", "x86-64-v3", "a1", [(0, 10, 10), (300, 9, 10), (600, 8.5, 10)], won=0.2),
        # gain 0.2 by half, 0.19 at the end: reached early
        *curve("b", "x86-64-v3", "b0", [(0, 20, 20), (300, 30, 20)], end=None),  # cut off
        *curve("b", "x86-64-v3", "b1", [(0, 20, 20), (300, 16, 20), (600, 16.2, 20)], native=9),
        *curve("c", "x86-64-v3", "c1", [(0, 4, 4)], end="RuntimeError: boom"),
        *curve("a", "host", "a2", [(0, 5, 5), (300, 5.1, 5), (600, 5.0, 5)], won=0.1),
        # a final gain of 0.2%: noise, not a gain reached 500% by half the budget
        *curve("b", "host", "b2", [(0, 5, 5), (300, 4.95, 5), (600, 4.99, 5)]),
    ]
    summaries = {s.target: s for s in tuning.summarize_results(entries)}
    stand_in = summaries["x86-64-v3"]
    lines = {line.model: line for line in stand_in.lines}
    assert set(lines) == {"a", "b"}  # c failed; b's cut-off attempt superseded by its done one
    assert lines["b"].own == pytest.approx(16.2 / 20)
    assert stand_in.own_geomean == pytest.approx(math.sqrt(8.5 / 10 * 16.2 / 20))
    assert stand_in.native_geomean == pytest.approx(math.sqrt(8.5 / 5.0 * 16.2 / 9.0))
    assert lines["a"].early_gain == pytest.approx(0.1 / 0.15)
    assert lines["a"].early_ok is False
    assert lines["b"].early_gain == pytest.approx(0.2 / 0.19)
    assert lines["b"].early_ok is True
    assert lines["a"].won_share == 0.2
    assert stand_in.missing == [("c", "failed: RuntimeError: boom")]
    host = {line.model: line for line in summaries["host"].lines}
    assert host["a"].early_gain is None  # no final gain: nothing to reach
    assert host["b"].early_gain is None

    text = tuning.format_summary(list(summaries.values()))
    geomean_native = math.sqrt(8.5 / 5.0 * 16.2 / 9.0)
    assert f"tuned / native untuned {geomean_native:.3f} ✘ (≤ 1.3)" in text
    assert "(not: a on x86-64-v3)" in text
    assert "c: failed: RuntimeError: boom" in text
    assert "≥ 25% of each model's kernel time from won records ✘ (short: a)" in text


def test_won_share_weights_calls_and_leaves_out_unconfirmed(tuning):
    tasks = [
        {"name": "k1", "weight": 2, "uses_ms": 1.0, "uses": "tuned"},
        {"name": "k2", "weight": 1, "uses_ms": 2.0, "uses": "untuned"},
        {"name": "k3", "weight": 1, "uses_ms": 4.0, "uses": "tuned", "pending": True},
        {"name": "k4", "weight": 1, "uses_ms": None, "uses": "untuned"},
    ]
    assert tuning.won_share(tasks) == pytest.approx(2 / (2 + 2 + 4))
    assert tuning.won_share([tasks[3]]) is None
    # An earlier step's confirmed winner stays in use while this step's records wait: it counts.
    tasks[2]["confirmed"] = True
    assert tuning.won_share(tasks) == pytest.approx((2 + 4) / (2 + 2 + 4))


def test_step_budgets_split_the_budget(tuning):
    assert tuning.step_budgets(1200, 300) == [300] * 4
    assert tuning.step_budgets(420, 300) == [300, 120]
    with pytest.raises(tuning.EdgecompileError):
        tuning.step_budgets(600, 0)


class FakeWork:
    """Builds are folders, a tune a fixed result, timings from the engines asked for."""

    def __init__(self, failing: str | None = None):
        self.failing = failing
        self.tunes: list[tuple[str, str, float]] = []

    def untuned(self, model, target, folder):
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def tune(self, model, target, records, seconds, threads):
        if model == self.failing:
            raise RuntimeError(f"{model} cannot be tuned")
        records.mkdir(parents=True, exist_ok=True)
        self.tunes.append((model, target, seconds))
        tasks = [
            {"name": "conv", "weight": 2, "uses_ms": 1.0, "uses": "tuned"},
            {"name": "pool", "weight": 1, "uses_ms": 2.0, "uses": "untuned"},
        ]
        return {"seconds": seconds - 1, "trials_run": 10, "tasks": tasks}

    def tuned(self, model, target, records, folder):
        return self.untuned(model, target, folder)

    def time(self, main, extras, threads, repeat):
        timed = {"tvm": 8.0 if main.name.startswith("tuned") else 10.0, "ort": 9.0}
        return {**timed, **{engine: {"untuned": 10.0, "native-untuned": 4.0}[engine]
                            for engine in extras}}  # fmt: skip

    def winners(self, target, records):
        return [{"name": "conv", "untuned_ms": 1.2, "tuned_ms": 1.0, "knobs": "oc tile 2 → 4"}]


def settings(tuning, tmp_path, results="results.jsonl"):
    return tuning.Settings(
        budget_seconds=120, step_seconds=60, threads=1, repeat=5, work=tmp_path / "work",
        results=tmp_path / results,
    )  # fmt: skip


def test_a_failing_pair_is_recorded_and_the_run_goes_on(tuning, tmp_path):
    config = settings(tuning, tmp_path)
    work = FakeWork(failing="bad")
    failed = tuning.run_all(
        ["bad", "good"], ["host", "x86-64-v2"], config, isolate=False, work=work
    )
    assert failed == 2  # "bad" on both targets
    tuned_pairs = [(model, target) for model, target, _ in work.tunes]
    assert tuned_pairs == [("good", "host"), ("good", "host"), *[("good", "x86-64-v2")] * 2]
    runs = tuning.pair_runs(tuning.read_results(config.results))
    bad = runs[("bad", "host")][0]
    assert bad.failed and "bad cannot be tuned" in bad.end["reason"]
    good = runs[("good", "x86-64-v2")][0]
    assert good.done and [p["step"] for p in good.points] == [0, 1, 2]
    last = good.points[-1]
    assert (last["tuned_ms"], last["untuned_ms"], last["native_ms"]) == (8.0, 10.0, 4.0)
    assert last["tuning_seconds"] == 2 * 59 and last["planned_seconds"] == 120
    assert last["won_share"] == pytest.approx(2 / 4)
    assert last["winners"][0]["calls"] == 2 and last["winners"][0]["knobs"] == "oc tile 2 → 4"
    host_last = runs[("good", "host")][0].points[-1]
    assert host_last["native_ms"] == host_last["untuned_ms"]  # host: its own untuned build
    text = tuning.format_summary(tuning.summarize_results(tuning.read_results(config.results)))
    assert "- conv ×2: 1.2 → 1.0 ms (oc tile 2 → 4)" in text
    assert "bad: failed: RuntimeError: bad cannot be tuned" in text


def test_a_tuned_library_identical_to_the_untuned_one_gets_its_time(tuning, tmp_path):
    class Unchanged(FakeWork):
        def untuned(self, model, target, folder):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "manifest.json").write_text(json.dumps({"library_sha256": "same"}))
            return folder

    config = settings(tuning, tmp_path)
    assert tuning.run_all(["m"], ["x86-64-v2"], config, isolate=False, work=Unchanged()) == 0
    (run,) = tuning.pair_runs(tuning.read_results(config.results))[("m", "x86-64-v2")]
    last = run.points[-1]
    assert last["same_library_as_untuned"] and last["tuned_measured_ms"] == 8.0
    assert last["tuned_ms"] == last["untuned_ms"] == 10.0


def test_resume_skips_complete_pairs_and_restarts_a_cut_off_one(tuning, tmp_path):
    config = settings(tuning, tmp_path)
    write_results(
        config.results,
        [
            *curve("done", "host", "d1", [(0, 5, 5), (120, 4, 5)]),
            *curve("broken", "host", "b1", [(0, 5, 5)], end="RuntimeError: boom"),
            *curve("cut", "host", "c1", [(0, 5, 5)], end=None),
        ],
    )
    old_records = tuning.pair_folder(config, "cut", "host") / "records"
    old_records.mkdir(parents=True)
    (old_records / "marker").write_text("kept")
    with pytest.raises(tuning.EdgecompileError, match="--resume"):
        tuning.run_all(["done"], ["host"], config, isolate=False, work=FakeWork())

    work = FakeWork()
    models = ["done", "broken", "cut"]
    assert tuning.run_all(models, ["host"], config, resume=True, isolate=False, work=work) == 0
    assert {model for model, _, _ in work.tunes} == {"cut"}
    aside = [p for p in old_records.parent.glob("records-*") if (p / "marker").is_file()]
    assert len(aside) == 1  # the cut-off attempt's records, moved aside, not deleted

    work = FakeWork()
    tuning.run_all(models, ["host"], config, resume=True, retry_failed=True, isolate=False,
                   work=work)  # fmt: skip
    assert {model for model, _, _ in work.tunes} == {"broken"}


def test_a_pair_process_that_dies_is_recorded_as_failed(tuning, tmp_path, monkeypatch):
    config = settings(tuning, tmp_path)
    monkeypatch.setattr(
        tuning, "pair_command", lambda *args: [sys.executable, "-c", "import sys; sys.exit(3)"]
    )
    assert tuning.run_all(["m"], ["host"], config) == 1
    (run,) = tuning.pair_runs(tuning.read_results(config.results))[("m", "host")]
    assert run.failed and "exited with code 3" in run.end["reason"]


def test_summarize_command_prints_tables_and_plots(tuning, tmp_path, capsys):
    results = write_results(
        tmp_path / "results.jsonl",
        [*curve("a", "x86-64-v2", "a1", [(0, 10, 10), (300, 8, 10), (600, 8, 10)], native=4.0)],
    )
    with results.open("a") as stream:
        stream.write('{"kind": "point", "model": "a", "tar')  # cut off by a crash
    assert tuning.main(["--summarize", str(results)]) == 0
    out = capsys.readouterr()
    assert "| a | 9.8 | 8.000 | 0.800 | 2.000 |" in out.out
    assert "x86-64-v2: tuned / native untuned 2.000 ✔ (≤ 2.4)" in out.out
    assert "skipped a damaged line" in out.err
    assert results.with_suffix(".png").stat().st_size > 0


def test_a_bad_budget_is_one_error_line_before_any_work(tuning, tmp_path, capsys):
    work = tmp_path / "work"
    assert tuning.main(["--budget", "20m", "--step-minutes", "0", "--work", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: the budget and the step must be positive")
    assert not work.exists()
