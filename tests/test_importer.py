"""ONNX → Relax: old-exporter files, unsupported ops, dynamic dims, bad files, heavy ops."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from tvm import relax

import edgecompile
from edgecompile.errors import EdgecompileError
from edgecompile.importer import (
    check_supported_ops,
    heavy_ops,
    import_onnx,
    make_static,
    supported_onnx_ops,
)
from edgecompile.runner import run

SIZE = 32


class ByoNet(nn.Module):
    """A user's own network: x.chunk(), torch.flatten and AdaptiveAvgPool2d, the three
    constructs the old exporter turns into run-time Shape → Gather arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.right = nn.Conv2d(4, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


def export_old(module: nn.Module, path: Path, shape: tuple[int, ...], **options: object) -> Path:
    """TorchScript-based export, as a user's older script would do it."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(*shape),),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["output"],
            **options,
        )
    return path


def ops_of(proto: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in proto.graph.node}


@pytest.fixture(scope="module")
def byo_model() -> nn.Module:
    torch.manual_seed(0)
    return ByoNet().eval()


@pytest.fixture(scope="module")
def byo_onnx(byo_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("byo") / "byo_net.onnx"
    export_old(byo_model, path, (1, 3, SIZE, SIZE), dynamic_axes={"input": {0: "N"}})
    return path


def one_line_error(excinfo: pytest.ExceptionInfo[EdgecompileError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def tiny_graph(
    path: Path,
    op: str,
    *,
    domain: str = "",
    shape: list[int | str] | None = None,
) -> Path:
    """input → Relu → ``op`` (in ``domain``) → output, written with onnx.helper."""
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["input"], ["r"]),
            helper.make_node(op, ["r"], ["output"], domain=domain),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape or [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


# --- bring-your-own ONNX from the old exporter ---------------------------------------------------


def test_old_exporter_file_has_shape_arithmetic_and_a_symbolic_batch(byo_onnx: Path) -> None:
    """The premise of the next tests: this file is the hard case, not an already-static one."""
    proto = onnx.load(str(byo_onnx))
    assert {"Shape", "Gather"} <= ops_of(proto)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value") and batch.dim_param == "N"


def test_import_pins_the_batch_and_folds_the_shape_ops(byo_onnx: Path) -> None:
    relax_model, static = import_onnx(byo_onnx)
    assert "Shape" not in ops_of(static) and "Gather" not in ops_of(static)
    assert [spec.shape for spec in relax_model.inputs] == [(1, 3, SIZE, SIZE)]
    assert [spec.shape for spec in relax_model.outputs] == [(1, 5)]
    assert relax_model.name == "byo_net"
    # Every tensor in main is static: no symbolic dim reached Relax.
    main = relax_model.module["main"]
    assert list(relax.analysis.defined_symbolic_vars(main)) == []
    assert [[int(d) for d in p.ty.shape] for p in main.params] == [[1, 3, SIZE, SIZE]]


def test_import_with_an_explicit_batch(byo_onnx: Path) -> None:
    relax_model, _ = import_onnx(byo_onnx, input_shapes={"input": [3, 3, SIZE, SIZE]})
    assert [spec.shape for spec in relax_model.outputs] == [(3, 5)]


def test_byo_onnx_builds_for_host_and_matches(
    byo_onnx: Path, byo_model: nn.Module, tmp_path: Path
) -> None:
    result = edgecompile.build(str(byo_onnx), "host", output_dir=tmp_path)
    manifest = result.artifact.manifest
    assert manifest.model == "byo_net"
    assert manifest.verification["status"] == "passed"
    assert result.max_relative_error is not None and result.max_relative_error <= 1e-4
    # ... and against torch directly, not only ONNX Runtime.
    x = np.random.default_rng(7).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
    (actual,) = run(result.artifact, [x]).outputs
    with torch.no_grad():
        expected = byo_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


# --- ops TVM cannot import -----------------------------------------------------------------------


def test_unsupported_standard_op_is_named(tmp_path: Path) -> None:
    assert "Celu" not in supported_onnx_ops()  # the premise: TVM's frontend lacks it
    path = tiny_graph(tmp_path / "celu.onnx", "Celu")
    with pytest.raises(EdgecompileError) as excinfo:
        import_onnx(path)
    message = one_line_error(excinfo)
    assert "Celu" in message and str(path) in message


@pytest.mark.parametrize("domain", ["com.example", "ai.onnx.ml"])
def test_op_from_another_domain_is_named(tmp_path: Path, domain: str) -> None:
    path = tiny_graph(tmp_path / "custom.onnx", "Binarizer", domain=domain)
    with pytest.raises(EdgecompileError) as excinfo:
        import_onnx(path)
    message = one_line_error(excinfo)
    assert f"{domain}.Binarizer" in message
    assert "cannot import" in message


def test_check_supported_ops_accepts_the_standard_domain_spelled_out() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    check_supported_ops(helper.make_model(graph), source="relu")  # does not raise


def test_unsupported_op_fails_the_build_without_an_artifact(tmp_path: Path) -> None:
    path = tiny_graph(tmp_path / "celu.onnx", "Celu")
    out = tmp_path / "out"
    with pytest.raises(EdgecompileError, match="Celu"):
        edgecompile.build(str(path), "host", output_dir=out)
    assert not (out / "celu-host").exists()


# --- dynamic dimensions and bad files ------------------------------------------------------------


def test_dynamic_non_batch_dim_is_an_error(tmp_path: Path) -> None:
    path = tiny_graph(tmp_path / "dyn.onnx", "Relu", shape=["N", 3, "H", 8])
    with pytest.raises(EdgecompileError) as excinfo:
        import_onnx(path)
    message = one_line_error(excinfo)
    assert "'H'" in message and "'input'" in message
    assert "--input-size" in message


def test_dynamic_dim_pinned_by_input_size_builds(tmp_path: Path) -> None:
    path = tiny_graph(tmp_path / "dyn.onnx", "Relu", shape=["N", 3, "H", 8])
    result = edgecompile.build(str(path), "host", output_dir=tmp_path, input_size="6x8")
    assert result.artifact.manifest.inputs[0]["shape"] == [1, 3, 6, 8]
    assert result.artifact.manifest.verification["status"] == "passed"


def test_pinned_shape_of_the_wrong_rank_is_an_error(byo_onnx: Path) -> None:
    proto = onnx.load(str(byo_onnx))
    with pytest.raises(EdgecompileError, match="rank 4, not 2"):
        make_static(proto, source="byo", input_shapes={"input": [1, 3]})


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.onnx", b"hello, I am not a model\n"),
        ("empty.onnx", b""),
        ("weights.pt", b"\x80\x02}q\x00."),
    ],
)
def test_non_onnx_file_is_an_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EdgecompileError) as excinfo:
        import_onnx(path)
    assert str(path) in one_line_error(excinfo)


def test_missing_onnx_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError, match="does not exist"):
        import_onnx(tmp_path / "nope.onnx")


# --- heavy ops -----------------------------------------------------------------------------------


class ConvZoo(nn.Module):
    """One of each convolution class, in sequence, then a pool and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),  # dense 3×3
            nn.Conv2d(16, 16, 1),  # pointwise
            nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16),  # depthwise, dilated
            nn.Conv2d(16, 32, 3, padding=1, groups=16),  # depthwise, multiplier 2
            nn.Conv2d(32, 32, 3, padding=1, groups=4),  # grouped 3×3
            nn.Conv2d(32, 16, 1, groups=2),  # grouped 1×1 (ShuffleNet v1)
            nn.Conv2d(16, 16, 1, stride=2),  # pointwise, strided
        )
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.convs(x)), 1))


