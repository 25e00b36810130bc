"""Tuning on this machine, records, and builds that apply them (edgecompile.tuning / .records).

One tiny model (1×1 conv 8→16 + ReLU + global pool: a kernel our pointwise rule schedules, and
kernels it does not) is tuned once per session for a few trials; the tests read that store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompile.cli import cli
from edgecompile.errors import EdgecompileError
from edgecompile.records import (
    SEARCHED,
    UNTUNED,
    Choice,
    RecordStore,
    export_records,
    import_records,
    list_stores,
    store_for,
    summarize,
    trace_digest,
)
from edgecompile.targets import resolve_target
from edgecompile.tuning import (
    CONFIRM_MARGIN,
    MAX_TRIALS_PER_ROUND,
    TuneResult,
    parse_duration,
    tune,
)
from edgecompile.tuning.verdict import choice_from_medians, earlier_winner

TRIALS = 6


def write_pointwise_onnx(path: Path, cin: int = 8, cout: int = 16, size: int = 8) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1)).astype("float32"), "w")
    bias = numpy_helper.from_array(rng.standard_normal(cout).astype("float32"), "b")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, cout, 1, 1])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def pointwise_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pointwise_onnx(tmp_path_factory.mktemp("tune") / "pointwise.onnx")


@pytest.fixture(scope="session")
def tuned(pointwise_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    records = tmp_path_factory.mktemp("records")
    return tune(str(pointwise_onnx), "host", trials=TRIALS, records=records, threads=1)


def _store(result: TuneResult) -> RecordStore:
    return store_for(resolve_target("host"), result.records.parent)


def _digest(record_line: str) -> str:
    from edgecompile.records import trace_digest

    return trace_digest(json.loads(record_line)[1])


def test_tune_writes_hand_and_searched_records(tuned: TuneResult) -> None:
    store = _store(tuned)
    assert store.path == tuned.records and store.exists()
    assert tuned.trials_before == 0 and tuned.trials_run >= TRIALS
    assert tuned.stopped == "trials done"
    pointwise = [t for t in tuned.tasks if "pointwise_nchwc" in t.name]
    assert len(pointwise) == 1
    # Every kernel was measured as the untuned build compiles it, and the best is never worse.
    for task in tuned.tasks:
        assert task.records >= 1 and task.best_ms is not None and task.untuned_ms is not None
        assert 0 < task.best_ms <= task.untuned_ms
        assert task.uses in ("tuned", "untuned") and task.uses_ms is not None
    assert tuned.estimated_ms == pytest.approx(
        sum(t.weight * (t.uses_ms or 0) for t in tuned.tasks), rel=1e-3
    )
    # Every kernel the search reached was re-measured against untuned and has a verdict that
    # names the record a build applies (or none: the untuned schedule).
    choices = store.choices()
    names = store.kernel_names()
    for workload, choice in choices.items():
        assert names[workload] in {t.name for t in tuned.tasks}
        if choice.uses_tuned:
            assert choice.tuned_ms is not None and choice.untuned_ms is not None
            assert choice.tuned_ms < choice.untuned_ms * (1 - CONFIRM_MARGIN)
            assert [line for line in store.applied_records() if choice.record in _digest(line)]
    kernels = summarize(store)
    assert {k.name for k in kernels} == {t.name for t in tuned.tasks}
    assert sum(k.trials for k in kernels) == len(store.lines().records)
    # the untuned baselines are tagged with who made them, searched records are not
    bodies = [json.loads(line)[1] for line in store.lines().records]
    from edgecompile.records import record_schedule

    made_by = {record_schedule(body, store.baselines()) for body in bodies}
    assert {"edgecompile.pointwise_nchwc", "tvm-default", SEARCHED} <= made_by


def test_build_applies_the_records_and_still_matches_ort(
    tuned: TuneResult, pointwise_onnx: Path, tmp_path: Path
) -> None:
    from edgecompile.builder import build

    result = build(str(pointwise_onnx), "host", output_dir=tmp_path, records=tuned.records.parent)
    manifest = result.artifact.manifest
    assert manifest.verification and manifest.verification["status"] == "passed"
    assert manifest.records is not None
    assert manifest.records["store"] == str(tuned.records)
    store = _store(tuned)
    assert manifest.records["digest"] == manifest.records_digest == store.digest()
    # Records schedule exactly the kernels whose re-measured verdict is a tuned schedule.
    uses = {store.kernel_names()[w]: c.uses for w, c in store.choices().items()}
    from_records = set(manifest.records["kernels_from_records"])
    assert {k for k, u in uses.items() if u == "tuned"} <= from_records
    assert not from_records & {k for k, u in uses.items() if u == "untuned"}
    (conv,) = [s for s in manifest.schedules if s["op"] == "conv2d"]
    (conv_kernel,) = [k for k in store.kernel_names().values() if "pointwise_nchwc" in k]
    if uses.get(conv_kernel) == "tuned":
        assert conv["schedule"] in (SEARCHED, f"{SEARCHED} from edgecompile.pointwise_nchwc")
    else:
        assert conv["schedule"] == "edgecompile.pointwise_nchwc"

    untuned = build(str(pointwise_onnx), "host", output_dir=tmp_path / "plain", records=False)
    assert untuned.artifact.manifest.records is None
    assert untuned.artifact.manifest.schedules[0]["schedule"] == "edgecompile.pointwise_nchwc"


def _tuned_kernels_three_ways(
    result: TuneResult, records: Path, model: Path, output: Path
) -> tuple[set[str], set[str], set[str]]:
    """The kernels that use a tuning record according to ``tune``'s table, ``records show``
    (:func:`summarize`) and the build's manifest."""
    from edgecompile.builder import build

    store = store_for(resolve_target("host"), records)
    by_tune = {t.name for t in result.tasks if t.uses == "tuned"}
    by_show = {k.name for k in summarize(store) if k.uses == "tuned"}
    manifest = build(str(model), "host", output_dir=output, records=records).artifact.manifest
    assert manifest.records is not None
    return by_tune, by_show, set(manifest.records["kernels_from_records"])


