"""The x86 stand-ins' pointwise defaults, built spill-free, and right: this machine runs their
code, so the kernels are checked against torch here. SSE (x86-64-v2): a one-pixel tile of up to 8
output blocks; AVX2 (x86-64-v3): as many FMA chains as one step's operands leave registers for;
a prime count of output blocks: a tail of output blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.schedules.spills import module_spills
from edgecompile.targets import resolve_target


def _pointwise_onnx(path: Path, in_channels: int, out_channels: int, size: int) -> Path:
    """A 1×1 conv with ReLU at ``size``²."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((out_channels, in_channels, 1, 1)) * 0.2
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_channels, size, size])],
        initializer=[numpy_helper.from_array(weight.astype("float32"), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _import(folder: Path, in_channels: int, out_channels: int, size: int) -> tuple[Any, Path]:
    from edgecompile.importer import import_onnx

    path = _pointwise_onnx(folder / "pointwise.onnx", in_channels, out_channels, size)
    return import_onnx(path, name="pointwise")[0], path


@pytest.fixture(scope="module")
def expand_28(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """MobileNet v2's expand at 28²: 32 → 96 channels (24 blocks of 4)."""
    return _import(tmp_path_factory.mktemp("expand"), 32, 96, 28)


@pytest.fixture(scope="module")
def expand_55(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """SqueezeNet 1.1's first expand 1×1 at 55² (16 → 64): a row no small tile divides."""
    return _import(tmp_path_factory.mktemp("squeeze"), 16, 64, 55)


@pytest.fixture(scope="module")
def branch_232(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """ShuffleNet v2's third-stage branch conv at 14²: 232 → 232 channels (29 blocks of 8)."""
    return _import(tmp_path_factory.mktemp("branch232"), 232, 232, 14)


@pytest.fixture(scope="module")
def branch_116(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """ShuffleNet v2's second-stage branch conv at 28²: 116 → 116 channels (29 blocks of 4)."""
    return _import(tmp_path_factory.mktemp("branch116"), 116, 116, 28)


def _check_against_torch(executable: Any, onnx_path: Path) -> None:
    import onnx
    import torch
    import tvm
    from onnx import numpy_helper
    from tvm import relax

    model = onnx.load(str(onnx_path))
    weight = numpy_helper.to_array(model.graph.initializer[0])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = np.random.default_rng(1).standard_normal(shape).astype("float32")
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(data), torch.tensor(weight)))
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-5)


def _spilling(executable: Any, target: Any) -> dict[str, int]:
    spills = module_spills(executable, target)
    return {name: found.innermost for name, found in spills.items() if found.spills}


def _builds_spill_free_and_right(module: Any, onnx_path: Path, target: Any) -> None:
    from edgecompile.schedules import compile_relax

    executable, _ = compile_relax(module.module, target)
    assert _spilling(executable, target) == {}
    _check_against_torch(executable, onnx_path)


def _tile(module: Any) -> tuple[int, int]:
    """``(output blocks, pixels)`` of the pointwise kernel's register tile, from its loops."""
    from tvm import s_tir

    from edgecompile.schedules.compute import POINTWISE
    from edgecompile.schedules.rules import SCHEDULED_ATTR

    (func,) = [
        f
        for _, f in module.functions_items()
        if getattr(f, "attrs", None) and str(f.attrs.get(SCHEDULED_ATTR, "")) == POINTWISE
    ]
    sch = s_tir.Schedule(func)
    extents = {
        sch.get(loop).loop_var.name: int(sch.get(loop).extent)
        for loop in sch.get_loops(sch.get_sblock("pointwise_nchwc_update"))
    }
    return extents["cob_1"], extents["w_1"]


def test_sse_builds_the_one_pixel_tile_spill_free_and_right(expand_28: tuple[Any, Path]) -> None:
    """The analytic tile was 2 output blocks × 2 pixels (4 accumulator chains)."""
    from edgecompile.schedules import optimize

    module, onnx_path = expand_28
    target = resolve_target("x86-64-v2").tvm_target()
    assert _tile(optimize(module.module, target)[0]) == (8, 1)
    _builds_spill_free_and_right(module, onnx_path, target)


def test_a_row_with_a_tail_does_not_spill(expand_55: tuple[Any, Path]) -> None:
    """55 wide, the analytic 2 × 2 tile left a tail, and LLVM hoisted its unrolled loads: 27
    stack accesses per tile in SqueezeNet's expands."""
    module, onnx_path = expand_55
    target = resolve_target("x86-64-v2").tvm_target()
    _builds_spill_free_and_right(module, onnx_path, target)


def test_avx2_fills_its_registers_where_host_keeps_its_tile(expand_28: tuple[Any, Path]) -> None:
    """On AVX2 the analytic tile was 2 × 2 (4 FMA chains, two steps' operands budgeted); one
    step's operands leave room for 3 output blocks × 4 pixels (:func:`rules.fma_chains_tile`:
    12 accumulators, 3 weight vectors, a broadcast). The host (AVX-512) keeps its tile."""
    from edgecompile.schedules import optimize
    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.schedules.rules import pointwise_row_tile

    module, onnx_path = expand_28
    target = resolve_target("x86-64-v3").tvm_target()
    assert _tile(optimize(module.module, target)[0]) == (3, 4)
    _builds_spill_free_and_right(module, onnx_path, target)

    host = resolve_target("host").tvm_target()
    host_cpu = cpu_info(host)
    assert _tile(optimize(module.module, host)[0]) == pointwise_row_tile(
        28, 96 // host_cpu.lanes, host_cpu
    )


def test_a_prime_output_block_count_tiles_with_a_tail(
    branch_232: tuple[Any, Path], branch_116: tuple[Any, Path]
) -> None:
    """29 output blocks: only a 1-block tile divides them (AVX2: 1 × 4, one weight vector and four
    broadcasts per step). They take the tile the target takes for 32 blocks, its last output-block
    tile a 1-block tail (:func:`rules.output_block_tail_tile`): 4 × 2 on AVX2, spill-free and
    right; NEON's (rpi4 and the Cortex-A53 of rpi3, 116 channels at 28², its pixels dividing
    the row) spill-free."""
    from edgecompile.schedules import compile_relax, optimize
    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.schedules.rules import pointwise_register_tile

    module, onnx_path = branch_232
    target = resolve_target("x86-64-v3").tvm_target()
    assert pointwise_register_tile(14, 29, 232, cpu_info(target))[0] == 1
    assert _tile(optimize(module.module, target)[0]) == (4, 2)
    _builds_spill_free_and_right(module, onnx_path, target)

    module, _ = branch_116
    for preset in ("rpi4", "rpi3"):
        neon = resolve_target(preset).tvm_target()
        oc, pixels = _tile(optimize(module.module, neon)[0])
        assert oc > 1 and 29 % oc and 28 % pixels == 0
        executable, _ = compile_relax(module.module, neon)
        assert _spilling(executable, neon) == {}


def test_sse_takes_an_output_block_tail_for_more_chains(branch_116: tuple[Any, Path]) -> None:
    """On SSE the 29 blocks of 116 channels take a tail tile too, judged as SSE's tiles are:
    by their multiply-add chains, not their loads (the 1-block tile that divides them has 4 of
    them, the loads of 8 × 1 are no fewer); spill-free and right."""
    from edgecompile.schedules import optimize
    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.schedules.rules import pointwise_register_tile

    module, onnx_path = branch_116
    target = resolve_target("x86-64-v2").tvm_target()
    dividing = pointwise_register_tile(28, 29, 116, cpu_info(target))
    assert dividing[0] == 1
    oc, pixels = _tile(optimize(module.module, target)[0])
    assert 29 % oc and oc * pixels > dividing[0] * dividing[1]
    _builds_spill_free_and_right(module, onnx_path, target)
