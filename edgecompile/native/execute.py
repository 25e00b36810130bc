"""Run an artifact with the native runner (no Python on the running side): on this machine
when it is the library's architecture, else under qemu-user with Debian's glibc as the sysroot.

The runner prints one JSON line (latencies, the output files); its outputs come back as arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile._atomic import scratch_directory
from edgecompile.artifact import Artifact, load_artifact
from edgecompile.errors import EdgecompileError
from edgecompile.native.runtime import RUNNER, canonical_arch, ensure_runtime, installed_sources
from edgecompile.progress import SILENT, Progress

#: qemu-user per architecture, and the CPU it emulates: the Pi 4's core; for 32-bit ARM "max",
#: as qemu-arm has no Cortex-A53/A72 and rpi3/rpi4-armv7 libraries use their ARMv8 AArch32 code.
QEMU = {"aarch64": ("qemu-aarch64-static", "cortex-a72"), "arm": ("qemu-arm-static", "max")}


@dataclass(frozen=True)
class NativeRun:
    outputs: list[np.ndarray]
    #: The runner's JSON line: median_ms, p90_ms, min_ms, mean_ms, threads, warmup, repeat, ...
    report: dict[str, Any]
    #: "native" on this machine, "native under qemu-arm-static" etc. when emulated.
    how: str


def check_runtime_version(artifact: Artifact) -> None:
    """A library runs only on the runtime of the TVM it was compiled with: refused before
    anything is built or run."""
    runtime_version = installed_sources().tvm_version
    if artifact.manifest.tvm_version != runtime_version:
        raise EdgecompileError(
            f"{artifact.manifest.model} was built with TVM {artifact.manifest.tvm_version}, the "
            f"native runtime here is TVM {runtime_version}",
            "rebuild the model with this TVM (`edgecompile build`), or install the TVM it was "
            "built with",
        )


def run_native(
    artifact: str | Path | Artifact,
    inputs: Sequence[np.ndarray] | None = None,
    *,
    seed: int = 0,
    warmup: int = 0,
    repeat: int = 1,
    threads: int | None = None,
    timeout: float = 600,
    progress: Progress = SILENT,
) -> NativeRun:
    """Run ``artifact`` through ``edgecompile-runner`` on ``inputs`` (the runner's own seeded
    random inputs if None); the runtime is built first if it is not cached."""
    from edgecompile.runner import check_inputs, check_library
    from edgecompile.targets import host_arch

    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    arch = canonical_arch(artifact.manifest.arch).name
    check_runtime_version(artifact)
    if inputs is not None:
        check_inputs(artifact, inputs)
    check_library(artifact)
    prefix, how, environment = [], "native", dict(os.environ)
    if arch != host_arch():
        prefix, how = _qemu(arch, environment)
    runtime = ensure_runtime(arch, progress=progress)
    with scratch_directory("edgecompile-native-run-") as work:
        argv = [*prefix, str(runtime / RUNNER), str(artifact.directory), "--output-dir", str(work)]
        for index, data in enumerate(inputs or []):
            path = work / f"input{index}.npy"
            np.save(path, np.ascontiguousarray(data))
            argv += ["--input", str(path)]
        argv += ["--seed", str(seed), "--warmup", str(warmup), "--repeat", str(repeat)]
        if threads is not None:
            argv += ["--threads", str(threads)]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False, env=environment
            )
        except subprocess.TimeoutExpired:
            raise EdgecompileError(
                f"the native runner took over {timeout:.0f} s ({how})",
                "use fewer --repeat runs, or a smaller --input-size",
            ) from None
        if result.returncode != 0:
            raise EdgecompileError(
                f"the native runner failed ({how}): {_runner_error(result.stderr)}",
                "check the artifact with `edgecompile run` here, or rebuild it",
            )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        outputs = [np.load(path) for path in report["outputs"]]
    return NativeRun(outputs, report, how)


def _runner_error(output: str) -> str:
    """The runner's own error line, else the last line (a crash: qemu's or the kernel's)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
    for line in lines:
        if line.startswith("edgecompile-runner: "):
            return line.removeprefix("edgecompile-runner: ")
    return lines[-1]


def _qemu(arch: str, environment: dict[str, str]) -> tuple[list[str], str]:
    from edgecompile.native.sysroot import ensure_sysroot

    program, cpu = QEMU[arch]
    if shutil.which(program) is None:
        raise EdgecompileError(
            f"{program} is not installed, so {arch} code cannot run on this machine",
            "apt-get install qemu-user-static",
        )
    environment["QEMU_CPU"] = cpu
    return [program, "-L", str(ensure_sysroot(arch))], f"native under {program}"
