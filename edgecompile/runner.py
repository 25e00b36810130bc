"""Stage 5 (local): load a built library with TVM's runtime and run it, as a device does."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompile.artifact import Artifact, elf_info, load_artifact
from edgecompile.errors import EdgecompileError, last_line
from edgecompile.export import example_input


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    seconds: float


def set_threads(threads: int | None) -> None:
    """Size TVM's thread pool (the same knob as TVM_NUM_THREADS)."""
    if threads is None:
        return
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(threads)
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(0, threads)


def run_library(library: str | Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``tvm.runtime.load_module`` + ``relax.VirtualMachine``: exactly what a board runs."""
    import tvm
    from tvm import relax

    from edgecompile.targets import host_arch

    # dlopen() reports a library for another CPU as "No such file or directory": say what it is.
    elf = elf_info(library)
    if elf.arch != host_arch():
        raise EdgecompileError(
            f"{str(library)!r} is a {elf.bits}-bit {elf.arch} library; this machine is "
            f"{host_arch()}",
            "run it on its board (or the emulator), or rebuild it with --target host",
        )
    try:
        module = tvm.runtime.load_module(str(library))
    except Exception as exc:  # TVMError: wrong architecture, missing symbols, ...
        raise EdgecompileError(
            f"cannot load {str(library)!r} here: {last_line(exc)}",
            "is it built for this machine? use `--target host`, or run it on its board",
        ) from None
    machine = relax.VirtualMachine(module, tvm.cpu())
    result = machine["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])
    items = result if isinstance(result, (list, tuple)) or _is_tuple(result) else [result]
    return [item.numpy() for item in items]


def _is_tuple(value: object) -> bool:
    return type(value).__name__ in ("Array", "Tuple")


def random_inputs(artifact: Artifact, *, seed: int = 0) -> list[np.ndarray]:
    return [
        example_input(spec["shape"], seed=seed + index).astype(spec["dtype"])
        for index, spec in enumerate(artifact.manifest.inputs)
    ]


def check_inputs(artifact: Artifact, inputs: Sequence[np.ndarray]) -> None:
    specs = artifact.manifest.inputs
    if len(inputs) != len(specs):
        raise EdgecompileError(
            f"{artifact.manifest.model} takes {len(specs)} input(s), got {len(inputs)}",
            "pass one .npy per input",
        )
    for data, spec in zip(inputs, specs, strict=True):
        if list(data.shape) != list(spec["shape"]) or str(data.dtype) != spec["dtype"]:
            raise EdgecompileError(
                f"input {spec['name']!r} must be {spec['dtype']} {tuple(spec['shape'])}, "
                f"got {data.dtype} {data.shape}",
                "rebuild with --input-size/--batch to match, or reshape the array",
            )


def run(
    artifact: str | Path | Artifact,
    inputs: Sequence[np.ndarray] | None = None,
    *,
    seed: int = 0,
    threads: int | None = None,
) -> RunResult:
    """Run a host artifact on ``inputs`` (seeded random inputs if None)."""
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    data = list(inputs) if inputs is not None else random_inputs(artifact, seed=seed)
    check_inputs(artifact, data)
    set_threads(threads)
    start = time.perf_counter()
    outputs = run_library(artifact.library, data)
    return RunResult(outputs, time.perf_counter() - start)
