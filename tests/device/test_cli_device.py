"""The board commands as a user types them: `run --device/--rpc`, `bench`, `deploy`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.artifact import Artifact
from edgecompile.export import example_input, relative_error

pytestmark = pytest.mark.emulator


def _cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)  # its own ~/.ssh/known_hosts and ~/.ssh/config
    return subprocess.run(
        [sys.executable, "-c", "from edgecompile.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_run_device_over_ssh_from_the_cli(
    emulated_board: Any,
    client_key: Path,
    board_artifacts: Callable[..., Artifact],
    torch_reference: Callable[..., np.ndarray],
    tmp_path: Path,
) -> None:
    artifact = board_artifacts("mobilenet_v2", "rpi4")
    x = example_input(artifact.manifest.inputs[0]["shape"], seed=3)
    np.save(tmp_path / "x.npy", x)
    home = tmp_path / "home"
    home.mkdir()
    args = [
        "run", str(artifact.directory), "--device", emulated_board.device,
        "--identity", str(client_key), "--input", str(tmp_path / "x.npy"),
        "--output", str(tmp_path / "y.npy"), "--remote-dir", "~/edgecompile-tests/cli-run",
    ]  # fmt: skip

    refused = _cli(*args, home=home)
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: the host key of [127.0.0.1]:")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()

    ran = _cli(*args, "--accept-new-host-key", home=home)
    assert ran.returncode == 0, ran.stderr
    assert f"ran on {emulated_board.device} via ssh" in ran.stdout
    assert "says nothing about the real board" in ran.stderr
    assert (home / ".ssh" / "known_hosts").read_text().startswith("[127.0.0.1]:")
    y = np.load(tmp_path / "y.npy")
    assert relative_error(y, torch_reference("mobilenet_v2", x)) <= 1e-4


def test_bench_rpc_json_from_the_cli(
    emulated_board: Any, board_artifacts: Callable[..., Artifact]
) -> None:
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    result = _cli(
        "bench", str(artifact.directory), "--rpc", emulated_board.rpc,
        "--repeat", "3", "--warmup", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transport"] == "rpc" and report["repeat"] == 3
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["p90_ms"]
    assert report["board"]["machine"] == "aarch64"


def test_cli_errors_are_one_line(
    emulated_board: Any, client_key: Path, board_artifacts: Callable[..., Artifact], tmp_path: Path
) -> None:
    armv7 = board_artifacts("shufflenet_v1", "rpi4-armv7")
    cases = [
        (["run", str(armv7.directory), "--rpc", emulated_board.rpc], "32-bit ARM (armv7)"),
        (["run", str(armv7.directory), "--identity", str(client_key)], "options for running"),
        (["bench", str(armv7.directory)], "exactly one of --device"),
        (["run", str(armv7.directory), "--device", "root@127.0.0.1:1"], "refused"),
    ]
    for args, words in cases:
        result = _cli(*args, home=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], lines


def test_device_deploy_from_the_cli(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    board_artifacts: Callable[..., Artifact],
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_bytes(trusted_known_hosts.read_bytes())
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    remote = f"~/edgecompile-tests/cli-{tmp_path.name}"
    try:
        result = _cli(
            "deploy", str(artifact.directory), "--device", emulated_board.device,
            "--identity", str(client_key), "--remote-dir", remote, "--json", home=home,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["uploaded"] is True
        on_host = Path(emulated_board.rootfs) / report["library"].lstrip("/")
        assert on_host.is_file()
    finally:
        import shutil

        home = emulated_board.host_path(emulated_board.home)
        shutil.rmtree(home / remote[2:], ignore_errors=True)
