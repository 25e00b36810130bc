"""``edgecompile profile``: per-kernel times from the instrumented Relax VM, joined to schedules.

No timing is asserted here (how close the per-layer sum comes to the end-to-end time depends on
the machine's load): ``benchmarks/profile_overhead.py`` prints that.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompile.benchmarking.profile import BUILTIN_ROW, join_schedules, profile_local
from edgecompile.builder import BuildResult
from edgecompile.cli import cli

Build = Callable[..., BuildResult]


@pytest.fixture(scope="module")
def squeezenet(build_once: Build) -> BuildResult:
    return build_once("squeezenet1_1", "host", input_size=64)


def test_layer_rows_are_shares_of_their_sum_slowest_first(squeezenet: BuildResult) -> None:
    report = profile_local(str(squeezenet.artifact.directory), runs=2, warmup=1)
    assert report.layers and sum(layer.share for layer in report.layers) == pytest.approx(100)
    times = [layer.time_ms for layer in report.layers]
    assert times == sorted(times, reverse=True)
    assert sum(times) == pytest.approx(report.layer_sum_ms)
    assert report.end_to_end_ms > 0 and report.runs == 2
    assert len({layer.name for layer in report.layers}) == len(report.layers)


def test_json_rows_are_joined_to_the_manifest_schedules(squeezenet: BuildResult) -> None:
    result = CliRunner().invoke(
        cli, ["profile", str(squeezenet.artifact.directory), "--runs", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {row["name"]: row for row in report["layers"]}
    assert set(report) >= {"layers", "layer_sum_ms", "end_to_end_ms", "model", "notes"}
    # Fire modules: squeeze and expand1x1 are pointwise (our schedule), the stem and expand3x3
    # dense convs; each kernel gets the entry of its own kind.
    convs = [row for row in rows.values() if row["op"] == "conv"]
    assert convs and all(row["matched"] for row in convs)
    pointwise = [row for name, row in rows.items() if "pointwise" in name]
    assert pointwise and all(row["schedule"] == "edgecompile.pointwise_nchwc" for row in pointwise)
    assert all(row["op"] == "pointwise" for row in pointwise)
    pools = [row for name, row in rows.items() if "pool" in name]
    assert pools and all(row["op"] == "pool" and row["matched"] for row in pools)
    assert not rows[BUILTIN_ROW]["matched"]
    layout = [row for name, row in rows.items() if "concatenate" in name or "unpack" in name]
    assert layout and not any(row["matched"] for row in layout)  # glue has no schedule entry
    schedules = squeezenet.artifact.manifest.schedules
    matched_calls = sum(row["calls"] for row in rows.values() if row["matched"])
    assert matched_calls == len(schedules)


def test_table_marks_unmatched_rows_and_prints_the_sum(squeezenet: BuildResult) -> None:
    result = CliRunner().invoke(cli, ["profile", str(squeezenet.artifact.directory), "--runs", "2"])
    assert result.exit_code == 0, result.output
    assert "- (unmatched)" in result.output
    assert "sum of kernels" in result.output and "end-to-end median" in result.output


def test_join_schedules_matches_by_order_within_a_kind() -> None:
    schedules = [
        {"op": "conv2d", "kind": "conv", "schedule": "a"},
        {"op": "pool", "kind": "pool", "schedule": "p"},
        {"op": "conv2d", "kind": "pointwise", "schedule": "b"},
    ]
    names = ["fused_conv2d_relu", "pack_nchwc", "max_pool2d", "fused_pointwise_nchwc_relu1", "x"]
    joined = join_schedules(names, schedules)
    assert {i: e["schedule"] for i, e in joined.items()} == {0: "a", 2: "p", 3: "b"}


def test_a_transposed_conv_does_not_take_a_conv_entry() -> None:
    schedules = [
        {"op": "conv2d", "kind": "pointwise", "schedule": "a"},
        {"op": "conv2d_transpose", "kind": "conv2d_transpose", "schedule": "t"},
        {"op": "conv2d", "kind": "conv", "schedule": "b"},
    ]
    names = ["fused_pointwise_nchwc_relu", "fused_conv2d_transpose_prelu", "conv_nchwc1"]
    joined = join_schedules(names, schedules)
    assert {i: e["schedule"] for i, e in joined.items()} == {0: "a", 1: "t", 2: "b"}


def test_a_model_is_built_then_profiled(tiny_onnx: Path, tmp_path: Path) -> None:
    report = profile_local(str(tiny_onnx), runs=2, output_dir=tmp_path)
    assert report.model == "tiny" and any(layer.matched for layer in report.layers)