def expected_kind(conv: nn.Conv2d) -> str:
    """The schedule class, from torch's own description of the layer."""
    if conv.groups == 1:
        return "pointwise" if conv.kernel_size == (1, 1) else "conv"
    if conv.groups == conv.in_channels:
        return "depthwise"
    return "grouped"


def test_heavy_ops_classifies_convolutions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ConvZoo().eval()
    path = export_old(model, tmp_path / "convs.onnx", (1, 3, 16, 16))
    relax_model, _ = import_onnx(path)
    ops = heavy_ops(relax_model.module)
    assert [op["index"] for op in ops] == list(range(len(ops)))

    convs = [op for op in ops if op["op"] == "conv2d"]
    layers = list(model.convs)
    assert len(convs) == len(layers)
    for op, layer in zip(convs, layers, strict=True):
        assert op["kind"] == expected_kind(layer), (op, layer)
        assert op["groups"] == layer.groups
        assert op["kernel"] == list(layer.kernel_size)
        assert op["strides"] == list(layer.stride)
        assert op["dilation"] == list(layer.dilation)
        assert op["shapes"][1] == list(layer.weight.shape)
        batch, _, *size = op["shapes"][0]
        out_size = [
            (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1
            for n, pad, dilation, k, stride in zip(
                size, layer.padding, layer.dilation, layer.kernel_size, layer.stride, strict=True
            )
        ]
        assert op["output"] == [batch, layer.out_channels, *out_size]
    # All four classes are present, so a classifier stuck on one kind fails above.
    assert {op["kind"] for op in convs} == {"conv", "pointwise", "depthwise", "grouped"}
    assert [op["kind"] for op in ops if op["op"] != "conv2d"] == ["pool", "matmul"]


# --- Gather: ONNX's negative indices, and no "Fast mode" warnings -------------------------------


def _take_modes(module: object) -> list[str]:
    modes: list[str] = []

    @relax.expr_functor.visitor
    class Takes(relax.PyExprVisitor):  # type: ignore[misc]
        def visit_call_(self, call: relax.Call) -> None:
            super().visit_call_(call)
            if getattr(call.op, "name", "") == "relax.take":
                modes.append(str(call.attrs.mode))

    Takes().visit_expr(module["main"])  # type: ignore[index]
    return modes


def test_gather_takes_are_bounded_and_match(tmp_path: Path) -> None:
    """TVM imports Gather as take(mode="fast"), which logs a warning for every take it
    legalizes and reads out of bounds on a bad index; the importer makes them clip."""
    indices = helper.make_tensor("idx", TensorProto.INT64, [4], [-1, 0, 2, -3])
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["input", "idx"], ["g"], axis=1),
            helper.make_node("Relu", ["g"], ["output"]),
        ],
        "gather",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])],
        initializer=[indices],
    )
    path = tmp_path / "gather.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    relax_model, _ = import_onnx(path)
    assert "fast" not in _take_modes(relax_model.module)
    assert "clip" in _take_modes(relax_model.module)
    result = edgecompile.build(str(path), "host", output_dir=tmp_path / "out")
    assert result.artifact.manifest.verification["status"] == "passed"
    x = np.random.default_rng(1).standard_normal((1, 6, 4, 4), dtype=np.float32)
    (actual,) = run(result.artifact, [x]).outputs
    np.testing.assert_allclose(actual, np.maximum(x[:, [5, 0, 2, 3]], 0), rtol=1e-6)
