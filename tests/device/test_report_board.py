"""#17's board report: ``report --target rpi4 --device ...`` on the emulated arm64 board WITHOUT
Python builds two tiny models for rpi4, deploys each as a bundle, times it there through the
native runner after checking its output against ONNX Runtime here, and writes the report with
the board in its header and no ORT columns (the board has no Python, and the report says so).

One report for the module (the board's rootfs and the aarch64 runtime are cached; the builds
are the report's own); the tests read what it wrote.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.emulator

#: The two cheapest models to build at 32×32 (few layers), and the board's preset.
MODELS = ("mobilenet_v1_x0_25_r128", "squeezenet1_1")
PRESET = "rpi4"
REMOTE_DIR = "~/edgecompile-tests-report"


@pytest.fixture(scope="module")
def board_report(
    python_less_board: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], Path, str]]:
    """(the report's --json, its folder, the progress lines) from the command line."""
    from edgecompile._cache import cache_root
    from edgecompile.cli.app import main

    output = tmp_path_factory.mktemp("board-report")
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir()
    with python_less_board(PRESET, "aarch64", remote_dir=REMOTE_DIR) as (_, access):
        argv = ["report", "--target", PRESET, "--device", access.device]
        argv += ["--identity", str(access.identity), "--accept-new-host-key"]
        argv += ["--remote-dir", REMOTE_DIR, "--models", ",".join(MODELS), "-o", str(output)]
        argv += ["--input-size", "32", "--threads", "1", "--repeat", "3", "--warmup", "1"]
        argv += ["--build-jobs", "1", "--json"]
        out, err = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            # the cached native runtime stays where it is (it follows HOME otherwise: ~9 min)
            patch.setenv("EDGECOMPILE_CACHE", str(cache_root()))
            patch.setenv("HOME", str(home))  # a known_hosts of this test's own
            patch.setenv("EDGECOMPILE_RECORDS", str(tmp_path_factory.mktemp("no-records")))
            patch.setenv("EDGECOMPILE_PROGRESS", "on")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                assert main(argv) in (0, None)
        yield json.loads(out.getvalue()), output, err.getvalue()


def test_every_model_has_a_board_row_with_positive_latencies_checked_against_ort(
    board_report: tuple[dict[str, Any], Path, str],
) -> None:
    report, output, _ = board_report
    with open(output / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["model"], row["engine"], row["threads"]) for row in rows] == [
        (model, "tvm", "1") for model in MODELS
    ]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert 0 < float(row["min_ms"]) <= float(row["median_ms"]) <= float(row["p90_ms"])
        # the board's output against ONNX Runtime here, on the same seeded input
        assert row["max_relative_error"] != "" and float(row["max_relative_error"]) <= 1e-4
        assert row["ratio_to_ort"] == ""  # no ORT on a board without Python
    assert report["engines"] == ["tvm"] and report["target"] == PRESET


def test_the_header_names_the_board_and_the_native_runner_and_why_ort_is_missing(
    board_report: tuple[dict[str, Any], Path, str],
) -> None:
    report, output, progress = board_report
    board = report["board"]
    assert board["preset"] == PRESET and board["machine"] == "aarch64" and board["emulated"]
    assert board["uname"].startswith("Linux") and "aarch64" in board["uname"]
    index = (output / "index.md").read_text()
    assert "# edgecompile zoo report on a rpi4 board" in index
    assert f"on the board `{board['device']}`" in index and board["uname"] in index
    assert "native runner" in index and "Emulated board" in index
    assert "ort not measured: the board has no Python" in index
    assert "torch not measured" in index
    assert "| 1T ms |" in index and "vs ORT" not in index  # no ORT: no ratio columns
    # no per-kernel profile on the board: the op-class plot is left out, with why
    assert "no per-kernel profiler" in index
    assert not (output / "time_by_op_class.png").exists()
    assert sorted(Path(plot).name for plot in report["plots"]) == [
        "latency_vs_mac.png",
        "latency_vs_multiply_adds.png",
    ]
    for model in MODELS:  # one progress line per model
        assert f"deploy and time {model} on {board['device']}" in progress
