"""``edgecompile report``: bench + profile over zoo models, written as index.md, CSV and plots.

One report (two small zoo models at 64×64, plus a third whose build is made to fail) is run
once for the module, with no tuning records; the tests read what it wrote. A second report runs
on squeezenet1_1 at 32×32 with records from a real two-trial tune, for the "tvm-tuned" engine.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import edgecompile
from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.cli import cli, main
from edgecompile.errors import EdgecompileError
from edgecompile.records import store_for
from edgecompile.reporting import builds, stats
from edgecompile.reporting.builds import tuned_builds_dir, tuned_engine_available, tuning_records
from edgecompile.reporting.measure import OP_CLASSES, op_class_of
from edgecompile.reporting.pipeline import select_models
from edgecompile.reporting.results import BUILDS_DIR, TUNED, ModelResult, TuningRecords, ZooReport
from edgecompile.reporting.stats import correlation_sentences, correlations, spearman
from edgecompile.reporting.tables import CSV_FIELDS
from edgecompile.targets import resolve_target

# The module's fixtures run whole reports (one after a real tune): their setup counts toward the
# first test that asks for them, and on a loaded two-core machine takes ~5 min.
pytestmark = pytest.mark.timeout(900)

MEASURED = ("squeezenet1_1", "shufflenet_v2_x0_5")
BROKEN = "mobilenet_v2_x0_35"
ENGINES = ("tvm", "ort", "torch")
THREADS = (1, 2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def no_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty default records cache, so this machine's own records cannot leak in."""
    return tmp_path_factory.mktemp("no-records")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, no_records: Path) -> ZooReport:
    real_build = builds.build_host_artifact

    def build_or_fail(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == BROKEN:
            raise EdgecompileError("TVM failed to compile it for host: injected", "report it")
        return real_build(name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECOMPILE_RECORDS", str(no_records))
        patch.setattr(builds, "build_host_artifact", build_or_fail)
        return edgecompile.report(
            [*MEASURED, BROKEN],
            tmp_path_factory.mktemp("report"),
            threads=THREADS,
            repeat=3,
            warmup=1,
            profile_runs=2,
            input_size=64,
            build_jobs=1,  # in this process, where the failing build is patched in
        )


def _csv_rows(zoo: ZooReport) -> list[dict[str, str]]:
    with open(zoo.results_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS
        return list(reader)


def test_csv_has_a_row_per_model_engine_and_thread_count(zoo: ZooReport) -> None:
    rows = _csv_rows(zoo)
    keys = [(row["model"], row["engine"], int(row["threads"])) for row in rows]
    expected = {(m, e, t) for m in (*MEASURED, BROKEN) for e in ENGINES for t in THREADS}
    assert sorted(keys) == sorted(expected)
    for row in rows:
        if row["model"] == BROKEN:
            continue
        assert row["status"] == "ok" and row["input_size"] == "64x64"
        assert 0 < float(row["min_ms"]) <= float(row["median_ms"]) <= float(row["p90_ms"])
        assert float(row["max_relative_error"]) <= 1e-4
        assert int(row["multiply_adds"]) > 0 and int(row["memory_access"]) > 0


def test_ratios_are_engine_median_over_ort_median_at_the_same_thread_count(
    zoo: ZooReport,
) -> None:
    rows = {(r["model"], r["engine"], int(r["threads"])): r for r in _csv_rows(zoo)}
    for model in MEASURED:
        for count in THREADS:
            ort = float(rows[model, "ort", count]["median_ms"])
            for engine in ENGINES:
                row = rows[model, engine, count]
                assert float(row["ratio_to_ort"]) == pytest.approx(
                    float(row["median_ms"]) / ort, rel=1e-4
                )
    for result in zoo.models[: len(MEASURED)]:
        for timing in result.timings:
            ort = result.timing("ort", timing.threads)
            assert ort is not None
            assert timing.ratio_to_ort == pytest.approx(timing.median_ms / ort.median_ms)


def test_a_model_that_fails_to_build_is_reported_and_the_rest_is_measured(
    zoo: ZooReport,
) -> None:
    broken = next(result for result in zoo.models if result.model == BROKEN)
    assert broken.status == "build failed" and not broken.timings and not broken.op_class_ms
    assert "injected" in broken.failures[0].problem
    assert broken.multiply_adds  # the cost stage does not need a build
    assert [r.model for r in zoo.failed] == [BROKEN]
    for result in zoo.models[: len(MEASURED)]:
        assert {(t.engine, t.threads) for t in result.timings} == {
            (e, t) for e in ENGINES for t in THREADS
        }
    rows = [row for row in _csv_rows(zoo) if row["model"] == BROKEN]
    assert all(row["status"] == "build failed" and row["median_ms"] == "" for row in rows)
    assert all("injected" in row["error"] for row in rows)
    runs = Path(zoo.index).read_text().split("## Runs", 1)[1]
    assert f"| {BROKEN} | build failed |" in runs and "injected" in runs


def test_index_has_the_latency_table_with_costs(zoo: ZooReport) -> None:
    text = Path(zoo.index).read_text()
    header = "| model | engine | 1T ms | 1T vs ORT | 2T ms | 2T vs ORT | multiply-adds | params "
    header += "| MAC |"
    assert header in text
    for result in zoo.models[: len(MEASURED)]:
        tvm1, tvm2 = result.timing("tvm", 1), result.timing("tvm", 2)
        assert tvm1 is not None and tvm2 is not None
        assert (
            f"| {result.model} | tvm | {tvm1.median_ms:.2f} | {tvm1.ratio_to_ort:.2f}× | "
            f"{tvm2.median_ms:.2f} | {tvm2.ratio_to_ort:.2f}× |"
        ) in text
    assert "| ort | " in text and "| torch | " in text and "1.00×" in text
    assert "tvm-tuned not measured" in text


def test_index_has_op_classes_findings_and_one_sentence_per_engine(zoo: ZooReport) -> None:
    text = Path(zoo.index).read_text()
    assert "| model | sum ms | end-to-end ms | " + " | ".join(OP_CLASSES) + " |" in text
    for guideline in ("G1", "G2", "G3", "G4"):
        assert f"| {guideline} " in text
    assert "17 pointwise convs" in text  # squeezenet1_1's G1 finding
    sentences = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(sentences) == len(ENGINES) * len(THREADS)
    # Two models: too few for a rank correlation, and the report says so instead of ±1.
    assert all("too few for a rank correlation" in line for line in sentences)
    for name in (
        "latency_vs_multiply_adds.png",
        "latency_vs_mac.png",
        "time_by_op_class.png",
    ):
        assert f"]({name})" in text


def test_plots_are_written_as_non_empty_pngs(zoo: ZooReport) -> None:
    assert [Path(plot).name for plot in zoo.plots] == [
        "latency_vs_multiply_adds.png",
        "latency_vs_mac.png",
        "time_by_op_class.png",
    ]
    for plot in zoo.plots:
        data = Path(plot).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, plot
    leftovers = [p.name for p in Path(zoo.output_dir).iterdir() if p.name.endswith(".partial")]
    assert not leftovers


def test_time_by_op_class_comes_from_the_profile(zoo: ZooReport) -> None:
    squeezenet, shufflenet = zoo.models[: len(MEASURED)]
    for result in (squeezenet, shufflenet):
        assert set(result.op_class_ms) == set(OP_CLASSES) and result.profile_threads == 1
        assert sum(result.op_class_ms.values()) > 0
    assert squeezenet.op_class_ms["dense conv"] > 0  # fire modules' 3×3 expand convs
    assert squeezenet.op_class_ms["depthwise"] == 0
    assert shufflenet.op_class_ms["depthwise"] > 0


def test_a_rerun_reuses_the_cached_build(zoo: ZooReport, tmp_path: Path) -> None:
    # A copy of the builds, so this rerun does not overwrite the files the other tests read.
    shutil.copytree(Path(zoo.output_dir, "builds"), tmp_path / "builds")
    library = next((tmp_path / "builds" / "squeezenet1_1-host").glob("*.so"))
    built_at = library.stat().st_mtime_ns
    args = ["report", "--models", "squeezenet1_1", "-o", str(tmp_path), "--input-size", "64"]
    args += ["--threads", "1", "--engines", "tvm", "--repeat", "1", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    (model,) = again["models"]
    assert model["model"] == "squeezenet1_1" and model["status"] == "ok"
    assert model["build_reused"] is True and library.stat().st_mtime_ns == built_at
    assert [(t["engine"], t["threads"]) for t in model["timings"]] == [("tvm", 1)]


# --------------------------------------------------------------------------------------------
# without measuring


def test_spearman_matches_known_values() -> None:
    # Wikipedia's IQ vs hours of TV example: ρ = -29/165, no ties.
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)


def test_spearman_gives_ties_their_average_rank() -> None:
    # x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]: Pearson of the ranks is 3/sqrt(10).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert stats._average_ranks([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]
    assert spearman([5, 5, 5], [1, 2, 3]) is None  # all ties: no ranking to correlate
    assert spearman([1], [2]) is None
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def _result(name: str, madds: int, mac: int, ms: float) -> ModelResult:
    timing = EngineTiming("tvm", 1, ms, ms, ms, ms, None, None)
    return ModelResult(
        name, "test", (64, 64), multiply_adds=madds, memory_access=mac, timings=[timing]
    )


def test_correlations_use_each_engines_medians_and_name_the_better_predictor() -> None:
    # Latency follows MAC exactly and multiply-adds in reverse.
    results = [
        _result("a", 400, 10, 1.0),
        _result("b", 300, 20, 2.0),
        _result("c", 200, 30, 3.0),
        _result("d", 100, 40, 4.0),
        ModelResult("failed", "test", (64, 64), multiply_adds=1, memory_access=1),
    ]
    (found,) = correlations(results, ["tvm", "ort"], [1])
    assert (found.engine, found.threads, found.models) == ("tvm", 1, 4)
    assert found.multiply_adds_rho == pytest.approx(-1.0) and found.mac_rho == pytest.approx(1.0)
    (sentence,) = correlation_sentences([found])
    assert "ρ = -1.00" in sentence and "ρ = +1.00" in sentence
    assert sentence.endswith("MAC predicts the latency ranking better here.")


@pytest.mark.parametrize(
    ("name", "op", "expected"),
    [
        ("fused_pointwise_nchwc35_relu7", "pointwise", "pointwise"),
        ("fused_depthwise_nchwc2", None, "depthwise"),
        ("fused_conv_nchwc3_relu4", None, "dense conv"),
        ("fused_grouped_nchwc1_relu", None, "grouped"),
        ("conv2d7", "grouped", "grouped"),
        ("fused_conv2d_relu", "conv", "dense conv"),
        ("fused_matmul_add", "matmul", "other"),
        ("max_pool2d", "pool", "other"),
        ("vm.builtin.* (VM bookkeeping)", None, "other"),
        ("fused_strided_slice3_unpack_nchwc1_concatenate1_reshape2_transpose1", None,
         "shuffle/data movement"),
        ("pad_nchwc", None, "shuffle/data movement"),
        ("relu2", None, "element-wise"),
        ("fused_add_clip", None, "element-wise"),
        ("mean", None, "other"),
        # ESPNet's decoder: TVM's transposed conv, joined or not, is no data movement.
        ("conv2d_transpose2", "conv2d_transpose", "dense conv"),
        ("fused_conv2d_transpose1_prelu1", None, "dense conv"),
    ],
)  # fmt: skip
def test_kernels_are_classified_by_schedule_kind_then_name(
    name: str, op: str | None, expected: str
) -> None:
    assert op_class_of(name, op) == expected


def test_models_are_chosen_by_name_glob_or_substring() -> None:
    assert select_models("mobilenet_v2") == ["mobilenet_v2"]  # a name selects only itself
    assert select_models("shufflenet_v2*") == [
        "shufflenet_v2",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
    ]
    assert select_models("squeezenet1_1, mnasnet_b1") == ["squeezenet1_1", "mnasnet_b1"]
    assert select_models(["xception", "xception"]) == ["xception"]
    assert len(select_models(None)) == len(edgecompile.list_models())


def test_a_pattern_matching_nothing_is_one_error_line_naming_close_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(EdgecompileError, match="no zoo model matches 'mobilnet_v9'") as info:
        select_models("mobilnet_v9")
    assert "mobilenet_v2" in (info.value.fix or "")
    with pytest.raises(SystemExit) as exited:
        main(["report", "--models", "shufflenet_v1,squeezenet9*"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: no zoo model matches 'squeezenet9*'")
    assert "squeezenet1_0" in err[0]


def test_bad_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="unknown engine"):
        edgecompile.report("squeezenet1_1", tmp_path, engines=["tvm", "tensorrt"])
    with pytest.raises(EdgecompileError, match="bad thread counts"):
        edgecompile.report("squeezenet1_1", tmp_path, threads=[0])
    assert not any(tmp_path.iterdir())


def test_without_records_the_tuned_engine_is_left_out_with_a_note(
    zoo: ZooReport, no_records: Path
) -> None:
    assert tuned_engine_available("host", no_records) is False
    assert TUNED not in zoo.engines and zoo.records is None
    assert any(f"{TUNED} not measured" in note and str(no_records) in note for note in zoo.notes)
    assert not any(row["engine"] == TUNED for row in _csv_rows(zoo))
    assert not list((Path(zoo.output_dir) / BUILDS_DIR).glob("tuned-*"))


def test_the_untuned_build_applies_no_records_and_the_tuned_one_only_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Built(Exception):
        pass

    calls: list[dict[str, Any]] = []

    def fake_build(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise Built

    monkeypatch.setattr("edgecompile.builder.build", fake_build)
    options = {"input_size": (32, 32), "seed": 0, "rebuild": True}
    with pytest.raises(Built):  # "tvm": records=None would apply the user's cache
        builds.build_host_artifact("squeezenet1_1", tmp_path, **options)
    records = TuningRecords(store=str(tmp_path / "store"), digest="0" * 64, records=1)
    with pytest.raises(Built):
        builds.build_host_artifact("squeezenet1_1", tmp_path, records=records, **options)
    assert [call["records"] for call in calls] == [False, records.store]
    assert calls[0]["records"] is False


def test_records_asked_for_but_missing_are_an_error_before_anything_runs(tmp_path: Path) -> None:
    empty = tmp_path / "records"
    empty.mkdir()
    output = tmp_path / "report"
    with pytest.raises(EdgecompileError, match="no tuning records for host in") as info:
        edgecompile.report("squeezenet1_1", output, records=empty)
    assert "edgecompile tune" in (info.value.fix or "")
    assert not output.exists()


# --------------------------------------------------------------------------------------------
# the tuned engine, with records from a real tune

TUNED_MODEL = "squeezenet1_1"
UNTUNED_MODEL = "shufflenet_v2_x0_5"  # no records for it: its tuned build is not timed
TUNED_SIZE = "32"  # the records apply only to the shapes they were tuned at
# Every test of the tuned report on one xdist worker: the tune and the two builds behind it are
# module fixtures, which each worker would otherwise repeat (about two minutes each).
ONE_WORKER_FOR_THE_TUNED_REPORT = pytest.mark.xdist_group("tuned-report")


# Session scope: xdist interleaves other modules' tests between these on their worker, and a
# module fixture would be torn down and rebuilt at each return (measured: built twice in CI).
@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecompile.records import CHOICES_FILE
    from edgecompile.tuning import tune

    root = tmp_path_factory.mktemp("records")
    result = tune(TUNED_MODEL, "host", trials=2, records=root, threads=1, input_size=TUNED_SIZE)
    # After 2 trials tune's re-measurement rightly keeps every untuned schedule, and a tuned
    # build identical to the untuned one gets no column; without the verdicts every kernel the
    # search reached takes its fastest record, so the tuned build differs.
    (result.records / CHOICES_FILE).unlink(missing_ok=True)
    return root


@pytest.fixture(scope="session")
def tuned_zoo(records: Path, tmp_path_factory: pytest.TempPathFactory) -> ZooReport:
    return edgecompile.report(
        [TUNED_MODEL, UNTUNED_MODEL],
        tmp_path_factory.mktemp("tuned-report"),
        threads=THREADS,
        repeat=3,
        warmup=1,
        profile_runs=2,
        input_size=TUNED_SIZE,
        records=records,
        build_jobs=2,  # both models built at once in worker processes, then timed one by one
    )


def _tuned_result(zoo: ZooReport) -> ModelResult:
    result = next(result for result in zoo.models if result.model == TUNED_MODEL)
    assert result.status == "ok", result.failures
    return result


@ONE_WORKER_FOR_THE_TUNED_REPORT
def test_tuned_rows_have_times_and_ratios_from_the_same_runs(tuned_zoo: ZooReport) -> None:
    assert tuned_zoo.engines == ["tvm", TUNED, "ort", "torch"]
    result = _tuned_result(tuned_zoo)
    rows = {
        (r["engine"], int(r["threads"])): r
        for r in _csv_rows(tuned_zoo)
        if r["model"] == TUNED_MODEL
    }
    assert set(rows) == {(e, t) for e in tuned_zoo.engines for t in THREADS}
    for count in THREADS:
        tuned, ort = rows[TUNED, count], rows["ort", count]
        assert 0 < float(tuned["min_ms"]) <= float(tuned["median_ms"]) <= float(tuned["p90_ms"])
        assert float(tuned["max_relative_error"]) <= 1e-4  # checked against ORT like the rest
        assert float(tuned["ratio_to_ort"]) == pytest.approx(
            float(tuned["median_ms"]) / float(ort["median_ms"]), rel=1e-4
        )
    one = result.timing(TUNED, 1)
    assert one is not None and one.ratio_to_ort is not None
    row = f"|  | {TUNED} | {one.median_ms:.2f} | {one.ratio_to_ort:.2f}× | "
    assert row in Path(tuned_zoo.index).read_text()
    sentences = correlation_sentences(tuned_zoo.correlations)
    assert any(f"**{TUNED}, 1 thread**" in sentence for sentence in sentences)


@ONE_WORKER_FOR_THE_TUNED_REPORT
def test_the_tuned_build_applies_the_records_and_is_cached_by_their_digest(
    tuned_zoo: ZooReport, records: Path
) -> None:
    from edgecompile.artifact import load_artifact

    found = tuning_records("host", records)
    assert found is not None and tuned_zoo.records == found
    store = store_for(resolve_target("host"), records)
    assert found.store == str(store.path) and found.digest == store.digest()
    result = _tuned_result(tuned_zoo)
    assert result.tuned_artifact is not None and result.artifact is not None
    tuned_dir = Path(result.tuned_artifact)
    builds = Path(tuned_zoo.output_dir) / BUILDS_DIR
    assert (
        tuned_dir.parent == tuned_builds_dir(builds, found) == builds / f"tuned-{found.digest[:12]}"
    )
    manifest = load_artifact(tuned_dir).manifest
    assert manifest.records is not None and manifest.records["digest"] == found.digest
    assert result.tuned_kernels == len(manifest.records["kernels_from_records"]) > 0
    assert load_artifact(result.artifact).manifest.records is None  # "tvm" stays untuned
    text = Path(tuned_zoo.index).read_text()
    assert f"digest {found.digest[:12]}" in text and "| kernels from records |" in text
    assert f"| {TUNED_MODEL} | ok | 32x32 | " in text


@ONE_WORKER_FOR_THE_TUNED_REPORT
def test_a_model_the_records_do_not_apply_to_gets_no_tuned_time(tuned_zoo: ZooReport) -> None:
    other = next(result for result in tuned_zoo.models if result.model == UNTUNED_MODEL)
    assert other.status == "ok", other.failures
    assert other.tuned_artifact is not None and other.tuned_kernels == 0
    assert {t.engine for t in other.timings} == {"tvm", "ort", "torch"}
    rows = [r for r in _csv_rows(tuned_zoo) if (r["model"], r["engine"]) == (other.model, TUNED)]
    assert len(rows) == len(THREADS) and all(row["median_ms"] == "" for row in rows)


@ONE_WORKER_FOR_THE_TUNED_REPORT
def test_a_rerun_reuses_both_builds_and_new_records_rebuild_only_the_tuned_one(
    tuned_zoo: ZooReport, records: Path, tmp_path: Path
) -> None:
    shutil.copytree(Path(tuned_zoo.output_dir, BUILDS_DIR), tmp_path / BUILDS_DIR)
    args = ["report", "--models", TUNED_MODEL, "-o", str(tmp_path), "--input-size", "32"]
    args += ["--threads", "1", "--engines", f"tvm,{TUNED}", "--repeat", "1", "--json"]

    def rerun(records_dir: Path) -> dict[str, Any]:
        result = CliRunner().invoke(
            cli, [*args, "--records", str(records_dir)], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        (model,) = json.loads(result.output)["models"]
        assert model["status"] == "ok", model["failures"]
        assert {(t["engine"], t["threads"]) for t in model["timings"]} == {
            ("tvm", 1),
            (TUNED, 1),
        }
        return model

    again = rerun(records)
    assert again["build_reused"] is True and again["tuned_build_reused"] is True
    # Other records (the same store less one record a build applies): same untuned build, new
    # tuned one. (A record no build applies changes nothing a build uses, so nothing rebuilds.)
    changed = tmp_path / "changed"
    shutil.copytree(records, changed)
    (store,) = [path for path in changed.iterdir() if path.is_dir()]
    applied = store_for(resolve_target("host"), changed).applied_records()
    assert applied, "the fixture's records apply to no kernel"
    database = store.joinpath("database_tuning_record.json")
    kept = [line for line in database.read_text().splitlines() if line != applied[0]]
    database.write_text("\n".join(kept) + "\n")
    rebuilt = rerun(changed)
    assert rebuilt["build_reused"] is True and rebuilt["tuned_build_reused"] is False
    assert Path(rebuilt["tuned_artifact"]).parent != Path(again["tuned_artifact"]).parent
