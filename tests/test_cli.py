"""The command line: ``targets``, ``build``, ``run``; one ``Error:`` line (exit 2) for mistakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgecompile.builder import BuildResult
from edgecompile.cli import cli, main
from edgecompile.runner import run
from edgecompile.targets import list_presets, resolve_target

Build = Callable[..., BuildResult]


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def fails_cleanly(
    argv: list[str], capsys: pytest.CaptureFixture[str], *, expected: str, code: int = 2
) -> str:
    """``main(argv)`` exits with ``code`` after printing exactly one ``Error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in captured.err + captured.out
    assert expected in lines[0]
    return lines[0]


# --- targets ------------------------------------------------------------------------------------


def test_targets_table_lists_every_preset() -> None:
    output = invoke("targets").stdout
    rows = {line.split()[0]: line for line in output.splitlines()[1:] if line.strip()}
    for preset in list_presets():
        assert preset.name in rows
        assert preset.triple in rows[preset.name]
    assert "L1 32K L2 1M/4" in rows["rpi4"]  # the caches the schedules plan with


def test_targets_json_has_the_caches() -> None:
    from edgecompile.schedules.cpu import SOC_CACHES

    payload = {entry["name"]: entry for entry in json.loads(invoke("targets", "--json").stdout)}
    assert payload["rpi4"]["caches"] == [level._asdict() for level in SOC_CACHES["bcm2711"]]


def test_targets_json_is_every_preset_in_full() -> None:
    payload = json.loads(invoke("targets", "--json").stdout)
    presets = list_presets()
    assert [entry["name"] for entry in payload] == [p.name for p in presets]
    for entry, preset in zip(payload, presets, strict=True):
        assert entry["target"] == dict(preset.target)
        assert entry["threads"] == preset.threads


def test_main_returns_normally_on_success(capsys: pytest.CaptureFixture[str]) -> None:
    main(["targets", "--json"])  # no SystemExit
    assert json.loads(capsys.readouterr().out)


# --- build → run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cli-build")
    result = invoke("build", "squeezenet1_1", "--target", "host", "-o", str(out), "--tar", "--json")
    payload = json.loads(result.stdout)
    payload["output_dir"] = out
    return payload


def test_build_json_reports_the_artifact(built: dict[str, Any]) -> None:
    directory = Path(built["directory"])
    assert directory == built["output_dir"] / "squeezenet1_1-host"
    assert (directory / "squeezenet1_1.so").is_file()
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert {key: built[key] for key in on_disk} == on_disk
    assert built["verification"]["status"] == "passed"
    assert built["verification"]["max_relative_error"] <= 1e-4
    assert Path(built["archive"]).is_file()
    assert Path(built["archive"]).name == "squeezenet1_1-host.tar.gz"


def test_no_custom_schedules_leaves_every_op_to_tvm(built: dict[str, Any], tmp_path: Path) -> None:
    ours = {op["schedule"] for op in built["schedules"]}
    assert any(name.startswith("edgecompile.") for name in ours)
    payload = json.loads(
        invoke(
            "build", "squeezenet1_1", "-o", str(tmp_path), "--no-custom-schedules", "--json"
        ).stdout
    )
    assert {op["schedule"] for op in payload["schedules"]} == {"tvm-default"}
    assert payload["verification"]["status"] == "passed"


def test_run_json_reports_the_output(built: dict[str, Any]) -> None:
    payload = json.loads(invoke("run", built["directory"], "--json").stdout)
    (out,) = payload["outputs"]
    assert out["shape"] == built["outputs"][0]["shape"]
    assert out["dtype"] == "float32"
    (expected,) = run(built["directory"], seed=0).outputs
    assert out["argmax"] == int(expected.argmax())
    assert out["min"] == pytest.approx(float(expected.min()))
    assert out["max"] == pytest.approx(float(expected.max()))
    assert payload["seconds"] > 0 and payload["saved"] is None


