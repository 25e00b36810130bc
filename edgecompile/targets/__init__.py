"""Board presets and ``--target`` resolution.

``--target`` is resolved in this order: a built-in preset name (``rpi4``) → a user preset file
(``./board.toml``, same format as ``presets.toml`` beside this file) → a TVM target tag
(``raspberry-pi/4b-aarch64``) → raw TVM target JSON (``'{"kind": "llvm", ...}'``). TVMC's
strings (``llvm -mtriple=... -mcpu=...``) are translated first (:mod:`.tvmc`).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgecompile._names import check_plain_name, safe_name
from edgecompile.errors import EdgecompileError, first_line

PRESETS_FILE = Path(__file__).with_name("presets.toml")
HOST = "host"
ZIG = "zig"
_PRESET_KEYS = {"description", "tvm_tag", "threads", "rpc_key", "target", "toolchain"}


@dataclass(frozen=True)
class BoardPreset:
    """One board: its TVM target, how to link for it, and how to reach it."""

    name: str
    description: str
    target: Mapping[str, Any]
    threads: int
    rpc_key: str
    toolchain: str = ZIG
    tvm_tag: str | None = None
    source: str = "built-in"

    @property
    def triple(self) -> str:
        """The LLVM triple; without ``mtriple`` LLVM compiles for this machine, so that is it."""
        return str(self.target.get("mtriple") or host_triple())

    @property
    def arch(self) -> str:
        """``uname -m``-style architecture: aarch64, arm or x86_64."""
        head = self.triple.split("-")[0]
        if head in ("aarch64", "arm64"):
            return "aarch64"
        if head.startswith(("arm", "thumb")):
            return "arm"
        return head or platform.machine()

    @property
    def is_host(self) -> bool:
        """Libraries for this preset can be loaded by this machine's TVM."""
        return self.name == HOST or _canonical_triple(self.triple) == host_triple()

    def tvm_target(self) -> Any:
        import tvm

        return tvm.target.Target(dict(self.target))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "target": dict(self.target),
            "threads": self.threads,
            "rpc_key": self.rpc_key,
            "toolchain": self.toolchain,
            "tvm_tag": self.tvm_tag,
            "source": self.source,
        }


def host_arch() -> str:
    """This machine's architecture, named as ``uname -m`` and ELF headers name it."""
    machine = platform.machine().lower()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def host_triple() -> str:
    """This machine's triple without a vendor (TVM's own says ``x86_64-conda-linux-gnu``)."""
    return f"{host_arch()}-linux-gnu"


def _canonical_triple(triple: str) -> str:
    """The triple without its vendor: ``x86_64-pc-linux-gnu`` → ``x86_64-linux-gnu``."""
    arch, *rest = triple.split("-")
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
    if len(rest) >= 3:  # arch-vendor-os-environment
        rest = rest[1:]
    return "-".join([arch, *(part for part in rest if part not in ("pc", "unknown"))])


@functools.cache
def host_preset() -> BoardPreset:
    """This machine, with the CPU name LLVM detects ("native" silently becomes "generic")."""
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    cores = os.cpu_count() or 1
    return BoardPreset(
        name=HOST,
        description=f"This machine ({host_arch()}, {cpu}, {cores} cores)",
        target=MappingProxyType(
            {"kind": "llvm", "mtriple": host_triple(), "mcpu": cpu, "num-cores": cores}
        ),
        threads=cores,
        rpc_key=HOST,
    )


#: ARM architecture names as LLVM spells them in a triple. TVM's ARM target parser crashes the
#: process (SIGSEGV, found by fuzzing) on some near misses, e.g. ``aarch64linux-gnu`` or
#: ``armab-linux``; an ARM-looking name outside this list is refused before TVM sees it.
_ARM_ARCH = re.compile(
    r"aarch64(_be|_32)?|arm64(_32|e)?|arm(eb)?|armv[0-9]+(\.[0-9]+)?[a-z]*(eb)?"
    r"|thumb(eb)?|thumbv[0-9]+(\.[0-9]+)?[a-z]*(eb)?"
)


