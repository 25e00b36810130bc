"""``edgecompile bench`` without a board: TVM next to ONNX Runtime and torch, checked first."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompile.benchmarking import engines, local
from edgecompile.benchmarking.local import artifact_onnx, bench_local, resolve_host_artifact
from edgecompile.benchmarking.timing import Runner, time_interleaved
from edgecompile.benchmarking.workers import PinnedWorker
from edgecompile.builder import BuildResult
from edgecompile.cli import cli, main
from edgecompile.errors import EdgecompileError

Build = Callable[..., BuildResult]


@pytest.fixture(scope="module")
def squeezenet(build_once: Build) -> BuildResult:
    return build_once("squeezenet1_1", "host", input_size=64)


def _bench_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["bench", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_has_every_engine_and_thread_count_with_ratios_from_medians(
    squeezenet: BuildResult,
) -> None:
    report = _bench_json(
        str(squeezenet.artifact.directory), "--threads", "1,2", "--repeat", "5", "--warmup", "1"
    )
    assert report["engines"] == ["tvm", "ort", "torch"]
    assert report["threads"] == [1, 2]
    assert report["reference"] == "ort"
    assert report["input_shapes"] == [[1, 3, 64, 64]]
    timings = report["timings"]
    assert {(t["engine"], t["threads"]) for t in timings} == {
        (engine, count) for engine in ("tvm", "ort", "torch") for count in (1, 2)
    }
    for t in timings:
        assert set(t) >= {"median_ms", "p90_ms", "min_ms", "ratio_to_ort", "max_relative_error"}
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
        assert t["max_relative_error"] <= 1e-4
        ort = next(o for o in timings if o["engine"] == "ort" and o["threads"] == t["threads"])
        assert t["ratio_to_ort"] == pytest.approx(t["median_ms"] / ort["median_ms"])


def test_table_lists_engines_and_ratio_column(squeezenet: BuildResult) -> None:
    result = CliRunner().invoke(
        cli,
        ["bench", str(squeezenet.artifact.directory), "--compare", "ort", "--repeat", "3"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:2] == ["engine", "threads"] and "vs ORT" in lines[1]
    rows = [line.split() for line in lines[3:5]]
    assert [row[0] for row in rows] == ["tvm", "ort"]
    assert rows[1][5] == "1.00x"
    assert "torch" not in result.output


def test_an_engine_that_disagrees_is_an_error_and_gets_no_time(
    squeezenet: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engines.torch_runner

    def garbage(model: object, threads: int) -> Runner:
        run = real(model, threads)
        return lambda inputs: [np.full_like(out, 7.0) for out in run(inputs)]

    monkeypatch.setattr(engines, "torch_runner", garbage)
    with pytest.raises(EdgecompileError, match="torch disagrees with ort"):
        bench_local(str(squeezenet.artifact.directory), repeat=2, isolate=False)


def test_cli_mismatch_prints_one_error_line_and_no_timing(
    squeezenet: BuildResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = engines.tvm_runner

    def garbage(library: str) -> Runner:
        run = real(library)
        return lambda inputs: [out + 1.0 for out in run(inputs)]

    monkeypatch.setattr(engines, "tvm_runner", garbage)
    monkeypatch.setattr(local, "measure_in_subprocess", engines.measure)  # keep the patch
    with pytest.raises(SystemExit) as excinfo:
        main(["bench", str(squeezenet.artifact.directory), "--repeat", "2"])
    assert excinfo.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: tvm disagrees with ort"), lines


def test_tvm_runner_copies_each_call_into_one_kept_input_tensor(
    squeezenet: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tvm
    from tvm import relax

    library = str(squeezenet.artifact.library)
    machine = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((1, 3, 64, 64)).astype("float32") for _ in range(2)]
    expected = [machine["main"](tvm.runtime.tensor(image)).numpy() for image in images]
    allocations = []
    for name in ("tensor", "empty"):
        real_allocate = getattr(tvm.runtime, name)

        def counted(*args: object, _real: Callable = real_allocate, **kwargs: object) -> object:
            allocations.append(args)
            return _real(*args, **kwargs)

        monkeypatch.setattr(tvm.runtime, name, counted)
    run = engines.tvm_runner(library)
    for index in (0, 1, 0):  # a stale kept input would repeat the previous output
        (actual,) = run([images[index]])
        np.testing.assert_array_equal(actual, expected[index])
    assert len(allocations) == 1, allocations


def test_check_agreement_picks_ort_then_torch_as_reference() -> None:
    out = [np.arange(4, dtype=np.float32)]
    reference, errors = engines.check_agreement({"tvm": out, "torch": out})
    assert reference == "torch" and errors == {"tvm": 0.0, "torch": 0.0}
    with pytest.raises(EdgecompileError, match="tvm disagrees with ort"):
        engines.check_agreement({"tvm": [out[0] * 2], "ort": out})
    with pytest.raises(EdgecompileError, match="different output shapes"):
        engines.check_agreement({"tvm": [out[0][:2]], "ort": out})


def test_a_library_built_from_an_int8_model_is_checked_by_sqnr_not_the_float_tolerance() -> None:
    expected = [np.linspace(-4, 4, 64, dtype=np.float32).reshape(1, 64)]
    step = np.float32(8 / 255)  # one uint8 step of the output: off by one step everywhere
    actual = [expected[0] + step]
    with pytest.raises(EdgecompileError, match="tvm disagrees with ort: max relative error"):
        engines.check_agreement({"tvm": actual, "ort": expected})
    _, errors = engines.check_agreement({"tvm": actual, "ort": expected}, quantized=["tvm"])
    assert errors["tvm"] > engines.TOLERANCE
    with pytest.raises(EdgecompileError, match="SQNR"):  # still refused when it is wrong
        engines.check_agreement({"tvm": [-expected[0]], "ort": expected}, quantized=["tvm"])


def test_an_onnx_model_is_built_for_the_host_and_torch_is_skipped(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    report = bench_local(str(tiny_onnx), threads=[1], repeat=3, warmup=1, output_dir=tmp_path)
    assert report.engines == ["tvm", "ort"]
    assert (tmp_path / "tiny-host" / "manifest.json").is_file()
    assert any("torch skipped" in note for note in report.notes)
    assert [t.ratio_to_ort for t in report.timings if t.engine == "ort"] == [1.0]


def test_board_only_and_local_only_options_do_not_mix(
    squeezenet: BuildResult, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = str(squeezenet.artifact.directory)
    cases = [
        (["bench", artifact, "--remote-dir", "/x"], "--remote-dir: options for benchmarking on"),
        (["bench", artifact, "--rpc", "127.0.0.1:1", "--compare", "ort"], "--compare: options"),
        (["bench", artifact, "--rpc", "127.0.0.1:1", "--threads", "1,2"], "one count"),
        (["bench", artifact, "--compare", "tflite"], "unknown engine(s) tflite"),
        (["bench", artifact, "--threads", "x"], "bad list"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as excinfo:
            main(argv)
        assert excinfo.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)


def test_a_board_artifact_is_not_benched_here(
    build_once: Build, capsys: pytest.CaptureFixture[str], tiny_onnx: Path
) -> None:
    armv7 = build_once(str(tiny_onnx), "rpi4-armv7")
    with pytest.raises(SystemExit):
        main(["bench", str(armv7.artifact.directory)])
    err = capsys.readouterr().err
    assert "arm library" in err and "exactly one of --device" in err


@pytest.fixture(scope="module")
def squeezenet_with_onnx(build_once: Build) -> BuildResult:
    return build_once("squeezenet1_1", "host", input_size=64, keep_onnx=True)


def test_ort_runs_the_onnx_the_build_kept_without_exporting_again(
    squeezenet_with_onnx: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = squeezenet_with_onnx.artifact
    kept = artifact_onnx(artifact)
    assert kept == artifact.directory / "squeezenet1_1.onnx" and kept.is_file()
    assert artifact.manifest.extra == {"onnx": "squeezenet1_1.onnx"}

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("bench exported the model although the artifact has its ONNX")

    monkeypatch.setattr("edgecompile.export.export_onnx", no_export)
    report = bench_local(str(artifact.directory), repeat=2, warmup=0, isolate=False)
    assert report.engines == ["tvm", "ort", "torch"] and report.reference == "ort"
    assert all(
        t.max_relative_error is not None and t.max_relative_error <= 1e-4 for t in report.timings
    )


def test_another_build_of_the_same_model_is_timed_as_an_engine_of_its_own(
    squeezenet_with_onnx: BuildResult, squeezenet: BuildResult
) -> None:
    report = bench_local(
        str(squeezenet_with_onnx.artifact.directory),
        compare=["ort"],
        threads=[1],
        repeat=3,
        warmup=1,
        isolate=False,
        extra_artifacts={"tvm-other": squeezenet.artifact.directory},
    )
    assert report.engines == ["tvm", "tvm-other", "ort"]
    timings = {t.engine: t for t in report.timings}
    assert timings["tvm-other"].max_relative_error <= 1e-4
    assert timings["tvm-other"].ratio_to_ort == pytest.approx(
        timings["tvm-other"].median_ms / timings["ort"].median_ms
    )


def test_an_extra_artifact_of_another_model_is_refused(
    squeezenet: BuildResult, build_once: Build, tiny_onnx: Path
) -> None:
    tiny = build_once(str(tiny_onnx), "host")
    with pytest.raises(EdgecompileError, match=r"not a build of the same model.*model, inputs"):
        bench_local(
            str(squeezenet.artifact.directory),
            extra_artifacts={"tvm-tuned": tiny.artifact.directory},
            isolate=False,
        )
    with pytest.raises(EdgecompileError, match="cannot name an extra artifact 'ort'"):
        bench_local(
            str(squeezenet.artifact.directory),
            extra_artifacts={"ort": squeezenet.artifact.directory},
            isolate=False,
        )


def test_a_pinned_worker_measures_model_after_model_in_one_process(
    squeezenet_with_onnx: BuildResult,
) -> None:
    import os

    with PinnedWorker(2) as worker:
        first = worker.call(os.getpid)
        assert worker.call(os.getenv, "TVM_NUM_THREADS") == "2"
        directory = str(squeezenet_with_onnx.artifact.directory)
        report = bench_local(
            directory, compare=["ort"], threads=[2], repeat=2, warmup=0, workers={2: worker}
        )
        assert {(t.engine, t.threads) for t in report.timings} == {("tvm", 2), ("ort", 2)}
        assert worker.call(os.getpid) == first  # still the same process
        with pytest.raises(ValueError, match="2-thread worker asked to time 1"):
            worker.measure({"threads": 1})


def test_a_pinned_worker_is_replaced_after_its_task_limit() -> None:
    import os

    with PinnedWorker(1, max_tasks=2) as worker:
        first = [worker.call(os.getpid), worker.call(os.getpid)]
        then = worker.call(os.getpid)
        assert first[0] == first[1] != then
        assert worker.call(os.getenv, "TVM_NUM_THREADS") == "1"  # the new one is pinned too


# --------------------------------------------------------------------------------------------
# without a real engine


def _recording_runners(calls: list[str], names: list[str]) -> dict[str, Runner]:
    """Fake engines that append their name to ``calls`` and all return the same output."""

    def runner(name: str) -> Runner:
        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            calls.append(name)
            return [inputs[0] * 2]

        return run

    return {name: runner(name) for name in names}


def test_engines_are_timed_in_interleaved_rows_after_each_ones_warmup() -> None:
    calls: list[str] = []
    runners = _recording_runners(calls, ["a", "b", "c"])
    seconds = time_interleaved(
        runners, [np.zeros(2, np.float32)], repeat=3, warmup=2, block=2, settle_seconds=0
    )
    # warm-up; then per round a row of each: one untimed settling call, then up to `block` timed
    assert "".join(calls) == "aabbcc" + "aaabbbccc" + "aabbcc"
    assert {name: len(times) for name, times in seconds.items()} == {"a": 3, "b": 3, "c": 3}


def test_each_row_starts_with_untimed_calls_until_the_other_engines_threads_settle() -> None:
    calls: list[str] = []

    def slow(name: str) -> Runner:
        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            calls.append(name)
            time.sleep(0.005)
            return inputs

        return run

    seconds = time_interleaved(
        {"a": slow("a"), "b": slow("b")}, [], repeat=1, warmup=0, block=1, settle_seconds=0.05
    )
    rows = [(name, len(list(group))) for name, group in itertools.groupby(calls)]
    assert [name for name, _ in rows] == ["a", "b"]
    # 50 ms of 5 ms calls settle before the one timed call (at least 2 even on a loaded machine)
    assert all(count >= 3 for _, count in rows), rows
    assert all(times[0] < 0.05 for times in seconds.values())


def test_a_measurement_checks_outputs_then_times_the_engines_interleaved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["tvm", "tvm-tuned", "ort", "torch"]
    calls: list[str] = []
    monkeypatch.setattr(
        engines, "make_runners", lambda spec, threads: _recording_runners(calls, names)
    )
    spec = {"inputs": [([1, 3, 2, 2], "float32")], "seed": 0, "threads": 1, "tolerance": 1e-4}
    result = engines.measure({**spec, "repeat": 3, "warmup": 2})
    checked, warmup, timed = calls[:4], calls[4:12], calls[12:]
    assert checked == names  # outputs compared before anything is timed
    assert warmup == [name for name in names for _ in range(2)]
    # 3 timings fit one row per engine: each engine's calls in a row, in order
    assert [name for name, _ in itertools.groupby(timed)] == names
    assert result["reference"] == "ort" and list(result["stats"]) == names


class _BuildCalled(Exception):
    pass


@pytest.fixture
def build_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """``edgecompile.builder.build`` replaced: its keyword arguments recorded, then it stops."""
    calls: list[dict[str, object]] = []

    def fake_build(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        raise _BuildCalled

    monkeypatch.setattr("edgecompile.builder.build", fake_build)
    return calls


def test_the_untuned_build_of_bench_and_profile_applies_no_tuning_records(
    build_calls: list[dict[str, object]], tmp_path: Path
) -> None:
    # records=None would apply the user's cache: "tvm" would silently be a tuned number.
    with pytest.raises(_BuildCalled):
        resolve_host_artifact("squeezenet1_1", input_size="32", output_dir=tmp_path)
    (call,) = build_calls
    assert call["records"] is False
