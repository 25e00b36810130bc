"""Model registry: every zoo network is registered by name with the facts the CLI shows.

A builder is a keyword-only function returning an ``nn.Module``; a variant is a builder plus a fixed
set of keyword arguments (for instance ShuffleNet v1 at ``groups=3, width=1.0``), so one builder
serves a whole table of the paper's variants.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from edgecompile.errors import EdgecompileError, first_line, last_line

Task = Literal["classification", "segmentation"]
Builder = Callable[..., nn.Module]
Key = TypeVar("Key", bound=str)
Config = TypeVar("Config")


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

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Batch-1 NCHW input shape at the default resolution."""
        return (1, 3, *self.input_size)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    builder: Builder,
    *,
    family: str,
    input_size: tuple[int, int] = (224, 224),
    task: Task = "classification",
    description: str = "",
    **kwargs: Any,
) -> ModelInfo:
    """Register ``builder(**kwargs)`` under ``name``; returns the stored :class:`ModelInfo`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    info = ModelInfo(
        name=name,
        family=family,
        task=task,
        input_size=input_size,
        builder=builder,
        kwargs=MappingProxyType(dict(kwargs)),
        description=description,
    )
    _REGISTRY[name] = info
    return info


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
    """Registered names, sorted; ``pattern`` is a shell glob (``shufflenet*``) or a substring."""
    names = sorted(_REGISTRY)
    if family is not None:
        names = [n for n in names if _REGISTRY[n].family == family]
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, glob)]
    return names


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``, or an error that suggests close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `edgecompile models`"
        raise EdgecompileError(f"unknown model {name!r}", hint) from None


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
