"""The model zoo: the mobile-CNN literature's lightweight networks, as edgecompile's own torch code.

Look models up with :func:`get_model`. The families load on first use (``facts.json`` lists them
without torch), so ``edgecompile models`` answers without building or importing anything heavy.
"""

from edgecompile.zoo.catalog import ModelSummary
from edgecompile.zoo.registry import (
    ModelInfo,
    catalog_summary,
    get_model,
    list_models,
    load_weights,
    model_aliases,
    model_info,
    register_model,
    resolve_name,
)

__all__ = [
    "ModelInfo",
    "ModelSummary",
    "catalog_summary",
    "get_model",
    "list_models",
    "load_weights",
    "model_aliases",
    "model_info",
    "register_model",
    "resolve_name",
]
