"""``edgecompile tune`` and ``edgecompile records``: thin wrappers over :mod:`edgecompile.tune`
and :mod:`edgecompile.records`."""

from __future__ import annotations

import click

from edgecompile._table import format_table
from edgecompile.cli import _print_json, cli, target_option


@cli.command("tune")
@click.argument("model")
@target_option
@click.option(
    "--trials", type=int,
    help="Search candidates this model's kernels should have in total (a rerun only measures "
    "what is missing) [32 per kernel, or unlimited with --time-budget].",
)  # fmt: skip
@click.option(
    "--time-budget",
    help="Stop searching after this long: 90s, 20m, 1h30m (the short re-measurement follows).",
)
@click.option(
    "--records", type=click.Path(file_okay=False),
    help="Records folder [$EDGECOMPILE_RECORDS or ~/.cache/edgecompile/records].",
)  # fmt: skip
@click.option("--device", help="Measure on user@host[:port] through an SSH tunnel.")
@click.option("--rpc", help="Measure through a TVM RPC server at host:port.")
@click.option("--tracker", help="Measure on boards from the TVM RPC tracker at host:port.")
@click.option("--rpc-key", help="The tracker key to request [the preset's, e.g. rpi4].")
@click.option("--identity", "-i", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option(
    "--accept-new-host-key", is_flag=True,
    help="Trust and record an SSH host key seen for the first time (changed keys are refused).",
)  # fmt: skip
@click.option("--remote-python", help="The board's Python with TVM (to start its RPC server).")
@click.option(
    "--remote-port", type=int, default=9090, show_default=True,
    help="With --device: the RPC server's port on the board's 127.0.0.1.",
)  # fmt: skip
@click.option("--threads", type=int, help="Threads per measurement [the preset's].")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size (static).")
@click.option("--input-size", help="HEIGHT or HEIGHTxWIDTH (default: the model's own).")
@click.option("--weights", type=click.Path(), help="A state_dict file instead of random weights.")
@click.option(
    "--cc", help="Link candidates with this system compiler instead of zig (board targets)."
)
@click.option(
    "--schedules", "schedules_dir", type=click.Path(file_okay=False),
    help="User schedules (as for build --schedules): part of every kernel's untuned baseline.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def tune_command(
    model: str,
    target: str,
    trials: int | None,
    time_budget: str | None,
    records: str | None,
    device: str | None,
    rpc: str | None,
    tracker: str | None,
    rpc_key: str | None,
    identity: str | None,
    accept_new_host_key: bool,
    remote_python: str | None,
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

    Every distinct kernel of the compiled model is a task. Our own schedules are measured
    first and stored as records, then MetaSchedule's evolutionary search (xgboost cost model)
    tries more candidates. Last, per kernel, the search's best records are re-measured against
    ours (interleaved rounds): `build` uses a tuned schedule only where it won that by 3% or
    more, so a tuned build is not slower than an untuned one.

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
    from edgecompile.progress import Progress
    from edgecompile.tune import TUNE_STAGES, tune

    result = tune(
        model,
        target,
        trials=trials,
        time_budget=time_budget,
        records=records,
        rpc=rpc,
        tracker=tracker,
        rpc_key=rpc_key,
        device=device,
        identity=identity,
        accept_new_host_key=accept_new_host_key,
        remote_python=remote_python,
        remote_port=remote_port,
        threads=threads,
        batch=batch,
        input_size=input_size,
        weights=weights,
        cc=cc,
        schedules_dir=schedules_dir,
        progress=Progress(TUNE_STAGES),
    )
    if as_json:
        _print_json(result.to_dict())
        return
    rows = [
        [
            task.name,
            task.weight,
            _ms(task.untuned_ms),
            _ms(task.best_ms),
            task.schedule,
            task.uses,
            _ms(task.uses_ms),
            task.records,
        ]
        for task in sorted(result.tasks, key=lambda t: -(t.weight * (t.untuned_ms or 0.0)))
    ]
    headers = [
        "kernel", "calls", "untuned ms", "best ms", "best by", "build uses", "re-measured ms",
        "records",
    ]  # fmt: skip
    click.echo(format_table(headers, rows))
    click.echo(
        f"{result.trials_run} trials in {result.seconds:.0f} s on {result.transport} "
        f"({result.stopped}); kernels sum to {_ms(result.estimated_ms)} ms as built "
        f"({_ms(result.untuned_estimated_ms)} ms untuned); records: {result.records}"
    )
    for kind, count in result.failures.items():
        click.echo(f"{count} candidates failed to {kind} (the search skipped them)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@cli.group("records")
def records_group() -> None:
    """List, show, export and import tuning records (one store per target).

    \b
    Records live in $EDGECOMPILE_RECORDS or ~/.cache/edgecompile/records, one folder per
    TVM target; `build` applies the store of its target by default.
    """


def _records_option(function: object) -> object:
    return click.option(
        "--records", type=click.Path(file_okay=False), help="Records folder [the cache]."
    )(function)


@records_group.command("list")
@_records_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def records_list(records: str | None, as_json: bool) -> None:
    """One line per target: its store, kernels and records."""
    from edgecompile.records import default_records_root, list_stores

    stores = list_stores(records)
    summary = []
    for store in stores:
        clean = store.lines()
        summary.append(
            {
                "preset": store.preset,
                "mcpu": store.target.get("mcpu", "generic"),
                "kernels": len(clean.workloads),
                "records": len(clean.records),
                "path": str(store.path),
            }
        )
    if as_json:
        _print_json(summary)
        return
    if not summary:
        click.echo(f"no tuning records in {records or default_records_root()}")
        return
    keys = ["preset", "mcpu", "kernels", "records", "path"]
    click.echo(format_table(keys, [[row[k] for k in keys] for row in summary]))


def _store(target: str, records: str | None) -> object:
    from edgecompile.errors import EdgecompileError
    from edgecompile.records import store_for
    from edgecompile.targets import resolve_target

    store = store_for(resolve_target(target), records)
    if not store.exists():
        raise EdgecompileError(
            f"no tuning records for {target} in {store.path.parent}",
            f"tune first: edgecompile tune MODEL --target {target}",
        )
    return store


@records_group.command("show")
@target_option
@_records_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def records_show(target: str, records: str | None, as_json: bool) -> None:
    """Per tuned kernel of a target: records, best time, who made it, and what `build` uses."""
    from edgecompile.records import summarize

    store = _store(target, records)
    kernels = summarize(store)  # type: ignore[arg-type]
    if as_json:
        _print_json([k.to_dict() for k in kernels])
        return
    rows = [
        [k.name, k.trials, _ms(k.best_ms), k.schedule, k.uses, _ms(k.untuned_ms), _ms(k.tuned_ms)]
        for k in kernels
    ]
    headers = ["kernel", "records", "best ms", "best by", "build uses", "untuned ms", "tuned ms"]
    click.echo(format_table(headers, rows))
    click.echo(
        "tuned ms: the best search records re-measured beside the untuned schedule (then both "
        "times are the re-measurement's); -: no search record beat it even once. "
        "`best record`: not re-measured yet (rerun the tune)."
    )


@records_group.command("export")
@target_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="File.")
@_records_option
def records_export(target: str, output: str, records: str | None) -> None:
    """Write a target's records to one portable JSON file (to share, or to move to CI)."""
    from edgecompile.records import export_records

    path = export_records(_store(target, records), output)  # type: ignore[arg-type]
    click.echo(f"exported {target} records to {path}")


@records_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_records_option
def records_import(file: str, records: str | None) -> None:
    """Merge an exported file into the store of the target it was tuned for."""
    from edgecompile.records import import_records

    result = import_records(file, records)
    click.echo(
        f"imported {result.added} records ({result.skipped} already there) into "
        f"{result.store.path} ({result.store.preset})"
    )
