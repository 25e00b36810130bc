"""ONNX Runtime on a board's own Python, over SSH: the baseline a board report reads TVM against.

Why its own module: it is the only board job that runs someone else's engine. Nothing is
installed: a board whose Python has ``onnxruntime`` is timed with it (:func:`board_ort_version`
says whether it has), any other board gets no ORT numbers. The ONNX model and inputs go to a
temporary folder (:meth:`~edgecompile.device.ssh.BoardConnection.temporary_folder`), removed
after; the script times every run itself, so the statistics are the host bench's.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import numpy as np

from edgecompile.device.ssh import BoardConnection
from edgecompile.errors import EdgecompileError, last_line

__all__ = ["ORT_TIMEOUT", "board_ort_version", "run_ort_on"]

#: Seconds for one ORT job on the board: importing onnxruntime on a small board is a few
#: seconds, a model run ~1 s on a Pi, and emulated boards are 10-50x slower.
ORT_TIMEOUT = 900.0

# Runs on the board: argv[1] = JSON job. Prints one JSON line at the end (as the native
# runner does): every timed run in ms and the outputs it wrote.
_ORT_SCRIPT = """\
import json, sys, time

import numpy as np
import onnxruntime as ort

job = json.loads(sys.argv[1])
options = ort.SessionOptions()
options.intra_op_num_threads = job["threads"]
options.inter_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(job["onnx"], options, providers=["CPUExecutionProvider"])
feeds = {item.name: np.load(path) for item, path in zip(session.get_inputs(), job["inputs"])}
for _ in range(job["warmup"]):
    session.run(None, feeds)
times_ms = []
for _ in range(job["repeat"]):
    started = time.perf_counter()
    outputs = session.run(None, feeds)
    times_ms.append((time.perf_counter() - started) * 1e3)
written = []
for index, array in enumerate(outputs):
    written.append(f"{job['work']}/output{index}.npy")
    np.save(written[-1], np.asarray(array), allow_pickle=False)
print(json.dumps({"onnxruntime": ort.__version__, "times_ms": times_ms, "outputs": written}))
"""

_VERSION_SCRIPT = "import onnxruntime, numpy; print(onnxruntime.__version__)"


def board_ort_version(board: BoardConnection, python: str) -> str | None:
    """The version of ONNX Runtime that ``python`` on the board imports, or None without it."""
    result = board.run(
        f"{shlex.quote(python)} -c {shlex.quote(_VERSION_SCRIPT)}",
        timeout=ORT_TIMEOUT,
        what="looking for onnxruntime",
    )
    version = last_line(result.stdout).strip()
    return version if result.exit_status == 0 and version else None


def run_ort_on(
    board: BoardConnection,
    python: str,
    onnx: str | Path,
    data: list[np.ndarray],
    *,
    threads: list[int],
    warmup: int,
    repeat: int,
) -> dict[int, tuple[list[float], list[np.ndarray]]]:
    """``{threads: (ms of each timed run, outputs)}``: ONNX Runtime (CPU provider) in the
    board's ``python`` on ``data``, at each thread count, the model uploaded once."""
    measured: dict[int, tuple[list[float], list[np.ndarray]]] = {}
    with board.temporary_folder() as work:
        inputs = board.put_arrays(work, data)
        model = f"{work}/model.onnx"
        with board.translate_errors("uploading the ONNX model"):
            board.sftp.put(str(onnx), model, confirm=True)
            board.sftp.putfo(io.BytesIO(_ORT_SCRIPT.encode()), f"{work}/ort_job.py")
        for count in threads:
            job = {"onnx": model, "inputs": inputs, "work": work, "threads": int(count)}
            job.update(warmup=warmup, repeat=repeat)
            command = (
                f"cd {shlex.quote(work)} && {shlex.quote(python)} ort_job.py "
                f"{shlex.quote(json.dumps(job))}"
            )
            result = board.run(command, timeout=ORT_TIMEOUT, what="running ONNX Runtime")
            if result.exit_status != 0:
                raise EdgecompileError(
                    f"ONNX Runtime failed on {board.settings.label}: {result.last_error_line()}",
                    "check the board's onnxruntime (python -c 'import onnxruntime'), or leave "
                    "ort out of --engines",
                )
            report = result.json_report("ONNX Runtime on the board")
            outputs = board.get_outputs(
                report.get("outputs", []),
                work,
                job="the board's ORT job",
                fix="run again; report it if it repeats",
            )
            measured[int(count)] = ([float(ms) for ms in report["times_ms"]], outputs)
    return measured
