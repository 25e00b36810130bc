"""Model registry: every zoo network is registered by name with the facts the CLI shows.

A builder is a keyword-only function returning an ``nn.Module``; a variant is a builder plus a fixed
set of keyword arguments (for instance ShuffleNet v1 at ``groups=3, width=1.0``), so one builder
serves a whole table of the paper's variants.

The built-in families load on first use: the catalog (``facts.json``) knows every built-in name,
alias and cost without importing them, so listing the zoo imports no torch, and looking a model
up imports only its family's module. A name resolves through its aliases — torchvision's and
timm's names for the same architecture, and the grid's explicit spelling of a default variant
(``shufflenet_v1_g3_x1_0``) — to one registered name.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from edgecompile.errors import EdgecompileError, first_line, last_line
from edgecompile.zoo.catalog import ModelSummary, builtin_aliases, builtin_models
from edgecompile.zoo.names import normalize, suggest

if TYPE_CHECKING:
    from torch import nn

Task = Literal["classification", "segmentation"]
Builder = Callable[..., "nn.Module"]
Key = TypeVar("Key", bound=str)
Config = TypeVar("Config")

#: The modules under ``edgecompile.zoo`` that register the built-in models, one per family.
FAMILY_MODULES = (
    "condensenet", "espnet", "espnet_v2", "mnasnet", "mobilenet_v1", "mobilenet_v2",
    "mobilenet_v3", "shufflenet_v1", "shufflenet_v2", "squeezenet", "xception",
)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one named model."""

    name: str
    family: str
    task: Task
    input_size: tuple[int, int]
    builder: Builder
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Batch-1 NCHW input shape at the default resolution."""
        return (1, 3, *self.input_size)


_REGISTRY: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}  # alias -> registered name


def register_model(
    name: str,
    builder: Builder,
    *,
    family: str,
    input_size: tuple[int, int] = (224, 224),
    task: Task = "classification",
    description: str = "",
    aliases: Iterable[str] = (),
    **kwargs: Any,
) -> ModelInfo:
    """Register ``builder(**kwargs)`` under ``name`` (and ``aliases``); returns the entry.

    A name or alias already in use, by a registered model or a built-in one not loaded yet,
    is refused.
    """
    aliases = tuple(aliases)
    for taken in (name, *aliases):
        if taken in _REGISTRY or taken in _ALIASES or _is_builtin_of_another(taken, builder):
            raise ValueError(f"model {taken!r} is registered twice")
    info = ModelInfo(
        name=name,
        family=family,
        task=task,
        input_size=input_size,
        builder=builder,
        kwargs=MappingProxyType(dict(kwargs)),
        description=description,
        aliases=aliases,
    )
    _REGISTRY[name] = info
    _ALIASES.update(dict.fromkeys(aliases, name))
    return info


def _is_builtin_of_another(name: str, builder: Builder) -> bool:
    """True if ``name`` is a built-in model or alias that ``builder``'s module does not own."""
    owner = builtin_models().get(builtin_aliases().get(name, name))
    return owner is not None and builder.__module__ != f"edgecompile.zoo.{owner.module}"


def width_suffix(width: float) -> str:
    """The name suffix of a width-multiplier variant: ``""`` at 1.0, else ``_x0_75`` for 0.75."""
    return "" if width == 1.0 else "_x" + f"{width:g}".replace(".", "_")


def variant_config(configs: Mapping[Key, Config], key: Key, what: str) -> Config:
    """``configs[key]``, or a ValueError naming ``what`` (say "SqueezeNet version") and the keys."""
    try:
        return configs[key]
    except KeyError:
        known = ", ".join(sorted(configs))
        raise ValueError(f"unknown {what} {key!r}; known: {known}") from None


