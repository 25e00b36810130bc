"""Board presets and the ``--target`` chain: preset name → preset file → TVM tag → raw JSON."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import pytest
import tvm

from edgecompile.errors import EdgecompileError
from edgecompile.targets import (
    HOST,
    PRESETS_FILE,
    BoardPreset,
    host_preset,
    list_presets,
    load_preset_file,
    resolve_target,
)

PRESETS = list_presets()
PRESET_IDS = [preset.name for preset in PRESETS]
HOST_MACHINE = {"arm64": "aarch64", "amd64": "x86_64"}.get(
    platform.machine().lower(), platform.machine().lower()
)
# The boards the presets file promises, by name; any new preset is checked against TVM below.
KNOWN_ARCH = {
    "rpi3": "aarch64",
    "rpi3-armv7": "arm",
    "rpi4": "aarch64",
    "rpi4-armv7": "arm",
    "rpi5": "aarch64",
    "jetson-nano-cpu": "aarch64",
    "aarch64": "aarch64",
    "armv7": "arm",
    "x86-64-v2": "x86_64",
    "x86-64-v3": "x86_64",
    HOST: HOST_MACHINE,
}


def one_line_error(excinfo: pytest.ExceptionInfo[EdgecompileError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def test_presets_file_and_host_are_all_listed() -> None:
    names = [preset.name for preset in PRESETS]
    assert len(names) == len(set(names))
    assert set(load_preset_file(PRESETS_FILE)) | {HOST} == set(names)
    assert {"rpi4", "rpi4-armv7", HOST} <= set(names)


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_preset_resolves_by_name(preset: BoardPreset) -> None:
    assert resolve_target(preset.name) == preset


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_tvm_target_matches_preset(preset: BoardPreset) -> None:
    target = preset.tvm_target()
    assert isinstance(target, tvm.target.Target)
    assert target.kind.name == preset.target["kind"] == "llvm"
    assert str(target.attrs["mtriple"]) == preset.target["mtriple"] == preset.triple
    assert str(target.attrs["mcpu"]) == preset.target["mcpu"]
    assert int(target.attrs["num-cores"]) == preset.target["num-cores"]
    assert preset.threads >= 1
    # The preset's JSON form round-trips (it is what `targets --json` and manifests carry).
    assert json.loads(json.dumps(preset.to_dict()))["target"] == dict(preset.target)


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_arch_per_preset(preset: BoardPreset) -> None:
    assert preset.name in KNOWN_ARCH, f"new preset {preset.name}: add its architecture above"
    assert preset.arch == KNOWN_ARCH[preset.name]
    target = preset.tvm_target()
    if "arm_cpu" in target.keys:
        # TVM derives this from the triple itself: an independent opinion on 64- vs 32-bit.
        assert bool(target.attrs["feature.is_aarch64"]) == (preset.arch == "aarch64")
    assert preset.is_host == (preset.arch == HOST_MACHINE)


@pytest.mark.parametrize(
    "preset", [p for p in PRESETS if p.tvm_tag], ids=[p.name for p in PRESETS if p.tvm_tag]
)
def test_preset_tvm_tag_is_the_same_board(preset: BoardPreset) -> None:
    assert preset.tvm_tag in tvm.target.tag.list_tags()
    tagged = resolve_target(preset.tvm_tag)
    assert tagged.arch == preset.arch, f"{preset.tvm_tag} is a {tagged.arch} board"
    if "mcpu" in tagged.target:
        assert tagged.target["mcpu"] == preset.target["mcpu"]


def test_host_uses_llvms_real_cpu_name() -> None:
    host = resolve_target(HOST)
    assert host is host_preset()
    detected = str(tvm.target.codegen.llvm_get_system_cpu())
    assert host.target["mcpu"] == detected
    assert str(host.tvm_target().attrs["mcpu"]) == detected
    if HOST_MACHINE == "x86_64":
        assert detected not in ("", "native", "generic", "x86-64")
    assert host.arch == HOST_MACHINE
    assert host.is_host
    assert host.threads >= 1


# --- the chain ---------------------------------------------------------------------------------

BOARD_TOML = """
[myboard]
description = "A Cortex-A55 board"
threads = 2
rpc_key = "mine"
target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a55", mattr = ["+neon"], num-cores = 2 }
"""  # noqa: E501


def test_user_toml_file_becomes_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text(BOARD_TOML)
    preset = resolve_target(str(path))
    assert (preset.name, preset.threads, preset.rpc_key) == ("myboard", 2, "mine")
    assert preset.source == str(path)
    assert preset.target["mcpu"] == "cortex-a55"
    assert preset.arch == "aarch64"
    assert not preset.is_host or HOST_MACHINE == "aarch64"
    assert str(preset.tvm_target().attrs["mcpu"]) == "cortex-a55"


def test_user_preset_file_without_toml_suffix(tmp_path: Path) -> None:
    path = tmp_path / "board.conf"
    path.write_text(BOARD_TOML)
    assert resolve_target(str(path)).name == "myboard"


def test_user_preset_file_with_two_boards_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text(BOARD_TOML + BOARD_TOML.replace("[myboard]", "[other]"))
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(str(path))
    message = one_line_error(excinfo)
    assert "myboard" in message and "other" in message


@pytest.mark.parametrize("tag", ["raspberry-pi/4b-aarch64", "arm/rasp3b"])
def test_tvm_tag_becomes_a_preset(tag: str) -> None:
    preset = resolve_target(tag)
    reference = tvm.target.Target(tag)
    assert preset.tvm_tag == tag
    assert preset.triple == str(reference.attrs["mtriple"])
    if "mcpu" in reference.attrs:
        assert preset.target["mcpu"] == str(reference.attrs["mcpu"])
    expected_arch = "aarch64" if bool(reference.attrs["feature.is_aarch64"]) else "arm"
    assert preset.arch == expected_arch
    assert "/" not in preset.name  # it names the artifact folder
    assert str(preset.tvm_target().attrs["mtriple"]) == preset.triple


def test_raw_json_becomes_a_preset() -> None:
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "num-cores": 3}
    preset = resolve_target(json.dumps(spec))
    assert dict(preset.target) == spec
    assert preset.threads == 3
    assert preset.arch == "aarch64"
    assert str(preset.tvm_target().attrs["mcpu"]) == "cortex-a53"


@pytest.mark.parametrize(
    "spec",
    [
        '{"kind": "llvm", "mtriple": "armv7l-linux-gnueabihf", "mcpu": "cortex-a72"}',
        "llvm -mtriple=armv7l-linux-gnueabihf -mcpu=cortex-a7 -mattr=+neon",
    ],
)
def test_a_hard_float_triple_gets_the_hard_float_abi(spec: str) -> None:
    """Without it LLVM passes floats to libm in integer registers and a hard-float board's
    libm reads garbage (int8 requantization's nearbyintf on armv7 was wrong in 223 of 425)."""
    preset = resolve_target(spec)
    assert preset.target["mfloat-abi"] == "hard"
    assert str(preset.tvm_target().attrs["mfloat-abi"]) == "hard"


def test_a_soft_float_triple_keeps_its_abi() -> None:
    preset = resolve_target('{"kind": "llvm", "mtriple": "armv7l-linux-gnueabi"}')
    assert "mfloat-abi" not in preset.target


def test_long_raw_json_is_not_taken_for_a_file_name() -> None:
    """A full target as `targets --json` prints it runs past NAME_MAX (255 bytes)."""
    spec = {**resolve_target("rpi5").target, "keys": ["arm_cpu", "cpu"]}
    text = json.dumps(spec, indent=16)
    assert len(text.encode()) > 255
    preset = resolve_target(text)
    assert preset.target["mcpu"] == spec["mcpu"]


def test_json_without_triple_is_this_machine() -> None:
    """``{"kind": "llvm"}`` compiles for LLVM's default triple: this machine."""
    preset = resolve_target('{"kind": "llvm"}')
    assert preset.arch == HOST_MACHINE
    assert preset.is_host


@pytest.mark.parametrize("vendor", ["pc", "unknown"])
def test_host_triple_with_a_vendor_is_still_the_host(vendor: str) -> None:
    preset = resolve_target(
        json.dumps({"kind": "llvm", "mtriple": f"{HOST_MACHINE}-{vendor}-linux-gnu"})
    )
    assert preset.is_host


def test_unknown_target_lists_every_preset() -> None:
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target("no-such-board")
    message = one_line_error(excinfo)
    assert "no-such-board" in message
    for preset in PRESETS:
        assert preset.name in message


# --- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[board\ntarget = 1\n", "not valid TOML"),
        ("[b]\ncolour = 'red'\ntarget = { kind = 'llvm' }\n", "colour"),
        ("[b]\ndescription = 'no target'\n", "no target table"),
        ("[b]\ntarget = { mtriple = 'aarch64-linux-gnu' }\n", "'kind'"),
        ("[b]\nthreads = 'four'\ntarget = { kind = 'llvm' }\n", "threads"),
        ("[b]\nthreads = 0\ntarget = { kind = 'llvm' }\n", "threads"),
        ("kind = 'llvm'\n", "not a table"),
        ("# nothing here\n", "defines no board"),
        ("[b]\ntarget = { kind = 'no-such-kind' }\n", "no-such-kind"),
        # Table names become folders (build -o OUT writes OUT/<model>-<name>/).
        ("['../../x']\ntarget = { kind = 'llvm' }\n", "preset name '../../x'"),
        ("['.hidden']\ntarget = { kind = 'llvm' }\n", "starts with '.'"),
        ("['a b']\ntarget = { kind = 'llvm' }\n", "preset name 'a b'"),
        ("[b]\ntarget = { kind = 'llvm', mcpu = 1979-05-27 }\n", "target value 'mcpu'"),
        ("[b]\ndescription = { a = 1 }\ntarget = { kind = 'llvm' }\n", "description must"),
        ("[b]\ntoolchain = 3\ntarget = { kind = 'llvm' }\n", "toolchain must"),
        # Before: TVM's ARM target parser crashed the process (SIGSEGV), found by fuzzing.
        ("[b]\ntarget = { kind = 'llvm', mtriple = 'aarch64linux-gnu' }\n", "ARM architecture"),
        ("[b]\nx = " + "[" * 100_000, "not valid TOML"),  # RecursionError in tomllib
    ],
    ids=[
        "malformed",
        "unknown-key",
        "no-target",
        "no-kind",
        "threads-text",
        "threads-zero",
        "not-a-table",
        "empty",
        "tvm-rejects",
        "name-climbs-out",
        "name-hidden",
        "name-with-space",
        "date-value",
        "description-table",
        "toolchain-number",
        "arm-triple-tvm-crashes-on",
        "nested-too-deep",
    ],
)
def test_bad_preset_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "board.toml"
    path.write_text(text)
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(str(path))
    message = one_line_error(excinfo)
    assert expected in message
    assert str(path) in message


