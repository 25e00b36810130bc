"""``edgecompile tune``: MetaSchedule tuning of a model's kernels, here or on a board."""

from __future__ import annotations

import click

from edgecompile.cli.options import (
    batch_option,
    board_access,
    cc_option,
    format_ms,
    input_size_option,
    json_option,
    print_json,
    records_option,
    schedules_option,
    target_option,
    weights_option,
)
from edgecompile.device.access import BoardAccess


@click.command("tune")
@click.argument("model")
@target_option
@click.option(
    "--trials", type=int,
    help="Search candidates this model's kernels should have in total (a rerun only measures "
    "what is missing) [32 per kernel, or unlimited with --time-budget].",
)  # fmt: skip
@click.option(
    "--time-budget",
    help="The whole tune ends within this long, counted from the command's start: 90s, 20m, "
    "1h30m (the search stops in time for the re-measurement).",
)
@records_option
@board_access(
    "device", "rpc", "tracker", "rpc_key", "identity", "accept_new_host_key", "remote_python"
)
@click.option(
    "--remote-port", type=int, default=9090, show_default=True,
    help="With --device: the RPC server's port on the board's 127.0.0.1.",
)  # fmt: skip
@click.option("--threads", type=int, help="Threads per measurement [the preset's].")
@batch_option
@input_size_option
@weights_option
@cc_option
@schedules_option
@json_option
def tune_command(
    model: str,
    target: str,
    trials: int | None,
    time_budget: str | None,
    records: str | None,
    access: BoardAccess,
    remote_port: int,
    threads: int | None,
    batch: int,
    input_size: str | None,
    weights: str | None,
    cc: str | None,
    schedules_dir: str | None,
    as_json: bool,
) -> None:
    """Tune MODEL's kernels for a target with TVM MetaSchedule; `build` then applies the records.

    Every distinct kernel of the compiled model is a task. Our own schedules (and yours, with
    --schedules) are measured first and stored as records, then MetaSchedule's evolutionary
    search (xgboost cost model) tries more candidates. Last, per kernel, the search's best
    records are re-measured against ours (interleaved rounds): `build` uses a tuned schedule
    only where it won that by 3% or more, so a tuned build is not slower than an untuned one.

    \b
    Host targets measure here. Board targets are measured on the board:
      --device pi@raspberrypi   SSH tunnel to a TVM RPC server on the board's 127.0.0.1
                                (started over SSH if none runs); nothing is exposed
      --rpc 127.0.0.1:9090      an RPC server you reach yourself (e.g. your own SSH tunnel)
      --tracker host:9190       TVM's RPC tracker: boards registered under --rpc-key
    Records are per target, merged across models and runs, and safe to interrupt: rerun the
    same command to continue. Manage them with `edgecompile records`.

    \b
    Examples:
      edgecompile tune mobilenet_v2 --time-budget 20m
      edgecompile tune shufflenet_v1 --target rpi4 --device pi@raspberrypi --trials 500
      edgecompile build shufflenet_v1 --target rpi4
    """
    from edgecompile._table import format_table
    from edgecompile.progress import Progress
    from edgecompile.tuning import TUNE_STAGES, tune
    from edgecompile.tuning.pipeline import process_started

    result = tune(
        model,
        target,
        trials=trials,
        time_budget=time_budget,
        records=records,
        access=access,
        remote_port=remote_port,
        threads=threads,
        batch=batch,
        input_size=input_size,
        weights=weights,
        cc=cc,
        schedules_dir=schedules_dir,
        progress=Progress(TUNE_STAGES),
        started=process_started(),
    )
    if as_json:
        print_json(result.to_dict())
        return
    rows = [
        [
            task.name,
            task.weight,
            format_ms(task.untuned_ms),
            format_ms(task.best_ms),
            task.schedule,
            task.uses_label,
            format_ms(task.uses_ms),
            task.records,
        ]
        for task in sorted(result.tasks, key=lambda t: -(t.weight * (t.untuned_ms or 0.0)))
    ]
    headers = [
        "kernel", "calls", "untuned ms", "best ms", "best by", "build uses", "uses ms",
        "records",
    ]  # fmt: skip
    click.echo(format_table(headers, rows))
    click.echo(
        f"{result.trials_run} trials in {result.seconds:.0f} s on {result.transport} "
        f"({result.stopped}); kernels sum to {format_ms(result.estimated_ms)} ms as built "
        f"({format_ms(result.untuned_estimated_ms)} ms untuned); records: {result.records}"
    )
    for kind, count in result.failures.items():
        click.echo(f"{count} candidates failed to {kind} (the search skipped them)")
    if result.undecided:
        click.echo(
            f"{result.undecided} kernels were not re-measured for lack of time: until a rerun "
            "decides them, builds take their fastest single measurement"
        )
