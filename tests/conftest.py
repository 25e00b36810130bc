"""Shared fixtures of the build-half tests (targets, toolchain, importer, builder, runner, CLI).

Builds are the expensive part (a zoo model for the host is ~6 s on two cores), so artifacts are
built once per session through :func:`build_once` and shared by the modules that read them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def write_tiny_onnx(path: Path, *, batch: int | str = 1, size: int = 8) -> Path:
    """A three-op ONNX CNN made with onnx.helper: conv 3→4 (3×3, pad 1) → relu → global pool.

    Cheap to build for any board (well under a second), so the atomic-output and per-board
    link tests use it rather than a zoo model.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 1, 1])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def make_tiny_onnx() -> Callable[..., Path]:
    """:func:`write_tiny_onnx` (test modules cannot import conftest under importlib mode)."""
    return write_tiny_onnx


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def build_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """``build_once(model, target, **options)``: each distinct build runs once per session.

    The builder, runner and CLI tests share artifacts through this (a squeezenet1_1 host build
    is ~6 s; the machine is shared), each in a folder of its own.
    """
    import edgecompile

    cache: dict[tuple, object] = {}

    def build(model: str, target: str = "host", **options: object) -> object:
        key = (model, target, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("artifacts")
            cache[key] = edgecompile.build(model, target, output_dir=out, **options)
        return cache[key]

    return build


@pytest.fixture(autouse=True, scope="session")
def private_user_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the user's tuning records or bench history.

    ``build`` applies the records store of ``$EDGECOMPILE_RECORDS`` (else ``~/.cache``) by
    default, so a machine with records would silently change what "untuned" tests build; and
    every bench appends to a history there. Progress lines (a command prints them in a pipe
    too) stay out of the stderr the tests read; the tests of progress turn them on.
    """
    private = tmp_path_factory.mktemp("user-state")
    wanted = {
        "EDGECOMPILE_RECORDS": str(private / "records"),
        "EDGECOMPILE_BENCH_HISTORY": str(private / "bench-history.jsonl"),
        "EDGECOMPILE_PROGRESS": "off",
        # A schedule rule's unexpected exception fails the test that meets it (with the rule's
        # traceback) instead of costing a kernel its schedule quietly, as a user's build does:
        # accuracy checks pass on TVM's default lowering, so a fallback would go unseen.
        "EDGECOMPILE_STRICT_RULES": "1",
    }
    previous = {name: os.environ.get(name) for name in [*wanted, "COLUMNS"]}
    os.environ.update(wanted)
    # pytest-xdist's workers get COLUMNS=80, which tables fit themselves to; the tests of
    # widths set it themselves.
    os.environ.pop("COLUMNS", None)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --------------------------------------------------------------------------------------------
# The emulated arm64 board: required in CI, a skip with its reason elsewhere.

#: Set by .ci/run (CI=true is set by CI itself): a missing emulator fails instead of skipping.
REQUIRE_EMULATOR_ENV = "EDGECOMPILE_REQUIRE_EMULATOR"


def emulator_required() -> bool:
    """In CI the emulator tests must run: a missing board is a failure, never a green skip."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes")
        for name in ("CI", REQUIRE_EMULATOR_ENV)
    )


