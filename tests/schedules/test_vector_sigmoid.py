"""The squeeze-excite gate's sigmoid as vector arithmetic: as exact as torch's, and no libm
``expf`` call per lane (whose saves of every live vector spilled MnasNet's gates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.schedules.spills import module_assembly, module_spills
from edgecompile.targets import resolve_target


def _se_gate_onnx(path: Path, reduced: int = 24) -> Path:
    """MnasNet's squeeze-excite at 14²: pool → 1×1 reduce → ReLU → 1×1 expand → sigmoid → scale
    the input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype("float32"), name)

    # The expand's weights are large enough that the gate's inputs reach far into both tails.
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w0", "b0"], ["reduced"]),
        helper.make_node("Relu", ["reduced"], ["relu"]),
        helper.make_node("Conv", ["relu", "w1", "b1"], ["expanded"]),
        helper.make_node("Sigmoid", ["expanded"], ["gate"]),
        helper.make_node("Mul", ["input", "gate"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "se_gate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 96, 14, 14])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 96, 14, 14])],
        initializer=[
            weight("w0", (reduced, 96, 1, 1), 0.5),
            weight("b0", (reduced,), 0.5),
            weight("w1", (96, reduced, 1, 1), 4.0),
            weight("b1", (96,), 4.0),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def se_gate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from edgecompile.importer import import_onnx

    path = _se_gate_onnx(tmp_path_factory.mktemp("se") / "se.onnx")
    return import_onnx(path, name="se_gate")[0], path


def _reference(onnx_path: Path, data: np.ndarray) -> np.ndarray:
    """The gate in torch, from the ONNX file's own weights."""
    import onnx
    import torch
    from onnx import numpy_helper

    weights = {
        init.name: torch.tensor(numpy_helper.to_array(init))
        for init in onnx.load(str(onnx_path)).graph.initializer
    }
    x = torch.from_numpy(data)
    pooled = x.mean(dim=(2, 3), keepdim=True)
    reduced = torch.relu(torch.nn.functional.conv2d(pooled, weights["w0"], weights["b0"]))
    gate = torch.sigmoid(torch.nn.functional.conv2d(reduced, weights["w1"], weights["b1"]))
    return (x * gate).numpy()


def test_the_gate_matches_torch_on_this_machine(se_gate: tuple[Any, Path]) -> None:
    import tvm
    from tvm import relax

    from edgecompile.schedules import compile_relax

    module, onnx_path = se_gate
    executable, _ = compile_relax(module.module, resolve_target("host").tvm_target())
    data = np.random.default_rng(1).standard_normal((1, 96, 14, 14)).astype("float32") * 3
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(actual, _reference(onnx_path, data), rtol=1e-5, atol=1e-5)


def _elementwise(values: np.ndarray, silu: bool) -> np.ndarray:
    """:func:`vector_sigmoid.sigmoid` on ``values``, built for this machine, vectorized."""
    import tvm
    from tvm import s_tir, te

    from edgecompile.schedules.vector_sigmoid import sigmoid

    data = te.placeholder(values.shape, "float32", name="x")
    func = te.create_prim_func([data, sigmoid(data, times_input=silu)])
    sch = s_tir.Schedule(func)
    (loop,) = sch.get_loops(sch.get_sblock("silu" if silu else "sigmoid"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    library = tvm.tirx.build(sch.mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros_like(values))
    library(tvm.runtime.tensor(values), out)
    return out.numpy()


@pytest.mark.parametrize("silu", [False, True], ids=["sigmoid", "silu"])
def test_the_polynomial_matches_torch_over_the_whole_float_range(silu: bool) -> None:
    import torch

    dense = np.linspace(-20, 20, 40_001, dtype="float32")
    tails = np.array([-1e30, -200, -100, -88.5, -87.5, 87.5, 88.5, 100, 200, 1e30], "float32")
    values = np.concatenate([dense, tails, np.float32([0.0, -0.0, 1e-8, -1e-8])])
    values = np.pad(values, (0, -len(values) % 8))
    x = torch.from_numpy(values)
    expected = (x * torch.sigmoid(x) if silu else torch.sigmoid(x)).numpy()
    actual = _elementwise(values, silu)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["rpi4", "rpi3", "armv7", "x86-64-v2"])
def test_the_gate_calls_no_expf(preset: str, se_gate: tuple[Any, Path]) -> None:
    """TVM's own sigmoid called ``expf`` once per lane, every live vector saved around each
    call. 32-bit ARM still spills here: its 16 registers cannot hold the expand conv's one
    input pixel (24 channels), which LLVM hoists whole out of the loop over output tiles."""
    from edgecompile.schedules import compile_relax

    target = resolve_target(preset).tvm_target()
    executable, _ = compile_relax(se_gate[0].module, target)
    assert "expf" not in module_assembly(executable)
    if preset != "armv7":
        spills = module_spills(executable, target)
        assert {name: found.innermost for name, found in spills.items() if found.spills} == {}


def test_a_gate_of_few_channels_is_spill_free_too(tmp_path: Path) -> None:
    """8 reduced channels. Inlined into the expand conv's tile, the polynomial's constants
    (hoisted by LLVM out of the loop over output tiles) spilled on rpi4 (9 stack accesses per
    tile), x86-64-v2 (5) and armv7 (17): the gate runs as a loop of its own."""
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import compile_relax

    module = import_onnx(_se_gate_onnx(tmp_path / "se.onnx", reduced=8), name="se8")[0]
    for preset in ("rpi4", "x86-64-v2", "armv7"):
        target = resolve_target(preset).tvm_target()
        executable, _ = compile_relax(module.module, target)
        spills = module_spills(executable, target)
        assert {n: found.innermost for n, found in spills.items() if found.spills} == {}, preset
