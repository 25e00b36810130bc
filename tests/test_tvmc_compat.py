"""Habits from ``tvmc``: its target strings, its option names, and ``-o`` naming a file."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgecompile.cli import cli, main
from edgecompile.cli.build import build_command
from edgecompile.cli.run import run_command
from edgecompile.errors import EdgecompileError
from edgecompile.targets import list_presets, resolve_target
from edgecompile.targets.tvmc import parse_tvmc_target

RPI4 = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "Traceback" not in err[0]
    return err[0]


def test_a_target_string_parses_into_the_json_dict() -> None:
    spec = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53 -mattr=+neon,+crc -num-cores=2"
    assert parse_tvmc_target(spec) == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a53",
        "mattr": ["+neon", "+crc"],
        "num-cores": 2,
    }


@pytest.mark.parametrize("preset", [p for p in list_presets() if p.name != "host"], ids=str)
def test_every_presets_triple_and_cpu_resolve_to_it(preset, capsys) -> None:
    target = preset.target
    spec = f"llvm -mtriple={target['mtriple']} -mcpu={target.get('mcpu', 'generic')}"
    assert resolve_target(spec).name == preset.name
    assert f"is preset {preset.name!r}" in capsys.readouterr().err


def test_a_key_the_preset_does_not_have_makes_a_custom_target_on_top_of_it(capsys) -> None:
    resolved = resolve_target(f"{RPI4} -num-cores=2")
    assert resolved.name == "custom" and resolved.threads == 2
    rpi4 = resolve_target("rpi4")
    assert dict(resolved.target) == {**rpi4.target, "num-cores": 2}  # keeps the SoC model
    assert "but for num-cores" in capsys.readouterr().err


def test_an_unknown_board_is_a_custom_target_tvm_accepts(capsys) -> None:
    resolved = resolve_target("llvm -mtriple=riscv64-linux-gnu -mattr=+m,+a,+f,+d")
    assert resolved.name == "custom"
    assert resolved.target["mattr"] == ["+m", "+a", "+f", "+d"]
    assert "matches no preset" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (f"{RPI4} -opt-level=3", "-opt-level=3"),
        (f"{RPI4} -mattr", "-mattr"),
        (f"{RPI4} -num-cores=four", "-num-cores=four"),
    ],
)
def test_an_option_we_cannot_translate_is_one_line_naming_it(spec, named) -> None:
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(spec)
    assert named in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_build_takes_a_tvmc_target(tiny_onnx: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["build", str(tiny_onnx), "--target", RPI4, "-o", str(tmp_path), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["preset"] == "rpi4" and manifest["arch"] == "aarch64"
    assert "is preset 'rpi4'" in result.stderr


def test_build_o_with_a_library_name_is_refused_before_any_work(
    tiny_onnx: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "sq.so"
    line = one_error_line(["build", str(tiny_onnx), "-o", str(output)], capsys)
    assert "folder" in line and "-o build" in line
    assert not output.exists()


def test_tvmc_option_names_are_accepted_but_not_listed(tmp_path: Path) -> None:
    build = build_command.make_context(
        "build", ["m", "--tuning-records", "recs", "--cross-compiler", "aarch64-linux-gnu-g++"]
    )
    assert build.params["records"] == "recs"
    assert build.params["cc"] == "aarch64-linux-gnu-g++"
    run = run_command.make_context("run", [str(tmp_path), "--rpc-tracker", "127.0.0.1:9190"])
    assert run.params["tracker"] == "127.0.0.1:9190"
    for command, alias, name in (
        (build_command, "--tuning-records", "--records"),
        (build_command, "--cross-compiler", "--cc"),
        (run_command, "--rpc-tracker", "--tracker"),
    ):
        text = command.get_help(click.Context(command, info_name=command.name))
        assert name in text and alias not in text