def _commit_lucky_copy(store: RecordStore) -> None:
    """A copy of one search record (of the first kernel that has one) claiming 1 ns."""
    from tvm.s_tir import meta_schedule as ms

    from edgecompile.records import record_schedule

    baselines = store.baselines()
    workload, body = next(
        (workload, body)
        for workload, bodies in store.records_by_workload().items()
        for body in bodies
        if record_schedule(body, baselines) == SEARCHED
    )
    (line,) = [w for w in store.lines().workloads if json.loads(w)[0] == workload]
    module = ms.database.Workload.from_json(json.loads(line)).mod
    with store.writer() as database:
        record = [body[0], [1e-9], body[2], body[3]]
        database.commit_tuning_record(
            ms.database.TuningRecord.from_json(record, database.commit_workload(module))
        )


@pytest.mark.parametrize("verdict", ["re-measured", "not re-measured"])
def test_tune_records_show_and_build_agree_on_what_uses_a_record(
    verdict: str, tuned: TuneResult, pointwise_onnx: Path, tmp_path: Path
) -> None:
    """One decision per kernel, read by all three: after a tune, and after one whose
    re-measurement never ran (interrupted, or out of time) -- where ``tune`` said untuned,
    ``records show`` "best record" and the build applied whatever MetaSchedule found fastest."""
    records = tmp_path / "records"
    shutil.copytree(tuned.records.parent, records)
    store = store_for(resolve_target("host"), records)
    result = tuned
    if verdict == "not re-measured":
        (store.path / "choices.json").unlink()
        # A search record claiming to beat every untuned schedule, as a lucky measurement
        # would: without a verdict, the fastest single time decides, in all three.
        _commit_lucky_copy(store)
        from edgecompile.tuning.results import task_outcomes
        from edgecompile.tuning.tasks import TuningTask

        untuned = {w: 1e-3 for w in store.kernel_names()}
        tasks = [TuningTask(n, 1, None, w, None) for w, n in store.kernel_names().items()]
        result = replace(tuned, tasks=task_outcomes(store, tasks, untuned))
    by_tune, by_show, by_build = _tuned_kernels_three_ways(
        result, records, pointwise_onnx, tmp_path / "out"
    )
    assert by_tune == by_show == by_build
    if verdict == "not re-measured":
        assert by_tune and all(
            k.uses_label == "tuned (not re-measured)" for k in summarize(store) if k.uses == "tuned"
        )


