"""Running and timing an artifact on a board: over SSH, over TVM RPC, or through an RPC tracker.

Why three ways: SSH needs nothing on the board but sshd and a Python venv with TVM, and checks
the board (arch, TVM version) before loading; TVM RPC is what TVM's own tuning uses, needs an
RPC server running on the board, and skips the ~10 s Python start per call; a tracker lets
several people share a pool of boards by key.

All three load the library with ``tvm.runtime.load_module`` into a ``relax.VirtualMachine``
on the board's CPU and time ``main`` with the VM's ``time_evaluator`` (``number=1``, so every
repeat is one inference; warm-up runs first and TVM discards one more call itself). Over RPC the
VM lives on the board and the stateful API (``set_input`` / ``invoke_stateful`` /
``get_outputs``) is used, which handles tuple outputs that a direct call over RPC cannot return.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import posixpath
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgecompile.artifact import Artifact, load_artifact
from edgecompile.benchmarking.history import (
    History,
    HostComparison,
    compare_with_host,
    history_entry,
    host_bench_command,
    record_history,
)
from edgecompile.benchmarking.timing import EngineTiming, latency_stats
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError, last_line

__all__ = [
    "BenchResult",
    "RemoteRunResult",
    "bench_on_device",
    "latency_stats",
    "run_on_device",
]

#: Default RPC session limit: the server kills a session older than this.
SESSION_TIMEOUT = 600
#: Remote python runs (SSH): TVM import on a small board is ~5-10 s, a model run ~1 s.
REMOTE_TIMEOUT = 900.0
#: Seconds to wait for an RPC server or tracker to answer (connect, handshake, a board from
#: the tracker) before giving up with one line; the environment variable overrides it.
RPC_TIMEOUT = 60.0
RPC_TIMEOUT_ENV = "EDGECOMPILE_RPC_TIMEOUT"

T = TypeVar("T")

# Runs on the board under its TVM python. argv[1] = JSON job. Prints one JSON line at the end.
_BOARD_SCRIPT = """\
import json, pathlib, sys, time

import numpy as np

job = json.loads(sys.argv[1])
work = pathlib.Path(job["work"])
import tvm
from tvm import relax

device = tvm.cpu()
started = time.perf_counter()
vm = relax.VirtualMachine(tvm.runtime.load_module(job["library"]), device)
report = {"load_seconds": time.perf_counter() - started}
num_threads = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
report["threads"] = int(num_threads()) if num_threads is not None else None
args = [tvm.runtime.tensor(np.load(work / name), device) for name in job["inputs"]]


def flatten(value):
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [np.asarray(value)]
    return [array for item in value for array in flatten(item)]


if job["mode"] == "run":
    started = time.perf_counter()
    result = vm["main"](*args)
    report["seconds"] = time.perf_counter() - started
    outputs = flatten(result)
    for i, array in enumerate(outputs):
        np.save(work / f"output{i}.npy", array, allow_pickle=False)
    report["outputs"] = len(outputs)
else:
    vm.set_input("main", *args)
    for _ in range(job["warmup"]):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=job["repeat"])
    report["results"] = [float(r) for r in timer("main").results]
