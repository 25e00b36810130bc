"""Mistakes in what `run`, `bench`, `profile`, `build`, `export` and `report` are given are
found early -- before torch and TVM load, before any build -- and reported as one ``Error:``
line; waits on the network end; a bench leaves no build behind.

Each test names the mistake of issues #19/#20 it covers.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.artifact import Artifact
from edgecompile.builder import BuildResult
from edgecompile.cli import main

Build = Callable[..., BuildResult]
CliError = Callable[[list[str]], str]


@pytest.fixture(scope="module")
def tiny(build_once: Build, tiny_onnx: Path) -> Artifact:
    return build_once(str(tiny_onnx), "host").artifact


@pytest.fixture()
def never_called(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, str], None]:
    """``never_called(module, name)``: the function must not run (the mistake was found before
    it: the export, the build, the bench)."""

    def patch(module: Any, name: str) -> None:
        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError(f"{name} ran before the mistake was reported")

        monkeypatch.setattr(module, name, refuse)

    return patch


def _copy(artifact: Artifact, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact.directory, tmp_path / artifact.directory.name))


# --------------------------------------------------------------------------------------------
# run --input: one numeric .npy per input (#19.7, #20.5)


def test_run_input_that_is_not_npy_is_one_line(
    tiny: Artifact, tiny_onnx: Path, cli_error: CliError
) -> None:
    line = cli_error(["run", str(tiny.directory), "--input", str(tiny_onnx)])
    assert "tiny.onnx" in line and "not a numeric .npy" in line


def test_run_input_npz_archive_is_one_line(
    tiny: Artifact, tmp_path: Path, cli_error: CliError
) -> None:
    archive = tmp_path / "inputs.npz"
    np.savez(archive, input=np.zeros((1, 3, 8, 8), np.float32))
    assert ".npz archive" in cli_error(["run", str(tiny.directory), "--input", str(archive)])


def test_run_input_object_array_is_one_line(
    tiny: Artifact, tmp_path: Path, cli_error: CliError
) -> None:
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "objects.npy" in cli_error(["run", str(tiny.directory), "--input", str(objects)])


def test_run_converts_a_float64_input_with_a_note(
    tiny: Artifact, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.random.default_rng(1).standard_normal((1, 3, 8, 8))  # numpy's default: float64
    as64, as32 = tmp_path / "x64.npy", tmp_path / "x32.npy"
    np.save(as64, data)
    np.save(as32, data.astype(np.float32))
    outputs = []
    for path in (as64, as32):
        out = tmp_path / f"out-{path.stem}.npy"
        capsys.readouterr()
        main(["run", str(tiny.directory), "--input", str(path), "--output", str(out)])
        outputs.append(np.load(out))
        err = capsys.readouterr().err
        assert ("converted from float64 to float32" in err) == (path == as64), err
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_run_input_of_another_dtype_says_how_to_convert(
    tiny: Artifact, tmp_path: Path, cli_error: CliError
) -> None:
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((1, 3, 8, 8), np.int64))
    assert "astype('float32')" in cli_error(["run", str(tiny.directory), "--input", str(ints)])


def test_run_mistakes_are_found_before_torch_and_tvm_load(tiny: Artifact, tmp_path: Path) -> None:
    """#20.5: option mistakes took 4-9 s of torch and TVM imports to be reported."""
    script = textwrap.dedent(
        """
        import atexit, sys
        atexit.register(lambda: print("loaded:", sorted({"torch", "tvm"} & set(sys.modules))))
        from edgecompile.cli import main
        main(sys.argv[1:])
        """
    )
    not_npy = tmp_path / "model.onnx"
    not_npy.write_bytes(b"not an array")
    for mistake in (
        ["--rpc", "nonsense"],
        ["--threads", "0"],
        ["--input", str(not_npy)],
        ["--output", str(not_npy / "out.npy")],
    ):
        ran = subprocess.run(
            [sys.executable, "-c", script, "run", str(tiny.directory), *mistake],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 2, ran.stderr
        assert ran.stderr.startswith("Error: ") and len(ran.stderr.splitlines()) == 1, ran.stderr
        assert "loaded: []" in ran.stdout, (mistake, ran.stdout)


# --------------------------------------------------------------------------------------------
# --threads: 1 to the cores the target has (#19.5, #19.7)


@pytest.mark.parametrize("count", ["0", "-2", "100000"])
def test_run_refuses_thread_counts_the_machine_cannot_have(
    tiny: Artifact, count: str, cli_error: CliError, never_called: Callable[[Any, str], None]
) -> None:
    import edgecompile.runner

    never_called(edgecompile.runner, "run")
    assert f"--threads {count}" in cli_error(["run", str(tiny.directory), "--threads", count])


def test_run_on_a_board_refuses_more_threads_than_the_board_has(
    tiny: Artifact, cli_error: CliError
) -> None:
    cores = int(tiny.manifest.target["num-cores"])
    line = cli_error(
        ["run", str(tiny.directory), "--rpc", "127.0.0.1:1", "--threads", str(cores + 1)]
    )
    assert f"{cores} core" in line


def test_bench_refuses_a_huge_thread_count_before_building(
    tiny_onnx: Path, cli_error: CliError, never_called: Callable[[Any, str], None]
) -> None:
    import edgecompile.benchmarking

    never_called(edgecompile.benchmarking, "bench_local")
    assert "--threads 100000" in cli_error(["bench", str(tiny_onnx), "--threads", "1,100000"])


def test_bench_on_a_board_refuses_more_threads_than_the_board_has(
    tiny: Artifact, cli_error: CliError
) -> None:
    cores = int(tiny.manifest.target["num-cores"])
    line = cli_error(
        ["bench", str(tiny.directory), "--rpc", "127.0.0.1:1", "--threads", str(cores + 1)]
    )
    assert f"--threads {cores + 1}" in line


@pytest.mark.parametrize("count", ["0", "-1"])
def test_profile_refuses_zero_and_negative_threads(
    tiny: Artifact, count: str, cli_error: CliError
) -> None:
    assert f"--threads {count}" in cli_error(["profile", str(tiny.directory), "--threads", count])


# --------------------------------------------------------------------------------------------
# a library that is not the one its manifest names (#19.8)


@pytest.fixture()
def tampered(tiny: Artifact, tmp_path: Path) -> Path:
    directory = _copy(tiny, tmp_path)
    with open(directory / tiny.manifest.library, "ab") as library:
        library.write(b"\0edited")  # still loads: only the sha256 can tell
    return directory


@pytest.mark.parametrize(
    "command", [["run"], ["bench", "--compare", ""], ["profile", "--runs", "1"]]
)
def test_a_library_that_differs_from_its_manifest_is_refused(
    tampered: Path, command: list[str], cli_error: CliError
) -> None:
    line = cli_error([command[0], str(tampered), *command[1:]])
    assert "does not match its manifest" in line and "rebuild" in line


# --------------------------------------------------------------------------------------------
# outputs: an unwritable -o is found before any work (#20.5); a full disk is one line (#19.7)


def test_unwritable_outputs_are_found_before_any_work(
    tmp_path: Path,
    tiny_onnx: Path,
    cli_error: CliError,
    never_called: Callable[[Any, str], None],
) -> None:
    import edgecompile.benchmarking
    import edgecompile.builder
    import edgecompile.export
    import edgecompile.reporting

    never_called(edgecompile.builder, "build")
    never_called(edgecompile.export, "load_torch_model")
    never_called(edgecompile.benchmarking, "bench_local")
    never_called(edgecompile.benchmarking, "profile_local")
    never_called(edgecompile.reporting, "report")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    beneath = str(a_file / "out")
    for argv in (
        ["build", str(tiny_onnx), "-o", beneath],
        ["export", "squeezenet1_1", "-o", str(a_file / "model.onnx")],
        ["bench", str(tiny_onnx), "-o", beneath],
        ["profile", str(tiny_onnx), "-o", beneath],
        ["report", "--models", "squeezenet1_1", "-o", beneath],
    ):
        assert "a-file" in cli_error(argv), argv


def test_run_output_that_cannot_be_written_is_found_before_running(
    tiny: Artifact, tmp_path: Path, cli_error: CliError, never_called: Callable[[Any, str], None]
) -> None:
    import edgecompile.runner

    never_called(edgecompile.runner, "run")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "--output" in cli_error(["run", str(tiny.directory), "--output", f"{a_file}/x.npy"])


def test_a_full_disk_while_saving_the_output_is_one_line(
    tiny: Artifact, tmp_path: Path, cli_error: CliError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", disk_full)
    out = tmp_path / "out.npy"
    assert os.strerror(errno.ENOSPC) in cli_error(
        ["run", str(tiny.directory), "--output", str(out)]
    )
    assert not out.exists() and not list(tmp_path.glob(".out.npy*")), list(tmp_path.iterdir())


def test_no_room_for_the_bench_build_is_one_line(
    tiny_onnx: Path, cli_error: CliError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(*_args: Any, **_kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkdtemp", no_room)
    assert "temporary folder" in cli_error(["bench", str(tiny_onnx), "--compare", ""])


# --------------------------------------------------------------------------------------------
# models from pkg.module:function whose forward misbehaves; huge input sizes (#19.7)


@pytest.fixture()
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "misbehaving_models.py").write_text(
        textwrap.dedent(
            """
            import torch


            class Picky(torch.nn.Module):
                def forward(self, x, y):  # wants two inputs
                    return x + y


            class Chatty(torch.nn.Module):
                def forward(self, x):
                    return {"logits": x}


            def picky():
                return Picky()


            def chatty():
                return Chatty()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "misbehaving_models"


def test_a_forward_that_raises_is_one_line(
    user_models: str, tmp_path: Path, cli_error: CliError
) -> None:
    line = cli_error(["export", f"{user_models}:picky", "-o", str(tmp_path / "m.onnx")])
    assert "forward raised TypeError" in line


def test_a_forward_that_returns_no_tensor_is_one_line(
    user_models: str, tmp_path: Path, cli_error: CliError
) -> None:
    line = cli_error(["export", f"{user_models}:chatty", "-o", str(tmp_path / "m.onnx")])
    assert "returned dict, not a tensor" in line


def test_a_huge_input_size_is_refused_before_allocating(
    tmp_path: Path, cli_error: CliError
) -> None:
    line = cli_error(
        ["export", "squeezenet1_1", "--input-size", "100000", "-o", str(tmp_path / "m.onnx")]
    )
    assert "too large" in line


@pytest.mark.parametrize(
    "mistake",
    [
        ["export", "squeezenet1_1", "--input-size", "100000", "-o", "m.onnx"],
        ["build", "squeezenet1_1", "--input-size", "0"],
        ["build", "squeezenet1_1", "--input-size", "224", "--batch", "0"],
        ["bench", "squeezenet1_1", "--input-size", "9x"],
        ["inspect", "squeezenet1_1", "--input-size", "-3"],
        ["build", "shufflenet_v2_x9"],
    ],
)
def test_input_size_and_batch_mistakes_are_found_before_torch_loads(
    mistake: list[str], tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import atexit, sys
        atexit.register(lambda: print("loaded:", sorted({"torch", "tvm"} & set(sys.modules))))
        from edgecompile.cli import main
        main(sys.argv[1:])
        """
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, *mistake],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.startswith("Error: ") and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "loaded: []" in ran.stdout, (mistake, ran.stdout)


# --------------------------------------------------------------------------------------------
# network waits end (#19.5)


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word; its port."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:  # ends the abandoned handshake with an EOF
        connection.close()
    server.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("option", ["--rpc", "--tracker"])
def test_a_server_that_never_answers_is_one_line_in_bounded_time(
    tiny: Artifact,
    silent_server: int,
    option: str,
    cli_error: CliError,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGECOMPILE_RPC_TIMEOUT", "2")
    started = time.monotonic()
    line = cli_error(["run", str(tiny.directory), option, f"127.0.0.1:{silent_server}"])
    assert "no answer from" in line and "in 2 s" in line
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_a_bad_rpc_timeout_setting_is_one_line(
    tiny: Artifact, silent_server: int, cli_error: CliError, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_RPC_TIMEOUT", "soon")
    line = cli_error(["run", str(tiny.directory), "--rpc", f"127.0.0.1:{silent_server}"])
    assert "EDGECOMPILE_RPC_TIMEOUT" in line


# --------------------------------------------------------------------------------------------
# bench MODEL: an existing matching build is used; a temporary one is removed (#20.8)


@pytest.fixture(scope="module")
def squeezenet(build_once: Build) -> BuildResult:
    return build_once("squeezenet1_1", "host", input_size=64)


def test_existing_build_matches_only_what_a_bench_would_build(squeezenet: BuildResult) -> None:
    from edgecompile.benchmarking.local import existing_build

    folder = squeezenet.artifact.directory.parent
    found = existing_build("squeezenet1_1", input_size="64", build_dir=folder)
    assert found is not None and found.directory == squeezenet.artifact.directory
    assert existing_build("squeezenet1_1", input_size="32", build_dir=folder) is None
    assert existing_build("squeezenet1_1", input_size="64", seed=1, build_dir=folder) is None
    assert existing_build("squeezenet1_1", input_size="64", build_dir=folder / "none") is None


def test_bench_uses_the_matching_build_in_build_and_says_so(
    squeezenet: BuildResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    never_called: Callable[[Any, str], None],
) -> None:
    import edgecompile.builder

    shutil.copytree(squeezenet.artifact.directory, tmp_path / "build" / "squeezenet1_1-host")
    monkeypatch.chdir(tmp_path)
    never_called(edgecompile.builder, "build")
    capsys.readouterr()
    main(["bench", "squeezenet1_1", "--input-size", "64", "--compare", "", "--repeat", "1"])
    err = capsys.readouterr().err
    assert "used the existing build build/squeezenet1_1-host" in err, err


def test_a_tampered_build_in_build_is_not_reused(squeezenet: BuildResult, tmp_path: Path) -> None:
    from edgecompile.benchmarking.local import existing_build

    copy = Path(shutil.copytree(squeezenet.artifact.directory, tmp_path / "squeezenet1_1-host"))
    with open(copy / squeezenet.artifact.manifest.library, "ab") as library:
        library.write(b"\0")
    assert existing_build("squeezenet1_1", input_size="64", build_dir=tmp_path) is None


def _bench_folders(where: Path) -> list[Path]:
    return sorted(where.glob("edgecompile-bench-*"))


def test_bench_removes_its_temporary_build(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecompile.benchmarking import bench_local

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report = bench_local(str(tiny_onnx), compare=[], repeat=1, warmup=0, isolate=False)
    assert report.timings and _bench_folders(tmp_path) == []


def test_bench_removes_its_temporary_build_on_ctrl_c(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecompile.benchmarking import local

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        assert len(_bench_folders(tmp_path)) == 1  # the build is there while it is measured
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(local, "_bench_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        local.bench_local(str(tiny_onnx), compare=[], repeat=1, warmup=0, isolate=False)
    assert _bench_folders(tmp_path) == []
