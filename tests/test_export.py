"""Export: every zoo model becomes static ONNX that ONNX Runtime runs exactly like torch."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgecompile.errors import EdgecompileError
from edgecompile.export import (
    check_static_onnx,
    export_onnx,
    load_torch_model,
    parse_input_size,
    relative_error,
    run_onnxruntime,
    run_torch,
)
from edgecompile.zoo import list_models, model_info


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_static_onnx_matching_torch(name: str, tmp_path: Path) -> None:
    model = load_torch_model(name)
    exported = export_onnx(model, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(exported.path))
    assert not [node for node in proto.graph.node if node.op_type == "Shape"]
    assert exported.inputs[0].shape == model_info(name).input_shape
    assert all(dim > 0 for spec in exported.outputs for dim in spec.shape)
    assert exported.max_relative_error is not None
    assert exported.max_relative_error <= 1e-4


def test_export_honours_batch_and_input_size(tmp_path: Path) -> None:
    model = load_torch_model("mobilenet_v3_small", batch=2, input_size="160x192")
    exported = export_onnx(model, tmp_path / "m.onnx")
    assert exported.inputs[0].shape == (2, 3, 160, 192)
    assert exported.outputs[0].shape == (2, 1000)
    data = np.random.default_rng(5).standard_normal((2, 3, 160, 192), dtype=np.float32)
    (ort_out,) = run_onnxruntime(exported.path, {"input": data})
    assert relative_error(ort_out, run_torch(model, data)) <= 1e-4


@pytest.mark.parametrize("text", ["0", "224x", "abc", "1x2x3", "-5"])
def test_bad_input_size_is_rejected(text: str) -> None:
    with pytest.raises(EdgecompileError, match="bad input size"):
        parse_input_size(text)


def test_input_size_forms() -> None:
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("512x1024") == (512, 1024)
    assert parse_input_size([96, 128]) == (96, 128)
    assert parse_input_size(None) is None


def test_input_size_too_small_for_the_network_is_a_user_error(tmp_path: Path) -> None:
    model = load_torch_model("squeezenet1_1", input_size="8")
    with pytest.raises(EdgecompileError, match="cannot run at input size 8x8"):
        export_onnx(model, tmp_path / "small.onnx")
    assert not list(tmp_path.iterdir()), "a failed export must leave no file"


def test_module_reference_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        textwrap.dedent(
            """
            import torch

            def tiny():
                return torch.nn.Sequential(
                    torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_torch_model("userpkg.nets:tiny", input_size="32")
    exported = export_onnx(model, tmp_path / "tiny.onnx")
    assert exported.outputs[0].shape == (1, 4)
    assert exported.max_relative_error <= 1e-4
    sys.modules.pop("userpkg.nets", None)
    sys.modules.pop("userpkg", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no_such_pkg_xyz.mod:build", "cannot import"), ("json:not_there", "no callable")],
)
def test_bad_module_references(spec: str, message: str) -> None:
    with pytest.raises(EdgecompileError, match=message):
        load_torch_model(spec)


def test_factory_must_return_a_module() -> None:
    with pytest.raises(EdgecompileError, match=r"not a torch\.nn\.Module"):
        load_torch_model("os:getcwd")


def test_shape_arithmetic_is_refused(tmp_path: Path) -> None:
    """The legacy exporter turns x.chunk() into Shape → Gather; the static check names the fix."""

    class Split(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.chunk(2, dim=1)
            return a * b

    path = tmp_path / "chunk.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Split(), (torch.randn(1, 4, 8, 8),), str(path), dynamo=False)
    with pytest.raises(EdgecompileError, match="Shape ops"):
        check_static_onnx(onnx.load(str(path)), source="chunk.onnx")
