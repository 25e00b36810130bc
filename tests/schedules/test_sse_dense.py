"""The SSE (x86-64-v2) default of a dense K×K conv on a blocked input: a one-pixel tile of up to
8 output blocks (the tuning search's move on every SqueezeNet 3×3 expand), built spill-free and
right: this machine runs SSE code, so the kernels are checked against torch here. An SSE stem
takes one pixel × the blocks whose products fit (4 of 8: at 8 × 1 it spilled). AVX2
(x86-64-v3) takes 8 or more accumulators beside two taps' weights, and unrolls 8 reduction
steps where there are more; AVX-512 keeps its tile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompile.schedules.spills import module_spills
from edgecompile.targets import resolve_target


def _conv_onnx(
    path: Path, in_channels: int, out_channels: int, size: int, stride: int, squeeze: bool
) -> Path:
    """A 3×3 conv, padded by 1, with ReLU, on a ``size``² input; with ``squeeze``, after a 1×1
    conv with ReLU (as in a SqueezeNet fire), so that it reads a blocked input, not the image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, in_channels, 3, 3)) * 0.2
    out_size = (size - 1) // stride + 1
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, strides=[stride] * 2),
        helper.make_node("Relu", ["c"], ["output"]),
    ]
    weights = [numpy_helper.from_array(weight.astype("float32"), "w")]
    if squeeze:
        pointwise = rng.standard_normal((in_channels, in_channels, 1, 1)) * 0.2
        nodes[:0] = [
            helper.make_node("Conv", ["input", "s"], ["sc"]),
            helper.make_node("Relu", ["sc"], ["x"]),
        ]
        weights.append(numpy_helper.from_array(pointwise.astype("float32"), "s"))
    else:
        nodes[0].input[0] = "input"
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, in_channels, size, size])],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, [1, out_channels, out_size, out_size]
            )
        ],
        initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _import(folder: Path, *shape: int) -> tuple[Any, Path, int]:
    from edgecompile.importer import import_onnx

    path = _conv_onnx(folder / "dense.onnx", *shape)
    return import_onnx(path, name="dense")[0], path, shape[3]


@pytest.fixture(scope="module")
def expand_13(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, int]:
    """SqueezeNet 1.1's last 3×3 expand shape, narrowed: 32 → 64 channels at 13²."""
    return _import(tmp_path_factory.mktemp("expand"), 32, 64, 13, 1, True)


@pytest.fixture(scope="module")
def stem_32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, int]:
    """A stem (MobileNet v2's, on a small image): the 3-channel image → 32 channels, stride 2."""
    return _import(tmp_path_factory.mktemp("stem"), 3, 32, 32, 2, False)


def _tile(module: Any) -> tuple[int, int]:
    """``(output blocks, pixels)`` of the dense conv kernel's register tile, from its loops."""
    extents = _update_loops(module)
    return extents["cob_1"], extents["w_1"]


def _update_loops(module: Any) -> dict[str, int]:
    """The extent of each loop around the dense conv kernel's update block, by loop name
    (``r_1``: the reduction's unrolled split)."""
    from tvm import s_tir

    from edgecompile.schedules.compute import DENSE
    from edgecompile.schedules.rules import SCHEDULED_ATTR

    (func,) = [
        f
        for _, f in module.functions_items()
        if getattr(f, "attrs", None) and str(f.attrs.get(SCHEDULED_ATTR, "")) == DENSE
    ]
    sch = s_tir.Schedule(func)
    (update,) = [
        block
        for block in sch.get_child_blocks(sch.get_sblock("root"))
        if sch.get(block).name_hint.endswith("_update")
    ]
    return {
        sch.get(loop).loop_var.name: int(sch.get(loop).extent) for loop in sch.get_loops(update)
    }


def _check_against_torch(executable: Any, onnx_path: Path, stride: int) -> None:
    import onnx
    import torch
    import tvm
    from onnx import numpy_helper
    from tvm import relax

    model = onnx.load(str(onnx_path))
    weights = {w.name: torch.tensor(numpy_helper.to_array(w)) for w in model.graph.initializer}
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = np.random.default_rng(1).standard_normal(shape).astype("float32")
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    x = torch.from_numpy(data)
    if "s" in weights:
        x = torch.relu(torch.nn.functional.conv2d(x, weights["s"]))
    conv = torch.nn.functional.conv2d(x, weights["w"], padding=1, stride=stride)
    np.testing.assert_allclose(actual, torch.relu(conv).numpy(), rtol=1e-5, atol=1e-5)


