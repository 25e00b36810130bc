"""Every command's ``--help`` ends in examples that still parse, so they cannot rot.

Each example line is split like a shell would and handed to the parsers of the group and the
command it names (click's ``make_context``, which checks options, arguments and their types
but runs nothing). Paths an example reads are made empty in a scratch folder first; a zoo
model an example names must be in the zoo.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from edgecompile.cli import cli

PROGRAM = "edgecompile"
#: The parameters holding a zoo model (or a file or pkg.module:function, told apart below).
MODEL_PARAMS = {"model", "source", "models", "pattern"}


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMANDS = list(walk(cli))
IDS = [" ".join(path) or PROGRAM for path in COMMANDS]


def help_text(path: tuple[str, ...]) -> str:
    command = command_at(path)
    context = click.Context(command, info_name=" ".join((PROGRAM, *path)))
    return command.get_help(context)


def examples(text: str) -> list[list[str]]:
    """The argv of each example under ``Examples:`` (a trailing ``\\`` continues a line)."""
    lines = text.split("Examples:", 1)[1].splitlines()
    joined: list[str] = []
    pending = ""
    for line in lines:
        stripped = line.strip()
        if not stripped and not pending:
            if joined:
                break  # the blank line after the section
            continue
        if not line.startswith(" "):
            break  # the next section (Options:)
        pending += stripped
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        joined.append(pending)
        pending = ""
    return [shlex.split(line, comments=True) for line in joined]


def parse(argv: list[str]) -> list[click.Context]:
    """The contexts of the group and each command along ``argv``, parsed, nothing run."""
    contexts = [cli.make_context(PROGRAM, argv[1:], resilient_parsing=False)]
    while isinstance(contexts[-1].command, click.Group):
        group, context = contexts[-1].command, contexts[-1]
        rest = [*context._protected_args, *context.args]
        name, command, args = group.resolve_command(context, rest)
        assert command is not None, f"no command {name!r} in {argv}"
        contexts.append(command.make_context(name, args, parent=context))
    return contexts


def parse_with_inputs(argv: list[str], scratch: Path) -> list[click.Context]:
    """:func:`parse`, first making empty the relative paths that must exist."""
    for _ in range(10):
        try:
            return parse(argv)
        except click.BadParameter as error:
            missing = re.search(r"'([^']+)' does not exist", error.format_message())
            if missing is None or Path(missing.group(1)).is_absolute():
                raise
            path = scratch / missing.group(1)
            file_okay = isinstance(error.param.type, click.Path) and error.param.type.file_okay
            dir_okay = isinstance(error.param.type, click.Path) and error.param.type.dir_okay
            if dir_okay:
                path.mkdir(parents=True, exist_ok=True)
            elif file_okay:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                raise
    raise AssertionError(f"{argv}: too many missing paths")


def zoo_names(contexts: list[click.Context]) -> list[str]:
    """The zoo names (or patterns) the example gives: not files, nor pkg.module:function."""
    names = []
    for context in contexts:
        for key, value in context.params.items():
            if key not in MODEL_PARAMS or not isinstance(value, str):
                continue
            for name in value.split(",") if key == "models" else [value]:
                if "/" not in name and ":" not in name and not name.endswith(".onnx"):
                    names.append(name)
    return names


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_every_command_has_examples_that_parse(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecompile.zoo import list_models

    text = help_text(path)
    assert "Examples:" in text, f"`{' '.join((PROGRAM, *path))} --help` has no Examples section"
    found = examples(text)
    assert found, "the Examples section is empty"
    monkeypatch.chdir(tmp_path)
    # A command's page shows that command (a top-level one may add the next step, as `tune`
    # shows `build`); a subcommand's page shows only that subcommand.
    shown = [argv for argv in found if argv[1 : 1 + len(path)] == list(path)]
    assert shown == found if len(path) > 1 else shown, f"no example runs {path}: {found}"
    for argv in found:
        assert argv[0] == PROGRAM, argv
        contexts = parse_with_inputs(argv, tmp_path)
        for name in zoo_names(contexts):
            # a name, an alias or a pattern, as `models PATTERN` and `report --models` match
            assert list_models(name), f"{argv}: no zoo model {name!r}"


def test_the_example_parser_rejects_a_rotten_example(tmp_path: Path) -> None:
    """The check above can fail: an unknown option or a bad value is caught."""
    with pytest.raises(click.UsageError):
        parse_with_inputs(["edgecompile", "build", "m", "--no-such-option"], tmp_path)
    with pytest.raises(click.BadParameter):
        parse_with_inputs(["edgecompile", "build", "m", "--batch", "two"], tmp_path)
    with pytest.raises(click.UsageError):
        parse_with_inputs(["edgecompile", "records", "shw"], tmp_path)
