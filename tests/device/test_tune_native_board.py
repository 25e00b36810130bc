"""#17's done-when for tuning: `tune --device` on the emulated 32-bit rpi3-armv7 board, which has
no Python, through the SSH tunnel to edgecompile's native RPC server (uploaded and started on the
board's loopback by the tunnel), writes records, and the tuned armv7 library still computes what
ONNX Runtime computes.

In the default run: a tiny pointwise model and 4 trials keep it to the emulated board's
seconds; the armhf rootfs and the armv7 native runtime come from the cache (CI's
`python -m edgecompile.device.prebuild` stage; cold: ~13 and ~9 min at load).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.device.access import BoardAccess

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def armhf_board(python_less_board: Callable[..., Any]) -> Iterator[tuple[Any, BoardAccess]]:
    """The emulated rpi3-armv7 (sshd only, no Python) and how to reach it."""
    with python_less_board(
        "rpi3-armv7",
        "arm",
    ) as running:
        yield running


def _pointwise_onnx(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "tune_tests", Path(__file__).parents[1] / "test_tune.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_pointwise_onnx(path)


def test_tune_device_on_a_python_less_armv7_board_uses_the_native_server(
    armhf_board: tuple[Any, BoardAccess], free_ports: Callable[[], int], tmp_path: Path
) -> None:
    from edgecompile.builder import build
    from edgecompile.device import ssh
    from edgecompile.device.remote import run_on_device
    from edgecompile.device.tunnel import SERVER_LOG
    from edgecompile.export import relative_error, run_onnxruntime
    from edgecompile.records import CHOICES_FILE, list_stores
    from edgecompile.tuning import tune

    _, access = armhf_board
    onnx_path = _pointwise_onnx(tmp_path / "pointwise.onnx")
    records = tmp_path / "records"
    port = free_ports()
    result = tune(
        str(onnx_path), "rpi3-armv7", trials=4, records=records, access=access,
        remote_port=port, threads=1,
    )  # fmt: skip
    assert "SSH tunnel" in result.transport
    assert result.trials_run >= 4 and not result.failures.get("run")
    assert all(task.best_ms is not None for task in result.tasks)

    # What served it: the native server on the board's loopback, on the port asked for.
    with ssh.connect(access.device, **access.ssh_login()) as connection:
        log = connection.run(f"cat {ssh.remote_path(SERVER_LOG)}").stdout
    assert f"edgecompile-rpc-server: listening on 127.0.0.1:{port}," in log

    # The tuned library on the board (through its native runner): as built from the verdicts,
    # and -- emulated timings may keep every untuned schedule -- with the verdicts dropped, so
    # a search record surely runs.
    (store,) = list_stores(records)
    unjudged = tmp_path / "records-without-choices"
    shutil.copytree(records, unjudged)
    (unjudged / store.path.name / CHOICES_FILE).unlink(missing_ok=True)
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype("float32")
    (expected,) = run_onnxruntime(onnx_path, {"input": x})
    for folder, name in ((records, "judged"), (unjudged, "best")):
        artifact = build(
            str(onnx_path), "rpi3-armv7", output_dir=tmp_path / name, records=folder
        ).artifact
        if name == "best":
            assert artifact.manifest.records is not None
            assert artifact.manifest.records["kernels_from_records"]
        run = run_on_device(artifact, access, [x])
        assert run.runner == "native"
        assert relative_error(run.outputs[0], expected) <= 1e-4