def test_run_output_npy_matches_the_reported_shape(built: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "y.npy"
    payload = json.loads(
        invoke("run", built["directory"], "--output", str(target), "--json").stdout
    )
    saved = np.load(target)
    assert list(saved.shape) == payload["outputs"][0]["shape"]
    assert payload["saved"] == str(target)
    np.testing.assert_array_equal(saved, run(built["directory"], seed=0).outputs[0])


def test_run_with_input_files(built: dict[str, Any], tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / "y.npy"
    invoke("run", built["directory"], "--input", str(tmp_path / "x.npy"), "--output", str(target))
    np.testing.assert_array_equal(np.load(target), run(built["directory"], [x]).outputs[0])


def test_run_text_output(built: dict[str, Any]) -> None:
    output = invoke("run", built["directory"]).stdout
    shape = "x".join(map(str, built["outputs"][0]["shape"]))
    assert f"output 0: float32 {shape}" in output


# --- errors: one line, exit 2 -------------------------------------------------------------------


def test_unknown_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails_cleanly(
        ["build", "squeezenet9_9", "-o", str(tmp_path)], capsys, expected="squeezenet9_9"
    )
    assert "unknown model" in line
    assert list(tmp_path.iterdir()) == []


def test_unknown_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails_cleanly(
        ["build", "squeezenet1_1", "--target", "rpi9", "-o", str(tmp_path)],
        capsys,
        expected="unknown target 'rpi9'",
    )
    for preset in list_presets():
        assert preset.name in line


@pytest.mark.parametrize("size", ["abc", "0", "3x4x5", "8"])
def test_bad_input_size(size: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    expected = "cannot run at input size" if size == "8" else "bad input size"
    fails_cleanly(
        ["build", "squeezenet1_1", "--input-size", size, "-o", str(tmp_path)],
        capsys,
        expected=expected,
    )
    assert list(tmp_path.iterdir()) == []


def test_missing_cc_compiler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # surely not installed
    fails_cleanly(
        ["build", "squeezenet1_1", "--target", "rpi4", "--cc", "aarch64-linux-gnu-g++"],
        capsys,
        expected="apt-get install g++-aarch64-linux-gnu",
    )


def test_run_on_a_folder_without_manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fails_cleanly(["run", str(tmp_path)], capsys, expected="no manifest.json")


def test_run_an_arm_library_here(
    capsys: pytest.CaptureFixture[str], build_once: Build, tiny_onnx: Path
) -> None:
    artifact = build_once(str(tiny_onnx), "rpi4").artifact
    if artifact.manifest.arch == resolve_target("host").arch:
        pytest.skip("this machine is aarch64")
    fails_cleanly(["run", str(artifact.directory)], capsys, expected="aarch64")


def test_run_with_a_wrong_input(
    capsys: pytest.CaptureFixture[str], built: dict[str, Any], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    fails_cleanly(
        ["run", built["directory"], "--input", str(tmp_path / "x.npy")],
        capsys,
        expected="(1, 3, 224, 224)",
    )


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["build"])
    assert excinfo.value.code == 2
    assert "Missing argument" in capsys.readouterr().err


def test_board_options_on_a_run_here_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = fails_cleanly(
        ["run", str(tmp_path), "--rpc-key", "rpi4", "--accept-new-host-key", "--remote-dir", "x"],
        capsys,
        expected="--rpc-key, --accept-new-host-key, --remote-dir: options for running on a board",
    )
    assert "add --device, --rpc or --tracker" in line


# --- the package: shared options once, one BoardAccess, examples everywhere -------------------


def _commands() -> dict[str, Any]:
    """Every command by its full name ("records show"), groups included."""
    import click

    found: dict[str, Any] = {}

    def walk(command: click.Command, name: str) -> None:
        found[name] = command
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                walk(sub, f"{name} {sub_name}".strip())

    walk(cli, "")
    return found


def test_every_help_has_examples() -> None:
    missing = [
        name
        for name in _commands()
        if "Examples:" not in CliRunner().invoke(cli, [*name.split(), "--help"]).stdout
    ]
    assert missing == []


@pytest.mark.parametrize(
    "option", ["--json", "--input-size", "--accept-new-host-key", "--identity", "--seed"]
)
def test_a_shared_option_has_one_help_text(option: str) -> None:
    helps = {
        name: param.help
        for name, command in _commands().items()
        for param in command.params
        if option in getattr(param, "opts", ())
    }
    assert len(helps) >= 2, helps
    assert len(set(helps.values())) == 1, helps


def test_board_options_become_one_board_access() -> None:
    import click

    from edgecompile.cli.options import board_access
    from edgecompile.device.access import BoardAccess

    seen: list[Any] = []

    @click.command()
    @click.argument("device")
    @board_access("identity", "accept_new_host_key")
    @click.option("--venv", default="v")
    def setup(access: BoardAccess, venv: str) -> None:
        seen.append((access, venv))

    @click.command()
    @board_access(required=("device",))
    def deploy(access: BoardAccess) -> None:
        seen.append(access)

    runner = CliRunner()
    assert runner.invoke(setup, ["pi@board", "-i", "key", "--venv", "w"]).exit_code == 0
    assert seen.pop() == (BoardAccess(device="pi@board", identity="key"), "w")
    result = runner.invoke(deploy, ["--rpc", "h:1", "--remote-python", "py", "--device", "d"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == BoardAccess(device="d", rpc="h:1", remote_python="py")
    missing = runner.invoke(deploy, ["--rpc", "h:1"])
    assert missing.exit_code == 2 and "Missing option '--device'" in missing.output


def test_command_modules_import_only_the_leaf_of_the_cli_package() -> None:
    """app.py adds the commands; they import nothing of the package but options.py."""
    import ast

    import edgecompile.cli

    package = Path(edgecompile.cli.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name in ("__init__.py", "app.py"):
            continue
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        from_cli = {name for name in imported if name.split(".")[:2] == ["edgecompile", "cli"]}
        allowed = set() if path.name == "options.py" else {"edgecompile.cli.options"}
        assert from_cli <= allowed, (path.name, from_cli)
