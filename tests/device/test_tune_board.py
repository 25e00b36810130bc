"""Tuning on the emulated rpi4 over RPC: through the tracker and through the SSH tunnel.

The board runs the real aarch64 TVM runtime under qemu-user: the timings mean nothing, but every
step a real board takes is exercised -- cross-linked candidates uploaded and measured over RPC,
records written, the tuned library built from them and run on the board.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.builder import build
from edgecompile.device.access import BoardAccess
from edgecompile.device.remote import run_on_device
from edgecompile.export import relative_error, run_onnxruntime
from edgecompile.records import CHOICES_FILE, list_stores
from edgecompile.tuning import tune

emulator = pytest.mark.emulator


def _pointwise_onnx(path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tune_tests", Path(__file__).parents[1] / "test_tune.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_pointwise_onnx(path)


def _check_tuned_library_on_board(
    onnx_path: Path, records: Path, output: Path, emulated_board: Any
) -> None:
    """The build follows the re-measured verdicts; and so that a search record surely runs on
    the board (emulated timings may well keep every untuned schedule), the same records are
    also built with the verdicts dropped -- every kernel then takes its fastest record."""
    (store,) = list_stores(records)
    chosen = {store.kernel_names()[w] for w, c in store.choices().items() if c.uses_tuned}
    unjudged = output / "records-without-choices"
    shutil.copytree(records, unjudged)
    (unjudged / store.path.name / CHOICES_FILE).unlink(missing_ok=True)
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype("float32")
    (expected,) = run_onnxruntime(onnx_path, {"input": x})
    for folder, name in ((records, "judged"), (unjudged, "best")):
        artifact = build(str(onnx_path), "rpi4", output_dir=output / name, records=folder).artifact
        assert artifact.manifest.records is not None
        applied = set(artifact.manifest.records["kernels_from_records"])
        assert applied >= chosen if folder == records else applied
        result = run_on_device(artifact, BoardAccess(rpc=emulated_board.rpc), [x])
        assert relative_error(result.outputs[0], expected) <= 1e-4


@emulator
def test_tune_through_the_tracker(emulated_board: Any, tmp_path: Path) -> None:
    onnx_path = _pointwise_onnx(tmp_path / "pointwise.onnx")
    records = tmp_path / "records"
    result = tune(
        str(onnx_path), "rpi4", trials=4, records=records,
        access=BoardAccess(tracker=emulated_board.tracker), threads=1,
    )  # fmt: skip
    assert "tracker" in result.transport
    assert result.trials_run >= 4 and not result.failures.get("run")
    assert all(task.best_ms is not None for task in result.tasks)
    # The neighbour pass measured on the board too: its candidates are in the store, marked.
    assert list_stores(records)[0].neighbours()
    _check_tuned_library_on_board(onnx_path, records, tmp_path / "out", emulated_board)


@emulator
def test_tune_through_an_ssh_tunnel_starts_the_server(
    emulated_board: Any,
    client_key: Path,
    trusted_known_hosts: Path,
    free_ports: Any,
    tmp_path: Path,
) -> None:
    """No RPC server listens on the chosen port: tune starts one on the board's loopback."""
    onnx_path = _pointwise_onnx(tmp_path / "pointwise.onnx")
    records = tmp_path / "records"
    result = tune(
        str(onnx_path), "rpi4", trials=2, records=records,
        access=BoardAccess(
            device=emulated_board.device, identity=client_key, known_hosts=trusted_known_hosts
        ),
        remote_port=free_ports(), threads=1,
    )  # fmt: skip
    assert "SSH tunnel" in result.transport
    assert result.trials_run >= 2 and not result.failures.get("run")
    _check_tuned_library_on_board(onnx_path, records, tmp_path / "out", emulated_board)
