"""TVMC's target strings for ``--target``: ``llvm -mtriple=... -mcpu=... -mattr=+neon``.

TVM 0.27 takes targets as JSON dicts only; users coming from ``tvmc compile --target`` type the
old string form. :func:`translate_tvmc_target` turns one into what ``--target`` already takes:
a preset's name when the triple and CPU are a preset's (and every other key agrees with it),
else the target as JSON. It imports nothing of :mod:`edgecompile.targets`, which calls it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from edgecompile.errors import EdgecompileError

#: The keys of an llvm target string we translate, and whether each holds a comma list.
KEYS = {
    "mtriple": False,
    "mcpu": False,
    "mattr": True,
    "num-cores": False,
    "model": False,
    "device": False,
    "keys": True,
    "mabi": False,
    "mfloat-abi": False,
}
_EXAMPLE = "e.g. 'llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon -num-cores=4'"


def is_tvmc_target(spec: str) -> bool:
    """``llvm`` alone or followed by options (``-key=value``): TVMC's form, not TVM 0.27's."""
    words = spec.split()
    return bool(words) and words[0] == "llvm"


def parse_tvmc_target(spec: str) -> dict[str, Any]:
    """The JSON-dict target of a TVMC llvm target string; one line naming any key we cannot
    translate."""
    words = spec.split()
    if not is_tvmc_target(spec):
        raise EdgecompileError(f"{spec!r} is not a TVMC llvm target string", _EXAMPLE)
    target: dict[str, Any] = {"kind": "llvm"}
    for word in words[1:]:
        key, equals, value = word.lstrip("-").partition("=")
        value = value.strip("'\"")  # -mattr="+neon" as shell scripts quote it
        if key not in KEYS:
            raise EdgecompileError(
                f"TVMC target option {word!r} is not one we translate",
                f"the options translated are -{', -'.join(KEYS)}; {_EXAMPLE}",
            )
        if not equals or not value:
            raise EdgecompileError(f"TVMC target option {word!r} has no value", _EXAMPLE)
        if KEYS[key]:
            target[key] = [item for item in value.split(",") if item]
        elif key == "num-cores":
            if not value.isdigit() or int(value) < 1:
                raise EdgecompileError(
                    f"-num-cores={value} is not a whole number of cores", "e.g. -num-cores=4"
                )
            target[key] = int(value)
        else:
            target[key] = value
    return target


def _canonical(triple: str) -> str:
    """The triple without its vendor, as presets spell it (``aarch64-unknown-linux-gnu``)."""
    arch, *rest = triple.split("-")
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
    return "-".join([arch, *(part for part in rest if part not in ("pc", "unknown"))])


def same_cpu_preset(target: Mapping[str, Any], presets: Mapping[str, Any]) -> str | None:
    """The first preset whose triple and CPU (``generic`` when not given) are ``target``'s
    (``presets``: name → ``BoardPreset``)."""
    if "mtriple" not in target:
        return None  # no triple means this machine, for which no preset is generic
    for name, preset in presets.items():
        theirs = preset.target
        if _canonical(str(theirs.get("mtriple", ""))) != _canonical(str(target["mtriple"])):
            continue
        if theirs.get("mcpu", "generic") == target.get("mcpu", "generic"):
            return name
    return None


def differing_keys(target: Mapping[str, Any], preset_target: Mapping[str, Any]) -> list[str]:
    """The keys ``target`` gives beyond triple and CPU with another value than the preset's."""
    return [
        key
        for key in target
        if key not in ("kind", "mtriple", "mcpu") and not _same(preset_target.get(key), target[key])
    ]


def _same(theirs: Any, ours: Any) -> bool:
    if isinstance(ours, list):
        return isinstance(theirs, list | tuple) and sorted(theirs) == sorted(ours)
    return theirs == ours


def translate_tvmc_target(spec: str, presets: Mapping[str, Any]) -> str | None:
    """What ``--target`` should resolve instead of the TVMC string ``spec``, said on stderr:
    the preset with its triple and CPU when every other key given agrees with it, else the
    target as JSON (on top of that preset's keys, so it keeps its cores and SoC model); None
    when ``spec`` is no TVMC string."""
    if not is_tvmc_target(spec):
        return None
    target = parse_tvmc_target(spec)
    name = same_cpu_preset(target, presets)
    if name is not None:
        differ = differing_keys(target, presets[name].target)
        if not differ:
            click.echo(f"TVMC target {spec!r} is preset {name!r}: using it", err=True)
            return name
        text = json.dumps({**presets[name].target, **target})
        click.echo(
            f"TVMC target {spec!r} is preset {name!r} but for {', '.join(differ)}: "
            f"using --target '{text}'",
            err=True,
        )
        return text
    text = json.dumps(target)
    click.echo(f"TVMC target {spec!r} matches no preset: using --target '{text}'", err=True)
    return text
