"""``report --target T --device ...`` without a board: the one-line refusals made before anything
is built, what the board's probe decides (ONNX Runtime there or not), ONNX Runtime's board job
run against this machine's Python, and a model that fails on the board kept as a row.

The end-to-end run on the emulated Python-less board is tests/device/test_report_board.py.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgecompile.device.access import BoardAccess
from edgecompile.device.probe import BoardInfo
from edgecompile.device.ssh import BoardConnection, CommandResult
from edgecompile.reporting import board as board_module
from edgecompile.reporting import pipeline
from edgecompile.reporting.builds import PreparedModel
from edgecompile.targets import resolve_target

DEVICE = "pi@board.invalid"


def _info(machine: str = "aarch64", bits: int = 64, python: str | None = None) -> BoardInfo:
    return BoardInfo(
        machine=machine,
        home="/home/pi",
        python3=python,
        python=python,
        python_bits=bits if python else None,
        tvm_version=None,
        tvm_ffi_version=None,
        cpu_model="Cortex-A72",
        cores=4,
        governor=None,
        os="Debian GNU/Linux 12 (bookworm)",
        emulated=False,
        glibc="glibc 2.36",
        userland_bits=bits,
    )


class LocalBoard(BoardConnection):
    """A "board" that is this machine: commands in a local shell, SFTP as file copies, so a
    board job's script runs for real under this machine's Python."""

    def __init__(self, answers: dict[str, CommandResult] | None = None) -> None:
        super().__init__(client=None, settings=SimpleNamespace(label="local-board", timeout=10))
        self.answers = answers or {}
        self.commands: list[str] = []

    @property
    def alive(self) -> bool:
        return True

    @property
    def sftp(self) -> Any:
        class Files:
            def put(self, local: str, remote: str, confirm: bool = True) -> None:
                shutil.copyfile(local, remote)

            def putfo(self, handle: io.BytesIO, remote: str) -> None:
                Path(remote).write_bytes(handle.read())

            def getfo(self, remote: str, handle: io.BytesIO) -> None:
                handle.write(Path(remote).read_bytes())

        return Files()

    def run(self, command: str, *, timeout: float = 120.0, what: str | None = None) -> Any:
        self.commands.append(command)
        for prefix, answer in self.answers.items():
            if command.startswith(prefix):
                return answer
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        return CommandResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture()
def fake_board(monkeypatch: pytest.MonkeyPatch) -> Callable[[BoardInfo], list[str]]:
    """``fake_board(info)``: SSH reaches a LocalBoard that probes as ``info``; building
    anything fails the test. Returns the devices connected to."""
    connected: list[str] = []

    def use(info: BoardInfo) -> list[str]:
        @contextlib.contextmanager
        def connect(device: str, **login: Any) -> Iterator[LocalBoard]:
            connected.append(device)
            yield LocalBoard({"uname": CommandResult(0, "Linux 6.1.0 aarch64\n", "")})

        monkeypatch.setattr(board_module.ssh, "connect", connect)
        monkeypatch.setattr(board_module.board_probe, "probe", lambda *a, **k: info)
        return connected

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built before the board was checked")

    monkeypatch.setattr(pipeline, "prepare_models", never)
    return use


@pytest.fixture()
def refused_report(cli_error: Callable[[list[str]], str], tmp_path: Path) -> Callable[..., str]:
    """``refused_report(*options)``: the error line of ``report --models squeezenet1_1`` with
    ``options``, written to ``tmp_path`` (the refusals below happen before one model)."""

    def run(*options: str) -> str:
        return cli_error(["report", *options, "--models", "squeezenet1_1", "-o", str(tmp_path)])

    return run


def test_a_device_without_a_target_is_refused_before_anything_runs(
    refused_report: Callable[..., str],
    fake_board: Callable[[BoardInfo], list[str]],
    tmp_path: Path,
) -> None:
    connected = fake_board(_info())
    line = refused_report("--device", DEVICE)
    assert "needs the board's preset" in line and "--target" in line
    assert connected == [] and not any(tmp_path.iterdir())


def test_a_board_target_without_a_device_is_refused(
    refused_report: Callable[..., str], tmp_path: Path
) -> None:
    line = refused_report("--target", "rpi4")
    assert "--target rpi4" in line and "--device" in line
    assert not any(tmp_path.iterdir())


def test_a_board_of_another_arch_is_refused_after_the_probe_before_building(
    refused_report: Callable[..., str], fake_board: Callable[[BoardInfo], list[str]]
) -> None:
    connected = fake_board(_info(machine="armv7l", bits=32))
    line = refused_report("--target", "rpi4", "--device", DEVICE)
    assert connected == [DEVICE]
    assert "--target rpi4 is for a 64-bit ARM (aarch64) board" in line
    assert "armv7l (32-bit userland)" in line and "--target rpi4-armv7" in line


def test_engines_and_threads_a_board_cannot_take_are_refused_before_connecting(
    refused_report: Callable[..., str], fake_board: Callable[[BoardInfo], list[str]]
) -> None:
    connected = fake_board(_info())
    line = refused_report("--target", "rpi4", "--device", DEVICE, "--engines", "tvm,tvm-int8,ort")
    assert "tvm-int8" in line and "on a board" in line
    line = refused_report("--target", "rpi4", "--device", DEVICE, "--threads", "1,8")
    assert "bad --threads 8" in line and "4 cores" in line
    assert connected == []


@pytest.mark.parametrize(
    ("python", "answer", "expected"),
    [
        (None, None, "the board has no Python"),
        ("/usr/bin/python3", CommandResult(1, "", "ModuleNotFoundError"), "has no onnxruntime"),
        ("/usr/bin/python3", CommandResult(0, "1.20.1\n", ""), None),
    ],
)
def test_the_probe_says_whether_the_boards_python_has_onnx_runtime(
    python: str | None, answer: CommandResult | None, expected: str | None
) -> None:
    fake = LocalBoard({"uname": CommandResult(0, "Linux 6.1.0 aarch64\n", "")})
    if answer is not None:
        fake.answers[f"{python} -c"] = answer

    @contextlib.contextmanager
    def connect(device: str, **login: Any) -> Iterator[LocalBoard]:
        yield fake

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(board_module.ssh, "connect", connect)
        patch.setattr(board_module.board_probe, "probe", lambda *a, **k: _info(python=python))
        board = board_module.check_board(BoardAccess(device=DEVICE), resolve_target("rpi4"), True)
    assert board.uname == "Linux 6.1.0 aarch64"
    if expected is None:
        assert board.ort_version == "1.20.1" and board.ort_missing is None
    else:
        assert board.ort_version is None and expected in (board.ort_missing or "")
    header = board.describe()
    assert header["preset"] == "rpi4" and header["cpu"] == "Cortex-A72"
    assert "native runner" in header["runner"]


def test_the_boards_onnx_runtime_job_times_and_returns_what_ort_computes(tmp_path: Path) -> None:
    """The job script, run by a real Python with onnxruntime (this machine's, standing in for
    the board's): every timed run, and outputs equal to ONNX Runtime's here."""
    import onnx
    from onnx import TensorProto, helper

    from edgecompile.benchmarking.engines import ort_runner
    from edgecompile.device.ort_job import board_ort_version, run_ort_on

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "r"], ["y"])],
        "square_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    data = [np.random.default_rng(0).standard_normal((1, 3, 4, 4), dtype=np.float32)]
    fake = LocalBoard()
    assert board_ort_version(fake, sys.executable)
    measured = run_ort_on(fake, sys.executable, path, data, threads=[1, 2], warmup=1, repeat=3)
    assert sorted(measured) == [1, 2]
    expected = ort_runner(str(path), 1)(data)
    for times_ms, outputs in measured.values():
        assert len(times_ms) == 3 and all(ms > 0 for ms in times_ms)
        np.testing.assert_array_equal(outputs[0], expected[0])
    # its temporary folder is gone (removed by the board's temporary_folder)
    folders = [c.split()[-1] for c in fake.commands if c.startswith("rm -rf -- ")]
    assert folders and not any(Path(folder).exists() for folder in folders)


def test_a_model_that_fails_on_the_board_is_a_row_with_its_reason() -> None:
    board = board_module.Board(
        BoardAccess(device=DEVICE), "rpi4", _info(), "Linux", None, None, "no Python"
    )
    prepared = PreparedModel(
        model="squeezenet1_1",
        family="squeezenet",
        input_size=(32, 32),
        fields={"artifact": "/nonexistent/squeezenet1_1-rpi4", "multiply_adds": 1},
        failures=[],
        stage_seconds={"build": 1.0},
        seconds=1.0,
    )
    session = board_module.BoardSession(board)
    result = board_module.measure_on_board(
        session, prepared, engines=["tvm"], threads=[1], repeat=1, warmup=0, seed=0
    )
    assert result.status == "deploy failed" and result.timings == []
    (failure,) = result.failures
    assert "manifest.json" in failure.problem and "\n" not in failure.problem
    assert result.multiply_adds == 1  # what the first phase found stays in the row
