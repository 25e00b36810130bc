"""Stage 1 → 2: a torch model (zoo name or ``pkg.module:function``) → a static-shape ONNX file.

The ONNX file is what every later stage reads, so it is checked here: it passes
``onnx.checker``, every tensor shape is a constant (TVM imports a ``Shape`` → ``Gather`` chain as a
dynamic shape that does not build), and ONNX Runtime reproduces torch's output.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgecompile._atomic import atomic_file
from edgecompile._interrupts import raise_if_interrupt
from edgecompile.errors import EdgecompileError, first_line
from edgecompile.input_size import check_input_pixels, parse_input_size
from edgecompile.zoo import get_model, model_info

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TorchModel:
    """A torch module with the one input shape it will be compiled for."""

    name: str
    module: nn.Module
    input_shape: tuple[int, int, int, int]
    task: str
    origin: str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class OnnxModel:
    """An exported ONNX file and what export measured about it."""

    name: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_relative_error: float | None


def is_module_reference(spec: str) -> bool:
    """True for ``pkg.module:function`` (and not a Windows-style or ONNX path)."""
    module, sep, function = spec.partition(":")
    return bool(sep and module and function.isidentifier() and not spec.endswith(".onnx"))


def load_torch_model(
    spec: str,
    *,
    input_size: str | Sequence[int] | None = None,
    batch: int = 1,
    seed: int = 0,
    weights: str | None = None,
) -> TorchModel:
    """Resolve a zoo name or ``pkg.module:function`` to an eval-mode module and its input shape."""
    if batch < 1:
        raise EdgecompileError(f"bad batch size {batch}", "use --batch 1 or more")
    size = parse_input_size(input_size)
    if is_module_reference(spec):
        module = _call_module_reference(spec, seed=seed)
        if weights is not None:
            from edgecompile.zoo import load_weights

            load_weights(module, weights)
        height, width = size or (224, 224)
        check_input_pixels(batch, height, width)
        origin = f"{spec}" + (f" with weights {weights}" if weights else "")
        return TorchModel(spec, module.eval(), (batch, 3, height, width), "custom", origin)
    info = model_info(spec)
    module = get_model(spec, seed=seed, weights=weights)
    height, width = size or info.input_size
    check_input_pixels(batch, height, width)
    origin = f"weights {weights}" if weights else f"seeded random weights (seed {seed})"
    # An alias (torchvision's "mnasnet1_0") names the zoo model: artifacts carry the zoo's name.
    return TorchModel(info.name, module, (batch, 3, height, width), info.task, origin)


def _call_module_reference(spec: str, *, seed: int) -> nn.Module:
    module_name, _, function_name = spec.partition(":")
    try:
        py_module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgecompileError(
            f"cannot import {module_name!r}: {exc}", "check the module path and PYTHONPATH"
        ) from None
    factory = getattr(py_module, function_name, None)
    if not callable(factory):
        raise EdgecompileError(
            f"{module_name!r} has no callable {function_name!r}",
            "point at a function that returns an nn.Module",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory()
        except Exception as exc:  # the user's code: report it, don't crash on it
            detail = first_line(exc)
            raise EdgecompileError(
                f"{spec}() raised {type(exc).__name__}: {detail}",
                "make the function callable with no arguments",
            ) from None
    if not isinstance(module, nn.Module):
        raise EdgecompileError(
            f"{spec} returned {type(module).__name__}, not a torch.nn.Module",
            "make the function return the model",
        )
    return module


def example_input(shape: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """The seeded random input every correctness check in edgecompile uses."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def run_torch(model: TorchModel, data: np.ndarray) -> np.ndarray:
    """Forward pass in eval mode; a shape the network cannot take is a user error, and so is
    a ``pkg.module:function`` model whose forward fails or returns no tensor."""
    shape = "x".join(str(d) for d in data.shape[2:])
    try:
        with torch.no_grad():
            out = model.module(torch.from_numpy(data))
    except RuntimeError as exc:
        raise EdgecompileError(
            f"{model.name} cannot run at input size {shape}: {first_line(exc)}",
            f"use its default size {_default_size(model)} or a multiple of 32 near it",
        ) from None
    except MemoryError:
        raise EdgecompileError(
            f"{model.name} at input size {shape} needs more memory than this machine has",
            "use a smaller --input-size or --batch",
        ) from None
    except Exception as exc:  # the user's forward: report it, don't crash on it
        raise EdgecompileError(
            f"{model.name}: forward raised {type(exc).__name__}: {first_line(exc)}",
            "make forward(x) take one NCHW float32 tensor and return a tensor",
        ) from None
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise EdgecompileError(
            f"{model.name}: forward returned {type(out).__name__}, not a tensor",
            "return a tensor (or a tuple whose first item is one)",
        )
    return out.numpy()


