"""Our pointwise/depthwise schedules on small conv networks: numerics against torch, and proof
that the schedule (not TVM's default) ran, on the host; compile (and, on the emulated board,
run) for the rpi4 preset.

The networks go through the production path (``import_onnx`` → Relax → our pipeline), so ONNX
``Clip`` arrives as the frontend's ``call_tir`` and ``HardSwish`` as Relax arithmetic, exactly as
in the zoo models; the reference is ``torch.nn.functional`` on the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from edgecompile.errors import EdgecompileError
from edgecompile.export import relative_error
from edgecompile.importer import RelaxModel, import_onnx
from edgecompile.schedules import (
    DEPTHWISE,
    POINTWISE,
    TVM_DEFAULT,
    compile_relax,
    cpu_info,
    optimize,
)
from edgecompile.targets import resolve_target

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Conv:
    """One conv layer of a test network (OIHW weights; ``groups == channels`` is depthwise)."""

    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    pads: tuple[int, int, int, int] | None = None  # ONNX order: top, left, bottom, right
    epilogue: str = "none"

    def padding(self) -> tuple[int, int, int, int]:
        if self.pads is not None:
            return self.pads
        same = self.dilation * (self.kernel - 1) // 2
        return (same, same, same, same)


@dataclass
class Network:
    """A chain of convs on a ``(1, C, H, W)`` input, with seeded weights."""

    layers: list[Conv]
    height: int
    width: int
    seed: int = 0
    batch: int = 1
    weights: list[dict[str, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            shape = (
                layer.out_channels,
                layer.in_channels // layer.groups,
                layer.kernel,
                layer.kernel,
            )
            fan_in = shape[1] * layer.kernel * layer.kernel
            self.weights.append(
                {
                    "w": (rng.standard_normal(shape) / np.sqrt(fan_in)).astype("float32"),
                    "b": rng.standard_normal(layer.out_channels).astype("float32"),
                }
            )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.layers[0].in_channels, self.height, self.width)

    def onnx(self, path: Path) -> Path:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes: list[Any] = []
        inits: list[Any] = [
            numpy_helper.from_array(np.array(0.0, "float32"), "zero"),
            numpy_helper.from_array(np.array(6.0, "float32"), "six"),
        ]
        current = "input"
        for i, (layer, weights) in enumerate(zip(self.layers, self.weights, strict=True)):
            inits.append(numpy_helper.from_array(weights["w"], f"w{i}"))
            inputs = [current, f"w{i}"]
            if "bias" in layer.epilogue:
                inits.append(numpy_helper.from_array(weights["b"], f"b{i}"))
                inputs.append(f"b{i}")
            conv = f"conv{i}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [conv],
                    kernel_shape=[layer.kernel, layer.kernel],
                    strides=[layer.stride, layer.stride],
                    dilations=[layer.dilation, layer.dilation],
                    pads=list(layer.padding()),
                    group=layer.groups,
                )
            )
            out = f"act{i}"
            if layer.epilogue == "relu":
                nodes.append(helper.make_node("Relu", [conv], [out]))
            elif layer.epilogue.endswith("relu6"):
                nodes.append(helper.make_node("Clip", [conv, "zero", "six"], [out]))
            elif layer.epilogue == "hswish":
                nodes.append(helper.make_node("HardSwish", [conv], [out]))
            elif layer.epilogue == "residual":  # the skip connection from the network input
                nodes.append(helper.make_node("Add", [conv, "input"], [out]))
            else:
                out = conv
            current = out
        nodes.append(helper.make_node("Identity", [current], ["output"]))
        out_shape = self.reference(np.zeros(self.input_shape, "float32")).shape
        graph = helper.make_graph(
            nodes,
            "convs",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, str(path))
        return path

    def reference(self, data: np.ndarray) -> np.ndarray:
        """The same network in float64 torch."""
        import torch
        import torch.nn.functional as F

        x = first = torch.from_numpy(data.astype("float64"))
        for layer, weights in zip(self.layers, self.weights, strict=True):
            top, left, bottom, right = layer.padding()
            padded = F.pad(x, (left, right, top, bottom))
            bias = torch.from_numpy(weights["b"].astype("float64"))
            y = F.conv2d(
                padded,
                torch.from_numpy(weights["w"].astype("float64")),
                bias if "bias" in layer.epilogue else None,
                stride=layer.stride,
                dilation=layer.dilation,
                groups=layer.groups,
            )
            if layer.epilogue == "relu":
                y = F.relu(y)
            elif layer.epilogue.endswith("relu6"):
                y = F.relu6(y)
            elif layer.epilogue == "hswish":
                y = F.hardswish(y)
            elif layer.epilogue == "residual":
                y = y + first
            x = y
        return x.numpy()


def depthwise(channels: int, kernel: int, **options: Any) -> Conv:
    return Conv(channels, channels, kernel, groups=channels, **options)


# Every schedule × shape class: strides 1/2, kernels 1/3/5/7, dilation 2, channel counts that no
# vector width divides, odd and non-square maps, and each fused epilogue.
CASES = {
    "pw 16→32 14×14 bias+relu6": ([Conv(16, 32, epilogue="bias_relu6")], 14, 14),
    "pw 19→37 15×15 relu": ([Conv(19, 37, epilogue="relu")], 15, 15),
    "pw 24→40 15×15 s2 bias": ([Conv(24, 40, stride=2, epilogue="bias")], 15, 15),
    "pw 7→5 7×9 hswish": ([Conv(7, 5, epilogue="hswish")], 7, 9),
    "pw 58→58 7×7 residual": ([Conv(58, 58, epilogue="residual")], 7, 7),
    "pw 96→24 8×8 plain": ([Conv(96, 24)], 8, 8),
    "pw 160→320 1×1 relu6": ([Conv(160, 320, epilogue="relu6")], 1, 1),
    "dw 32 14×14 k3 bias+relu6": ([depthwise(32, 3, epilogue="bias_relu6")], 14, 14),
    "dw 21 15×15 k3 s2 relu6": ([depthwise(21, 3, stride=2, epilogue="relu6")], 15, 15),
    "dw 40 15×15 k5 relu": ([depthwise(40, 5, epilogue="relu")], 15, 15),
    "dw 33 15×15 k5 s2 hswish": ([depthwise(33, 5, stride=2, epilogue="hswish")], 15, 15),
    "dw 24 7×7 k7 bias": ([depthwise(24, 7, epilogue="bias")], 7, 7),
    "dw 18 16×16 k7 s2": ([depthwise(18, 7, stride=2)], 16, 16),
    "dw 24 13×13 k3 d2 residual": ([depthwise(24, 3, dilation=2, epilogue="residual")], 13, 13),
    "dw 20 7×7 k5 d2 relu": ([depthwise(20, 5, dilation=2, epilogue="relu")], 7, 7),
    "dw 16 15×15 k3 s2 SAME-pads relu": (
        [depthwise(16, 3, stride=2, pads=(0, 0, 1, 1), epilogue="relu")],
        15,
        15,
    ),
}


def import_network(network: Network, tmp_path: Path) -> RelaxModel:
    relax_model, _ = import_onnx(network.onnx(tmp_path / "net.onnx"), name="net")
    return relax_model


def expected_schedule(layer: Conv) -> str:
    return DEPTHWISE if layer.groups > 1 else POINTWISE


def run_module(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    """Build an already-optimized module (no Relax pipeline) and run ``main`` on the host."""
    executable = tvm.compile(module, target=target, relax_pipeline=None)
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(data)).numpy()


def called_functions(module: Any) -> list[str]:
    """Names of the PrimFuncs ``main`` calls, in call order."""
    names: list[str] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar):
            names.append(expr.op.name_hint)

    relax.analysis.post_order_visit(module["main"], visit)
    return names


def scheduled_functions(module: Any) -> dict[str, tirx.PrimFunc]:
    return {
        gv.name_hint: func
        for gv, func in module.functions_items()
        if isinstance(func, tirx.PrimFunc) and "edgecompile.schedule" in (func.attrs or {})
    }


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_matches_torch_on_host(case: str, tmp_path: Path, host_target: Any) -> None:
    layers, height, width = CASES[case]
    network = Network(layers, height, width)
    relax_model = import_network(network, tmp_path)
    module, report = optimize(relax_model.module, host_target)

    # The schedule ran: our rule claimed the conv, and no rule fell back to TVM's default.
    assert report.schedules.failed == {}
    assert report.schedules.applied == {0: expected_schedule(layers[0])}
    scheduled = scheduled_functions(module)
    assert len(scheduled) == 1
    ((name, func),) = scheduled.items()
    assert func.attrs["edgecompile.schedule"] == expected_schedule(layers[0])
    text = func.script()
    assert "T.parallel" in text and "T.vectorized" in text
    assert 'scope="local"' in text  # the register tile
    # The epilogue is fused: besides the scheduled conv, main runs only the layout moves at the
    # network's edges (a pack that is a pure reshape, as for a 1×1 map, becomes a free view).
    calls = called_functions(module)
    assert calls.count(name) == 1
    assert all(call == name or "pack_nchwc" in call for call in calls), calls

    data = np.random.default_rng(1).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_batch_of_two(tmp_path: Path, host_target: Any) -> None:
    network = Network(
        [Conv(12, 20, epilogue="bias_relu6"), depthwise(20, 3, stride=2, epilogue="relu")],
        height=9,
        width=9,
        batch=2,
    )
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: POINTWISE, 1: DEPTHWISE}
    data = np.random.default_rng(4).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_squeeze_excite_block(tmp_path: Path, host_target: Any) -> None:
    """MobileNetV3's SE: the 1×1-map convs stay blocked and the broadcast ``x * se`` (fused
    after the SE's last conv by FuseOps) is scheduled on its own; h-swish (which reads the
    conv output twice) is inlined into the register tile."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weights = {
        "w0": rng.standard_normal((32, 16, 1, 1)).astype("float32") / 4,
        "w1": rng.standard_normal((8, 32, 1, 1)).astype("float32") / 6,
        "b1": rng.standard_normal(8).astype("float32"),
        "w2": rng.standard_normal((32, 8, 1, 1)).astype("float32") / 3,
        "b2": rng.standard_normal(32).astype("float32"),
        "w3": rng.standard_normal((16, 32, 1, 1)).astype("float32") / 6,
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"]),
        helper.make_node("HardSwish", ["c0"], ["a0"]),
        helper.make_node("GlobalAveragePool", ["a0"], ["p"]),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"]),
        helper.make_node("HardSigmoid", ["c2"], ["se"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["a0", "se"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "se",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 9, 9])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 9, 9])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = tmp_path / "se.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    relax_model, _ = import_onnx(path, name="se")
    module, report = optimize(relax_model.module, host_target)
    assert report.schedules.failed == {}
    assert report.schedules.applied == dict.fromkeys(range(4), POINTWISE)

    data = rng.standard_normal((1, 16, 9, 9)).astype("float32")
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    a0 = F.hardswish(F.conv2d(torch.from_numpy(data.astype("float64")), t["w0"]))
    se = F.relu(F.conv2d(a0.mean((2, 3), keepdim=True), t["w1"], t["b1"]))
    se = F.hardsigmoid(F.conv2d(se, t["w2"], t["b2"]))
    expected = F.conv2d(a0 * se, t["w3"]).numpy()
    actual = run_module(module, host_target, data)
    assert relative_error(actual, expected) <= TOLERANCE


