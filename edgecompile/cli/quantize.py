"""``edgecompile quantize``: a model → a static int8 QDQ ONNX model and its accuracy report."""

from __future__ import annotations

import click

from edgecompile.cli.options import (
    check_writable_file,
    input_size_option,
    json_option,
    print_json,
    seed_option,
    weights_option,
)


@click.command("quantize")
@click.argument("model")
@click.option(
    "--calibration", type=click.Path(), metavar="DIR",
    help="A folder of JPEG/PNG images to calibrate on (every 5th held out for the report) "
    "[scikit-image's sample photographs].",
)  # fmt: skip
@click.option(
    # no dir_okay=False: check_writable_file says a folder is not a file name in one line
    "-o", "--output", type=click.Path(),
    help="The int8 ONNX file to write [<model>.int8.onnx]; the report goes beside it as "
    "<model>.int8.accuracy.json.",
)  # fmt: skip
@input_size_option
@weights_option
@seed_option
@json_option
def quantize_command(
    model: str,
    calibration: str | None,
    output: str | None,
    input_size: str | None,
    weights: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Quantize MODEL to int8 (static, post-training) and report its accuracy against fp32.

    MODEL is a zoo name, pkg.module:function or an .onnx file. ONNX Runtime's quantizer
    calibrates the activation ranges on real images and writes a standard QDQ ONNX model
    (QuantizeLinear/DequantizeLinear around the ops): int8 weights, symmetric per output
    channel; uint8 activations, one scale per tensor. Images are resized and centre-cropped to
    the model's input size and normalized as the zoo model expects (ImageNet's mean and std
    for an ONNX file).

    The report compares the int8 model with the fp32 one in ONNX Runtime, on the calibration
    images and on held-out images (never the same ones): top-1 agreement, logit cosine
    similarity and SQNR (dB). With the zoo's seeded random weights these check the arithmetic;
    with --weights they are the accuracy to expect.

    \b
    Examples:
      edgecompile quantize mobilenet_v2
      edgecompile quantize shufflenet_v2 --calibration photos/ -o shufflenet_v2.int8.onnx
      edgecompile quantize model.onnx --input-size 160 --json
    """
    from edgecompile.quantization.paths import default_output

    path = output or str(default_output(model))
    check_writable_file(path, "-o")  # before the model exports and calibrates, not after
    from edgecompile.progress import Progress
    from edgecompile.quantization.accuracy import format_accuracy
    from edgecompile.quantization.pipeline import QUANTIZE_STAGES, quantize

    result = quantize(
        model,
        calibration=calibration,
        output=path,
        input_size=input_size,
        weights=weights,
        seed=seed,
        progress=Progress(QUANTIZE_STAGES),
    )
    if as_json:
        print_json(result.to_dict())
        return
    ops = ", ".join(f"{count} {op}" for op, count in result.quantized_ops.items())
    click.echo(f"wrote {result.path} (int8 weights: {ops}; {result.origin})")
    click.echo(f"calibrated on {result.accuracy.images_from} in {result.seconds:.1f} s")
    click.echo(format_accuracy(result.accuracy))
    click.echo(f"report: {result.report_path}")
