"""``quantize``: a zoo model or an ONNX file → a static int8 QDQ ONNX model + its accuracy report.

ONNX Runtime's post-training quantization does the work (calibration, scales, the QDQ rewrite):
per-output-channel symmetric int8 weights, per-tensor uint8 activations whose ranges it measures
(min/max) on the calibration images. The result is a standard ONNX model that ONNX Runtime runs
as it is and TVM's ONNX frontend imports (QuantizeLinear / DequantizeLinear pairs around fp32
ops). Beside it goes the accuracy report, the quantized vs the fp32 model on the calibration and
on held-out images, as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgecompile._atomic import atomic_file, scratch_directory
from edgecompile._interrupts import raise_if_interrupt
from edgecompile.errors import EdgecompileError, first_line
from edgecompile.export import (
    export_onnx,
    is_module_reference,
    load_torch_model,
    tensor_specs,
)
from edgecompile.input_size import parse_input_size
from edgecompile.progress import SILENT, Progress
from edgecompile.quantization.accuracy import AccuracyReport, Agreement, compare_outputs
from edgecompile.quantization.checks import refuse_quantized_model
from edgecompile.quantization.images import (
    Preprocessing,
    check_images,
    default_image_sets,
    folder_image_sets,
    load_batches,
)
from edgecompile.quantization.paths import default_output, model_name, report_path_for

QUANTIZE_STAGES = 4
#: The ops whose weights int8 quantization is for: a model with none of them has nothing to
#: quantize (ONNX Runtime would only wrap its activations in quantize/dequantize pairs).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SCRATCH_PREFIX = "edgecompile-quantize-"
#: What :func:`_quantize_static` asks of ONNX Runtime, as the report records it.
SCHEME = {
    "format": "QDQ",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "calibration": "min/max (ONNX Runtime)",
}


@dataclass(frozen=True)
class QuantizedModel:
    """A written QDQ model, its accuracy report (also written beside it) and its source."""

    name: str
    path: Path
    report_path: Path
    accuracy: AccuracyReport
    origin: str
    seconds: float
    quantized_ops: dict[str, int]
    preprocessing: Preprocessing

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.name,
            "path": str(self.path),
            "report": str(self.report_path),
            "origin": self.origin,
            "quantized_ops": self.quantized_ops,
            "scheme": SCHEME,
            "preprocessing": asdict(self.preprocessing),
            "seconds": round(self.seconds, 2),
            "accuracy": self.accuracy.to_dict(),
        }


def quantize(
    model: str,
    *,
    calibration: str | Path | None = None,
    output: str | Path | None = None,
    input_size: str | Sequence[int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    progress: Progress = SILENT,
) -> QuantizedModel:
    """Quantize ``model`` (a zoo name, ``pkg.module:function`` or an ONNX file) to int8 QDQ.

    ``calibration``: a folder of JPEG/PNG images (a fifth held out for the report), else
    scikit-image's photographs. Writes ``output`` [``<name>.int8.onnx``] and its accuracy
    report (:func:`report_path_for`), each atomically.
    """
    start = time.perf_counter()
    output = Path(output) if output is not None else default_output(model)
    size = parse_input_size(input_size)
    refuse_quantized_model(model, "quantize")
    with progress.stage("read calibration images"):
        images = folder_image_sets(calibration) if calibration else default_image_sets()
        check_images((*images.calibration, *images.held_out))
    with scratch_directory(SCRATCH_PREFIX) as scratch:
        with progress.stage("read ONNX" if model.endswith(".onnx") else "export to ONNX"):
            fp32_path, origin, family = _fp32_model(
                model, scratch, input_size=size, weights=weights, seed=seed
            )
            proto = onnx.load(str(fp32_path))
            input_name, shape = _image_input(proto, source=model)
            _check_quantizable(proto, source=model)
            preprocessing = Preprocessing.for_family(family, shape[2], shape[3])
            calibration_batches = load_batches(images.calibration, preprocessing, shape[0])
            held_out_batches = load_batches(images.held_out, preprocessing, shape[0])
        with progress.stage("calibrate and quantize (ONNX Runtime)"):
            int8_path = scratch / "model.int8.onnx"
            _quantize_static(fp32_path, int8_path, input_name, calibration_batches, source=model)
            quantized_ops = _quantized_ops(onnx.load(str(int8_path)))
            if not quantized_ops:
                raise EdgecompileError(
                    f"{model}: ONNX Runtime quantized none of its ops",
                    "quantize a model with Conv, Gemm or MatMul layers",
                )
        with progress.stage("compare with fp32"):
            accuracy = AccuracyReport(
                calibration=_agreement(
                    fp32_path, int8_path, input_name, calibration_batches, images.calibration
                ),
                held_out=_agreement(
                    fp32_path, int8_path, input_name, held_out_batches, images.held_out
                ),
                calibration_images=tuple(path.name for path in images.calibration),
                held_out_images=tuple(path.name for path in images.held_out),
                images_from=images.source,
            )
        name = model_name(model)
        result = QuantizedModel(
            name=name,
            path=output,
            report_path=report_path_for(output),
            accuracy=accuracy,
            origin=origin,
            seconds=time.perf_counter() - start,
            quantized_ops=quantized_ops,
            preprocessing=preprocessing,
        )
        _write(result, int8_path)
    return result


def _fp32_model(
    model: str,
    scratch: Path,
    *,
    input_size: tuple[int, int] | None,
    weights: str | None,
    seed: int,
) -> tuple[Path, str, str | None]:
    """The static fp32 ONNX file to quantize, where it came from, and its zoo family."""
    if model.endswith(".onnx"):
        from edgecompile.importer import load_onnx, make_static

        if weights is not None:
            raise EdgecompileError(
                "--weights loads a state_dict into a torch model; an ONNX file holds its own",
                "drop --weights, or quantize the zoo model or pkg.module:function instead",
            )

        proto = load_onnx(model)
        shapes = _pinned_shapes(proto, input_size)
        static = make_static(proto, source=model, input_shapes=shapes)
        path = scratch / "model.onnx"
        onnx.save(static, str(path))
        return path, f"ONNX file {model}", None
    torch_model = load_torch_model(model, input_size=input_size, seed=seed, weights=weights)
    path = scratch / "model.onnx"
    export_onnx(torch_model, path, seed=seed)
    family = None
    if not is_module_reference(model):
        from edgecompile.zoo import model_info

        family = model_info(model).family
    return path, torch_model.origin, family


def _pinned_shapes(
    proto: onnx.ModelProto, input_size: tuple[int, int] | None
) -> dict[str, list[int]] | None:
    """``--input-size`` for an ONNX file's NCHW inputs (batch and channels kept)."""
    if input_size is None:
        return None
    shapes = {}
    for spec in tensor_specs(proto.graph.input, proto):
        if len(spec.shape) == 4:
            shapes[spec.name] = [max(spec.shape[0], 1), spec.shape[1], *input_size]
    return shapes


