"""Running and timing on the emulated board through TVM RPC, directly and via a tracker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgecompile.artifact import Artifact
from edgecompile.device.access import BoardAccess
from edgecompile.device.remote import bench_on_device, latency_stats, run_on_device
from edgecompile.errors import EdgecompileError
from edgecompile.export import example_input, relative_error


def test_latency_stats() -> None:
    stats = latency_stats([0.004, 0.001, 0.002, 0.003, 0.010])
    assert stats["median_ms"] == pytest.approx(3.0)
    assert stats["min_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(10.0)
    assert stats["mean_ms"] == pytest.approx(4.0)
    assert stats["p90_ms"] == pytest.approx(7.6)  # linear interpolation between 4 and 10
    assert stats["std_ms"] == pytest.approx(np.std([4, 1, 2, 3, 10]))
    with pytest.raises(EdgecompileError, match="no timings"):
        latency_stats([])


def test_exactly_one_place_to_run(tmp_path: Any) -> None:
    with pytest.raises(EdgecompileError, match="exactly one of --device"):
        run_on_device(tmp_path, BoardAccess(rpc="127.0.0.1:1", device="pi@board"))
    with pytest.raises(EdgecompileError, match="exactly one of --device"):
        bench_on_device(tmp_path, BoardAccess())


emulator = pytest.mark.emulator


@emulator
@pytest.mark.parametrize("model", ["shufflenet_v1", "mobilenet_v2"])
def test_run_over_rpc_matches_torch(
    model: str,
    emulated_board: Any,
    board_artifacts: Callable[..., Artifact],
    torch_reference: Callable[..., np.ndarray],
) -> None:
    artifact = board_artifacts(model, "rpi4")
    x = example_input(artifact.manifest.inputs[0]["shape"], seed=7)
    result = run_on_device(artifact, BoardAccess(rpc=emulated_board.rpc), [x])
    assert len(result.outputs) == 1
    assert relative_error(result.outputs[0], torch_reference(model, x)) <= 1e-4
    assert result.transport == "rpc" and result.board["machine"] == "aarch64"


@emulator
def test_run_via_tracker_matches_torch(
    emulated_board: Any,
    board_artifacts: Callable[..., Artifact],
    torch_reference: Callable[..., np.ndarray],
) -> None:
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    x = example_input(artifact.manifest.inputs[0]["shape"], seed=7)
    # no rpc_key: the preset's ("rpi4") is what the board registered under
    result = run_on_device(artifact, BoardAccess(tracker=emulated_board.tracker), [x])
    assert result.transport == "tracker"
    assert relative_error(result.outputs[0], torch_reference("shufflenet_v1", x)) <= 1e-4
    # The session was closed at once, so the board is free for the next request (TVM closes a
    # session only when its objects are garbage: a leak here makes the next request hang).
    host, port = emulated_board.tracker.split(":")
    deadline = time.monotonic() + 20
    while _free_servers(host, int(port), "rpi4") != 1:
        assert time.monotonic() < deadline, "the tracker session was left open on the board"
        time.sleep(0.5)


def _free_servers(host: str, port: int, key: str) -> int:
    from tvm import rpc

    summary = rpc.connect_tracker(host, port).summary()
    return int(summary["queue_info"].get(key, {}).get("free", 0))


@emulator
@pytest.mark.parametrize("via", ["rpc", "tracker"])
def test_bench_over_rpc(
    via: str, emulated_board: Any, board_artifacts: Callable[..., Artifact]
) -> None:
    where = {"rpc": emulated_board.rpc} if via == "rpc" else {"tracker": emulated_board.tracker}
    result = bench_on_device(
        board_artifacts("shufflenet_v1", "rpi4"),
        BoardAccess(**where),
        repeat=3,
        warmup=1,
        threads=1,
    )
    assert result.transport == via and len(result.times_ms) == 3
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms <= result.max_ms
    assert result.std_ms >= 0 and result.min_ms <= result.mean_ms <= result.max_ms
    assert result.threads == 1
    assert any("CPU model cannot be read" in note for note in result.notes)


@emulator
def test_armv7_library_is_refused_over_rpc(
    emulated_board: Any, board_artifacts: Callable[..., Artifact]
) -> None:
    armv7 = board_artifacts("shufflenet_v1", "rpi4-armv7")
    with pytest.raises(EdgecompileError, match=r"32-bit ARM \(armv7\) library .* \(aarch64\) TVM"):
        run_on_device(armv7, BoardAccess(rpc=emulated_board.rpc))


@emulator
def test_unknown_tracker_key_lists_the_registered_ones(
    emulated_board: Any, board_artifacts: Callable[..., Artifact]
) -> None:
    with pytest.raises(EdgecompileError, match=r"under key 'jetson'.*registered: rpi4"):
        run_on_device(
            board_artifacts("shufflenet_v1", "rpi4"),
            BoardAccess(tracker=emulated_board.tracker, rpc_key="jetson"),
        )


@emulator
def test_rpc_refused(
    board_artifacts: Callable[..., Artifact], free_ports: Callable[[], int]
) -> None:
    port = free_ports()
    artifact = board_artifacts("shufflenet_v1", "rpi4")
    with pytest.raises(EdgecompileError, match=rf"TVM RPC session with 127\.0\.0\.1:{port}"):
        run_on_device(artifact, BoardAccess(rpc=f"127.0.0.1:{port}"))
    with pytest.raises(EdgecompileError, match=rf"reach the RPC tracker at 127\.0\.0\.1:{port}"):
        run_on_device(artifact, BoardAccess(tracker=f"127.0.0.1:{port}"))
