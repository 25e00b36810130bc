"""``edgecompile targets``: the board presets ``--target`` accepts."""

from __future__ import annotations

import click

from edgecompile.cli.options import json_option, print_json


@click.command("targets")
@json_option
def targets_command(as_json: bool) -> None:
    """List the board presets `--target` accepts (--json: their full TVM targets).

    \b
    --target also takes, in this order after the preset names:
      ./board.toml           a preset file of your own (same format as the built-in table)
      raspberry-pi/4b-aarch64  a TVM target tag
      '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}'  raw TVM JSON

    \b
    Examples:
      edgecompile targets
      edgecompile targets --json
    """
    from edgecompile._table import format_table
    from edgecompile.schedules import cpu_info
    from edgecompile.targets import list_presets

    presets = list_presets()
    caches = {p.name: cpu_info(p.tvm_target()).caches for p in presets}
    if as_json:
        print_json(
            [{**p.to_dict(), "caches": [c._asdict() for c in caches[p.name]]} for p in presets]
        )
        return
    rows = [
        (
            p.name,
            p.triple,
            p.target.get("mcpu", "generic"),
            p.threads,
            " ".join(level.short() for level in caches[p.name]),
            p.description,
        )
        for p in presets
    ]
    header = ("preset", "triple", "cpu", "threads", "caches (/cores sharing)", "board")
    click.echo(format_table(header, rows))