def inverted_residual() -> Network:
    """MobileNetV2's block: expand 1×1 + ReLU6, depthwise 3×3 + ReLU6, project 1×1 + skip."""
    return Network(
        [
            Conv(24, 144, epilogue="bias_relu6"),
            depthwise(144, 3, epilogue="bias_relu6"),
            Conv(144, 24, epilogue="residual"),
        ],
        height=15,
        width=15,
    )


def test_blocked_layout_spans_the_whole_block(tmp_path: Path, host_target: Any) -> None:
    """Activations stay NCHW[x]c between the convs: one pack in, one unpack out."""
    network = inverted_residual()
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: POINTWISE, 1: DEPTHWISE, 2: POINTWISE}
    calls = called_functions(module)
    assert [c.split("_nchwc")[0] for c in calls if "pack_nchwc" in c] == ["pack", "unpack"]
    assert len(scheduled_functions(module)) == 3
    data = np.random.default_rng(2).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_clip_bounds_are_folded_by_the_layout_pass(tmp_path: Path, host_target: Any) -> None:
    """ONNX's ``where(isnan(b), ∓inf, b)`` around each ReLU6 bound is folded in numpy, so
    FoldConstant does not compile (~25 ms each, ~140 in MobileNetV2) and run it."""
    from edgecompile.schedules.layout import LayoutLog
    from edgecompile.schedules.pipeline import blocked_layout

    module = import_network(inverted_residual(), tmp_path).module
    ops: list[str] = []
    relax.analysis.post_order_visit(
        module["main"], lambda e: ops.append(getattr(getattr(e, "op", None), "name", ""))
    )
    assert "relax.isnan" in ops
    passes = [
        blocked_layout(cpu_info(host_target), LayoutLog()),
        relax.transform.DeadCodeElimination(),
    ]
    module = tvm.transform.Sequential(passes)(module)
    ops.clear()
    relax.analysis.post_order_visit(
        module["main"], lambda e: ops.append(getattr(getattr(e, "op", None), "name", ""))
    )
    assert "relax.isnan" not in ops and "relax.where" not in ops
    assert ops.count("relax.maximum") == ops.count("relax.minimum") == 2


