"""Stage 5 (local): load a built library with TVM's runtime and run it, as a device does."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompile.artifact import Artifact, elf_info, load_artifact, sha256_file
from edgecompile.errors import EdgecompileError, last_line

#: Input dtypes converted to the library's float32 with a note rather than refused: they
#: hold the same kind of values, and float32 keeps what a float32 network can use of them.
_CONVERTIBLE_TO_FLOAT32 = ("float64", "float16")


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    seconds: float


def set_threads(threads: int | None) -> None:
    """Size TVM's thread pool (the same knob as TVM_NUM_THREADS)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EdgecompileError(f"bad thread count {threads!r}", "use 1 or more threads")
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
    from edgecompile.export import example_input  # imports torch: only when an input is made

    return [
        example_input(spec["shape"], seed=seed + index).astype(spec["dtype"])
        for index, spec in enumerate(artifact.manifest.inputs)
    ]


def check_library(artifact: Artifact) -> None:
    """The library is the one its manifest describes (sha256): a library replaced or damaged
    since the build is refused before it is loaded, here or on a board."""
    try:
        actual = sha256_file(artifact.library)
    except OSError as error:
        raise EdgecompileError(
            f"cannot read {str(artifact.library)!r}: {error.strerror or error}", "rebuild it"
        ) from None
    expected = artifact.manifest.library_sha256
    if actual != expected:
        raise EdgecompileError(
            f"{str(artifact.library)!r} does not match its manifest (sha256 {actual[:12]}... "
            f"vs {str(expected)[:12]}...)",
            "rebuild the artifact with `edgecompile build`; never edit the .so by hand",
        )


def load_input_files(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """One array per ``.npy`` file (``--input``); anything else -- another format, an
    ``.npz`` archive, pickled objects, an unreadable file -- is one line naming the file."""
    arrays = []
    for path in paths:
        fix = "save the input with numpy.save(path, array) as a numeric .npy file"
        try:
            loaded = np.load(path, allow_pickle=False)
        except OSError as error:
            raise EdgecompileError(
                f"cannot read --input {str(path)!r}: {error.strerror or error}", fix
            ) from None
        # Not .npy, pickled, object dtype, truncated -- and a mangled header makes numpy's
        # header parser raise SyntaxError, tokenize.TokenError and more (found by fuzzing).
        except Exception as error:
            raise EdgecompileError(
                f"--input {str(path)!r} is not a numeric .npy array: {last_line(error)}", fix
            ) from None
        if not isinstance(loaded, np.ndarray):  # an .npz archive
            loaded.close()
            raise EdgecompileError(
                f"--input {str(path)!r} is an .npz archive, not one array",
                "pass each array as its own .npy file (numpy.save), one --input per model input",
            )
        if loaded.dtype.kind not in "biuf":
            raise EdgecompileError(
                f"--input {str(path)!r} holds {loaded.dtype} data, not numbers",
                "save a numeric array (e.g. float32)",
            )
        arrays.append(loaded)
    return arrays


def conform_inputs(
    artifact: Artifact, inputs: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[str]]:
    """``inputs`` in the dtypes the library takes, and a note per conversion made.

    A float64 (or float16) array for a float32 input is converted: numpy's default float is
    float64, and rounding it to float32 loses nothing a float32 network could use. Values
    float32 cannot hold are refused; other dtypes are left for :func:`check_inputs` to refuse.
    """
    converted: list[np.ndarray] = []
    notes: list[str] = []
    specs = artifact.manifest.inputs
    for data, spec in zip(inputs, specs, strict=False):
        if str(data.dtype) in _CONVERTIBLE_TO_FLOAT32 and spec.get("dtype") == "float32":
            with np.errstate(over="ignore", invalid="ignore"):
                narrow = data.astype(np.float32)
            if not np.isfinite(narrow[np.isfinite(data)]).all():
                raise EdgecompileError(
                    f"input {spec.get('name')!r} has values float32 cannot hold",
                    "scale the input to the range the model was trained on",
                )
            notes.append(
                f"input {spec.get('name')!r} converted from {data.dtype} to float32, the "
                "library's dtype (rounded to float32 precision)"
            )
            data = narrow
        converted.append(data)
    converted.extend(inputs[len(converted) :])
    return converted, notes


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
                "rebuild with --input-size/--batch to match, or reshape the array"
                if list(data.shape) != list(spec["shape"])
                else f"convert the array: array.astype({spec['dtype']!r})",
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
    check_library(artifact)
    set_threads(threads)
    import tvm.relax  # noqa: F401  # TVM's import takes seconds: not part of the run's time

    start = time.perf_counter()
    outputs = run_library(artifact.library, data)
    return RunResult(outputs, time.perf_counter() - start)
