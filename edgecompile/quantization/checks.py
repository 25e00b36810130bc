"""The checks a quantization's inputs get before anything slow runs: a model that is not already
quantized, and calibration images that exist and decode.

Cheap (onnx and PIL, no torch, no ONNX Runtime, no TVM): ``quantize`` and ``build --int8`` make
them before the model is exported and calibrated (seconds to minutes), not after.
"""

from __future__ import annotations

from pathlib import Path

from edgecompile.errors import EdgecompileError, first_line

#: ONNX ops only a quantized model holds: QDQ pairs and the integer-operator formats.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)


def quantized_ops_in(path: str | Path) -> set[str]:
    """The :data:`QUANTIZED_OPS` the ONNX file at ``path`` holds (empty: a float model)."""
    import onnx

    try:
        # Nodes only: the weights (external data) are not needed to see the graph's ops.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a truncated or non-ONNX file: DecodeError, OSError, ...
        raise EdgecompileError(
            f"cannot read ONNX file {str(path)!r}: {first_line(exc)}",
            "give a valid .onnx file (edgecompile export writes one)",
        ) from None
    return {node.op_type for node in proto.graph.node} & QUANTIZED_OPS


def refuse_quantized_model(model: str, command: str) -> None:
    """An ONNX ``model`` that is already quantized is not quantized again (ORT would wrap its
    integers in a second layer of quantize/dequantize pairs)."""
    if not model.endswith(".onnx") or not Path(model).is_file():
        return  # a zoo name or a factory is float; a missing file is the reader's error
    found = quantized_ops_in(model)
    if found:
        raise EdgecompileError(
            f"{model} is already quantized (it has {', '.join(sorted(found))}); "
            f"{command} quantizes a float model",
            f"build it as it is: edgecompile build {model}",
        )


def check_calibration(calibration: str | Path | None) -> None:
    """``--calibration DIR`` is a folder with JPEG/PNG images that all decode (the default
    photographs, without it, are checked when they are read)."""
    if calibration is None:
        return
    from edgecompile.quantization.images import check_images, folder_image_sets

    images = folder_image_sets(calibration)
    check_images((*images.calibration, *images.held_out))


def check_int8_build(model: str, int8: bool, calibration: str | Path | None) -> None:
    """``build``'s ``int8``/``calibration``: together, for a float model, with images that
    decode; said before the model is exported, quantized and compiled."""
    if calibration is not None and not int8:
        raise EdgecompileError(
            "--calibration is for int8 builds: its images calibrate the quantization",
            "add --int8, or drop --calibration",
        )
    if int8:
        refuse_quantized_model(model, "build --int8")
        check_calibration(calibration)
