"""Where a quantization's files go: ``<name>.int8.onnx`` and its ``.accuracy.json`` beside it.

Cheap (no torch, no ONNX Runtime): the command line checks ``-o`` is writable with these before
the model is exported and calibrated.
"""

from __future__ import annotations

from pathlib import Path

from edgecompile._names import safe_name


def model_name(model: str) -> str:
    """A file-safe name: the ONNX file's stem, the factory's name (``pkg.module:function``; no
    zoo name holds a colon), or the zoo's name for a name or an alias."""
    if model.endswith(".onnx"):
        return safe_name(Path(model).stem)
    if ":" in model:
        return safe_name(model.rpartition(":")[2])
    from edgecompile.zoo import resolve_name

    return safe_name(resolve_name(model))


def default_output(model: str) -> Path:
    """``<name>.int8.onnx`` in the current folder."""
    return Path(f"{model_name(model)}.int8.onnx")


def report_path_for(output: str | Path) -> Path:
    """The accuracy report of ``output``: ``x.int8.onnx`` → ``x.int8.accuracy.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".accuracy.json")
