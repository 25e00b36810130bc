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
@json_option
def profile_command(
    source: str,
    runs: int,
    warmup: int,
    threads: int | None,
    seed: int,
    input_size: str | None,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """Per-kernel time of the compiled host model, slowest first, with each kernel's share.

    Times come from instrumenting the Relax VM around every packed call (median over --runs).
    Kernels are joined to the manifest's schedules by the kernel name the build recorded
    (older artifacts: by order within an op kind); "layer" is the op's number in
    `build --explain`, "-" a kernel with no schedule entry (layout/glue kernels).
    A MODEL (zoo name or .onnx) is built for this machine first (--input-size applies then).

    \b
    Examples:
      edgecompile profile build/mobilenet_v2-host
      edgecompile profile squeezenet1_1 --input-size 64 --json
    """
    check_threads(threads, cores=host_cores(), where="this machine")
    if output_dir is not None:
        check_writable_dir(output_dir, "-o")
    from edgecompile._table import format_table
    from edgecompile.benchmarking import profile_local

    report = profile_local(
        source,
        runs=runs,
        warmup=warmup,
        threads=threads,
        seed=seed,
        input_size=input_size,
        output_dir=output_dir,
    )
    if as_json:
        print_json(report.to_dict())
        return
    rows = [
        (
            ",".join(map(str, layer.layers)) or "-",
            layer.name,
            layer.calls,
            f"{layer.time_ms:.3f}",
            f"{layer.share:.1f}%",
            layer.op or "-",
            layer.schedule or "- (unmatched)",
        )
        for layer in report.layers
    ]
    click.echo(f"{report.model} here, {report.artifact}")
    headers = ("layer", "kernel", "calls", "ms", "share", "op", "schedule")  # layer: --explain's
    click.echo(format_table(headers, rows))
    gap = 100.0 * (report.layer_sum_ms / report.end_to_end_ms - 1) if report.end_to_end_ms else 0
    click.echo(
        f"sum of kernels {report.layer_sum_ms:.3f} ms vs end-to-end median "
        f"{report.end_to_end_ms:.3f} ms ({gap:+.1f}%, instrumented runs: {report.runs})"
    )
    unmatched = sum(1 for layer in report.layers if not layer.matched)
    click.echo(f"{unmatched} of {len(report.layers)} rows have no schedule entry (unmatched)")
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