def emulator_unavailable(reason: str) -> None:
    """Fail (in CI) or skip (elsewhere) a test that needs the emulated board, saying why."""
    if emulator_required():
        pytest.fail(f"the emulated board is required here ({REQUIRE_EMULATOR_ENV}/CI): {reason}")
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where the emulated boards are required (CI), what they need is built before any test,
    unless cached: cold, the three root filesystems and two native runtimes take most of an
    hour on 2 cores, which inside the run would sit silent in one test's captured output and
    against its time limit. Here each step is a line of the log with its time (seconds warm).
    Only the controller builds (pytest-xdist's workers start after it)."""
    if hasattr(session.config, "workerinput") or not emulator_required():
        return
    from edgecompile.device.prebuild import prebuild
    from edgecompile.errors import EdgecompileError

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    try:
        prebuild(say)
    except EdgecompileError as error:
        pytest.exit(f"the emulated boards are required here but cannot be built: {error}", 3)


@pytest.fixture(scope="session")
def no_emulator() -> Callable[[str], None]:
    """:func:`emulator_unavailable` (test modules cannot import conftest under importlib mode)."""
    return emulator_unavailable


@pytest.fixture(scope="session")
def as_root() -> None:
    """The emulated board needs root (binfmt_misc, chroot)."""
    if os.geteuid() != 0:
        emulator_unavailable("the emulated board needs root (binfmt_misc, chroot)")


@pytest.fixture(scope="session")
def rootfs(as_root: None) -> Path:
    """The cached arm64 rootfs, built on first use (an flock keeps xdist workers from
    building it twice)."""
    from edgecompile.device import emulator
    from edgecompile.errors import EdgecompileError

    try:
        return emulator.ensure_rootfs(progress=lambda line: print(f"[rootfs] {line}"))
    except EdgecompileError as error:
        emulator_unavailable(f"cannot build the emulated board's rootfs: {error}")
        raise  # unreachable: emulator_unavailable fails or skips


# --------------------------------------------------------------------------------------------
# Scheduling on two cores (pytest-xdist) and time limits (pytest-timeout).

#: Every test of the emulated board (they share one board and one rootfs per worker) runs on
#: one xdist worker; the others spread over the rest.
EMULATOR_GROUP = "emulator"
#: The first emulator test may build the rootfs (~6 min cold) and start the board (~30 s).
EMULATOR_TIMEOUT_S = 900


# tryfirst: pytest-xdist's worker reads the xdist_group marks in its own hook of this name
# (appending the group to each node id); called after it, the marks were ignored and the board
# tests ran on both workers, two boards deploying into the one rootfs's home at once.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs_board = item.get_closest_marker("emulator") is not None or any(
            name in item.fixturenames for name in ("rootfs", "emulated_board")
        )
        if not needs_board:
            continue
        item.add_marker(pytest.mark.xdist_group(EMULATOR_GROUP))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(EMULATOR_TIMEOUT_S))


@pytest.fixture()
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """Run ``edgecompile ARGV``, expect exit 2 after exactly one ``Error:`` line (no traceback)
    and return that line."""
    from edgecompile.cli import main

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), captured.err
        assert "Traceback" not in captured.err + captured.out
        return lines[0]

    return run


@pytest.fixture()
def stand_in_artifact() -> Callable[..., Path]:
    """Writes an artifact folder whose library is a few stand-in bytes (for the checks a bundle
    or a deploy makes before anything runs): ``stand_in_artifact(folder, arch="aarch64")``."""
    from edgecompile.artifact import Manifest, write_manifest
    from edgecompile.native import runtime

    def write(folder: Path, arch: str = "aarch64") -> Path:
        folder.mkdir(parents=True)
        library = b"\x7fELF not really a model"
        (folder / "tiny.so").write_bytes(library)
        manifest = Manifest(
            model="tiny", preset="rpi4", target={"kind": "llvm"}, library="tiny.so",
            library_sha256=hashlib.sha256(library).hexdigest(), arch=arch,
            tvm_version=runtime.installed_sources().tvm_version, edgecompile_version="0",
            inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
            outputs=[{"name": "y", "shape": [1, 4], "dtype": "float32"}], weights="seeded",
            records_digest=None, schedules=[], build_seconds=1.0,
        )  # fmt: skip
        write_manifest(folder, manifest)
        return folder

    return write


@pytest.fixture()
def cached_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime folder as ``ensure_runtime`` leaves it (stand-in files with their real sha256,
    the installed TVM's version, tvm-ffi version "f"), which ``bundle`` then uses."""
    from edgecompile.native import bundle as bundling
    from edgecompile.native import runtime

    folder = tmp_path / "runtime"
    files = {}
    for name in (runtime.RUNTIME_LIBRARY, runtime.RUNNER):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
        files[name] = {"bytes": len(name), "sha256": hashlib.sha256(name.encode()).hexdigest()}
    record = {
        "arch": "aarch64", "tvm_version": runtime.installed_sources().tvm_version,
        "tvm_ffi_version": "f", "source_hash": "h", "files": files,
    }  # fmt: skip
    (folder / runtime.RECORD).write_text(json.dumps(record))
    monkeypatch.setattr(bundling, "ensure_runtime", lambda arch, progress=None: folder)
    return folder