def _default_size(model: TorchModel) -> str:
    try:
        height, width = model_info(model.name).input_size
    except EdgecompileError:
        return "224x224"
    return f"{height}x{width}"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| over max |expected|: one number for a whole output tensor."""
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs progress and warnings (e.g. about torchvision) we don't want."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: TorchModel,
    output: str | Path,
    *,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> OnnxModel:
    """Export ``model`` to ``output`` with static shapes; check it with ONNX Runtime against torch.

    The torch forward runs first, so an input size the network cannot take is reported as such
    rather than as an exporter failure.
    """
    output = Path(output)
    data = example_input(model.input_shape, seed=seed)
    expected = run_torch(model, data)
    with atomic_file(output) as tmp:
        try:
            with _quiet_exporter():
                program = torch.onnx.export(
                    model.module,
                    (torch.from_numpy(data),),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    verbose=False,
                    external_data=False,
                )
                program.save(str(tmp))
        except Exception as exc:  # the exporter raises many types; the first line names the op
            raise_if_interrupt(exc)  # the exporter wraps what it caught, Ctrl-C included
            raise EdgecompileError(
                f"torch.onnx.export failed for {model.name}: {first_line(exc)}",
                "the model uses an op or Python construct the ONNX exporter cannot trace",
            ) from None
        proto = onnx.load(str(tmp))
        check_static_onnx(proto, source=model.name)
        error = None
        if verify:
            (actual,) = run_onnxruntime(tmp, {INPUT_NAME: data})
            error = relative_error(actual, expected)
            if not error <= tolerance:
                raise EdgecompileError(
                    f"ONNX Runtime output of {model.name} differs from torch by {error:.2e} "
                    f"(relative), above {tolerance:.0e}",
                    "report this model: an exported op computes differently from torch",
                )
    return OnnxModel(
        name=model.name,
        path=output,
        inputs=tensor_specs(proto.graph.input, proto),
        outputs=tensor_specs(proto.graph.output, proto),
        max_relative_error=error,
    )


_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.BOOL: "bool",
}


def tensor_specs(
    values: Sequence[onnx.ValueInfoProto], proto: onnx.ModelProto
) -> tuple[TensorSpec, ...]:
    """Graph inputs (minus initializers, which old exporters list as inputs) or outputs."""
    initializers = {init.name for init in proto.graph.initializer}
    specs = []
    for value in values:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(
            dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
        )
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type, f"onnx-type-{tensor_type.elem_type}")
        specs.append(TensorSpec(value.name, shape, dtype))
    return tuple(specs)


def check_static_onnx(proto: onnx.ModelProto, *, source: str) -> None:
    """Fail unless ``proto`` is valid ONNX with constant shapes and no run-time shape arithmetic."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise EdgecompileError(
            f"{source}: the ONNX model is invalid: {first_line(exc)}",
            "re-export it with a current torch.onnx.export",
        ) from None
    for spec in tensor_specs(proto.graph.input, proto) + tensor_specs(proto.graph.output, proto):
        if any(dim < 0 for dim in spec.shape):
            raise EdgecompileError(
                f"{source}: tensor {spec.name!r} has a dynamic shape {spec.shape}",
                "export with fixed input sizes (edgecompile fixes them with --input-size/--batch)",
            )
    dynamic = sorted({node.op_type for node in proto.graph.node if node.op_type == "Shape"})
    if dynamic:
        raise EdgecompileError(
            f"{source}: the ONNX graph computes shapes at run time (Shape ops)",
            "use Python-int sizes in the model (e.g. torch.split(x, [c, c], 1), not x.chunk())",
        )


def run_onnxruntime(
    path: str | Path, feeds: dict[str, np.ndarray], *, threads: int = 1
) -> list[np.ndarray]:
    """Reference output from ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