def triple_problem(triple: Any) -> str | None:
    """Why ``triple`` (a target's ``mtriple``) must not reach TVM, or None."""
    if not isinstance(triple, str):
        return None  # TVM refuses a non-text mtriple with an error of its own
    arch = triple.split("-")[0]
    if arch.lower().startswith(("arm", "aarch64", "thumb")) and not _ARM_ARCH.fullmatch(arch):
        return f"unknown ARM architecture {arch!r} in mtriple {triple!r}"
    return None


def _preset_from_table(name: str, table: Mapping[str, Any], source: str) -> BoardPreset:
    # The name becomes a folder (``build -o OUT`` writes OUT/<model>-<name>/).
    check_plain_name(name, "preset name", source)
    unknown = set(table) - _PRESET_KEYS
    if unknown:
        raise EdgecompileError(
            f"preset {name!r} in {source} has unknown keys: {', '.join(sorted(unknown))}",
            f"use only {', '.join(sorted(_PRESET_KEYS))}",
        )
    target = table.get("target")
    if not isinstance(target, Mapping) or "kind" not in target:
        raise EdgecompileError(
            f"preset {name!r} in {source} has no target table with a 'kind'",
            'add e.g. target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "..." }',
        )
    _check_target_values(target, f"preset {name!r} in {source}")
    problem = triple_problem(target.get("mtriple"))
    if problem is not None:
        raise EdgecompileError(
            f"preset {name!r} in {source}: {problem}",
            'e.g. mtriple = "aarch64-linux-gnu" or "armv7l-linux-gnueabihf"',
        )
    if str(target.get("mtriple", "")).endswith("gnueabihf") and "mfloat-abi" not in target:
        # A hard-float userland's libm takes floats in VFP registers; without this LLVM passes
        # them to its calls (nearbyintf, expf...) in integer registers and they read garbage.
        target = {**target, "mfloat-abi": "hard"}
    for key in ("description", "rpc_key", "toolchain", "tvm_tag"):
        if key in table and not isinstance(table[key], str):
            raise EdgecompileError(
                f"preset {name!r} in {source}: {key} must be a text, not {table[key]!r}",
                f'e.g. {key} = "..."',
            )
    threads = table.get("threads", target.get("num-cores", 1))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EdgecompileError(
            f"preset {name!r} in {source}: threads must be a whole number ≥ 1, not {threads!r}",
            "e.g. threads = 4",
        )
    return BoardPreset(
        name=name,
        description=str(table.get("description", "")),
        target=MappingProxyType(dict(target)),
        threads=threads,
        rpc_key=str(table.get("rpc_key", name)),
        toolchain=str(table.get("toolchain", ZIG)),
        tvm_tag=table.get("tvm_tag"),
        source=source,
    )


_TARGET_SCALARS = (str, int, float, bool)


def _check_target_values(target: Mapping[str, Any], where: str) -> None:
    """Target values TVM and the records' JSON can hold: text, numbers, flags, lists of them,
    nested tables of them (``host``). TOML also has dates and times; JSON has no such type."""

    def valid(value: Any) -> bool:
        if isinstance(value, _TARGET_SCALARS):
            return True
        if isinstance(value, list):
            return all(isinstance(item, _TARGET_SCALARS) for item in value)
        if isinstance(value, Mapping):
            return all(isinstance(key, str) and valid(item) for key, item in value.items())
        return False

    for key, value in target.items():
        if not isinstance(key, str) or not valid(value):
            raise EdgecompileError(
                f"{where}: target value {key!r} = {value!r} is not a text, number, flag or "
                "list of them",
                'e.g. mattr = ["+neon"]',
            )