def test_records_of_one_target_are_never_applied_to_another(
    tuned: TuneResult, pointwise_onnx: Path, tmp_path: Path
) -> None:
    from edgecompile.builder import build

    root = tuned.records.parent
    rpi4 = resolve_target("rpi4")
    assert store_for(rpi4, root).path != tuned.records
    assert not store_for(rpi4, root).exists()
    with pytest.raises(EdgecompileError, match="no tuning records for rpi4"):
        build(str(pointwise_onnx), "rpi4", output_dir=tmp_path, records=root)
    # pointing --records at the host store itself is refused for another target
    with pytest.raises(EdgecompileError, match="tuned for host"):
        store_for(rpi4, tuned.records)


# --------------------------------------------------------------------------------------------
# The re-measurement: a build never trusts one lucky measurement


@pytest.fixture()
def conv_store(tmp_path: Path) -> tuple[Path, Path, RecordStore, str]:
    """A 1×1 conv big enough that naive loops lose clearly to our schedule (≥ 5×), with its
    untuned baselines measured (no search): the model, records root, store, conv workload."""
    model = write_pointwise_onnx(tmp_path / "conv.onnx", cin=32, cout=64, size=28)
    records = tmp_path / "records"
    result = tune(str(model), "host", trials=0, records=records, threads=1)
    assert result.trials_run == 0
    store = _store(result)
    assert not store.choices()  # nothing searched, nothing to decide
    (conv,) = [w for w, name in store.kernel_names().items() if "pointwise_nchwc" in name]
    return model, records, store, conv


