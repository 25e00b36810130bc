"""``edgecompile build --explain`` (the per-layer schedule table and its summary line) and
``--schedules DIR`` on the command line: its errors are one ``Error:`` line, exit code 2.

The model is a 3×3/2 average pool on a 16-channel NCHW input (no rule of ours claims it) and a
1×1 conv + ReLU (our pointwise schedule): about a second to build, no tuning records read.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgecompile.cli import cli
from edgecompile.explain import explain_summary, format_explain, schedule_source

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "schedules"

# Gives up on every kernel it is offered, so the pointwise conv after it records why.
SHY = """
from edgecompile.schedules.user import ScheduleFailed, schedule


@schedule("shy")
def shy(func, target):
    raise ScheduleFailed("tile does not fit")
"""


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """input 1×16×16×16 → AveragePool 3×3/2 pad 1 → 1×1 conv 16→24 → ReLU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((24, 16, 1, 1)).astype("float32")
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool",
                ["input"],
                ["p"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            ),
            helper.make_node("Conv", ["p", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "explain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 24, 8, 8])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path_factory.mktemp("explain") / "explain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def table_rows(output: str) -> dict[str, list[str]]:
    """The --explain table's data rows by layer index (the row after the ``---`` rule)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer  kernel")) + 2
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_explain_without_user_schedules(model: Path, tmp_path: Path) -> None:
    output = invoke("build", str(model), "-o", str(tmp_path), "--no-records", "--explain").stdout
    rows = table_rows(output)
    assert rows["0"][1] != "-"  # the kernel name `profile` shows: the pool's own
    assert rows["1"][1].startswith("fused_pointwise")
    del rows["0"][1], rows["1"][1]
    assert rows["0"][:8] == ["0", "avg_pool", "pool", "1x16x16x16", "-", "-", "3x3", "2,2"]
    # The pool reads the image: left to TVM by design, and the fallback column says so.
    reason = ["its", "input", "is", "in", "NCHW:", "the", "model's", "input"]
    assert rows["0"][8:] == ["tvm-default", "tvm-default", *reason]
    assert rows["1"][:7] == ["1", "conv2d", "pointwise", "1x16x8x8", "24x16x1x1", "1", "1x1"]
    assert rows["1"][8:] == ["ours", "pointwise_nchwc"]
    assert output.rstrip().endswith(
        "2 ops: 1 by our schedules, 0 by user schedules, 0 by tuning records, 1 TVM default"
    )


def test_explain_with_user_schedules(model: Path, tmp_path: Path) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    shutil.copy(EXAMPLES / "nchw_pool.py", schedules)
    (schedules / "shy.py").write_text(SHY)
    output = invoke(
        "build", str(model), "-o", str(tmp_path / "out"), "--no-records",
        "--schedules", str(schedules), "--explain",
    ).stdout  # fmt: skip
    assert "verified against ONNX Runtime" in output
    assert f"user schedules scheduled 1 kernel ({schedules})" in output
    rows = {layer: cells[:1] + cells[2:] for layer, cells in table_rows(output).items()}
    assert rows["0"][8:] == ["user", "user:nchw_pool"]
    # The user rule gave up on the conv; ours ran, and the reason is in the fallback column.
    assert rows["1"][8:] == ["ours", "pointwise_nchwc", "user:shy:", "tile", "does", "not", "fit"]
    assert output.rstrip().endswith(
        "2 ops: 1 by our schedules, 1 by user schedules, 0 by tuning records, 0 TVM default"
    )


def test_profile_rows_carry_the_layer_and_kernel_explain_shows(model: Path, tmp_path: Path) -> None:
    """A slow kernel in `profile` is found in `build --explain` by its layer number."""
    output = invoke("build", str(model), "-o", str(tmp_path), "--no-records", "--explain").stdout
    explained = {layer: cells[1] for layer, cells in table_rows(output).items()}
    artifact = tmp_path / "explain-host"
    profiled = invoke("profile", str(artifact), "--runs", "1", "--warmup", "0", "--json").stdout
    kernels = {
        layer: row["name"] for row in json.loads(profiled)["layers"] for layer in row["layers"]
    }
    assert {str(layer): name for layer, name in kernels.items()} == explained
    text = invoke("profile", str(artifact), "--runs", "1", "--warmup", "0").stdout
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["layer", "kernel"]
    rows = {line.split()[1]: line.split()[0] for line in lines[3:] if line.startswith(" ")}
    assert all(rows[name] == layer for layer, name in explained.items())


def test_explain_with_json_prints_only_the_manifest(model: Path, tmp_path: Path) -> None:
    payload = json.loads(
        invoke(
            "build", str(model), "-o", str(tmp_path), "--no-records", "--schedules",
            str(EXAMPLES), "--explain", "--json",
        ).stdout
    )  # fmt: skip
    assert [op["schedule"] for op in payload["schedules"]] == [
        "user:nchw_pool",
        "edgecompile.pointwise_nchwc",
    ]
    assert payload["user_schedules"]["files"][0]["file"] == "nchw_pool.py"


def test_summary_counts_every_source() -> None:
    records: list[dict[str, Any]] = [
        {"index": 0, "op": "conv2d", "kind": "conv", "schedule": "edgecompile.conv_nchwc"},
        {"index": 1, "op": "pool", "pool": "max", "schedule": "user:nchw_pool"},
        {"index": 2, "op": "conv2d", "schedule": "metaschedule from edgecompile.pointwise_nchwc"},
        {"index": 3, "op": "matmul", "schedule": "metaschedule"},
        {"index": 4, "op": "conv2d_transpose", "schedule": "tvm-default", "fallback": "why"},
    ]
    assert [schedule_source(r["schedule"]) for r in records] == [
        "ours", "user", "records", "records", "tvm-default",
    ]  # fmt: skip
    assert explain_summary(records) == (
        "5 ops: 1 by our schedules, 1 by user schedules, 2 by tuning records, 1 TVM default"
    )
    text = format_explain(records)
    assert "max_pool" in text and "metaschedule from pointwise_nchwc" in text
    assert text.splitlines()[2].split()[:4] == ["0", "-", "conv2d", "dense"]
    assert text.splitlines()[-3].split()[-2:] == ["tvm-default", "why"]
    assert format_explain([]) == explain_summary([])


def test_missing_schedules_dir_is_one_line(
    model: Path, tmp_path: Path, cli_error: Callable[..., str]
) -> None:
    argv = ["build", str(model), "-o", str(tmp_path), "--schedules", str(tmp_path / "nope")]
    assert "does not exist" in cli_error(argv)
    assert list(tmp_path.iterdir()) == []


def test_schedules_dir_without_rules_is_one_line(
    model: Path, tmp_path: Path, cli_error: Callable[..., str]
) -> None:
    (tmp_path / "notes.py").write_text("NOTE = 'nothing registered here'\n")
    argv = ["build", str(model), "-o", str(tmp_path / "out"), "--schedules", str(tmp_path)]
    assert "no schedule registered in" in cli_error(argv)


def test_user_rule_raising_is_one_line_naming_the_file(
    model: Path, tmp_path: Path, cli_error: Callable[..., str]
) -> None:
    (tmp_path / "crash.py").write_text(
        textwrap.dedent(
            """\
            from edgecompile.schedules.user import schedule


            @schedule("crash")
            def crash(func, target):
                raise ValueError("bad split factor")
            """
        )
    )
    argv = ["build", str(model), "-o", str(tmp_path / "out"), "--no-records"]
    line = cli_error([*argv, "--schedules", str(tmp_path)])
    assert "crash.py:6" in line
    assert "user schedule 'crash'" in line and "ValueError" in line and "bad split factor" in line
