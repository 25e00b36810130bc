"""``edgecompile device setup``: preparing a board's venv with the host's exact TVM.

The checks run as unit tests on fake probe results (a board without python3, an armv7l or
x86 board); the rest runs against the emulated rpi4 of ``conftest.emulated_board``. A real
install into a fresh venv takes far too long under qemu, so the install is tested by its
failure path: pip pointed at an index on a closed port of 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecompile.device import setup
from edgecompile.device.access import BoardAccess
from edgecompile.device.ssh import CommandResult
from edgecompile.errors import EdgecompileError

emulator = pytest.mark.emulator
TVM, FFI, MINIMUM = setup.host_versions()

# --------------------------------------------------------------------------------------------
# no board needed


def test_check_arch_accepts_64_bit_arm() -> None:
    assert "aarch64" in setup.check_arch("aarch64", 64, TVM, "pi@board:22")
    assert "aarch64" in setup.check_arch("aarch64", None, TVM, "pi@board:22")


@pytest.mark.parametrize(("machine", "bits"), [("armv7l", 32), ("aarch64", 32), ("armv6l", 32)])
def test_check_arch_explains_32_bit_arm(machine: str, bits: int) -> None:
    with pytest.raises(EdgecompileError, match=r"no apache-tvm .* wheel for 32-bit ARM") as raised:
        setup.check_arch(machine, bits, TVM, "pi@board:22")
    assert "from source" in (raised.value.fix or "")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("machine", ["x86_64", "riscv64", "unknown"])
def test_check_arch_refuses_other_machines(machine: str) -> None:
    with pytest.raises(EdgecompileError, match=f"is {machine}, not an ARM board"):
        setup.check_arch(machine, 64, TVM, "pi@board:22")


def test_check_python() -> None:
    assert setup.check_python("/usr/bin/python3", "3.11.2", (3, 10), "b") == (
        "Python 3.11.2 at /usr/bin/python3"
    )
    with pytest.raises(EdgecompileError, match="has no python3") as raised:
        setup.check_python(None, None, (3, 10), "pi@board:22")
    assert "apt install python3" in (raised.value.fix or "")
    with pytest.raises(EdgecompileError, match=r"Python 3\.9\.2 .* needs Python >= 3\.10"):
        setup.check_python("/usr/bin/python3", "3.9.2", (3, 10), "pi@board:22")


def test_packages_missing() -> None:
    good = {"apache-tvm": TVM, "apache-tvm-ffi": FFI, "numpy": "2.0.0"}
    assert setup.packages_missing(good, TVM, FFI) == []
    assert setup.packages_missing(None, TVM, FFI) == [
        "apache-tvm missing",
        "apache-tvm-ffi missing",
        "numpy missing",
    ]
    assert setup.packages_missing({**good, "apache-tvm": "0.26.0"}, TVM, FFI) == [
        f"apache-tvm 0.26.0 (need {TVM})"
    ]


class _FakeBoard:
    """Answers the inspection script with canned sections; records every command."""

    class settings:  # mimics BoardConnection.settings
        label = "pi@fake:22"

    def __init__(self, **sections: str) -> None:
        base = {"home": "/home/pi", "machine": "aarch64", "python3": "/usr/bin/python3",
                "pyver": "3.11.2 64", "venvmod": "yes", "exists": "no", "venv": ""}  # fmt: skip
        base.update(sections)
        self.output = "".join(f"@@{name}\n{value}\n" for name, value in base.items())
        self.commands: list[str] = []

    def check(self, command: str, what: str, fix: str, **_: Any) -> str:
        self.commands.append(command)
        return self.output

    def run(self, command: str, **_: Any) -> CommandResult:
        self.commands.append(command)
        return CommandResult(0, "", "")


@pytest.mark.parametrize(
    ("sections", "failed", "message"),
    [
        ({"machine": "armv7l", "pyver": "3.11.2 32"}, "architecture", "32-bit ARM"),
        ({"machine": "x86_64"}, "architecture", "not an ARM board"),
        ({"python3": "", "pyver": ""}, "python3", "has no python3"),
        ({"venvmod": "no"}, "venv", "sudo apt install python3-venv"),
        ({"exists": "yes"}, "venv", "not a working venv"),
    ],
)
def test_setup_refuses_before_changing_anything(
    sections: dict[str, str], failed: str, message: str
) -> None:
    board = _FakeBoard(**sections)
    steps: list[setup.SetupStep] = []
    with pytest.raises(EdgecompileError, match=message):
        setup.setup_on(board, on_step=steps.append)  # type: ignore[arg-type]
    assert (steps[-1].name, steps[-1].status) == (failed, setup.FAILED)
    assert len(board.commands) == 1  # only the (read-only) inspection ran


# --------------------------------------------------------------------------------------------
# the emulated board


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}  # its own ~/.ssh/known_hosts
    return subprocess.run(
        [sys.executable, "-c", "from edgecompile.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@emulator
def test_complete_venv_is_already_fine(
    emulated_board: Any, client_key: Path, trusted_known_hosts: Path, rootfs: Path
) -> None:
    from edgecompile.device.emulator import VENV

    marker = rootfs / VENV.lstrip("/") / "pyvenv.cfg"
    before = marker.stat().st_mtime_ns
    report = setup.setup_device(
        BoardAccess(
            device=emulated_board.device, identity=client_key, known_hosts=trusted_known_hosts
        ),
        venv=VENV,
    )
    assert report.ready and not report.changed
    assert [s.name for s in report.steps] == [
        "connect", "python3", "architecture", "venv", "packages", "verify",
    ]  # fmt: skip
    assert {s.status for s in report.steps} == {setup.ALREADY}
    assert f"apache-tvm=={TVM}" in report.steps[4].detail
    assert f"TVM {TVM.split('.post')[0]}" in report.steps[5].detail
    assert marker.stat().st_mtime_ns == before


@emulator
def test_dry_run_plans_without_touching_the_board(
    emulated_board: Any, client_key: Path, rootfs: Path, tmp_path: Path
) -> None:
    name = f"edgecompile-tests/setup-dry-{secrets.token_hex(3)}/venv"
    result = _cli(
        "device", "setup", emulated_board.device, "--identity", str(client_key),
        "--accept-new-host-key", "--venv", f"~/{name}", "--dry-run", "--json",
        home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] and not report["changed"] and not report["ready"]
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["venv"] == {"name": "venv", "status": "planned",
                             "detail": f"python3 -m venv ~/{name}"}  # fmt: skip
    assert steps["packages"]["status"] == "planned"
    assert f"apache-tvm=={TVM} apache-tvm-ffi=={FFI} numpy" in steps["packages"]["detail"]
    assert steps["verify"]["status"] == "planned"
    assert not emulated_board.host_path(f"{emulated_board.home}/{name}").parent.exists()

    text = _cli(
        "device", "setup", emulated_board.device, "--identity", str(client_key),
        "--venv", f"~/{name}", "--dry-run", home=tmp_path,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "dry run: nothing was changed on the board" in text.stdout
    assert "planned" in text.stdout
    assert not emulated_board.host_path(f"{emulated_board.home}/{name}").parent.exists()


@emulator
def test_failed_install_is_one_line_and_leaves_no_half_venv(
    emulated_board: Any, client_key: Path, rootfs: Path, tmp_path: Path
) -> None:
    name = f"edgecompile-tests/setup-fail-{secrets.token_hex(3)}"
    result = _cli(
        "device", "setup", emulated_board.device, "--identity", str(client_key),
        "--accept-new-host-key", "--venv", f"~/{name}",
        "--index-url", "http://127.0.0.1:9/simple", home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"Error: pip install apache-tvm=={TVM} ")
    assert "removed the half-made" in error[0]
    assert "--index-url" in error[0]
    # the steps printed as they ran: the venv was made, the packages failed
    assert "venv          done" in result.stdout
    assert "packages      failed" in result.stdout
    assert "is ready" not in result.stdout
    assert not emulated_board.host_path(f"{emulated_board.home}/{name}").exists()