def _commit_naive_record(store: RecordStore, workload_hash: str, seconds: float) -> str:
    """Commit the conv's unscheduled PrimFunc (naive loops) as a record claiming ``seconds``;
    returns its trace digest."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    (line,) = [w for w in store.lines().workloads if json.loads(w)[0] == workload_hash]
    module = ms.database.Workload.from_json(json.loads(line)).mod
    naive = s_tir.Schedule(module)
    with store.writer() as database:
        database.commit_tuning_record(
            ms.database.TuningRecord(
                naive.trace,
                database.commit_workload(module),
                [seconds],
                resolve_target("host").tvm_target(),
                ArgInfo.from_entry_func(module),
            )
        )
    return _digest(store.lines().records[-1])


def test_a_lucky_search_record_does_not_replace_our_schedule(
    conv_store: tuple[Path, Path, RecordStore, str], tmp_path: Path
) -> None:
    """A search record whose one measurement was absurdly fast is re-measured, loses, and the
    build keeps our schedule -- although MetaSchedule alone would pick that record."""
    from edgecompile.builder import build

    model, records, store, conv = conv_store
    lucky = _commit_naive_record(store, conv, 1e-9)
    result = tune(str(model), "host", trials=0, records=records, threads=1)
    choice = store.choices()[conv]
    assert choice.record == UNTUNED and choice.records == 2
    assert choice.tuned_ms is not None and choice.untuned_ms is not None
    assert choice.tuned_ms > 2 * choice.untuned_ms  # naive loops, re-measured honestly
    (task,) = [t for t in result.tasks if "pointwise_nchwc" in t.name]
    assert task.uses == "untuned" and task.best_ms == pytest.approx(1e-6)
    assert not [line for line in store.applied_records() if _digest(line) == lucky]
    manifest = build(str(model), "host", output_dir=tmp_path, records=records).artifact.manifest
    (conv_op,) = [s for s in manifest.schedules if s["op"] == "conv2d"]
    assert conv_op["schedule"] == "edgecompile.pointwise_nchwc"
    assert manifest.records is not None and not manifest.records["kernels_from_records"]

    # A rerun with no new records does not measure again (the verdict file is not rewritten).
    before = (store.path / "choices.json").stat().st_mtime_ns
    tune(str(model), "host", trials=0, records=records, threads=1)
    assert (store.path / "choices.json").stat().st_mtime_ns == before


def test_a_real_win_is_confirmed_and_applied(
    conv_store: tuple[Path, Path, RecordStore, str], tmp_path: Path
) -> None:
    """Turn the tables: naive loops are the untuned baseline and our schedule the search
    record; the re-measurement confirms the search record and the build applies it."""
    from edgecompile.builder import build

    model, records, store, conv = conv_store
    ours = {d for d, who in store.baselines().items() if who == "edgecompile.pointwise_nchwc"}
    naive = _commit_naive_record(store, conv, 1.0)
    baselines = {d: who for d, who in store.baselines().items() if d not in ours}
    (store.path / "baselines.json").write_text(json.dumps({**baselines, naive: "tvm-default"}))
    result = tune(str(model), "host", trials=0, records=records, threads=1)
    choice = store.choices()[conv]
    assert choice.uses_tuned and choice.record in ours
    assert choice.tuned_ms is not None and choice.untuned_ms is not None
    assert choice.tuned_ms < choice.untuned_ms * (1 - CONFIRM_MARGIN)
    (task,) = [t for t in result.tasks if "pointwise_nchwc" in t.name]
    assert task.uses == "tuned" and task.uses_ms == choice.tuned_ms
    manifest = build(str(model), "host", output_dir=tmp_path, records=records).artifact.manifest
    assert manifest.verification and manifest.verification["status"] == "passed"
    (conv_op,) = [s for s in manifest.schedules if s["op"] == "conv2d"]
    assert conv_op["schedule"] == f"{SEARCHED} from edgecompile.pointwise_nchwc"
    assert manifest.records is not None and manifest.records["kernels_from_records"]


@pytest.mark.parametrize(
    ("medians", "uses_tuned"),
    [
        ([1.0, 0.96], True),  # 4% faster: over the margin
        ([1.0, 0.98], False),  # 2%: noise
        ([1.0, None], False),  # the search record failed now
        ([None, 0.5], True),  # the untuned schedule failed now
        ([1.0, 1.2, 0.9], True),  # the best of several contenders counts
    ],
)
def test_verdict_margin(medians: list[float | None], uses_tuned: bool) -> None:
    bodies = [[f"trace{i}"] for i in range(len(medians))]
    choice = choice_from_medians(medians, bodies, records=len(bodies))
    assert choice.uses_tuned is uses_tuned
    assert choice.records == len(bodies)


def test_a_confirmed_winner_is_re_measured_with_a_later_tunes_records() -> None:
    """A later tune's records can push the confirmed winner out of the top contenders by one
    lucky measurement; it is re-measured with them, so losing contenders cannot drop it."""
    bodies = [[f"trace{i}", [1e-3 * (i + 1)]] for i in range(4)]
    searched = [(1e-3 * (i + 1), body) for i, body in enumerate(bodies)]
    contenders = bodies[:2]
    winner = Choice(trace_digest(bodies[3]), 5.0, 4.0, records=2)
    assert earlier_winner(winner, searched, contenders) == [bodies[3]]
    assert earlier_winner(Choice(trace_digest(bodies[1]), 5.0, 4.0, 2), searched, contenders) == []
    assert earlier_winner(Choice(UNTUNED, 5.0, None, 2), searched, contenders) == []
    assert earlier_winner(None, searched, contenders) == []


def test_rerun_with_the_same_trials_measures_nothing_new(
    tuned: TuneResult, pointwise_onnx: Path
) -> None:
    copy = tuned.records.parent.parent / "rerun"
    shutil.copytree(tuned.records.parent, copy)
    again = tune(str(pointwise_onnx), "host", trials=TRIALS, records=copy, threads=1)
    assert again.trials_before >= TRIALS
    assert again.trials_run == 0 and again.stopped == "no search trials left to run"
    # the untuned baselines were already measured with the same traces: no duplicate records
    assert len(_lines(copy)) == len(_lines(tuned.records.parent))


def test_time_budget_counts_the_whole_tune(pointwise_onnx: Path, tmp_path: Path) -> None:
    """A budget the preparations alone exceed: no search starts, nothing half-done is kept,
    and the tune returns about when the budget ends (the 1-minute CLI budget is tested in
    test_tune_budget.py)."""
    started = time.monotonic()
    result = tune(str(pointwise_onnx), "host", time_budget="1s", records=tmp_path, threads=1)
    assert result.stopped == "time budget spent"
    assert result.trials_run == 0
    assert time.monotonic() - started < 60  # not a search's worth of rounds
    assert not any(t.uses == "tuned" for t in result.tasks)


def _lines(root: Path) -> list[str]:
    (store,) = list_stores(root)
    return store.lines().records


def test_killed_tune_resumes_without_losing_records(pointwise_onnx: Path, tmp_path: Path) -> None:
    """SIGKILL mid-search; the records on disk stay loadable and the rerun continues."""
    records = tmp_path / "records"
    script = (
        "import sys; from edgecompile.tuning import tune; "
        f"tune({str(pointwise_onnx)!r}, 'host', trials=40, records={str(records)!r}, threads=1)"
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    store = store_for(resolve_target("host"), records)
    deadline = time.monotonic() + 300
    try:
        # wait for the untuned baselines (4 kernels) and some search records
        while len(store.lines().records) < 6:
            assert process.poll() is None, "the tune ended before it could be killed"
            assert time.monotonic() < deadline, "no search records after 300 s"
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # simulate the worst case, a torn line from the kill
    with open(store.record_path, "a") as handle:
        handle.write('[0, [[["Get')
    survived = store.lines()
    assert survived.dropped == 1 and len(survived.records) >= 6
    store.snapshot()  # loads despite the torn line

    from edgecompile.records import record_schedule

    searched_before = [
        line
        for line in survived.records
        if record_schedule(json.loads(line)[1], store.baselines()) == SEARCHED
    ]
    # How many the killed run measured depends on where the kill landed: ask for 8 more.
    wanted = len(searched_before) + 8
    resumed = tune(str(pointwise_onnx), "host", trials=wanted, records=records, threads=1)
    after = store.lines()
    assert after.dropped == 0  # the writer repaired the file before appending
    assert set(survived.records) <= set(after.records)
    # the rerun counted what the killed run had measured, and ran only the rest
    assert resumed.trials_before == len(searched_before) >= 1
    assert 0 < resumed.trials_run <= 8 + MAX_TRIALS_PER_ROUND  # at most a round over


def test_ctrl_c_exits_130_keeps_the_records_and_leaves_no_temp_files(
    pointwise_onnx: Path, tmp_path: Path
) -> None:
    """SIGINT mid-search: exit 130 (not "tuning failed: RuntimeError", exit 2), nothing left in
    $TMPDIR (the candidates' folders were dozens), the records readable, and a rerun resumes."""
    temp, records = tmp_path / "tmp", tmp_path / "records"
    temp.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecompile", "tune", str(pointwise_onnx), "--trials", "400",
         "--threads", "1", "--records", str(records)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    store = store_for(resolve_target("host"), records)
    deadline = time.monotonic() + 240
    try:
        # the untuned baselines (4 kernels), then some search records
        while len(store.lines().records) < 8:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no search records after 240 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "tuning failed" not in err and "Traceback" not in err, err
    assert sorted(path.name for path in temp.iterdir()) == []
    kept = store.lines()
    assert kept.dropped == 0 and not kept.damaged and len(kept.records) >= 8

    from edgecompile.records import record_schedule

    searched = [
        line
        for line in kept.records
        if record_schedule(json.loads(line)[1], store.baselines()) == SEARCHED
    ]
    resumed = tune(
        str(pointwise_onnx), "host", trials=len(searched) + 4, records=records, threads=1
    )
    assert resumed.trials_before == len(searched) >= 1
    assert 0 < resumed.trials_run <= 4 + MAX_TRIALS_PER_ROUND
    assert set(kept.records) <= set(store.lines().records)


def test_export_and_import_round_trip(tuned: TuneResult, tmp_path: Path) -> None:
    store = _store(tuned)
    exported = export_records(store, tmp_path / "host.json")
    fresh = tmp_path / "fresh"
    first = import_records(exported, fresh)
    assert first.added == len(store.lines().records) and first.skipped == 0
    assert first.store.path.name == store.path.name
    assert first.store.kernel_names() == store.kernel_names()
    assert first.store.choices() == store.choices()  # the verdicts travel with the records
    assert first.store.digest() == store.digest()
    again = import_records(exported, fresh)
    assert again.added == 0 and again.skipped == first.added
    assert {k.name for k in summarize(first.store)} == {k.name for k in summarize(store)}


def test_import_refuses_other_files(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text('{"hello": 1}')
    with pytest.raises(EdgecompileError, match="not an edgecompile records export"):
        import_records(bogus, tmp_path / "r")


def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    store = store_for(resolve_target("host"), tmp_path)
    with (
        store.writer(),
        pytest.raises(EdgecompileError, match="another edgecompile process"),
        store.writer(),
    ):
        pass


def test_records_cli(tuned: TuneResult, tmp_path: Path, cli_error: Callable[..., str]) -> None:
    runner = CliRunner()
    root = str(tuned.records.parent)
    listed = runner.invoke(cli, ["records", "list", "--records", root, "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert entry["preset"] == "host" and entry["records"] == len(_store(tuned).lines().records)
    shown = runner.invoke(cli, ["records", "show", "--records", root, "--json"])
    assert shown.exit_code == 0, shown.output
    assert {k["name"] for k in json.loads(shown.output)} == {t.name for t in tuned.tasks}
    out = tmp_path / "export.json"
    exported = runner.invoke(cli, ["records", "export", "--records", root, "-o", str(out)])
    assert exported.exit_code == 0 and out.is_file()
    imported = runner.invoke(cli, ["records", "import", str(out), "--records", str(tmp_path)])
    assert imported.exit_code == 0 and "imported" in imported.output
    missing = cli_error(["records", "show", "--target", "rpi4", "--records", root])
    assert "no tuning records for rpi4" in missing


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("45", 45), ("1.5m", 90)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10 minutes", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(EdgecompileError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "rpi4"], "must be measured on a aarch64 board"),
        (["--rpc", "127.0.0.1:1", "--tracker", "127.0.0.1:2"], "given together"),
        (["--target", "rpi4", "--tracker", "127.0.0.1:1"], "cannot reach the RPC tracker"),
        (["--target", "rpi4", "--rpc", "127.0.0.1:1"], "cannot open a TVM RPC session"),
        (["--time-budget", "soon"], "cannot read the duration"),
        (["--trials", "-3"], "bad trial count"),
    ],
)
def test_tune_errors_are_one_line(
    args: list[str],
    message: str,
    pointwise_onnx: Path,
    tmp_path: Path,
    cli_error: Callable[..., str],
) -> None:
    assert message in cli_error(["tune", str(pointwise_onnx), "--records", str(tmp_path), *args])
    # nothing was measured, so nothing was written
    assert not any(store.exists() for store in list_stores(tmp_path))


def test_tune_cli_json(tuned: TuneResult, pointwise_onnx: Path) -> None:
    """The rerun is instant (trials already there) and prints the summary for scripts."""
    copy = tuned.records.parent.parent / "cli"
    shutil.copytree(tuned.records.parent, copy, dirs_exist_ok=True)
    result = CliRunner().invoke(
        cli,
        ["tune", str(pointwise_onnx), "--records", str(copy), "--trials", str(TRIALS),
         "--threads", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.output[result.output.index("{") :])
    assert payload["preset"] == "host" and payload["trials_run"] == 0
    assert {t["name"] for t in payload["tasks"]} == {t.name for t in tuned.tasks}


def test_user_schedules_are_part_of_the_untuned_baseline(tmp_path: Path) -> None:
    """``tune --schedules DIR`` measures each kernel as ``build --schedules DIR`` compiles it:
    the worked example's NCHW pool is a baseline of its own, named after the user rule."""
    import importlib.util

    tests = Path(__file__).parent
    spec = importlib.util.spec_from_file_location(
        "user_schedule_tests", tests / "schedules" / "test_user_schedules.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.write_onnx(tmp_path / "pool.onnx")
    examples = tests.parent / "examples" / "schedules"
    result = tune(
        str(model), "host", trials=0, records=tmp_path / "r", threads=1, schedules_dir=examples
    )
    assert result.trials_run == 0
    made_by = set(_store(result).baselines().values())
    assert "user:nchw_pool" in made_by and "edgecompile.pointwise_nchwc" in made_by
    with pytest.raises(EdgecompileError, match="schedules"):
        tune(str(model), "host", trials=0, records=tmp_path / "r", schedules_dir=tmp_path / "no")


def test_finished_tir_kernels_are_not_tuning_tasks() -> None:
    """ShuffleNet v2's lane-permuting concats are TIR our layout pass wrote whole (no block to
    schedule); MetaSchedule's search dies on them, so they are not tasks -- the rest are."""
    import tempfile

    from tvm import tirx

    from edgecompile.builder import prepare_model
    from edgecompile.schedules.analysis import has_root_block as _has_root_block
    from edgecompile.schedules.pipeline import fused_module
    from edgecompile.tuning.tasks import extract_tasks

    target = resolve_target("host").tvm_target()
    with tempfile.TemporaryDirectory() as scratch:
        model, _, _ = prepare_model("shufflenet_v2_x0_5", Path(scratch), input_size=(64, 64))
    fused, _ = fused_module(model.module, target)
    finished = [
        gvar.name_hint
        for gvar, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc) and not _has_root_block(tvm_module(func))
    ]
    assert finished, "the premise: ShuffleNet v2 has hand-written concat kernels"
    tasks = extract_tasks(model.module, target)
    assert tasks and all(_has_root_block(task.module) for task in tasks)
    assert not {task.name for task in tasks} & set(finished)


def tvm_module(func: Any) -> Any:
    import tvm

    return tvm.IRModule({"main": func})
