"""``edgecompile bench``: one inference's latency, here against ORT and torch, or on a board."""

from __future__ import annotations

from pathlib import Path

import click

from edgecompile.cli.options import (
    board_access,
    board_cores,
    check_threads,
    check_writable_dir,
    host_cores,
    input_size_option,
    json_option,
    native_option,
    print_json,
    refuse_board_options,
    seed_option,
    warmup_option,
)
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError


@click.command("bench")
@click.argument("source", metavar="MODEL|ARTIFACT")
@board_access()
@click.option(
    "--threads",
    help="Thread counts, e.g. 1,2 [here: 1; on a board: one count, default all cores].",
)
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs.")
@warmup_option(3)
@seed_option
@click.option(
    "-t", "--target",
    help="Here only: the preset to build MODEL for; it must run on this machine [host].",
)  # fmt: skip
@click.option(
    "--compare",
    help="Here only: engines to time next to TVM, comma-separated: ort, tvm-int8 (our int8 "
    "build of the model, as `build --int8` makes it), ort-int8 (ORT running the same int8 "
    "model), torch [ort,torch].",
)
@input_size_option
@click.option(
    "-o", "--output-dir", type=click.Path(file_okay=False),
    help="Here only: keep the build of MODEL in this folder [a temporary one].",
)  # fmt: skip
@native_option
@json_option
def bench_command(
    source: str,
    access: BoardAccess,
    threads: str | None,
    repeat: int,
    warmup: int,
    seed: int,
    target: str | None,
    compare: str | None,
    input_size: str | None,
    output_dir: str | None,
    native: bool,
    as_json: bool,
) -> None:
    """Measure one inference's latency: here against ONNX Runtime and torch, or on a board.

    \b
    Here (no --device/--rpc/--tracker): MODEL (zoo name or .onnx) is built for this machine
    (--target, --compare, --input-size and --output-dir apply here only), or a host ARTIFACT
    is used as is. A zoo MODEL already in build/ as a bench builds it (same target, input
    size and seed, untuned) is used from there; any other build goes to a temporary folder,
    removed afterwards (--output-dir keeps it). TVM, ONNX Runtime and torch get the same seeded
    input and the same thread count (one process per count: TVM's pool size is
    process-global); outputs must agree (relative error <= 1e-4) before any time is printed.
    The table gives median, p90 and min per engine and thread count, and median / ORT median.

    \b
    On a board: give exactly one of --device (SSH), --rpc or --tracker, and an ARTIFACT built
    for it. Timing runs on the board (TVM's time_evaluator on the Relax VM), so network time
    is not counted: median, p90, mean, std, min. Under them: this machine's latest numbers
    for the same model and input size, and board/host. An RPC server or tracker that does not
    answer in 60 s ($EDGECOMPILE_RPC_TIMEOUT) is an error. Over SSH, a board without TVM
    Python (or a bundle, or --native) is timed by the bundle's edgecompile-runner; the first
    line says which ran.

    \b
    Every bench appends its numbers to a history, $EDGECOMPILE_BENCH_HISTORY or
    ~/.cache/edgecompile/benchmarking.jsonl, where board benches find the host's.

    \b
    Examples:
      edgecompile bench squeezenet1_1 --threads 1,2
      edgecompile bench mobilenet_v2 --compare tvm-int8,ort,ort-int8
      edgecompile bench build/mobilenet_v2-host --compare ort --json
      edgecompile bench build/shufflenet_v1-rpi4 --device pi@raspberrypi.local --threads 4
      edgecompile bench build/mobilenet_v2-rpi4 --tracker 10.0.0.5:9190 --rpc-key rpi4 --json
    """
    if not access.given:
        if native:
            raise EdgecompileError("--native: an option for a board", "add --device user@host")
        _bench_here(
            source,
            access=access,
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            seed=seed,
            target=target,
            compare=compare,
            input_size=input_size,
            output_dir=output_dir,
            as_json=as_json,
        )
        return
    local_only = {"--target": target, "--compare": compare, "--input-size": input_size}
    local_only["--output-dir"] = output_dir
    given = [name for name, value in local_only.items() if value is not None]
    if given:
        raise EdgecompileError(
            f"{', '.join(given)}: options for benchmarking here",
            "drop them to bench on the board (build for it first with `edgecompile build`)",
        )
    if not Path(source).exists():
        raise EdgecompileError(
            f"artifact {source!r} does not exist",
            "on a board, bench a folder `edgecompile build --target BOARD` wrote",
        )
    from edgecompile.artifact import load_artifact
    from edgecompile.benchmarking import format_host_comparison, parse_list
    from edgecompile.device.remote import bench_on_device, check_access

    check_access(access)
    counts = parse_list(threads, int)
    if len(counts) > 1:
        raise EdgecompileError("on a board, --threads takes one count", "e.g. --threads 4")
    cores = board_cores(load_artifact(source).manifest.target)
    check_threads(counts, cores=cores, where="the board")

    result = bench_on_device(
        source,
        access=access,
        threads=counts[0] if counts else None,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        native=native or None,
    )
    if as_json:
        print_json(result.to_dict())
        return
    board = result.board
    cpu = board.get("cpu_model") or board.get("triple") or "unknown CPU"
    cores = f", {board['cores']} cores" if board.get("cores") else ""
    governor = f", governor {board['governor']}" if board.get("governor") else ""
    click.echo(
        f"{result.model} ({result.preset}) on {result.target} via {result.transport}, "
        f"{_RUNNERS.get(result.runner, result.runner)}: "
        f"{cpu}{cores}{governor}, {result.threads or '?'} TVM threads"
    )
    click.echo(
        f"  median {result.median_ms:.2f} ms  p90 {result.p90_ms:.2f} ms  mean "
        f"{result.mean_ms:.2f} ms  std {result.std_ms:.2f} ms  min {result.min_ms:.2f} ms"
    )
    click.echo(f"  {result.repeat} timed runs after {result.warmup} warm-up runs")
    click.echo(format_host_comparison(result))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