def test_compile_relax_records_each_heavy_op(tmp_path: Path, host_target: Any) -> None:
    layers = [
        Conv(8, 16, kernel=3, epilogue="relu"),
        Conv(16, 96, epilogue="bias_relu6"),
        depthwise(96, 3, epilogue="bias_relu6"),
        Conv(96, 16, epilogue="relu"),
    ]
    network = Network(layers, 9, 9)
    relax_model = import_network(network, tmp_path)
    _, records = compile_relax(relax_model.module, host_target)
    assert [(r["kind"], r["schedule"]) for r in records] == [
        ("conv", TVM_DEFAULT),  # a dense 3×3 conv (a stem): not ours yet
        ("pointwise", POINTWISE),
        ("depthwise", DEPTHWISE),
        ("pointwise", POINTWISE),
    ]
    _, records = compile_relax(relax_model.module, host_target, custom_schedules=False)
    assert {r["schedule"] for r in records} == {TVM_DEFAULT}


def test_pipeline_failure_falls_back_to_tvm_default(
    tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should our pipeline break on some graph, the model still builds, and the records say so."""
    from edgecompile.schedules import pipeline

    def broken(target: Any, report: Any, database: Any = None) -> Any:
        @tvm.transform.module_pass(opt_level=0, name="Broken")
        def fail(module: Any, _context: Any) -> Any:
            raise RuntimeError("boom")

        return fail

    monkeypatch.setattr(pipeline, "relax_pipeline", broken)
    network = Network([Conv(8, 16, epilogue="relu")], 5, 5)
    executable, records = compile_relax(import_network(network, tmp_path).module, host_target)
    assert [r["schedule"] for r in records] == [TVM_DEFAULT]
    assert "boom" in records[0]["fallback"]
    data = np.random.default_rng(6).standard_normal(network.input_shape).astype("float32")
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data))
    assert relative_error(actual.numpy(), network.reference(data)) <= TOLERANCE


def test_conv_with_runtime_weights_keeps_tvm_default(host_target: Any) -> None:
    """Weights passed at run time cannot be packed at compile time: TVM's default lowering."""
    builder = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType((1, 16, 8, 8), "float32"))
    weight = relax.Var("weight", relax.TensorType((32, 16, 1, 1), "float32"))
    with builder.function("main", [data, weight]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(data, weight))
        builder.emit_func_output(out)
    module = builder.get()
    _, report = optimize(module, host_target)
    assert report.schedules.applied == {}
    assert report.layout.plans[0].reason == "weights are not constants"
    _, records = compile_relax(module, host_target)
    assert records[0]["schedule"] == TVM_DEFAULT


