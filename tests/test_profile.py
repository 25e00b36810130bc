"""``edgecompile profile``: per-kernel times from the instrumented Relax VM, joined to schedules.

No timing is asserted here (how close the per-layer sum comes to the end-to-end time depends on
the machine's load): ``benchmarks/profile_overhead.py`` prints that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompile.benchmarking.profile import (
    BUILTIN_ROW,
    join_schedules,
    precision_of,
    profile_local,
)
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


def test_precision_of_tells_integer_kernels_from_fp32_glue_and_conversions() -> None:
    # An integer conv: uint8 data and int8 weights in (its 1-D bias and float multipliers are
    # left out by the caller), uint8 out.
    assert precision_of(["uint8", "int8"], "uint8") == "int8"
    assert precision_of(["float32"], "float32") == "fp32"
    assert precision_of(["float32"], "uint8") == "fp32->int8"  # a quantize
    assert precision_of(["uint8", "int8"], "float32") == "int8->fp32"  # a dequantize fused in
    assert precision_of(["uint8", "float32"], "float32") == "mixed"
    assert precision_of([], "uint8") == "int8"  # nothing but constants read


def test_the_int8_build_of_a_model_is_profiled_with_its_integer_kernels_marked(
    tmp_path: Path,
) -> None:
    """``profile MODEL --int8``: quantized and built as ``build --int8`` does, then profiled;
    the folded convs are integer rows, the input's quantize a conversion."""
    from .test_quantize import write_classifier

    model = write_classifier(tmp_path / "classifier.onnx")
    result = CliRunner().invoke(
        cli,
        ["profile", str(model), "--int8", "--runs", "2", "-o", str(tmp_path / "out"), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["artifact"].endswith("classifier-int8-host")
    rows = {row["name"]: row for row in report["layers"]}
    integer = [row for row in rows.values() if row["schedule"] and "int8" in row["schedule"]]
    # Both convs and the classifier's matmul folded; each reads integers (its output, or a
    # dequantize fused after it, as the next op reads it).
    assert len(integer) == 3
    assert all(row["precision"] in ("int8", "int8->fp32") for row in integer)
    assert any(row["precision"] == "int8" for row in integer)
    assert any(row["precision"] == "fp32->int8" for row in rows.values())  # the input
    assert rows[BUILTIN_ROW]["precision"] is None

    table = CliRunner().invoke(
        cli, ["profile", report["artifact"], "--runs", "1"], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    assert "precision" in table.output.splitlines()[1]
    shares = re.search(r"kernel time by precision .*: (.*)", table.output)
    assert shares is not None
    percents = [float(p) for p in re.findall(r"([\d.]+)%", shares.group(1))]
    assert sum(percents) == pytest.approx(100, abs=0.5)


def test_an_fp32_profile_has_no_precision_column(squeezenet: BuildResult) -> None:
    result = CliRunner().invoke(
        cli, ["profile", str(squeezenet.artifact.directory), "--runs", "1"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "precision" not in result.output


def test_profile_int8_mistakes_are_one_line(
    squeezenet: BuildResult, tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    artifact = str(squeezenet.artifact.directory)
    assert "is a build already" in cli_error(["profile", artifact, "--int8"])
    photos = tmp_path / "photos"
    photos.mkdir()
    assert "--calibration is for int8" in cli_error(
        ["profile", "squeezenet1_1", "--calibration", str(photos)]
    )
