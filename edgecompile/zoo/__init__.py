"""The model zoo: the mobile-CNN literature's lightweight networks, as edgecompile's own torch code.

Importing this package registers every family; look models up with :func:`get_model`.
"""

# Importing a family module registers its variants.
from edgecompile.zoo import (  # noqa: F401
    condensenet,
    espnet,
    espnet_v2,
    mnasnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    shufflenet_v1,
    shufflenet_v2,
    squeezenet,
    xception,
)
from edgecompile.zoo.registry import (
    ModelInfo,
    get_model,
    list_models,
    load_weights,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "get_model", "list_models", "load_weights", "model_info", "register_model"]
