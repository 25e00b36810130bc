"""Post-training int8 quantization: calibration images (``images``), ONNX Runtime's static
quantization to a QDQ model (``pipeline``), its accuracy against fp32 (``accuracy``) and where
its files go (``paths``).

``quantize`` resolves on first use: importing a light module of the package (``paths``, which
the command line's early checks use) loads neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "quantize": "edgecompile.quantization.pipeline",
    "QuantizedModel": "edgecompile.quantization.pipeline",
    "AccuracyReport": "edgecompile.quantization.accuracy",
    "Agreement": "edgecompile.quantization.accuracy",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompile.quantization' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
