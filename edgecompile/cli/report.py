"""``edgecompile report``: bench + profile over the zoo, written up as tables and plots."""

from __future__ import annotations

import click

from edgecompile.cli.options import (
    board_access,
    board_cores,
    check_threads,
    check_writable_dir,
    host_cores,
    input_size_option,
    json_option,
    print_json,
    records_option,
    warmup_option,
)
from edgecompile.device.access import BoardAccess


@click.command("report")
@click.option(
    "--models", "models", metavar="PATTERN",
    help="Zoo names, globs or substrings, comma-separated [the whole zoo].",
)  # fmt: skip
@click.option(
    "-o", "--output-dir", type=click.Path(file_okay=False), default="report", show_default=True,
    help="Folder for index.md, results.csv, the plots and the cached builds (builds/).",
)  # fmt: skip
@click.option("--threads", default="1,2", show_default=True, help="Thread counts to time.")
@click.option("--repeat", type=int, default=10, show_default=True, help="Timed runs per engine.")
@warmup_option(2)
@click.option(
    "--engines", default="tvm,tvm-tuned,ort,torch", show_default=True,
    help="Engines to time; tvm-tuned is skipped (with a note) when there are no tuning records "
    "for this machine; tvm-int8 (our int8 build, `build --int8`) and ort-int8 (ONNX Runtime "
    "on the same int8 model) when added.",
)  # fmt: skip
@records_option
@input_size_option
@click.option(
    "-t", "--target", metavar="PRESET",
    help="With --device: the board's preset (e.g. rpi4), the models are built for it and timed "
    "there [this machine].",
)  # fmt: skip
@board_access("device", "identity", "accept_new_host_key", "remote_dir", "remote_python")
@click.option("--rebuild", is_flag=True, help="Rebuild every model instead of reusing builds/.")
@click.option(
    "--build-jobs", type=click.IntRange(min=1), metavar="N",
    help="Models built at once before timing starts [one per core, at most 4].",
)  # fmt: skip
@json_option
def report_command(
    models: str | None,
    output_dir: str,
    threads: str,
    repeat: int,
    warmup: int,
    engines: str,
    records: str | None,
    input_size: str | None,
    target: str | None,
    access: BoardAccess,
    rebuild: bool,
    build_jobs: int | None,
    as_json: bool,
) -> None:
    """Benchmark zoo models here or on a board, and say whether FLOPs or MAC predict latency.

    \b
    For each model (default: all 72 at their own input size, or all at --input-size):
      1. cost     params, multiply-adds, memory access cost (MAC), ShuffleNet v2's G1-G4
      2. build    a host library with edgecompile's schedules (untuned), cached in
                  DIR/builds/ and reused by the next run (--rebuild after
                  changing the schedules or the builder)
      2b. tuned   when there are tuning records for this machine (--records, from
                  `edgecompile tune --records DIR`): a second build with them
                  applied (tvm-tuned), cached per records digest
    Steps 1-2 run for all models first, --build-jobs at a time; then each model is
    timed alone:
      3. bench    TVM, ONNX Runtime and torch eager on the same seeded input at each
                  --threads count, outputs checked against ORT before any time counts,
                  in one long-lived worker process per thread count
      4. profile  TVM's per-kernel time (first thread count), summed by op class
    A model that fails a stage is a row of the report, not the end of the run.

    \b
    Writes into DIR:
      index.md                           latency table with ratios to ORT, time by op
                                         class, G1-G4 findings, and the Spearman rank
                                         correlation of multiply-adds and of MAC with
                                         latency, per engine and thread count
      results.csv                        one row per model x engine x thread count
      latency_vs_multiply_adds.png       one point per model and engine, log axes
      latency_vs_mac.png
      time_by_op_class.png               stacked bars per model

    \b
    On a board (--device USER@HOST with --target PRESET, e.g. rpi4): the models are built
    for the preset, each deployed as a bundle (`build --bundle`) and timed there by its
    native runner (no Python needed on the board), after its output is checked against
    ONNX Runtime here on the same input. ONNX Runtime is timed on the board too when the
    board's Python has onnxruntime (nothing is installed); torch never is. The native
    runner has no per-kernel profiler, so there is no time-by-op-class part. The header
    names the board (its uname and CPU) and the runner. A board that is not of the
    preset's arch is refused before anything is built. Times on an emulated board
    (`edgecompile device emulate`) say nothing about the real one.

    \b
    The whole zoo takes tens of minutes on two cores; try a few models first.
    `benchmarks/zoo.py` runs the same thing as a script.

    \b
    Examples:
      edgecompile report --models 'mobilenet_v2*' -o report
      edgecompile report --models squeezenet1_1,shufflenet_v2 --threads 1 --repeat 20
      edgecompile report --models shufflenet --input-size 128 --json
      edgecompile report --models mobilenet_v2 --threads 1 --engines tvm,tvm-int8,ort,ort-int8
      edgecompile report --models squeezenet1_1 --records tuned/  # after tune --records tuned/
      edgecompile report --target rpi4 --device pi@raspberrypi.local --threads 1,4 -o report-pi
    """
    from edgecompile.benchmarking import parse_list
    from edgecompile.progress import Progress
    from edgecompile.reporting import format_summary, progress_stages, report, select_models

    counts = parse_list(threads, int)
    if access.given and target:
        from edgecompile.targets import resolve_target

        cores = board_cores(resolve_target(target).target)
        check_threads(counts, cores=cores, where=f"a {target} board")
    elif not access.given:
        check_threads(counts, cores=host_cores(), where="this machine")
    check_writable_dir(output_dir, "-o")  # before minutes of builds, not after them
    names = select_models(models)
    result = report(
        names,
        output_dir,
        threads=counts,
        engines=parse_list(engines),
        repeat=repeat,
        warmup=warmup,
        input_size=input_size,
        rebuild=rebuild,
        records=records,
        build_jobs=build_jobs,
        progress=Progress(progress_stages(len(names), build_jobs)),
        target=target,
        access=access,
    )
    if as_json:
        print_json(result.to_dict())
        return
    click.echo(format_summary(result))