def list_models(pattern: str | None = None, *, family: str | None = None) -> list[str]:
    """Registered and built-in names, sorted; ``pattern`` is a shell glob (``shufflenet*``) or a
    substring, matched against each model's name and aliases."""
    families = _families()
    names = sorted(families)
    if family is not None:
        names = [n for n in names if families[n] == family]
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [
            n for n in names if any(fnmatch.fnmatchcase(s, glob) for s in (n, *model_aliases(n)))
        ]
    return names


def model_aliases(name: str) -> tuple[str, ...]:
    """The other names ``name`` (a registered or built-in model's own name) answers to."""
    if name in _REGISTRY:
        return _REGISTRY[name].aliases
    entry = builtin_models().get(name)
    return entry.summary.aliases if entry else ()


def resolve_name(name: str) -> str:
    """The model ``name`` means — itself, or the model it is an alias of — or an error that
    suggests the models nearest in meaning (same family, nearest width), else in spelling."""
    aliases = {**builtin_aliases(), **_ALIASES}
    families = _families()
    for spelling in (name, normalize(name)):
        if spelling in families:
            return spelling
        if spelling in aliases:
            return aliases[spelling]
    close = suggest(name, families, {n: model_aliases(n) for n in families})
    hint = f"did you mean {', '.join(close)}?" if close else "see `edgecompile models`"
    raise EdgecompileError(f"unknown model {name!r}", hint)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name`` or an alias of it (loading its family on first use), or
    an error that suggests close names."""
    resolved = resolve_name(name)
    if resolved not in _REGISTRY:
        importlib.import_module(f"edgecompile.zoo.{builtin_models()[resolved].module}")
    return _REGISTRY[resolved]


def catalog_summary(name: str) -> ModelSummary | None:
    """The shipped facts of a built-in model (or alias), without building it; None for a model
    registered at run time, whose costs only a build can tell."""
    entry = builtin_models().get(resolve_name(name))
    return entry.summary if entry else None


def load_builtin_families() -> None:
    """Import every family module, registering every built-in model (as regenerating the
    catalog needs; a lookup loads only the family it needs)."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"edgecompile.zoo.{module}")


def builtin_model_infos() -> list[ModelInfo]:
    """The registry entries of every built-in model (loading every family), sorted by name."""
    load_builtin_families()
    return [
        info
        for _, info in sorted(_REGISTRY.items())
        if info.builder.__module__.startswith("edgecompile.zoo.")
    ]


def _families() -> dict[str, str]:
    """Every model name known, registered or built-in, with its family."""
    families = {name: entry.summary.family for name, entry in builtin_models().items()}
    families.update({name: info.family for name, info in _REGISTRY.items()})
    return families


def get_model(
    name: str,
    *,
    seed: int = 0,
    weights: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build ``name`` in eval mode with seeded random weights, or a user's checkpoint.

    ``overrides`` replace the variant's keyword arguments (for example ``num_classes=10``).
    ``weights`` is a ``state_dict`` file saved with ``torch.save``; its keys must match exactly.
    """
    import torch

    info = model_info(name)
    kwargs = {**info.kwargs, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = info.builder(**kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a checkpoint (a ``state_dict``, or a dict holding one under ``state_dict``)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EdgecompileError(f"weights file {path!r} does not exist", "check the path") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise EdgecompileError(
            f"cannot read weights file {path!r}: {first_line(exc)}",
            "pass a state_dict saved with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise EdgecompileError(
            f"weights file {path!r} holds no state_dict",
            "save it with torch.save(model.state_dict(), path)",
        )
    try:
        result = model.load_state_dict(checkpoint, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        raise EdgecompileError(
            f"weights file {path!r} does not fit this model: {last_line(exc)}",
            "use a checkpoint of the same model and variant",
        ) from None
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3]) or "none"
        extra = ", ".join(result.unexpected_keys[:3]) or "none"
        raise EdgecompileError(
            f"weights file {path!r} does not fit this model "
            f"(missing: {missing}; unexpected: {extra})",
            "use a checkpoint of the same model and variant",
        )
