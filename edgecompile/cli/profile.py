"""``edgecompile profile``: per-kernel time of a compiled host model."""

from __future__ import annotations

import click

from edgecompile.cli.options import (
    check_threads,
    check_writable_dir,
    host_cores,
    input_size_option,
    json_option,
    print_json,
    seed_option,
    threads_option,
    warmup_option,
)


@click.command("profile")
@click.argument("source", metavar="ARTIFACT|MODEL")
@click.option("--runs", type=int, default=10, show_default=True, help="Instrumented runs.")
@warmup_option(3)
@threads_option
@seed_option
@input_size_option
@click.option(
    "-o", "--output-dir", type=click.Path(file_okay=False),
    help="Keep the build of MODEL in this folder [a temporary one].",
)  # fmt: skip
@click.option(
    "--int8", is_flag=True,
    help="Profile MODEL's int8 build, as `build --int8` makes it (quantized, then compiled to "
    "integer kernels).",
)  # fmt: skip
@click.option(
    "--calibration", type=click.Path(),
    help="With --int8: a folder of JPEG/PNG images to calibrate on [scikit-image's photographs].",
)  # fmt: skip
@json_option
def profile_command(
    source: str,
    runs: int,
    warmup: int,
    threads: int | None,
    seed: int,
    input_size: str | None,
    output_dir: str | None,
    int8: bool,
    calibration: str | None,
    as_json: bool,
) -> None:
    """Per-kernel time of the compiled host model, slowest first, with each kernel's share.

    Times come from instrumenting the Relax VM around every packed call (median over --runs).
    Kernels are joined to the manifest's schedules by the kernel name the build recorded
    (older artifacts: by order within an op kind); "layer" is the op's number in
    `build --explain`, "-" a kernel with no schedule entry (layout/glue kernels).
    A MODEL (zoo name or .onnx) is built for this machine first (--input-size applies then);
    with --int8 its int8 build is (an existing build/<model>-int8-host made the same way is
    used as it is). An int8 build's rows say what each kernel computes on: int8 (integer
    kernels), fp32 (glue left in float), fp32->int8 / int8->fp32 (conversions, or an integer
    kernel with one fused).

    \b
    Examples:
      edgecompile profile build/mobilenet_v2-host
      edgecompile profile squeezenet1_1 --input-size 64 --json
      edgecompile profile mobilenet_v2 --int8
    """
    check_threads(threads, cores=host_cores(), where="this machine")
    if output_dir is not None:
        check_writable_dir(output_dir, "-o")
    from edgecompile.quantization.checks import check_int8_build

    check_int8_build(source, int8, calibration)  # before torch, TVM or the quantizer load
    from edgecompile._table import format_table
    from edgecompile.benchmarking import profile_local
    from edgecompile.benchmarking.profile import FP32, precision_shares

    report = profile_local(
        source,
        runs=runs,
        warmup=warmup,
        threads=threads,
        seed=seed,
        input_size=input_size,
        output_dir=output_dir,
        int8=int8,
        calibration=calibration,
    )
    if as_json:
        print_json(report.to_dict())
        return
    # The precision column only where it tells something: a build with integer kernels.
    shares = precision_shares(report.layers)
    quantized = set(shares) - {FP32}
    rows = [
        (
            ",".join(map(str, layer.layers)) or "-",
            layer.name,
            layer.calls,
            f"{layer.time_ms:.3f}",
            f"{layer.share:.1f}%",
            *([layer.precision or "-"] if quantized else []),
            layer.op or "-",
            layer.schedule or "- (unmatched)",
        )
        for layer in report.layers
    ]
    click.echo(f"{report.model} here, {report.artifact}")
    headers = ("layer", "kernel", "calls", "ms", "share", "precision", "op", "schedule")
    if not quantized:  # (layer: the op's number in --explain)
        headers = tuple(header for header in headers if header != "precision")
    click.echo(format_table(headers, rows))
    if quantized:
        parts = ", ".join(f"{kind} {share:.1f}%" for kind, share in shares.items())
        click.echo(f"kernel time by precision (VM bookkeeping aside): {parts}")
    gap = 100.0 * (report.layer_sum_ms / report.end_to_end_ms - 1) if report.end_to_end_ms else 0
    click.echo(
        f"sum of kernels {report.layer_sum_ms:.3f} ms vs end-to-end median "
        f"{report.end_to_end_ms:.3f} ms ({gap:+.1f}%, instrumented runs: {report.runs})"
    )
    unmatched = sum(1 for layer in report.layers if not layer.matched)
    click.echo(f"{unmatched} of {len(report.layers)} rows have no schedule entry (unmatched)")
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