def test_preset_file_not_utf8(tmp_path: Path) -> None:
    """Before: UnicodeDecodeError with a traceback."""
    path = tmp_path / "board.toml"
    path.write_bytes(b"[b]\ndescription = '\xff\xfe'\ntarget = { kind = 'llvm' }\n")
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(str(path))
    assert "not UTF-8" in one_line_error(excinfo)


def test_preset_file_that_is_a_folder(tmp_path: Path) -> None:
    """Before: IsADirectoryError with a traceback."""
    folder = tmp_path / "x.toml"
    folder.mkdir()
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(str(folder))
    assert "is a folder" in one_line_error(excinfo)


def test_preset_file_errors_on_the_command_line(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    (tmp_path / "x.toml").mkdir()
    (tmp_path / "bad.toml").write_bytes(b"[b]\xff\n")
    for name in ("x.toml", "bad.toml"):
        line = cli_error(["build", "mobilenet_v2", "--target", str(tmp_path / name)])
        assert name in line


def test_missing_preset_file(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="does not exist"):
        resolve_target(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"kind": "llvm", ', "does not parse"),
        ('{"mtriple": "aarch64-linux-gnu"}', "'kind'"),
        ('{"kind": "no-such-kind"}', "TVM rejects"),
        ('{"kind": "llvm", "num-cores": "four"}', "threads"),
        ('{"kind": "llvm", "mtriple": "armab-linux"}', "unknown ARM architecture 'armab'"),
    ],
    ids=["truncated", "no-kind", "tvm-rejects", "bad-cores", "arm-triple-tvm-crashes-on"],
)
def test_bad_target_json(text: str, expected: str) -> None:
    with pytest.raises(EdgecompileError) as excinfo:
        resolve_target(text)
    assert expected in one_line_error(excinfo)
