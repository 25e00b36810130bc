"""The bench history: every bench appends its numbers; a board bench reads the host's latest.

Board results are made with ``remote._board_result`` (what ``bench_on_device`` returns after
timing) from a host build relabelled as a board build: no emulator is needed to check how a
board's numbers are read against the host's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import edgecompile.benchmarking.history as bench_history
from edgecompile.artifact import Artifact
from edgecompile.benchmarking.local import bench_local
from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.builder import BuildResult
from edgecompile.cli import cli
from edgecompile.device import remote
from edgecompile.device.access import BoardAccess

Build = Callable[..., BuildResult]


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A history file of the test's own, also as the default (no test writes to ~/.cache)."""
    path = tmp_path / "cache" / "bench.jsonl"
    monkeypatch.setenv(bench_history.HISTORY_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(build_once: Build, tiny_onnx: Path) -> Artifact:
    return build_once(str(tiny_onnx), "host").artifact


@pytest.fixture
def tiny_on_board(tiny: Artifact) -> Artifact:
    """The tiny host build, labelled an rpi4 build: only model, shape and preset are read."""
    return Artifact(tiny.directory, dataclasses.replace(tiny.manifest, preset="rpi4"))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _host_run(
    artifact: Artifact,
    path: Path,
    *,
    run: str,
    time_utc: str,
    threads: int,
    medians: dict[str, float],
    shape: list[int] | None = None,
    cpu: str = "Test CPU",
) -> None:
    """Append one host bench run's lines, as bench_local would have written them."""
    entries = [
        bench_history.history_entry(
            artifact,
            [shape or artifact.manifest.inputs[0]["shape"]],
            EngineTiming(engine, threads, ms, ms * 1.1, ms * 0.9, ms, 0.0, None),
            {"kind": "host", "cpu": cpu},
            artifact.manifest.library_sha256 if engine == "tvm" else None,
            run=run,
            time_utc=time_utc,
        )
        for engine, ms in medians.items()
    ]
    bench_history.append_history(entries, path)


def _board(artifact: Artifact, path: Path, *, median_ms: float, threads: int | None = 1) -> Any:
    return remote._board_result(
        artifact,
        transport="rpc",
        target="127.0.0.1:9090",
        repeat=3,
        warmup=1,
        threads=threads,
        seconds=[median_ms / 1e3] * 3,
        board={"transport": "rpc", "machine": "aarch64", "triple": "aarch64-unknown-linux-gnu"},
        notes=[],
        history=path,
    )


# --------------------------------------------------------------------------------------------
# writing


def test_a_host_bench_appends_one_line_per_engine_and_thread_count(
    tiny: Artifact, history: Path
) -> None:
    report = bench_local(
        str(tiny.directory), compare=["ort"], threads=[1], repeat=2, warmup=0, isolate=False
    )
    lines = _lines(history)  # the default path: $EDGECOMPILE_BENCH_HISTORY
    assert [(line["engine"], line["threads"]) for line in lines] == [("tvm", 1), ("ort", 1)]
    assert len({line["run"] for line in lines}) == 1 and len({line["time"] for line in lines}) == 1
    timings = {t.engine: t for t in report.timings}
    for line in lines:
        assert line["model"] == "tiny" and line["input_shapes"] == [[1, 3, 8, 8]]
        assert line["preset"] == "host" and line["version"] == bench_history.HISTORY_VERSION
        assert line["where"] == {"kind": "host", "cpu": bench_history.host_cpu_name()}
        assert line["time"].endswith("Z")
        timing = timings[line["engine"]]
        assert (line["median_ms"], line["p90_ms"], line["min_ms"]) == (
            timing.median_ms,
            timing.p90_ms,
            timing.min_ms,
        )
    # The TVM line names the library it timed; ORT did not run it.
    assert [line["library_sha256"] for line in lines] == [tiny.manifest.library_sha256, None]
    # ... and a board bench of that model now finds them.
    found = bench_history.host_history("tiny", [[1, 3, 8, 8]], threads=1)
    assert [line["engine"] for line in found] == ["tvm", "ort"]


def test_history_false_writes_nothing_and_an_unwritable_one_is_a_note(
    tiny: Artifact, history: Path, tmp_path: Path
) -> None:
    bench_local(str(tiny.directory), compare=[], repeat=1, warmup=0, isolate=False, history=False)
    assert not history.exists()
    blocked = tmp_path / "a-folder"
    blocked.mkdir()  # a folder where the file should be: the append fails
    report = bench_local(
        str(tiny.directory), compare=[], repeat=1, warmup=0, isolate=False, history=blocked
    )
    assert report.timings and any("bench history not written" in n for n in report.notes)


def test_default_path_follows_the_cache_convention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bench_history.HISTORY_ENV, raising=False)
    monkeypatch.delenv("EDGECOMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bench_history.default_history_path() == tmp_path / "xdg" / "edgecompile" / "bench.jsonl"
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    assert bench_history.default_history_path() == tmp_path / "cache" / "bench.jsonl"
    monkeypatch.setenv(bench_history.HISTORY_ENV, str(tmp_path / "mine.jsonl"))
    assert bench_history.default_history_path() == tmp_path / "mine.jsonl"


def test_torn_and_foreign_lines_are_skipped_and_the_next_append_starts_a_new_line(
    tiny: Artifact, history: Path
) -> None:
    _host_run(tiny, history, run="a", time_utc="2026-11-27T20:00:00Z", threads=1,
              medians={"tvm": 8.0})  # fmt: skip
    good = history.read_text()
    torn = good.strip()[: len(good) // 2]  # a crash in the middle of a line: no newline
    history.write_bytes(
        good.encode()
        + b"not json\n"
        + json.dumps({"version": 99, "run": "z"}).encode() + b"\n"  # a newer edgecompile's
        + b"[1, 2]\n"
        + b"\xff\xfe\n"  # not UTF-8
        + torn.encode()
    )  # fmt: skip
    assert len(bench_history.read_history(history)) == 1
    _host_run(tiny, history, run="b", time_utc="2026-11-27T21:00:00Z", threads=1,
              medians={"tvm": 7.0})  # fmt: skip
    raw = history.read_bytes()
    assert raw.endswith(b"\n") and (torn + "\n").encode() in raw
    assert [(e["run"], e["median_ms"]) for e in bench_history.read_history(history)] == [
        ("a", 8.0),
        ("b", 7.0),
    ]
    assert bench_history.read_history(history.with_name("missing.jsonl")) == []


# --------------------------------------------------------------------------------------------
# reading it back for a board bench


def test_a_board_result_is_read_against_the_latest_host_run(
    tiny: Artifact, tiny_on_board: Artifact, history: Path
) -> None:
    shape = tiny.manifest.inputs[0]["shape"]
    _host_run(tiny, history, run="old", time_utc="2026-11-26T10:00:00Z", threads=1,
              medians={"tvm": 10.0, "ort": 9.0, "torch": 30.0})  # fmt: skip
    _host_run(tiny, history, run="new", time_utc="2026-11-27T21:17:40Z", threads=1,
              medians={"tvm": 8.0, "ort": 7.5}, cpu="AMD EPYC")  # fmt: skip
    # Not this model's shape, and a later run at another thread count: neither is picked.
    _host_run(tiny, history, run="big", time_utc="2026-11-27T22:00:00Z", threads=1,
              medians={"tvm": 1.0}, shape=[1, 3, 16, 16])  # fmt: skip
    _host_run(tiny, history, run="two", time_utc="2026-11-27T22:30:00Z", threads=2,
              medians={"tvm": 5.0})  # fmt: skip

    result = _board(tiny_on_board, history, median_ms=48.0, threads=1)
    host = result.host
    assert host is not None and host.cpu == "AMD EPYC" and host.threads == 1
    assert host.time == "2026-11-27T21:17:40Z"
    assert list(host.timings) == ["tvm", "ort"]
    assert host.timings["tvm"] == pytest.approx({"median_ms": 8.0, "p90_ms": 8.8, "min_ms": 7.2})
    assert host.timings["ort"] == pytest.approx({"median_ms": 7.5, "p90_ms": 8.25, "min_ms": 6.75})
    assert host.board_over_host_tvm == pytest.approx(6.0)
    assert host.library_sha256 == tiny.manifest.library_sha256
    assert bench_history.format_host_comparison(result) == (
        "host (AMD EPYC, 1 thread, 2026-11-27 21:17 UTC): tvm 8.00 ms, ort 7.50 ms "
        "-> board/host tvm 6.0x"
    )
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["host"]["timings"]["ort"]["median_ms"] == 7.5
    assert as_json["host"]["board_over_host_tvm"] == pytest.approx(6.0)
    assert as_json["input_shapes"] == [shape]

    # The board's own line was recorded, and is never taken for a host one.
    board_line = _lines(history)[-1]
    assert board_line["where"]["kind"] == "board" and board_line["preset"] == "rpi4"
    assert board_line["where"]["cpu"] == "aarch64-unknown-linux-gnu"
    assert (board_line["engine"], board_line["threads"]) == ("tvm", 1)
    assert board_line["median_ms"] == pytest.approx(48.0)
    assert board_line["library_sha256"] == tiny.manifest.library_sha256
    again = _board(tiny_on_board, history, median_ms=1.0, threads=1)
    assert again.host is not None and again.host.time == "2026-11-27T21:17:40Z"


def test_the_host_run_at_the_boards_thread_count_wins_else_the_latest(
    tiny: Artifact, tiny_on_board: Artifact, history: Path
) -> None:
    _host_run(tiny, history, run="r", time_utc="2026-11-27T20:00:00Z", threads=1,
              medians={"tvm": 8.0, "ort": 7.0})  # fmt: skip
    _host_run(tiny, history, run="r", time_utc="2026-11-27T20:00:00Z", threads=2,
              medians={"tvm": 4.0, "ort": 3.5})  # fmt: skip
    assert _board(tiny_on_board, history, median_ms=16.0, threads=2).host.threads == 2
    # Board at 4 threads: nothing at 4, so the latest run's count closest to it (2).
    four = _board(tiny_on_board, history, median_ms=16.0, threads=4)
    assert four.host.threads == 2 and four.host.board_over_host_tvm == pytest.approx(4.0)
    assert "2 threads" in bench_history.format_host_comparison(four)
    # Runtime could not say its thread count: the fewest threads of the latest run.
    assert _board(tiny_on_board, history, median_ms=16.0, threads=None).host.threads == 1


def test_without_host_numbers_one_line_says_how_to_get_them(
    tiny: Artifact, tiny_on_board: Artifact, history: Path
) -> None:
    result = _board(tiny_on_board, history, median_ms=5.0, threads=4)
    assert result.host is None
    onnx = tiny.manifest.weights.removeprefix("ONNX file ")
    assert result.host_command == f"edgecompile bench {onnx} --input-size 8 --threads 4"
    assert bench_history.format_host_comparison(result) == (
        "host: no measurements of tiny (1x3x8x8) on this machine yet; record them with "
        f"`edgecompile bench {onnx} --input-size 8 --threads 4`"
    )
    assert result.to_dict()["host"] is None


def test_the_board_bench_cli_prints_the_host_line_and_json_field(
    tiny: Artifact, tiny_on_board: Artifact, history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_run(tiny, history, run="r", time_utc="2026-11-27T21:17:00Z", threads=1,
              medians={"tvm": 2.0, "ort": 1.0})  # fmt: skip
    calls: list[dict[str, Any]] = []

    def fake_bench(artifact: str, access: BoardAccess, **options: Any) -> Any:
        calls.append({"access": access, **options})
        return _board(tiny_on_board, history, median_ms=12.0, threads=options["threads"])

    monkeypatch.setattr(remote, "bench_on_device", fake_bench)
    argv = ["bench", str(tiny.directory), "--rpc", "127.0.0.1:9090", "--threads", "1"]
    text = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[3] == (
        "host (Test CPU, 1 thread, 2026-11-27 21:17 UTC): tvm 2.00 ms, ort 1.00 ms "
        "-> board/host tvm 6.0x"
    )
    as_json = CliRunner().invoke(cli, [*argv, "--json"], catch_exceptions=False)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["host"]["timings"]["tvm"]["median_ms"] == 2.0
    assert report["host"]["board_over_host_tvm"] == pytest.approx(6.0)
    assert calls[0]["threads"] == 1 and calls[0]["access"].rpc == "127.0.0.1:9090"
