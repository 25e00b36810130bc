"""The engines a host bench times (TVM, ONNX Runtime, torch) and one measurement of them.

:func:`measure` takes a JSON-able spec (what :mod:`edgecompile.benchmarking.workers` sends to
another process): it makes the runners, checks their outputs agree, then times them interleaved. The
runner factories are module-level so tests can swap one for a broken engine.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.benchmarking.timing import Runner, latency_stats, time_interleaved
from edgecompile.errors import EdgecompileError

#: ``tvm-int8``: our int8 build of the model (``build --int8``), beside ``ort-int8``: ONNX
#: Runtime on the same QDQ model.
ENGINES = ("tvm", "tvm-int8", "ort", "ort-int8", "torch")
TOLERANCE = 1e-4
#: Engines running an int8 model: checked against the fp32 reference by SQNR, since their
#: outputs differ from fp32 by design (quantization steps, not 1e-4).
INT8_ENGINES = frozenset({"tvm-int8", "ort-int8"})
#: The least SQNR (dB) an int8 engine's output keeps against the fp32 reference on the bench's
#: random input; below it the int8 model is broken, not merely quantized (mobilenet_v2 keeps
#: ~22 dB with random weights).
INT8_MIN_SQNR_DB = 10.0


def tvm_runner(library: str) -> Runner:
    import tvm
    from tvm import relax

    machine = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    main = machine["main"]
    # The inputs are copied into tensors kept across calls, as an application feeding camera
    # frames would. A fresh tensor per call cost far more than its copy: between VM calls the
    # 600 KB allocation was not reused cheaply (0.15 ms more per call than copying into a kept
    # tensor, 15% of mobilenet_v1_x0_25), while ORT reads the numpy array in place.
    kept: dict[int, Any] = {}

    def tensor(position: int, array: np.ndarray) -> Any:
        held = kept.get(position)
        if held is None or tuple(held.shape) != array.shape or str(held.dtype) != str(array.dtype):
            held = kept[position] = tvm.runtime.empty(array.shape, str(array.dtype))
        held.copyfrom(array)
        return held

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = main(*[tensor(position, x) for position, x in enumerate(inputs)])
        items = result if type(result).__name__ in ("Array", "Tuple") else [result]
        return [item.numpy() for item in items]

    return run


def ort_runner(onnx_path: str, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs, strict=True)))

    return run


def torch_runner(model: Any, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    module = model.module

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x) for x in inputs])
        out = out if isinstance(out, (list, tuple)) else [out]
        return [item.numpy() for item in out]

    return run


def make_runners(spec: dict[str, Any], threads: int) -> dict[str, Runner]:
    """A runner per engine of ``spec["engines"]``, in that order (the order they are timed)."""
    from edgecompile.runner import set_threads

    set_threads(threads)
    runners: dict[str, Runner] = {}
    torch_model = None
    onnx_path = spec["onnx"]
    if spec["torch"] is not None:
        from edgecompile.export import export_onnx, load_torch_model

        info = spec["torch"]
        torch_model = load_torch_model(
            info["name"], input_size=info["input_size"], batch=info["batch"], seed=info["seed"]
        )
        wants_onnx = {"ort", "ort-int8"} & set(spec["engines"])
        if wants_onnx and not onnx_path:  # an artifact without its ONNX
            onnx_path = str(Path(spec["scratch"]) / f"{info['name']}.onnx")
            if not Path(onnx_path).is_file():
                export_onnx(torch_model, onnx_path, seed=info["seed"])
    for engine in spec["engines"]:
        if engine in spec["libraries"]:
            runners[engine] = tvm_runner(spec["libraries"][engine])
        elif engine == "ort" and onnx_path:
            runners[engine] = ort_runner(onnx_path, threads)
        elif engine == "ort-int8" and spec.get("int8_onnx"):  # the QDQ model tvm-int8 built
            runners[engine] = ort_runner(spec["int8_onnx"], threads)
        elif engine == "ort-int8" and onnx_path:
            runners[engine] = ort_runner(str(_int8_model(onnx_path, spec["scratch"])), threads)
        elif engine == "torch" and torch_model is not None:
            runners[engine] = torch_runner(torch_model, threads)
    return runners


def _int8_model(onnx_path: str, scratch: str) -> Path:
    """The QDQ int8 model of ``onnx_path`` (``edgecompile quantize`` on the default
    photographs), made once per bench in its scratch folder."""
    from edgecompile.quantization import quantize

    path = Path(scratch) / f"{Path(onnx_path).stem}.int8.onnx"
    if not path.is_file():
        quantize(onnx_path, output=path)
    return path


def check_agreement(
    outputs: dict[str, list[np.ndarray]],
    tolerance: float = TOLERANCE,
    quantized: Collection[str] = (),
) -> tuple[str, dict[str, float]]:
    """Each engine's max relative error against the reference (ORT if present, else torch);
    int8 engines and the ``quantized`` ones (libraries built from a QDQ model) are held to an
    SQNR floor instead of the float tolerance.

    Raises before any timing happens, so a wrong engine never gets a number printed.
    """
    from edgecompile.export import relative_error

    reference = "ort" if "ort" in outputs else "torch" if "torch" in outputs else "tvm"
    expected = outputs[reference]
    errors: dict[str, float] = {}
    for engine, actual in outputs.items():
        if engine in INT8_ENGINES or engine in quantized:
            errors[engine] = _check_int8(engine, actual, expected, reference)
            continue
        if len(actual) != len(expected) or any(
            a.shape != e.shape for a, e in zip(actual, expected, strict=False)
        ):
            raise EdgecompileError(
                f"{engine} and {reference} return different output shapes",
                "the engines do not compute the same model; rebuild the artifact",
            )
        error = max(relative_error(a, e) for a, e in zip(actual, expected, strict=True))
        if not error <= tolerance:
            raise EdgecompileError(
                f"{engine} disagrees with {reference}: max relative error {error:.2e} > "
                f"{tolerance:.0e}; no time reported for it",
                "rebuild the artifact from the same model and seed, or report the model",
            )
        errors[engine] = error
    return reference, errors


def _check_int8(
    engine: str, actual: list[np.ndarray], expected: list[np.ndarray], reference: str
) -> float:
    """An int8 engine's max relative error, once its SQNR against ``reference`` is at least
    :data:`INT8_MIN_SQNR_DB`."""
    from edgecompile.export import relative_error
    from edgecompile.quantization.accuracy import compare_outputs

    if [a.shape for a in actual] != [e.shape for e in expected]:
        raise EdgecompileError(
            f"{engine} and {reference} return different output shapes",
            "the engines do not compute the same model; rebuild the artifact",
        )
    sqnr = min(compare_outputs(e, a).sqnr_db for a, e in zip(actual, expected, strict=True))
    if not sqnr >= INT8_MIN_SQNR_DB:
        raise EdgecompileError(
            f"{engine} disagrees with {reference}: SQNR {sqnr:.1f} dB < {INT8_MIN_SQNR_DB:.0f} dB; "
            "no time reported for it",
            "check the calibration of the int8 model (edgecompile quantize prints its accuracy)",
        )
    return max(relative_error(a, e) for a, e in zip(actual, expected, strict=True))


def _inputs(spec: dict[str, Any]) -> list[np.ndarray]:
    from edgecompile.export import example_input

    return [
        example_input(shape, seed=spec["seed"] + index).astype(dtype)
        for index, (shape, dtype) in enumerate(spec["inputs"])
    ]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One thread count, all engines, in this process: outputs checked, then timed interleaved
    (:func:`~edgecompile.benchmarking.timing.time_interleaved`)."""
    inputs = [np.asarray(x, dtype=np.float32) for x in _inputs(spec)]
    runners = make_runners(spec, spec["threads"])
    outputs = {engine: run(inputs) for engine, run in runners.items()}
    reference, errors = check_agreement(outputs, spec["tolerance"], spec.get("quantized", ()))
    seconds = time_interleaved(runners, inputs, spec["repeat"], spec["warmup"])
    stats = {engine: latency_stats(times) for engine, times in seconds.items()}
    return {"reference": reference, "errors": errors, "stats": stats}
