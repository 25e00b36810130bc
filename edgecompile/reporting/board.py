"""The report's second phase on a board: each build deployed as a bundle and timed there.

``report --target T --device USER@HOST``: the board is checked before anything is built
(:func:`check_board`: reachable, of the preset's arch, and whether its Python has ONNX
Runtime); then each model's builds ship as bundles (:func:`~edgecompile.device.deploy.deploy_on`)
and the bundle's native runner times them on the board
(:func:`~edgecompile.device.native_job.run_bundle_on`), at every thread count, after checking
its output against ONNX Runtime here on the same input. ORT is timed on the board only when the
board's own Python has it (nothing is installed). There is no per-kernel profile: the native
runner has no profiler, so the time-by-op-class part of the report is left out, saying why.

One SSH connection serves every model; when it drops (a 72-model run on a Pi takes hours),
the model that was running fails with the reason and the next one connects again.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from edgecompile.benchmarking.timing import EngineTiming, latency_stats
from edgecompile.device import probe as board_probe
from edgecompile.device import ssh
from edgecompile.device.access import BoardAccess
from edgecompile.device.deploy import DEFAULT_REMOTE_DIR
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress
from edgecompile.reporting.builds import PreparedModel
from edgecompile.reporting.results import TUNED, ModelResult, Stages

if TYPE_CHECKING:
    import numpy as np

    from edgecompile.device.deploy import Deployment
    from edgecompile.device.probe import BoardInfo
    from edgecompile.targets import BoardPreset

#: The engines a board report can time: our builds through the native runner, and ONNX
#: Runtime in the board's Python. No torch (no board runs it for us), no int8 yet.
BOARD_ENGINES = ("tvm", TUNED, "ort")
#: What ran the builds on the board, as the report's header names it.
RUNNER = "native runner (the bundle's edgecompile-runner, no Python)"
#: Host ORT's reference run: the same engine and settings as the host bench's ``ort``.
_REFERENCE_THREADS = 1


@dataclass(frozen=True)
class Board:
    """A board the report times on: how to reach it, what it said about itself, and whether its
    Python has ONNX Runtime (``ort_version``; else ``ort_missing`` says why not)."""

    access: BoardAccess
    preset: str
    info: BoardInfo
    uname: str
    python: str | None
    ort_version: str | None
    ort_missing: str | None

    def describe(self) -> dict[str, Any]:
        """The board as the report's header and JSON give it."""
        info = self.info
        return {
            "device": self.access.device,
            "preset": self.preset,
            "uname": self.uname,
            "machine": info.machine,
            "cpu": info.cpu_model,
            "cores": info.cores,
            "os": info.os,
            "glibc": info.glibc,
            "emulated": info.emulated,
            "runner": RUNNER,
            "onnxruntime": self.ort_version,
            "ort_missing": self.ort_missing,
        }


def check_board(access: BoardAccess, preset: BoardPreset, wants_ort: bool) -> Board:
    """Reach the board over SSH and check it before anything is built: the preset's arch, its
    ``uname``, and (``wants_ort``) whether its Python has ONNX Runtime. One line when not."""
    from edgecompile.device.ort_job import board_ort_version

    if access.rpc or access.tracker:
        raise EdgecompileError(
            "the report times a board through its bundle's native runner, reached over SSH",
            "use --device user@host instead of --rpc/--tracker",
        )
    where = access.require_device("report")
    with ssh.connect(where, **access.ssh_login()) as connection:
        info = board_probe.probe(connection, remote_python=access.remote_python)
        _check_arch(preset, info, where)
        uname = connection.run("uname -srm").stdout.strip() or info.machine
        python = access.remote_python or info.python or info.python3
        version, missing = None, None
        if python is None:
            missing = "the board has no Python, so no ONNX Runtime there"
        elif wants_ort:
            version = board_ort_version(connection, python)
            if version is None:
                missing = f"the board's Python ({python}) has no onnxruntime (nothing is installed)"
    return Board(access, preset.name, info, uname, python, version, missing)


def _check_arch(preset: BoardPreset, info: BoardInfo, where: str) -> None:
    """The board runs the preset's arch (kernel and userland), as a bundle's deploy checks."""
    stand_in = SimpleNamespace(arch=preset.arch, model="report", preset=preset.name)
    try:
        board_probe.check_native_compatible(stand_in, info, where)
    except EdgecompileError as error:
        suggestion = (error.fix or "").rpartition("--target ")[2] or "<the board's preset>"
        bits = f" ({info.userland_bits}-bit userland)" if info.userland_bits else ""
        raise EdgecompileError(
            f"--target {preset.name} is for {board_probe.arch_name(preset.arch)} board but "
            f"{where} is {info.machine}{bits}",
            f"pick the board's preset: --target {suggestion}",
        ) from None


