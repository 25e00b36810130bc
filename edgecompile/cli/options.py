"""The options several commands share, and their help texts: declared once, here.

A leaf of the ``edgecompile.cli`` package: command modules import their shared options, the
board options (:func:`board_access`) and :func:`print_json` from here, and nothing from the
package's other modules; :mod:`edgecompile.cli.app` adds the commands to the group.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click

from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError

F = TypeVar("F", bound=Callable[..., Any])

#: The help text of every shared option, by parameter name.
HELP: dict[str, str] = {
    "json": "Print JSON instead of text (for scripts).",
    "input_size": "HEIGHT or HEIGHTxWIDTH of the input [the model's own].",
    "batch": "Batch size (static).",
    "weights": "A state_dict file to load instead of seeded random weights.",
    "seed": "Seed of the random weights and inputs.",
    "threads": "TVM thread-pool size [all cores].",
    "warmup": "Untimed runs first.",
    "target": "Board preset (see `edgecompile targets`), preset .toml, TVM tag, target JSON "
    "or a TVMC string ('llvm -mtriple=... -mcpu=...').",
    "records": "Tuning records folder [$EDGECOMPILE_RECORDS or ~/.cache/edgecompile/records].",
    "schedules": "A folder of user schedules (.py files), tried before ours "
    "(docs/custom-schedules.md).",
    "cc": "Link with this system compiler (e.g. aarch64-linux-gnu-g++) instead of zig.",
    "native": "On a board over SSH: run through the bundle's native runner (no Python needed "
    "there; ARTIFACT's bundle is written first if it is not one). The default when the board has "
    "no TVM Python or ARTIFACT is a bundle.",
    # how to reach a board: the fields of BoardAccess
    "device": "The board over SSH: user@host[:port] (honours ~/.ssh/config).",
    "rpc": "The board's TVM RPC server at host:port.",
    "tracker": "A TVM RPC tracker at host:port, to get a board from.",
    "rpc_key": "The tracker key to request [the preset's, e.g. rpi4].",
    "identity": "SSH private key file [~/.ssh/config's, else the default keys and agent].",
    "accept_new_host_key": "Trust and record an SSH host key seen for the first time "
    "(a changed key is always refused).",
    "remote_dir": "Where artifacts go on the board [~/edgecompile].",
    "remote_python": "The board's Python with TVM [~/edgecompile-venv, then the usual places].",
}


def print_json(payload: Any) -> None:
    """What every ``--json`` prints: indented, anything unknown as its ``str``."""
    click.echo(json.dumps(payload, indent=2, default=str))


def format_ms(value: float | None) -> str:
    """A time in the tables of ``tune`` and ``records show``: 4 decimals, ``-`` for none."""
    return "-" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------------------------
# shared options


class AliasedOption(click.Option):
    """An option that also answers to TVMC's name for it (``hidden_aliases``: ``tvmc``'s
    ``--tuning-records``, ``--rpc-tracker``, ``--cross-compiler``), which ``--help`` leaves out:
    users coming from tvmc type them, everyone else need not read them twice."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = hidden_aliases

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every = self.opts
        self.opts = [name for name in every if name not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every


json_option = click.option("--json", "as_json", is_flag=True, help=HELP["json"])
native_option = click.option("--native", is_flag=True, help=HELP["native"])


def _checked_input_size(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """``--input-size`` parsed and bounded while the options are (no torch loaded yet)."""
    from edgecompile.input_size import parse_input_size

    parse_input_size(value)
    return value


def _checked_batch(ctx: click.Context, param: click.Parameter, value: int) -> int:
    from edgecompile.input_size import check_input_pixels, parse_input_size

    if value < 1:
        raise EdgecompileError(f"bad batch size {value}", "use --batch 1 or more")
    size = parse_input_size(ctx.params.get("input_size"))
    if size is not None:
        check_input_pixels(value, *size)
    return value


input_size_option = click.option(
    "--input-size", metavar="SIZE", help=HELP["input_size"], callback=_checked_input_size
)
batch_option = click.option(
    "--batch", type=int, default=1, show_default=True, help=HELP["batch"], callback=_checked_batch
)
weights_option = click.option("--weights", type=click.Path(), help=HELP["weights"])
seed_option = click.option("--seed", type=int, default=0, show_default=True, help=HELP["seed"])
threads_option = click.option("--threads", type=int, help=HELP["threads"])
target_option = click.option(
    "-t", "--target", default="host", show_default=True, help=HELP["target"]
)
records_option = click.option(
    "--records", "--tuning-records", "records", cls=AliasedOption,
    hidden_aliases=("--tuning-records",), type=click.Path(file_okay=False), metavar="DIR",
    help=HELP["records"],
)  # fmt: skip
schedules_option = click.option(
    # no file_okay=False: load_user_schedules says what to pass instead of a file
    "--schedules", "schedules_dir", type=click.Path(), metavar="DIR",
    help=HELP["schedules"],
)  # fmt: skip
cc_option = click.option(
    "--cc", "--cross-compiler", "cc", cls=AliasedOption, hidden_aliases=("--cross-compiler",),
    metavar="COMPILER", help=HELP["cc"],
)  # fmt: skip


def warmup_option(default: int) -> Callable[[F], F]:
    """``--warmup`` (its default differs: a report times many more runs than a bench)."""
    return click.option(
        "--warmup", type=int, default=default, show_default=True, help=HELP["warmup"]
    )


# --------------------------------------------------------------------------------------------
# how to reach a board

_BOARD_DECLS: dict[str, dict[str, Any]] = {
    "device": {"decls": ("--device",), "metavar": "USER@HOST[:PORT]"},
    "rpc": {"decls": ("--rpc",), "metavar": "HOST:PORT"},
    "tracker": {
        "decls": ("--tracker", "--rpc-tracker"),
        "metavar": "HOST:PORT",
        "cls": AliasedOption,
        "hidden_aliases": ("--rpc-tracker",),
    },
    "rpc_key": {"decls": ("--rpc-key",), "metavar": "KEY"},
    "identity": {"decls": ("--identity", "-i"), "type": click.Path(dir_okay=False)},
    "accept_new_host_key": {"decls": ("--accept-new-host-key",), "is_flag": True},
    "remote_dir": {"decls": ("--remote-dir",), "metavar": "DIR"},
    "remote_python": {"decls": ("--remote-python",), "metavar": "PYTHON"},
}
#: The board options in the order ``--help`` lists them (every one a field of BoardAccess).
BOARD_OPTIONS = tuple(_BOARD_DECLS)
_ACCESS_FIELDS = frozenset(field.name for field in fields(BoardAccess))


def board_access(*names: str, required: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add the board options ``names`` (default: all of :data:`BOARD_OPTIONS`) to a command,
    and hand it one ``access`` argument, a :class:`BoardAccess`, in their place.

    A command whose board comes as an argument (``device setup DEVICE``) declares that
    argument itself: every parameter named like a field of BoardAccess goes into ``access``.
    """
    chosen = names or BOARD_OPTIONS
    unknown = [name for name in (*chosen, *required) if name not in _BOARD_DECLS]
    if unknown:
        raise ValueError(f"not board options: {unknown}")

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in list(kwargs) if name in _ACCESS_FIELDS}
            given["accept_new_host_key"] = bool(given.get("accept_new_host_key"))
            return function(*args, access=BoardAccess(**given), **kwargs)

        for name in reversed(chosen):
            spec = dict(_BOARD_DECLS[name])
            decls = spec.pop("decls")
            option = click.option(*decls, name, help=HELP[name], required=name in required, **spec)
            command = option(command)
        return command  # type: ignore[return-value]

    return decorate


def refuse_board_options(access: BoardAccess, doing: str, here: str) -> None:
    """A command running here refuses board options rather than ignoring them: one line
    naming them (``doing``: "running" -> "options for running on a board")."""
    given = access.board_only_options()
    if given:
        raise EdgecompileError(
            f"{', '.join(given)}: options for {doing} on a board",
            f"add --device, --rpc or --tracker (or drop them to {here} here)",
        )


# --------------------------------------------------------------------------------------------
# cheap checks, made before any model is loaded or torch/TVM imported (those take seconds)

#: The most threads asked of a board whose core count the artifact does not say.
MAX_THREADS = 64


def host_cores() -> int:
    """This machine's cores: the most TVM threads worth asking for here."""
    return os.cpu_count() or 1


def board_cores(target: Mapping[str, Any]) -> int:
    """A board's cores, from its TVM target (an artifact's ``manifest.target``): its
    ``num-cores`` when it says, else :data:`MAX_THREADS`."""
    cores = target.get("num-cores")
    if isinstance(cores, int) and not isinstance(cores, bool) and cores >= 1:
        return cores
    return MAX_THREADS


def check_threads(counts: int | Iterable[int] | None, *, cores: int, where: str) -> None:
    """Every ``--threads`` count is a whole number from 1 to ``cores`` (``where``: "this
    machine", "the board"): more threads than cores only contend, and a typo like 100000
    would start that many."""
    if counts is None:
        return
    for count in [counts] if isinstance(counts, int) else counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= cores:
            plural = "" if cores == 1 else "s"
            raise EdgecompileError(
                f"bad --threads {count}: {where} has {cores} core{plural}",
                f"use a count from 1 to {cores}",
            )


def check_writable_dir(path: str | Path, option: str) -> None:
    """``path`` (a folder to write into, made if missing) can be written: checked by writing
    a file in it, or in the deepest folder of it that exists, so an unwritable ``-o`` is
    found before minutes of work rather than after."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgecompileError(
            f"{option} {str(path)!r} is a file, not a folder", f"give {option} a folder"
        )
    _check_can_create(path, option)


def check_writable_file(path: str | Path, option: str) -> None:
    """``path`` (a file written atomically: a temporary beside it, then renamed) can be
    written: not a folder, and its folder writable or makeable."""
    path = Path(path)
    if path.is_dir():
        raise EdgecompileError(f"{option} {str(path)!r} is a folder", f"give {option} a file name")
    _check_can_create(path.parent, option, shown=path)


def _check_can_create(folder: Path, option: str, shown: Path | None = None) -> None:
    """``folder`` exists and takes a new file, or its deepest existing ancestor is a folder
    that does (so ``folder`` can be made); a file is created there and removed to be sure."""
    shown = shown or folder
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EdgecompileError(
            f"cannot write {option} {str(shown)!r}: {str(existing)!r} is a file, not a folder",
            f"give {option} a path in a writable folder",
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".edgecompile-write-check-"):
            pass
    except OSError as error:
        raise EdgecompileError(
            f"cannot write {option} {str(shown)!r}: {error.strerror or error}",
            f"give {option} a path in a writable folder",
        ) from None
