"""The zoo-side commands: models, inspect, export — output, JSON and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgecompile.cli import cli, main
from edgecompile.zoo import list_models


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_models_table_lists_matching_models() -> None:
    code, out, _ = _invoke("models", "shufflenet_v2")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "family", "task"]
    assert sorted(line.split()[0] for line in lines[2:]) == list_models("shufflenet_v2")
    assert "2,278,604" in out  # shufflenet_v2 1.0x


def test_models_json_has_every_field() -> None:
    code, out, _ = _invoke("models", "squeezenet", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {row["name"] for row in rows} == {"squeezenet1_0", "squeezenet1_1"}
    for row in rows:
        assert set(row) >= {"name", "family", "task", "input_size", "params", "multiply_adds"}
        assert row["params"] > 1_000_000 and row["multiply_adds"] > row["params"]


def test_inspect_json_layers_add_up() -> None:
    code, out, _ = _invoke("inspect", "mobilenet_v3_small", "--json", "--input-size", "160")
    assert code == 0
    data = json.loads(out)
    assert data["input_shape"] == [1, 3, 160, 160]
    assert data["params"] == sum(layer["params"] for layer in data["layers"])
    assert data["multiply_adds"] == sum(layer["multiply_adds"] for layer in data["layers"])
    assert {f["guideline"][:2] for f in data["findings"]} == {"G1", "G2", "G3", "G4"}


def test_inspect_prints_the_summary_before_the_table() -> None:
    # `inspect MODEL | head` must show the totals and the G1-G4 findings.
    code, out, _ = _invoke("inspect", "shufflenet_v1_g8_x0_25")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("shufflenet_v1_g8_x0_25 at 1x3x224x224: ")
    assert [line.split(":")[0].strip()[:2] for line in lines[1:5]] == ["G1", "G2", "G3", "G4"]
    assert "G2 group convolution: " in lines[2] and "groups 8" in lines[2]
    header = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert header > 4


def test_inspect_table_names_ops_readably_and_memory_access_plainly() -> None:
    code, out, _ = _invoke("inspect", "mobilenet_v2")
    assert code == 0
    summary, table = out.split("\nlayer ", 1)
    header = table.splitlines()[0]
    assert header.split()[-2:] == ["mem", "access"] and "MAC" not in header
    assert "elements read + written" in summary.splitlines()[0]
    for readable in ("Conv 3×3 dw", "Conv 1×1", "BatchNorm", "ReLU6", "GlobalAvgPool", "Linear"):
        assert readable in table
    for aten in ("native_batch_norm", "_unsafe_view", "hardtanh", "addmm", "convolution"):
        assert aten not in table


def test_inspect_json_keeps_the_aten_op_beside_the_label() -> None:
    code, out, _ = _invoke("inspect", "mnasnet0_5", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "mnasnet_b1_x0_5"  # the alias names the zoo model
    first = data["layers"][0]
    assert (first["op"], first["label"]) == ("convolution", "Conv 3×3 s2")
    assert {"memory_access", "multiply_adds"} <= set(first)


def test_models_shows_and_matches_aliases() -> None:
    code, out, _ = _invoke("models", "mnasnet1_0")
    assert code == 0
    (row,) = out.strip().splitlines()[2:]
    assert row.split()[0] == "mnasnet_b1" and "mnasnet1_0" in row
    code, out, _ = _invoke("models", "mobilenet_v2", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["mobilenet_v2_x0_5"]["aliases"] == ["mobilenetv2_050"]
    assert rows["mobilenet_v2_x1_3"]["aliases"] == []


def test_models_answers_fast_without_importing_torch() -> None:
    # Counting costs once and shipping them (edgecompile/zoo/facts.json) is what makes this
    # fast; before, every call built all 72 models (23 s).
    script = (
        "import sys\n"
        "from edgecompile.cli import main\n"
        "try:\n"
        "    main(['models'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'models imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "mnasnet_b1" in done.stdout and "xception" in done.stdout
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgecompile", "models"], check=True, capture_output=True)
    assert time.perf_counter() - started < 1.5


def test_export_writes_checked_onnx(tmp_path: Path) -> None:
    path = tmp_path / "out.onnx"
    code, out, _ = _invoke("export", "squeezenet1_1", "-o", str(path), "--batch", "2", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["inputs"][0]["shape"] == [2, 3, 224, 224]
    assert report["max_relative_error"] <= 1e-4
    assert "seeded random weights" in report["weights"]
    onnx.checker.check_model(onnx.load(str(path)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "no_such_family"], "no model matches"),
        (["inspect", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
        (["inspect", "mnasnet0_75"], "did you mean mnasnet_b1, mnasnet_b1_x0_5"),
        (["export", "squeezenet1_1", "--input-size", "big"], "bad input size"),
        (["export", "squeezenet1_1", "--input-size", "7"], "cannot run at input size 7x7"),
        (["export", "squeezenet1_1", "--weights", "/nonexistent.pt"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, *(["-o", str(tmp_path / "x.onnx")] if argv[0] == "export" else [])])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