class BoardSession:
    """The one SSH connection a board report measures over, opened again when it dropped."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._connection: ssh.BoardConnection | None = None

    def connection(self) -> ssh.BoardConnection:
        if self._connection is not None and not self._connection.alive:
            self.close()
        if self._connection is None:
            access = self.board.access
            self._connection = ssh.connect(str(access.device), **access.ssh_login())
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextmanager
def board_session(board: Board) -> Iterator[BoardSession]:
    session = BoardSession(board)
    try:
        yield session
    finally:
        session.close()


def measure_on_board(
    session: BoardSession,
    prepared: PreparedModel,
    *,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int,
    progress: Progress = SILENT,
) -> ModelResult:
    """Deploy one prepared model's builds as bundles and time them on the board; a failing
    stage (deploy, bench) is recorded with its one-line reason, not raised."""
    started = time.perf_counter()
    fields = dict(prepared.fields)
    stages = Stages()
    builds = {"tvm": fields.get("artifact")}
    # A tuned build no record applied to is the untuned library again: not worth a column.
    if TUNED in engines and fields.get("tuned_kernels"):
        builds[TUNED] = fields.get("tuned_artifact")
    deployed: dict[str, Deployment] = {}

    def deploy() -> None:
        from edgecompile.artifact import load_artifact
        from edgecompile.device.deploy import artifact_for_board, deploy_on

        access, info = session.board.access, session.board.info
        remote_dir = access.remote_dir or DEFAULT_REMOTE_DIR
        for engine, path in builds.items():
            progress.update(f"{prepared.model}: bundling and deploying {engine}")
            shipped = artifact_for_board(load_artifact(str(path)), info, native=True)
            deployed[engine] = deploy_on(
                session.connection(),
                shipped,
                # Both builds' folders are named <model>-<preset>-bundle: apart on the board.
                remote_dir=remote_dir if engine == "tvm" else posixpath.join(remote_dir, engine),
                remote_python=access.remote_python,
                info=info,
            )

    def bench() -> None:
        fields["timings"] = _bench_on_board(
            session,
            prepared.model,
            str(fields["artifact"]),
            deployed,
            engines=engines,
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            seed=seed,
            progress=progress,
        )

    if prepared.built and stages.run("deploy", deploy):
        stages.run("bench", bench)
    return prepared.measured(fields, stages, started)


def _bench_on_board(
    session: BoardSession,
    model: str,
    artifact_dir: str,
    deployed: dict[str, Deployment],
    *,
    engines: Sequence[str],
    threads: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int,
    progress: Progress,
) -> list[EngineTiming]:
    """Every deployed build (and the board's ORT) at every thread count, each output checked
    against ONNX Runtime here on the same seeded input before its time counts."""
    from edgecompile.artifact import load_artifact
    from edgecompile.benchmarking.engines import ort_runner
    from edgecompile.benchmarking.local import artifact_onnx
    from edgecompile.device.native_job import run_bundle_on
    from edgecompile.device.ort_job import run_ort_on
    from edgecompile.runner import random_inputs

    artifact = load_artifact(artifact_dir)
    onnx = artifact_onnx(artifact)
    if onnx is None:
        raise EdgecompileError(
            f"{artifact_dir} has no ONNX model beside its library to check the board against",
            "rerun the report with --rebuild",
        )
    data = random_inputs(artifact, seed=seed)
    reference = ort_runner(str(onnx), _REFERENCE_THREADS)(data)
    measured: dict[tuple[str, int], tuple[list[float], float]] = {}
    for engine, deployment in deployed.items():
        for count in threads:
            progress.update(f"{model}: timing {engine} at {count} thread(s) on the board")
            report, outputs = run_bundle_on(
                session.connection(), deployment, data, threads=count, warmup=warmup,
                repeat=repeat,
            )  # fmt: skip
            error = _checked(engine, outputs, reference)
            measured[(engine, count)] = ([float(ms) for ms in report["times_ms"]], error)
    board = session.board
    if "ort" in engines and board.ort_version is not None and board.python is not None:
        progress.update(f"{model}: timing ONNX Runtime on the board")
        by_count = run_ort_on(
            session.connection(),
            board.python,
            onnx,
            data,
            threads=list(threads),
            warmup=warmup,
            repeat=repeat,
        )
        for count, (times_ms, outputs) in by_count.items():
            measured[("ort", count)] = (times_ms, _checked("ort on the board", outputs, reference))
    timings = []
    for (engine, count), (times_ms, error) in measured.items():
        stats = latency_stats([ms / 1e3 for ms in times_ms])  # the host bench's statistics
        ort = measured.get(("ort", count))
        ort_median = latency_stats([ms / 1e3 for ms in ort[0]])["median_ms"] if ort else None
        timings.append(EngineTiming.from_stats(engine, count, stats, error, ort_median))
    return timings


def _checked(engine: str, outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """``engine``'s max relative error against ONNX Runtime here; one line when it is over the
    bench's tolerance (then no time counts for it, as on the host)."""
    from edgecompile.benchmarking.engines import check_agreement

    _, errors = check_agreement({"ort": reference, engine: outputs})
    return errors[engine]