def test_sse_takes_one_pixel_and_8_blocks_where_fma_targets_keep_their_tile(
    expand_13: tuple[Any, Path, int],
) -> None:
    from edgecompile.schedules import optimize

    module, _, _ = expand_13
    sse = _tile(optimize(module.module, resolve_target("x86-64-v2").tvm_target())[0])
    avx2 = _tile(optimize(module.module, resolve_target("x86-64-v3").tvm_target())[0])
    assert sse == (8, 1)
    assert avx2 != sse


def test_an_sse_stem_takes_one_pixel_where_the_other_targets_keep_theirs(
    stem_32: tuple[Any, Path, int],
) -> None:
    """On SSE a stem is one pixel × the output blocks whose products fit beside them: 4 of
    MobileNet v2's 8 (at 8 × 1 it spilled 4 times per tile; the old 2 × 2 ran 1.13× slower).
    AVX2 keeps its 2-pixel stem tile and AVX-512 (``host``) its K×K tile."""
    from edgecompile.schedules import optimize
    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.schedules.rules import stem_tile, window_row_tile

    module, _, _ = stem_32
    out_width = 16  # the 32² image at stride 2

    def tile_for(preset: str) -> tuple[tuple[int, int], Any]:
        target = resolve_target(preset).tvm_target()
        return _tile(optimize(module.module, target)[0]), cpu_info(target)

    sse, _ = tile_for("x86-64-v2")
    assert sse == (4, 1)
    avx2, avx2_cpu = tile_for("x86-64-v3")
    assert avx2 == stem_tile(out_width, 32 // avx2_cpu.lanes, avx2_cpu) == (4, 2)
    host, host_cpu = tile_for("host")
    blocks = 32 // host_cpu.lanes
    assert host == window_row_tile(out_width, blocks, host_cpu.across_window()) != sse


@pytest.mark.parametrize("case", ["expand_13", "stem_32"])
def test_the_sse_tile_builds_spill_free_and_matches_torch(
    case: str, request: pytest.FixtureRequest
) -> None:
    from edgecompile.schedules import compile_relax

    module, onnx_path, stride = request.getfixturevalue(case)
    target = resolve_target("x86-64-v2").tvm_target()
    executable, _ = compile_relax(module.module, target)
    spilling = {n: s.innermost for n, s in module_spills(executable, target).items() if s.spills}
    assert spilling == {}
    _check_against_torch(executable, onnx_path, stride)


def test_avx2_takes_eight_or_more_accumulators_beside_two_taps_weights(
    expand_13: tuple[Any, Path, int],
) -> None:
    """AVX2's analytic K×K tile was 2 × 1 on the expand (two FMA chains, latency-bound); it now
    takes 2 output blocks × 6 pixels (:func:`rules.two_taps_tile`: 12 accumulators, two taps'
    weights), spill-free and right; AVX-512 (``host``) keeps its tile."""
    from edgecompile.schedules import compile_relax, optimize
    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.schedules.rules import window_row_tile

    module, onnx_path, stride = expand_13
    target = resolve_target("x86-64-v3").tvm_target()
    assert window_row_tile(13, 8, cpu_info(target).across_window()) == (2, 1)
    assert _tile(optimize(module.module, target)[0]) == (2, 6)
    executable, _ = compile_relax(module.module, target)
    spilling = {n: s.innermost for n, s in module_spills(executable, target).items() if s.spills}
    assert spilling == {}
    _check_against_torch(executable, onnx_path, stride)

    host = resolve_target("host").tvm_target()
    host_cpu = cpu_info(host)
    expected = window_row_tile(13, 64 // host_cpu.lanes, host_cpu.across_window())
    assert _tile(optimize(module.module, host)[0]) == expected


def test_avx2_unrolls_eight_reduction_steps_of_a_longer_reduction(
    expand_13: tuple[Any, Path, int], tmp_path: Path
) -> None:
    """Beside the two-taps tile AVX2 unrolls 8 of the 32 input channels per iteration, not 4
    (:func:`rules.two_taps_reduction_unroll`; the build above checks it spill-free and right);
    a reduction of only 8 keeps 4 (ESPNet's 3-channel convs spilled 6-40 more times at 8), and
    AVX-512 and SSE keep 4."""
    from edgecompile.schedules import optimize

    module, _, _ = expand_13

    def unroll(target: str, conv: Any = module) -> int:
        return _update_loops(optimize(conv.module, resolve_target(target).tvm_target())[0])["r_1"]

    assert unroll("x86-64-v3") == 8
    assert unroll("host") == unroll("x86-64-v2") == 4
    short, _, _ = _import(tmp_path, 8, 64, 13, 1, True)
    assert unroll("x86-64-v3", short) == 4
