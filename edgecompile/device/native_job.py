"""Running a deployed bundle's ``edgecompile-runner`` on a board over SSH: no Python there.

Why its own module: the board side is a plain program (``.npy`` in, ``.npy`` out, one JSON line
with the latencies), so this is a shell command and file copies, where the Python path ships a
script; both share the deployment (:func:`edgecompile.device.deploy.deploy_on`).
"""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np

from edgecompile.device.deploy import Deployment
from edgecompile.device.ssh import BoardConnection
from edgecompile.errors import EdgecompileError

__all__ = ["RUNNER_TIMEOUT", "run_bundle_on"]

#: Seconds for one runner call: loading is ~0.1 s natively, a model run ~1 s on a Pi, and the
#: emulated boards are 10-50x slower.
RUNNER_TIMEOUT = 900.0


def run_bundle_on(
    board: BoardConnection,
    deployment: Deployment,
    data: list[np.ndarray],
    *,
    threads: int | None,
    warmup: int,
    repeat: int,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run the runner of ``deployment`` (a bundle) on ``data`` in a fresh temporary folder on
    the board; return its JSON report and the outputs. The folder is removed afterwards."""
    assert deployment.runner is not None, "deploy a bundle first"
    with board.temporary_folder() as work:
        inputs = board.put_arrays(work, data)
        argv = [deployment.runner, deployment.directory, "--output-dir", work]
        for path in inputs:
            argv += ["--input", path]
        argv += ["--warmup", str(warmup), "--repeat", str(repeat)]
        if threads is not None:
            argv += ["--threads", str(int(threads))]
        result = board.run(
            " ".join(map(shlex.quote, argv)),
            timeout=RUNNER_TIMEOUT,
            what="running the native runner",
        )
        if result.exit_status != 0:
            raise EdgecompileError(
                f"the native runner failed on {board.settings.label}: {_runner_error(result)}",
                "check the inputs' shapes; if the library fails to load, rebuild the bundle",
            )
        report = result.json_report("the board's native runner")
        outputs = board.get_outputs(
            report.get("outputs", []),
            work,
            job="the board's runner",
            fix="redeploy the bundle; report it if it repeats",
        )
    return report, outputs


def _runner_error(result: Any) -> str:
    """The runner's own error line, else the last line (the loader's or the kernel's)."""
    for line in (result.stderr or "").splitlines():
        if line.startswith("edgecompile-runner: "):
            return line.removeprefix("edgecompile-runner: ").strip()
    return result.last_error_line()
