"""Libraries built for 32- and 64-bit boards run without Python: the native runtime and runner,
cross-built with zig, under qemu-user on Debian bullseye's glibc (2.31) and nothing else.

Slow: a cold cache builds the runtime per architecture (minutes) and Debian's glibc is fetched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompile.artifact import elf_info
from edgecompile.builder import build
from edgecompile.errors import EdgecompileError
from edgecompile.export import example_input, load_torch_model, relative_error, run_torch
from edgecompile.native import runtime
from edgecompile.native.bundle import bundle
from edgecompile.native.execute import QEMU, check_runtime_version, run_native
from edgecompile.native.sysroot import ensure_sysroot

REPO = Path(__file__).resolve().parents[2]
#: A small input keeps the emulated runs to seconds; the kernels are the same.
SIZE = 64


def test_a_library_of_another_tvm_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    artifact = SimpleNamespace(manifest=SimpleNamespace(model="squeezenet1_1", tvm_version="0.1"))
    with pytest.raises(EdgecompileError) as caught:
        check_runtime_version(artifact)  # type: ignore[arg-type]
    assert "TVM 0.1" in str(caught.value) and "\n" not in str(caught.value)


def _needs_qemu(arch: str) -> None:
    if shutil.which(QEMU[arch][0]) is None:
        pytest.skip(f"needs {QEMU[arch][0]}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("target", "arch"), [("rpi3-armv7", "arm"), ("armv7", "arm"), ("rpi4", "aarch64")]
)
def test_the_native_runner_matches_torch_under_qemu(target: str, arch: str, tmp_path: Path) -> None:
    _needs_qemu(arch)
    result = build("squeezenet1_1", target, output_dir=tmp_path, input_size=str(SIZE))
    library = result.artifact.library
    assert elf_info(library).arch == arch
    if arch == "arm":  # hard float (EF_ARM_ABI_FLOAT_HARD in e_flags), as the armhf runtime
        flags = int.from_bytes(library.read_bytes()[36:40], "little")
        assert flags & 0x400, hex(flags)

    data = example_input(result.artifact.manifest.inputs[0]["shape"], seed=7)
    run = run_native(result.artifact, [data], warmup=1, repeat=3)
    assert run.how == f"native under {QEMU[arch][0]}"
    expected = run_torch(load_torch_model("squeezenet1_1", input_size=str(SIZE)), data)
    (output,) = run.outputs
    assert output.shape == expected.shape
    assert relative_error(output, expected) <= 1e-4
    report = run.report
    assert report["repeat"] == 3 and report["warmup"] == 1
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["p90_ms"]

    # The bundle runs as it is, from its own folder: the runner finds the runtime beside it.
    folder = bundle(result.artifact)
    program, cpu = QEMU[arch]
    np.save(tmp_path / "x.npy", data)
    line = subprocess.run(
        [program, "-L", str(ensure_sysroot(arch)), "-cpu", cpu, "./edgecompile-runner", ".",
         "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path)],
        cwd=folder, capture_output=True, text=True, timeout=600, check=True,
    ).stdout.splitlines()[-1]  # fmt: skip
    assert json.loads(line)["outputs"] == [str(tmp_path / "output0.npy")]
    assert relative_error(np.load(tmp_path / "output0.npy"), expected) <= 1e-4

    # An error raised inside the runtime (a damaged library) is the runner's one line and exit
    # 1, not an abort: it comes back through the C ABI, never as an exception into the runner.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copy(folder / "manifest.json", damaged)
    (damaged / library.name).write_bytes(b"not a library")
    failed = subprocess.run(
        [program, "-L", str(ensure_sysroot(arch)), "-cpu", cpu, str(folder / "edgecompile-runner"),
         str(damaged)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    (message,) = failed.stderr.strip().splitlines()
    assert message.startswith("edgecompile-runner: ")
    assert "Failed to load dynamic shared library" in message

    # The board needs glibc <= 2.31 and nothing else: no libstdc++/libc++, no Python.
    folder = runtime.ensure_runtime(arch)
    for name in (runtime.RUNTIME_LIBRARY, runtime.RUNNER):
        needed = _needed(folder / name)
        glibc = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2",
                 "ld-linux-armhf.so.3", "ld-linux-aarch64.so.1"}  # fmt: skip
        assert needed <= {*glibc, "libtvm_runtime.so"}, needed
        assert _newest_glibc(folder / name) <= (2, 31)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("target", "arch"), [("rpi3-armv7", "arm"), ("rpi4", "aarch64")])
def test_the_embedding_example_builds_and_runs(target: str, arch: str, tmp_path: Path) -> None:
    _needs_qemu(arch)
    if shutil.which("make") is None:
        pytest.skip("needs make")
    result = build("squeezenet1_1", target, output_dir=tmp_path, input_size=str(SIZE), verify=False)
    example = tmp_path / "embed"
    shutil.copytree(REPO / "examples" / "embed", example)
    subprocess.run(
        ["make", f"ARCH={arch}", f"PYTHON={sys.executable}"], cwd=example, check=True,
        capture_output=True, timeout=900,
    )  # fmt: skip
    shape = [str(d) for d in result.artifact.manifest.inputs[0]["shape"]]
    program, cpu = QEMU[arch]
    shown = subprocess.run(
        [program, "-L", str(ensure_sysroot(arch)), "-cpu", cpu, str(example / "embed"),
         str(result.artifact.library), *shape],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert "output shape: 1 1000" in shown.stdout

    # Its printed values are the model's: torch on the same input of ones agrees.
    ones = np.ones([int(d) for d in shape], dtype=np.float32)
    expected = run_torch(load_torch_model("squeezenet1_1", input_size=str(SIZE)), ones)
    values = [float(v) for v in shown.stdout.split("first values:")[1].split()]
    np.testing.assert_allclose(values, expected.reshape(-1)[: len(values)], rtol=1e-3, atol=1e-4)


def _needed(path: Path) -> set[str]:
    dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return {line.split("[")[1].split("]")[0] for line in dynamic.splitlines() if "NEEDED" in line}


def _newest_glibc(path: Path) -> tuple[int, ...]:
    symbols = subprocess.run(["readelf", "-V", str(path)], capture_output=True, text=True).stdout
    versions = {
        tuple(int(p) for p in word.removeprefix("GLIBC_").split("."))
        for word in symbols.split()
        if word.startswith("GLIBC_") and word.removeprefix("GLIBC_")[:1].isdigit()
    }
    return max(versions)