def _image_input(proto: onnx.ModelProto, *, source: str) -> tuple[str, tuple[int, ...]]:
    """The model's one input, an NCHW float32 image with 3 channels."""
    inputs = tensor_specs(proto.graph.input, proto)
    if len(inputs) != 1:
        raise EdgecompileError(
            f"{source}: the model has {len(inputs)} inputs; calibration feeds one image input",
            "quantize a model with a single NCHW image input",
        )
    spec = inputs[0]
    if len(spec.shape) != 4 or spec.shape[1] != 3 or spec.dtype != "float32":
        raise EdgecompileError(
            f"{source}: input {spec.name!r} is {spec.dtype} {'x'.join(map(str, spec.shape))}, "
            "not an NCHW float32 RGB image",
            "quantize a model whose input is float32 N x 3 x H x W",
        )
    return spec.name, spec.shape


def _check_quantizable(proto: onnx.ModelProto, *, source: str) -> None:
    used = {node.op_type for node in proto.graph.node if node.domain in ("", "ai.onnx")}
    if not used & WEIGHTED_OPS:
        raise EdgecompileError(
            f"{source}: the model has no op to quantize (no Conv, ConvTranspose, Gemm or MatMul)",
            "quantize a model with weighted layers; its ops are " + ", ".join(sorted(used)),
        )


class _CalibrationImages(CalibrationDataReader):  # type: ignore[misc]
    """ONNX Runtime's calibration data reader: each batch once, as ``{input: batch}``."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer logs on the root logger (e.g. "consider pre-processing": our exported
    and made-static models already are: static shapes, BatchNorm folded into Conv)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_static(
    fp32_path: Path,
    int8_path: Path,
    input_name: str,
    batches: Sequence[np.ndarray],
    *,
    source: str,
) -> None:
    reader = _CalibrationImages(input_name, batches)
    try:
        with _quiet_quantizer():
            quantize_static(
                str(fp32_path),
                str(int8_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # u8 activations x s8 weights: ORT's int8 kernels on x86 (VNNI's vpdpbusd is
                # u8 x s8) ran mobilenet_v2 2.2x faster than fp32 this way, but only 1.2x with
                # s8 activations (1 thread); the accuracy was the same. An ARM kernel wanting
                # s8 x s8 (sdot) gets s8 activations by flipping the top bit, zero point - 128.
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
    except Exception as exc:  # ORT's quantizer raises assorted types on a graph it cannot take
        raise_if_interrupt(exc)
        raise EdgecompileError(
            f"{source}: ONNX Runtime could not quantize the model: {first_line(exc)}",
            "report it with the ONNX file; `edgecompile export` writes what quantize expects",
        ) from None


def _quantized_ops(proto: onnx.ModelProto) -> dict[str, int]:
    """The ops whose weights ORT quantized: each op fed by a DequantizeLinear of an initializer,
    counted by type."""
    initializers = {init.name for init in proto.graph.initializer}
    weight_outputs = {
        node.output[0]
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
    }
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS and any(name in weight_outputs for name in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _outputs(path: Path, input_name: str, batches: Sequence[np.ndarray], count: int) -> np.ndarray:
    """The model's first output over ``batches`` (one session), the padding samples dropped."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {input_name: batch})[0] for batch in batches]
    return np.concatenate(outputs)[:count]


def _agreement(
    fp32_path: Path,
    int8_path: Path,
    input_name: str,
    batches: Sequence[np.ndarray],
    paths: Sequence[Path],
) -> Agreement:
    reference = _outputs(fp32_path, input_name, batches, len(paths))
    quantized = _outputs(int8_path, input_name, batches, len(paths))
    return compare_outputs(reference, quantized)


def _write(result: QuantizedModel, int8_path: Path) -> None:
    """The model, then its report: each atomic, so neither is ever half-written."""
    try:
        with atomic_file(result.path) as tmp:
            tmp.write_bytes(int8_path.read_bytes())
        with atomic_file(result.report_path) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    except OSError as error:
        raise EdgecompileError(
            f"cannot write {str(result.path)!r}: {error.strerror or error}",
            "give -o a path in a writable folder",
        ) from None
