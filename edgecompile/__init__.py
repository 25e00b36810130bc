"""edgecompile: lightweight vision networks from PyTorch to fast libraries for ARM boards, via TVM.

The Python API has the command line's names: ``list_models``, ``get_model``, ``export_onnx``,
``inspect_model``, ``build``, ``quantize``, ``run``, ``deploy``, ``bench``, ``profile``, ``tune``,
``report`` (``run`` and ``bench`` on a board with ``access=BoardAccess(...)``). Names resolve
lazily so ``import edgecompile`` stays cheap (torch and TVM load on first use). No subpackage is
named like one of them: importing ``edgecompile.tune`` would have replaced the function ``tune``.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgecompile.errors import EdgecompileError

__version__ = "0.1.0"

_LAZY = {
    "list_models": "edgecompile.zoo",
    "get_model": "edgecompile.zoo",
    "model_info": "edgecompile.zoo",
    "register_model": "edgecompile.zoo",
    "resolve_name": "edgecompile.zoo",
    "load_torch_model": "edgecompile.export",
    "export_onnx": "edgecompile.export",
    "inspect_model": "edgecompile.inspection",
    "summarize_model": "edgecompile.inspection",
    "resolve_target": "edgecompile.targets",
    "list_presets": "edgecompile.targets",
    "build": "edgecompile.builder",
    "quantize": "edgecompile.quantization",
    "run": "edgecompile.api",
    "bench": "edgecompile.api",
    "profile": "edgecompile.api",
    "BoardAccess": "edgecompile.device.access",
    "deploy": "edgecompile.device.deploy",
    "tune": "edgecompile.tuning",
    "report": "edgecompile.reporting",
}

__all__ = ["EdgecompileError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompile' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