#: How a board bench's first line names what ran the library.
_RUNNERS = {
    "native": "native runner (no Python)",
    "python-tvm": "TVM Python",
    "tvm-rpc": "TVM RPC server",
}


def _bench_here(
    source: str,
    *,
    access: BoardAccess,
    threads: str | None,
    repeat: int,
    warmup: int,
    seed: int,
    target: str | None,
    compare: str | None,
    input_size: str | None,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """``bench`` without a board option: :func:`edgecompile.benchmarking.bench_local`, printed."""
    from edgecompile._table import format_table
    from edgecompile.benchmarking import bench_local, parse_list

    refuse_board_options(access, "benchmarking", "bench")
    counts = parse_list(threads, int) or [1]
    check_threads(counts, cores=host_cores(), where="this machine")
    if output_dir is not None:
        check_writable_dir(output_dir, "-o")
    report = bench_local(
        source,
        target=target or "host",
        compare=parse_list("ort,torch" if compare is None else compare),
        threads=counts,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        input_size=input_size,
        output_dir=output_dir,
    )
    if as_json:
        print_json(report.to_dict())
        return
    rows = [
        (
            t.engine,
            t.threads,
            f"{t.median_ms:.3f}",
            f"{t.p90_ms:.3f}",
            f"{t.min_ms:.3f}",
            f"{t.ratio_to_ort:.2f}x" if t.ratio_to_ort is not None else "-",
            f"{t.max_relative_error:.1e}" if t.max_relative_error is not None else "-",
        )
        for t in report.timings
    ]
    shape = ", ".join("x".join(map(str, s)) for s in report.input_shapes)
    click.echo(f"{report.model} ({shape}) here, {report.artifact}")
    headers = ("engine", "threads", "median ms", "p90 ms", "min ms", "vs ORT", "rel. err")
    click.echo(format_table(headers, rows))
    click.echo(
        f"{report.repeat} timed runs after {report.warmup} warm-up runs per engine; outputs "
        f"checked against {report.reference} first; vs ORT = median / ORT median, same threads"
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