print(json.dumps(report))
"""


@dataclass(frozen=True)
class RemoteRunResult:
    """Outputs computed on the board, and how it was reached."""

    outputs: list[np.ndarray]
    seconds: float
    transport: str
    target: str
    board: dict[str, Any]
    #: What ran the library: "native" (the bundle's edgecompile-runner), "python-tvm" (TVM's
    #: Python on the board) or "tvm-rpc" (the board's RPC server).
    runner: str = "python-tvm"


@dataclass(frozen=True)
class BenchResult:
    """On-device latency of one inference (milliseconds) and what it was measured on.

    ``host`` is this machine's latest bench of the same model and input shape, for reading the
    board's numbers against (None when there is none: ``host_command`` records it).
    """

    model: str
    preset: str
    transport: str
    target: str
    repeat: int
    warmup: int
    threads: int | None
    times_ms: list[float]
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    board: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    host: HostComparison | None = None
    host_command: str = ""
    #: What ran the library, as :attr:`RemoteRunResult.runner` says.
    runner: str = "python-tvm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_access(access: BoardAccess) -> str:
    """The transport ``access`` names (exactly one of --device/--rpc/--tracker), with the
    address of --rpc/--tracker checked: cheap, so a typo is found before any work."""
    transport = access.transport
    if access.rpc:
        _host_port(access.rpc, "--rpc")
    if access.tracker:
        _host_port(access.tracker, "--tracker")
    return transport


def check_library(artifact: Artifact) -> None:
    """:func:`edgecompile.runner.check_library`: the library is the one its manifest names."""
    from edgecompile.runner import check_library as check

    check(artifact)


def _inputs_for(
    artifact: Artifact, inputs: Sequence[np.ndarray] | None, seed: int
) -> list[np.ndarray]:
    from edgecompile.runner import check_inputs, random_inputs

    data = list(inputs) if inputs is not None else random_inputs(artifact, seed=seed)
    check_inputs(artifact, data)
    return [np.ascontiguousarray(x) for x in data]


def run_on_device(
    artifact: str | Path | Artifact,
    access: BoardAccess,
    inputs: Sequence[np.ndarray] | None = None,
    *,
    threads: int | None = None,
    seed: int = 0,
    native: bool | None = None,
) -> RemoteRunResult:
    """Run ``artifact`` on the board ``access`` reaches (exactly one of its ``device``,
    ``rpc``, ``tracker``).

    ``inputs`` default to the seeded random inputs ``edgecompile run`` uses locally, so the
    two are comparable. Over SSH the artifact is first deployed
    (see :func:`edgecompile.device.deploy.deploy`) and run by the board's TVM Python, or by
    the native runner of its bundle (``native=True``, a bundle, or a board without TVM Python:
    the bundle is written beside the artifact first when it is not one).
    """
    transport = check_access(access)
    if transport != "ssh":
        _refuse_native_over_rpc(native)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise EdgecompileError(f"bad --threads {threads}", "use 1 or more")
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    check_library(artifact)
    data = _inputs_for(artifact, inputs, seed)
    if transport == "ssh":
        report, outputs, board = _ssh_job(
            artifact, data, access, mode="run", threads=threads, native=native
        )
        return RemoteRunResult(
            outputs, report["seconds"], "ssh", str(access.device), board, board["runner"]
        )
    with _rpc_session(artifact, access) as session:
        outputs, seconds = _rpc_run(session, data, threads)
        return RemoteRunResult(
            outputs, seconds, transport, session.target, session.board, "tvm-rpc"
        )


def bench_on_device(
    artifact: str | Path | Artifact,
    access: BoardAccess,
    *,
    threads: int | None = None,
    repeat: int = 20,
    warmup: int = 3,
    seed: int = 0,
    history: History = True,
    native: bool | None = None,
) -> BenchResult:
    """Time ``main`` on the board ``access`` reaches: ``warmup`` untimed runs, then ``repeat``
    timed ones.

    Timing happens on the board (TVM's ``time_evaluator``), so network latency is excluded.
    The result carries the latest host numbers of the same model and input shape found in the
    bench ``history`` (:func:`edgecompile.benchmarking.compare_with_host`), and is appended to it.
    """
    if repeat < 1 or warmup < 0:
        raise EdgecompileError(
            f"bad --repeat {repeat} / --warmup {warmup}", "use --repeat 1+ and --warmup 0+"
        )
    if threads is not None and threads < 1:
        raise EdgecompileError(f"bad --threads {threads}", "use 1 or more")
    transport = check_access(access)
    if transport != "ssh":
        _refuse_native_over_rpc(native)
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    check_library(artifact)
    data = _inputs_for(artifact, None, seed)
    notes: list[str] = []
    if transport == "ssh":
        report, _, board = _ssh_job(
            artifact,
            data,
            access,
            mode="bench",
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            native=native,
        )
        results, used_threads, target = report["results"], report.get("threads"), str(access.device)
        runner = board["runner"]
    else:
        runner = "tvm-rpc"
        with _rpc_session(artifact, access) as session:
            results = _rpc_bench(session, data, threads, repeat=repeat, warmup=warmup)
            used_threads, target, board = session.threads(), session.target, session.board
            notes.append(
                "over RPC the board's CPU model cannot be read (TVM RPC has no file or "
                "shell access to /proc/cpuinfo); use --device for a full description"
            )
    if board.get("emulated"):
        notes.insert(0, _emulated_note())
    return _board_result(
        artifact,
        transport=transport,
        target=target,
        repeat=repeat,
        warmup=warmup,
        threads=used_threads,
        seconds=results,
        board=board,
        notes=notes,
        history=history,
        runner=runner,
    )


def _refuse_native_over_rpc(native: bool | None) -> None:
    if native:
        raise EdgecompileError(
            "the native runner is reached over SSH, not TVM RPC",
            "use --device user@host with --native",
        )


def _board_result(
    artifact: Artifact,
    *,
    transport: str,
    target: str,
    repeat: int,
    warmup: int,
    threads: int | None,
    seconds: Sequence[float],
    board: dict[str, Any],
    notes: list[str],
    history: History,
    runner: str = "python-tvm",
) -> BenchResult:
    """The measured times as a :class:`BenchResult`, read against the host's latest numbers and
    then recorded. A function of its own so the comparison is testable without a board."""
    stats = latency_stats(seconds)
    shapes = [[int(d) for d in spec["shape"]] for spec in artifact.manifest.inputs]
    model = artifact.manifest.model
    host = None
    if history is not False:  # read before recording: the board's own line is not a host one
        host = compare_with_host(
            model, shapes, stats["median_ms"], threads=threads, history=history
        )
        timing = EngineTiming.from_stats("tvm", threads or 0, stats, None, None)
        where = {
            "kind": "board",
            "cpu": board.get("cpu_model") or board.get("triple") or board.get("machine"),
            "target": target,
            "transport": transport,
            "emulated": board.get("emulated"),  # None over RPC: it cannot tell
        }
        entry = history_entry(artifact, shapes, timing, where, artifact.manifest.library_sha256)
        entry["threads"] = threads  # None when the board's runtime could not say
        record_history([entry], history, notes)
    return BenchResult(
        model=model,
        preset=artifact.manifest.preset,
        transport=transport,
        target=target,
        repeat=repeat,
        warmup=warmup,
        threads=threads,
        times_ms=[s * 1e3 for s in seconds],
        **stats,
        board=board,
        notes=notes,
        input_shapes=shapes,
        host=host,
        host_command=host_bench_command(artifact, threads),
        runner=runner,
    )


def _emulated_note() -> str:
    from edgecompile.device.board import EMULATION_WARNING

    return EMULATION_WARNING


# --------------------------------------------------------------------------------------------
# SSH


def _ssh_job(
    artifact: Artifact,
    data: list[np.ndarray],
    access: BoardAccess,
    *,
    mode: str,
    threads: int | None,
    repeat: int = 0,
    warmup: int = 0,
    native: bool | None = None,
) -> tuple[dict[str, Any], list[np.ndarray], dict[str, Any]]:
    """Deploy, ship inputs (and the script, on the Python path) to a fresh temp dir, run, fetch
    outputs, clean up. The board dict says which runner ran (``"runner"``)."""
    from edgecompile.device import ssh
    from edgecompile.device.deploy import DEFAULT_REMOTE_DIR, artifact_for_board, deploy_on
    from edgecompile.device.probe import probe

    with ssh.connect(access.require_device(mode), **access.ssh_login()) as board:
        info = probe(board, remote_python=access.remote_python)
        shipped = artifact_for_board(artifact, info, native, access.remote_python)
        deployment = deploy_on(
            board,
            shipped,
            remote_dir=access.remote_dir or DEFAULT_REMOTE_DIR,
            remote_python=access.remote_python,
            info=info,
        )
        if deployment.runner is not None:
            from edgecompile.device.native_job import run_bundle_on

            timed = (warmup, repeat) if mode == "bench" else (0, 1)
            report, outputs = run_bundle_on(
                board, deployment, data, threads=threads, warmup=timed[0], repeat=timed[1]
            )
            seconds = [ms / 1e3 for ms in report.get("times_ms", [report["median_ms"]])]
            report["seconds"], report["results"] = seconds[0], seconds
            report["threads"] = report.get("threads") or threads  # 0: the runtime's default
            runner = "native"
        else:
            report, outputs = _python_job(
                board, deployment, artifact.manifest.model, data, mode, threads, repeat, warmup
            )
            runner = "python-tvm"
        board_dict = info.to_dict()
        board_dict["deployed_to"] = deployment.directory
        board_dict["runner"] = runner
        return report, outputs, board_dict


def _python_job(
    board: Any,
    deployment: Any,
    model: str,
    data: list[np.ndarray],
    mode: str,
    threads: int | None,
    repeat: int,
    warmup: int,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The job script run by the board's TVM Python in a fresh temp dir, removed after."""
    info = deployment.board
    assert info.python is not None  # check_compatible refused boards without one
    with board.temporary_folder() as work:
        inputs = board.put_arrays(work, data)
        with board.translate_errors("uploading the job"):
            board.sftp.putfo(io.BytesIO(_BOARD_SCRIPT.encode()), f"{work}/job.py")
        job = {
            "mode": mode,
            "library": deployment.library,
            "work": work,
            "inputs": [posixpath.basename(path) for path in inputs],
            "repeat": repeat,
            "warmup": warmup,
        }
        env = f"TVM_NUM_THREADS={int(threads)} " if threads else ""
        command = (
            f"cd {shlex.quote(work)} && {env}{shlex.quote(info.python)} job.py "
            f"{shlex.quote(json.dumps(job))}"
        )
        result = board.run(command, timeout=REMOTE_TIMEOUT, what=f"running {mode} on TVM")
        if result.exit_status != 0:
            raise EdgecompileError(
                f"{model} failed on {board.settings.label}: {result.last_error_line()}",
                "check the inputs' shapes; if the library fails to load, rebuild it for "
                f"this board with TVM {info.tvm_version}",
            )
        report = result.json_report("the board's runner")
        outputs = [
            board.get_array(f"{work}/output{index}.npy")
            for index in range(int(report.get("outputs", 0)))
        ]
    return report, outputs


# --------------------------------------------------------------------------------------------
# TVM RPC


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgecompileError(f"bad {option} {value!r}", f"use {option} host:port")
    return host, int(port)


def _triple_arch(triple: str) -> str:
    head = triple.split("-")[0]
    if head in ("aarch64", "arm64"):
        return "aarch64"
    if head.startswith(("arm", "thumb")):
        return "arm"
    return head


class _RPCSession:
    """One TVM RPC session, the checks done on it, and the library loaded into it."""

    def __init__(self, artifact: Artifact, remote: Any, transport: str, target: str) -> None:
        self.artifact = artifact
        self.remote = remote
        self.transport = transport
        self.target = target
        self.device = remote.cpu()
        self.board: dict[str, Any] = {"transport": transport, "tvm_version": None}

    def check_arch(self) -> None:
        """The board runtime's LLVM process triple says which arch it can load; TVM 0.27 has no
        RPC call that reports its version, so only the arch is checked before loading."""
        manifest = self.artifact.manifest
        try:
            triple = str(self.remote.get_function("target.llvm_get_system_triple")())
        except Exception:  # a runtime-only TVM build has no LLVM: skip the check
            self.board["machine"] = None
            return
        arch = _triple_arch(triple)
        self.board["machine"] = arch
        self.board["triple"] = triple
        if arch != manifest.arch:
            from edgecompile.device.probe import arch_name

            raise EdgecompileError(
                f"{manifest.model}-{manifest.preset} is {arch_name(manifest.arch)} library but "
                f"the RPC server at {self.target} runs {arch_name(arch)} TVM ({triple})",
                f"rebuild for that board (edgecompile build {manifest.model} --target ...)",
            )

    def threads(self) -> int | None:
        try:
            return int(self.remote.get_function("runtime.NumThreads")())
        except Exception:
            return None

    def set_threads(self, threads: int | None) -> None:
        if threads is None:
            return
        try:
            self.remote.get_function("runtime.config_threadpool")(0, int(threads))
        except Exception as error:
            raise EdgecompileError(
                f"the RPC server cannot resize its thread pool: {last_line(error)}",
                "drop --threads, or set TVM_NUM_THREADS where the RPC server starts",
            ) from None

    def load(self, data: list[np.ndarray]) -> tuple[Any, list[Any]]:
        """Upload the library, load it into a VM on the board, and copy the inputs there."""
        import tvm
        from tvm import relax

        manifest = self.artifact.manifest
        name = f"{manifest.model}-{manifest.library_sha256[:12]}.so"
        try:
            self.remote.upload(str(self.artifact.library), target=name)
            module = self.remote.load_module(name)
            vm = relax.VirtualMachine(module, self.device)
        except Exception as error:
            raise EdgecompileError(
                f"the RPC server at {self.target} cannot load {manifest.library}: "
                f"{last_line(error)}",
                f"the board's TVM must be {manifest.tvm_version} (the version that built the "
                "library) and its arch " + manifest.arch,
            ) from None
        args = [tvm.runtime.tensor(x, self.device) for x in data]
        self.board["threads"] = self.threads()
        return vm, args


def _rpc_run(
    session: _RPCSession, data: list[np.ndarray], threads: int | None
) -> tuple[list[np.ndarray], float]:
    """One inference over RPC. A function of its own so that the VM, module and remote
    tensors (which keep the session open) are gone when it returns."""
    session.set_threads(threads)
    vm, args = session.load(data)
    started = time.perf_counter()
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    result = vm.get_outputs("main")
    seconds = time.perf_counter() - started
    return _flatten_remote(result), seconds


def _rpc_bench(
    session: _RPCSession, data: list[np.ndarray], threads: int | None, *, repeat: int, warmup: int
) -> list[float]:
    """Seconds per inference, timed on the board (see :func:`_rpc_run` for why a function)."""
    session.set_threads(threads)
    vm, args = session.load(data)
    vm.set_input("main", *args)
    for _ in range(warmup):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", session.device, number=1, repeat=repeat)
    return [float(r) for r in timer("main").results]


@contextlib.contextmanager
def _rpc_session(artifact: Artifact, access: BoardAccess) -> Iterator[_RPCSession]:
    """Open (directly or via a tracker) and check an RPC session; always close it after.

    TVM 0.27 has no explicit close: the session ends when its last Python reference goes,
    and the VM/module/device objects form reference cycles that only the garbage collector
    breaks. Left to chance, the board's server stays busy with a dead session until its
    timeout, and the next tracker request waits for it -- so references are dropped and
    the collector run here. The server then deletes the uploaded library.
    """
    remote, transport, target = _open_rpc(artifact, access)
    session = _RPCSession(artifact, remote, transport, target)
    del remote
    try:
        session.check_arch()
        yield session
    finally:
        session.remote = None
        session.device = None
        gc.collect()


def check_rpc_target(preset: Any, access: BoardAccess) -> str:
    """Open one session (``access.rpc`` directly, else via ``access.tracker`` under its
    ``rpc_key`` or the preset's) and check the board's arch is the preset's; returns the
    board's LLVM triple. Tuning calls it before measuring anything, so an unreachable tracker,
    a missing key or a wrong board is one clear line, not N failures."""
    from edgecompile.device.probe import arch_name

    remote, _, where = _open_rpc(None, replace(access, rpc_key=access.rpc_key or preset.rpc_key))
    try:
        triple = str(remote.get_function("target.llvm_get_system_triple")())
    except Exception:  # a runtime-only TVM has no LLVM: nothing to check against
        triple = ""
    finally:
        del remote
        gc.collect()
    if triple and _triple_arch(triple) != preset.arch:
        raise EdgecompileError(
            f"the RPC server at {where} runs {arch_name(_triple_arch(triple))} TVM ({triple}), "
            f"not {arch_name(preset.arch)} as {preset.name} needs",
            "point at a board of that kind, or pick its preset with --target",
        )
    return triple


def rpc_timeout() -> float:
    """:data:`RPC_TIMEOUT`, or ``$EDGECOMPILE_RPC_TIMEOUT`` seconds when set."""
    text = os.environ.get(RPC_TIMEOUT_ENV, "").strip()
    if not text:
        return RPC_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise EdgecompileError(
            f"bad {RPC_TIMEOUT_ENV}={text!r}", "give a number of seconds, e.g. 60"
        )
    return seconds


def _within(seconds: float, call: Callable[[], T], waiting_for: str, fix: str) -> T:
    """``call()``, or one line after ``seconds`` when it has not returned.

    TVM's RPC handshake blocks in C++ on a socket without a timeout, so a server that accepts
    and never answers would hang the caller forever; the call runs in a daemon thread (TVM
    releases the GIL while it waits) that is abandoned on timeout and ends with the process.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller's thread, raised there
            outcome["error"] = error

    worker = threading.Thread(target=target, name="edgecompile-rpc-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise EdgecompileError(f"no answer from {waiting_for} in {seconds:g} s", fix)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


#: TVM RPC has no authentication: never advise a tracker open to every network.
_TRACKER_HINT = (
    "start it on this machine's loopback: python -m tvm.exec.rpc_tracker --host 127.0.0.1 "
    "--port {port} (boards reach it through SSH tunnels; TVM RPC has no authentication)"
)


def _open_rpc(artifact: Artifact | None, access: BoardAccess) -> tuple[Any, str, str]:
    """A TVM RPC session with ``access.rpc``, else one from ``access.tracker`` (under
    ``access.rpc_key``, else the artifact's preset's key); and its transport and label."""
    from tvm import rpc as tvm_rpc

    rpc, tracker, rpc_key = access.rpc, access.tracker, access.rpc_key
    timeout = rpc_timeout()
    wait_longer = f"check it is a TVM RPC server that is up, or wait longer: {RPC_TIMEOUT_ENV}"
    if rpc:
        host, port = _host_port(rpc, "--rpc")
        try:
            remote = _within(
                timeout,
                lambda: tvm_rpc.connect(host, port, session_timeout=SESSION_TIMEOUT),
                f"the TVM RPC server at {host}:{port}",
                f"{wait_longer}=SECONDS",
            )
        except EdgecompileError:
            raise
        except Exception as error:
            raise EdgecompileError(
                f"cannot open a TVM RPC session with {host}:{port}: {last_line(error)}",
                "start the board's server on its loopback (TVM RPC has no authentication): "
                f"python -m tvm.exec.rpc_server --host 127.0.0.1 --port {port}, and reach it "
                f"through an SSH tunnel (ssh -N -L {port}:127.0.0.1:{port} user@board), or use "
                "--device user@board",
            ) from None
        return remote, "rpc", f"{host}:{port}"
    assert tracker is not None
    host, port = _host_port(tracker, "--tracker")
    assert rpc_key is not None or artifact is not None
    key = rpc_key or _preset_rpc_key(artifact)  # type: ignore[arg-type]
    # TVM retries a tracker connection for 60 s; a quick TCP check makes a typo fail at once.
    try:
        socket.create_connection((host, port), timeout=min(10.0, timeout)).close()
    except OSError as error:
        raise EdgecompileError(
            f"cannot reach the RPC tracker at {host}:{port}: {error.strerror or error}",
            _TRACKER_HINT.format(port=port),
        ) from None

    def tracker_summary() -> tuple[Any, Any]:
        client = tvm_rpc.connect_tracker(host, port)
        return client, client.summary()

    try:
        client, summary = _within(
            timeout,
            tracker_summary,
            f"the RPC tracker at {host}:{port}",
            f"check it is a TVM RPC tracker, or wait longer: {RPC_TIMEOUT_ENV}=SECONDS",
        )
    except EdgecompileError:
        raise
    except Exception as error:
        raise EdgecompileError(
            f"cannot reach the RPC tracker at {host}:{port}: {last_line(error)}",
            _TRACKER_HINT.format(port=port),
        ) from None
    keys = _tracker_keys(summary)
    if key not in keys:
        known = ", ".join(f"{k} ({n} free)" for k, n in sorted(keys.items())) or "none"
        raise EdgecompileError(
            f"no board is registered at the tracker {host}:{port} under key {key!r} "
            f"(registered: {known})",
            "start the board's server with --tracker HOST:PORT --key KEY, or pass --rpc-key",
        )
    try:
        remote = _within(
            timeout,
            lambda: client.request(key, priority=1, session_timeout=SESSION_TIMEOUT),
            f"a {key!r} board from the tracker at {host}:{port}",
            f"the boards may be busy or down; wait longer: {RPC_TIMEOUT_ENV}=SECONDS",
        )
    except EdgecompileError:
        raise
    except Exception as error:
        raise EdgecompileError(
            f"the tracker at {host}:{port} could not give a {key!r} board: {last_line(error)}",
            "check the board's RPC server, then run again",
        ) from None
    return remote, "tracker", f"{host}:{port} key {key}"


def _tracker_keys(summary: dict[str, Any]) -> dict[str, int]:
    """``{key: free servers}`` for every key a server registered under (a busy server counts,
    with 0 free: the request then waits for it, as TVM's tuning does)."""
    if not isinstance(summary, dict):
        return {}
    keys: dict[str, int] = {}
    for info in summary.get("server_info", []):
        name = str(info.get("key", "")) if isinstance(info, dict) else ""
        if name.startswith("server:"):
            keys.setdefault(name.split(":", 1)[1], 0)
    for name, queue in summary.get("queue_info", {}).items():
        if isinstance(queue, dict) and (name in keys or queue.get("free", 0)):
            keys[str(name)] = int(queue.get("free", 0))
    return keys


def _preset_rpc_key(artifact: Artifact) -> str:
    from edgecompile.targets import resolve_target

    try:
        return resolve_target(artifact.manifest.preset).rpc_key
    except EdgecompileError:
        raise EdgecompileError(
            f"no RPC key known for preset {artifact.manifest.preset!r}",
            "pass --rpc-key (the --key the board's RPC server registered with)",
        ) from None


def _flatten_remote(value: Any) -> list[np.ndarray]:
    """A VM result (tensor, or nested tuple of tensors) as a flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "Tuple"):
        return [array for item in value for array in _flatten_remote(item)]
    return [np.asarray(value)]