def test_rpi4_gets_neon_sized_blocks_and_compiles(tmp_path: Path) -> None:
    """Same schedules for the rpi4 preset: 4-lane channel blocks, and LLVM accepts them."""
    target = resolve_target("rpi4").tvm_target()
    network = inverted_residual()
    relax_model = import_network(network, tmp_path)
    module, report = optimize(relax_model.module, target)
    assert report.schedules.applied == {0: POINTWISE, 1: DEPTHWISE, 2: POINTWISE}
    for func in scheduled_functions(module).values():
        output = func.params[-1]
        assert int(output.shape[-1]) == 4  # 128-bit NEON: 4 float32 lanes
    executable, records = compile_relax(relax_model.module, target)
    assert [r["schedule"] for r in records] == [POINTWISE, DEPTHWISE, POINTWISE]
    assert executable is not None


def _cached_rootfs() -> Path:
    """The emulated board's rootfs if it is already built (building it takes minutes)."""
    import os

    from edgecompile.device import emulator

    if os.geteuid() != 0:
        pytest.skip("the emulated board needs root")
    path = emulator.rootfs_path()
    if not (path / emulator.MARKER).is_file():
        pytest.skip("the emulated board's rootfs is not built (see tests/device)")
    try:
        return emulator.ensure_rootfs()
    except EdgecompileError as error:
        pytest.skip(f"emulated board unavailable: {error}")


@pytest.mark.emulator
def test_rpi4_numerics_on_the_emulated_board(tmp_path: Path) -> None:
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.toolchain import toolchain_for

    rootfs = _cached_rootfs()
    preset = resolve_target("rpi4")
    network = Network(
        [
            *inverted_residual().layers,
            depthwise(24, 5, stride=2, epilogue="hswish"),
            Conv(24, 37, epilogue="relu"),
        ],
        height=15,
        width=15,
    )
    relax_model = import_network(network, tmp_path)
    executable, records = compile_relax(relax_model.module, preset.tvm_target())
    assert {r["schedule"] for r in records} == {POINTWISE, DEPTHWISE}
    library = tmp_path / "net_rpi4.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    data = np.random.default_rng(3).standard_normal(network.input_shape).astype("float32")
    (actual,) = run_library_in_rootfs(rootfs, library, {"input": data})
    assert relative_error(actual, network.reference(data)) <= TOLERANCE