def load_preset_file(path: str | Path) -> dict[str, BoardPreset]:
    """Read a preset file: one TOML table per board."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise EdgecompileError(
            f"preset file {str(path)!r} does not exist", "check the path"
        ) from None
    except IsADirectoryError:
        raise EdgecompileError(
            f"preset file {str(path)!r} is a folder", "pass the .toml file itself"
        ) from None
    except OSError as exc:
        raise EdgecompileError(
            f"cannot read preset file {str(path)!r}: {exc.strerror or exc}",
            "check the path and its permissions",
        ) from None
    except UnicodeDecodeError as exc:
        raise EdgecompileError(
            f"preset file {str(path)!r} is not UTF-8 text (byte {exc.start})",
            "save it as UTF-8 (TOML files are UTF-8)",
        ) from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # nested too deep: RecursionError
        raise EdgecompileError(
            f"preset file {str(path)!r} is not valid TOML: {first_line(exc)}",
            "see edgecompile/targets/presets.toml for the format",
        ) from None
    presets = {}
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise EdgecompileError(
                f"preset file {str(path)!r}: {name!r} is not a table",
                "write one [name] table per board",
            )
        presets[name] = _preset_from_table(name, table, str(path))
    if not presets:
        raise EdgecompileError(f"preset file {str(path)!r} defines no board", "add a [name] table")
    return presets


@functools.cache
def builtin_presets() -> Mapping[str, BoardPreset]:
    presets = load_preset_file(PRESETS_FILE)
    return MappingProxyType({**presets, HOST: host_preset()})


def list_presets() -> list[BoardPreset]:
    return list(builtin_presets().values())


def resolve_target(spec: str) -> BoardPreset:
    """Preset name → preset file → TVM tag → raw target JSON; anything else lists the presets.

    JSON is recognised by its leading ``{`` before any file look-up.
    """
    presets = builtin_presets()
    if spec in presets:
        return presets[spec]
    # JSON first: a long JSON string is no file name (stat() fails with ENAMETOOLONG).
    if spec.lstrip().startswith("{"):
        return _preset_from_json(spec)
    from edgecompile.targets.tvmc import translate_tvmc_target  # "llvm -mcpu=..." (TVMC's)

    if (translated := translate_tvmc_target(spec, presets)) is not None:
        return resolve_target(translated)
    if spec.endswith(".toml") or Path(spec).is_file():
        user = load_preset_file(spec)
        if len(user) > 1:
            raise EdgecompileError(
                f"preset file {spec!r} defines {len(user)} boards ({', '.join(user)})",
                "keep one board per file passed to --target",
            )
        preset = next(iter(user.values()))
        _check_tvm_accepts(preset)
        return preset
    tag = _tvm_tag(spec)
    if tag is not None:
        return tag
    raise EdgecompileError(
        f"unknown target {spec!r}",
        f"use a preset ({', '.join(presets)}), a preset .toml file, a TVM tag or target JSON",
    )


def _preset_from_json(text: str) -> BoardPreset:
    try:
        target = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EdgecompileError(f"target JSON does not parse: {exc}") from None
    if not isinstance(target, dict) or "kind" not in target:
        raise EdgecompileError(
            "target JSON must be an object with a 'kind'", 'e.g. {"kind": "llvm"}'
        )
    preset = _preset_from_table("custom", {"target": target}, "target JSON")
    _check_tvm_accepts(preset)
    return replace(preset, description="target given as JSON")


def _tvm_tag(name: str) -> BoardPreset | None:
    import tvm

    config = tvm.target.tag.list_tags().get(name)
    if config is None:
        return None
    # str(Target) is its JSON; it carries derived "feature.*" keys we leave to TVM to recompute.
    target = json.loads(str(tvm.target.Target(name)))
    keep = {
        "kind", "mtriple", "mcpu", "mattr", "mfloat-abi", "num-cores", "keys", "device", "model",
    }  # fmt: skip
    table = {key: value for key, value in target.items() if key in keep}
    preset = _preset_from_table(
        safe_name(name.replace("/", "-")), {"target": table}, f"TVM tag {name}"
    )
    return replace(preset, tvm_tag=name, description=f"TVM tag {name}")


def _check_tvm_accepts(preset: BoardPreset) -> None:
    try:
        preset.tvm_target()
    except Exception as exc:  # TVM raises its own error types for a bad target
        raise EdgecompileError(
            f"TVM rejects target {dict(preset.target)} ({preset.source}): {first_line(exc)}",
            "see `edgecompile targets --json` for working examples",
        ) from None
