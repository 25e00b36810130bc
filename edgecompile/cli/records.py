"""``edgecompile records list|show|export|import``: the tuning records, one store per target."""

from __future__ import annotations

from typing import Any

import click

from edgecompile.cli.options import (
    format_ms,
    json_option,
    print_json,
    records_option,
    target_option,
)
from edgecompile.errors import EdgecompileError


@click.group("records")
def records_group() -> None:
    """List, show, export and import tuning records (one store per target).

    \b
    Records live in $EDGECOMPILE_RECORDS or ~/.cache/edgecompile/records, one folder per
    TVM target; `build` applies the store of its target by default.

    \b
    Examples:
      edgecompile records list
      edgecompile records show --target rpi4
      edgecompile records export --target rpi4 -o rpi4-records.json
      edgecompile records import rpi4-records.json
    """


@records_group.command("list")
@records_option
@json_option
def records_list(records: str | None, as_json: bool) -> None:
    """One line per target: its store, kernels and records.

    \b
    Examples:
      edgecompile records list
      edgecompile records list --records tuned/ --json
    """
    from edgecompile._table import format_table
    from edgecompile.records import default_records_root, list_stores

    stores = list_stores(records)
    summary = []
    for store in stores:
        _warn_if_damaged(store)
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
        print_json(summary)
        return
    if not summary:
        click.echo(f"no tuning records in {records or default_records_root()}")
        return
    keys = ["preset", "mcpu", "kernels", "records", "path"]
    click.echo(format_table(keys, [[row[k] for k in keys] for row in summary]))


def _store(target: str, records: str | None) -> Any:
    from edgecompile.records import store_for
    from edgecompile.targets import resolve_target

    store = store_for(resolve_target(target), records)
    if not store.exists():
        raise EdgecompileError(
            f"no tuning records for {target} in {store.path.parent}",
            f"tune first: edgecompile tune MODEL --target {target}",
        )
    return store


def _warn_if_damaged(store: Any) -> None:
    """One line on stderr (``--json`` output stays one document) for a damaged store."""
    note = store.damage_note()
    if note:
        click.echo(f"warning: {note}", err=True)


@records_group.command("show")
@target_option
@records_option
@json_option
def records_show(target: str, records: str | None, as_json: bool) -> None:
    """Per tuned kernel of a target: records, best time, who made it, what `build` uses, and
    the knob values of our schedule in it (tiles, loop order; "a → b" where the search won).

    \b
    Examples:
      edgecompile records show
      edgecompile records show --target rpi4 --json
    """
    from edgecompile._table import format_table
    from edgecompile.records import summarize

    store = _store(target, records)
    _warn_if_damaged(store)
    kernels = summarize(store)
    if as_json:
        print_json([k.to_dict() for k in kernels])
        return
    rows = [
        [
            k.name, k.trials, format_ms(k.best_ms), k.schedule, k.uses_label,
            format_ms(k.untuned_ms), format_ms(k.tuned_ms), k.knobs or "-",
        ]
        for k in kernels
    ]  # fmt: skip
    headers = [
        "kernel", "records", "best ms", "best by", "build uses", "untuned ms", "tuned ms", "knobs",
    ]  # fmt: skip
    click.echo(format_table(headers, rows))
    click.echo(
        "best by: our rule (the untuned schedule), neighbours (tune's one-knob pass before the "
        "search) or metaschedule (the search). "
        "tuned ms: the best search records re-measured beside the untuned schedule (then both "
        "times are the re-measurement's); -: no search record beat it even once. "
        "(not re-measured): decided by single measurements for now (rerun the tune). "
        "knobs: our schedule's choices in what the build uses, a → b where the search changed "
        "the untuned a."
    )


@records_group.command("export")
@target_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="File.")
@records_option
def records_export(target: str, output: str, records: str | None) -> None:
    """Write a target's records to one portable JSON file (to share, or to move to CI).

    \b
    Examples:
      edgecompile records export --target rpi4 -o rpi4-records.json
    """
    from edgecompile.records import export_records

    path = export_records(_store(target, records), output)
    click.echo(f"exported {target} records to {path}")


@records_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@records_option
def records_import(file: str, records: str | None) -> None:
    """Merge an exported file into the store of the target it was tuned for.

    \b
    Examples:
      edgecompile records import rpi4-records.json
      edgecompile records import rpi4-records.json --records tuned/
    """
    from edgecompile.records import import_records

    result = import_records(file, records)
    click.echo(
        f"imported {result.added} records ({result.skipped} already there) into "
        f"{result.store.path} ({result.store.preset})"
    )
