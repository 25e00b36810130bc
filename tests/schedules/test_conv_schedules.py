"""Our pointwise, depthwise, grouped and dense conv schedules on small conv networks: numerics
against torch, and proof that the schedule (not TVM's default) ran, on the host; compile (and,
on the emulated board, run) for the rpi4 preset.

The networks go through the production path (``import_onnx`` → Relax → our pipeline), so ONNX
``Clip`` arrives as the frontend's ``call_tir`` and ``HardSwish`` as Relax arithmetic, exactly as
in the zoo models; the reference is ``torch.nn.functional`` on the same weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax, tirx

from edgecompile.export import relative_error
from edgecompile.importer import RelaxModel, import_onnx
from edgecompile.schedules import (
    DENSE,
    DEPTHWISE,
    GROUPED,
    MATMUL,
    POINTWISE,
    POOL,
    TVM_DEFAULT,
    compile_relax,
    cpu_info,
    optimize,
    rules,
)
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.channels import ChannelOrder, split_order, unshuffled
from edgecompile.schedules.compute import GROUPED_PIXELS, AffineLanes, affine_lanes
from edgecompile.schedules.tir import register_tir_pipeline
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
    shuffle: int = 0  # ShuffleNet's channel shuffle over this many groups, after the epilogue

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
            elif layer.epilogue.endswith("relu"):
                nodes.append(helper.make_node("Relu", [conv], [out]))
            elif layer.epilogue == "hswish":
                nodes.append(helper.make_node("HardSwish", [conv], [out]))
            elif layer.epilogue == "residual":  # the skip connection from the network input
                nodes.append(helper.make_node("Add", [conv, "input"], [out]))
            else:
                out = conv
            if layer.shuffle:
                size = self._map_size(i)
                split = [self.batch, layer.shuffle, layer.out_channels // layer.shuffle, *size]
                inits.append(numpy_helper.from_array(np.array(split, "int64"), f"split{i}"))
                merged = [self.batch, layer.out_channels, *size]
                inits.append(numpy_helper.from_array(np.array(merged, "int64"), f"merge{i}"))
                nodes += [
                    helper.make_node("Reshape", [out, f"split{i}"], [f"grouped{i}"]),
                    helper.make_node(
                        "Transpose", [f"grouped{i}"], [f"swapped{i}"], perm=[0, 2, 1, 3, 4]
                    ),
                    helper.make_node("Reshape", [f"swapped{i}", f"merge{i}"], [f"shuffled{i}"]),
                ]
                out = f"shuffled{i}"
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

    def _map_size(self, index: int) -> list[int]:
        """Height and width of layer ``index``'s output."""
        probe = np.zeros(self.input_shape, "float32")
        return list(self.reference(probe, layers=index + 1).shape[2:])

    def reference(self, data: np.ndarray, layers: int | None = None) -> np.ndarray:
        """The same network (its first ``layers`` layers) in float64 torch."""
        import torch
        import torch.nn.functional as F

        x = first = torch.from_numpy(data.astype("float64"))
        chosen = self.layers[:layers] if layers is not None else self.layers
        for layer, weights in zip(chosen, self.weights, strict=False):
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
            elif layer.epilogue.endswith("relu"):
                y = F.relu(y)
            elif layer.epilogue == "hswish":
                y = F.hardswish(y)
            elif layer.epilogue == "residual":
                y = y + first
            if layer.shuffle:
                batch, channels, height, width = y.shape
                y = y.reshape(batch, layer.shuffle, channels // layer.shuffle, height, width)
                y = y.transpose(1, 2).reshape(batch, channels, height, width)
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
    # Grouped: groups whose output channels fill whole blocks, groups padded to whole blocks
    # (20 per group), blocks straddling groups (12 and 8 per group; fewer run over pixels, see
    # test_grouped_pixels.py).
    "gc 240→60 g3 14×14 relu": ([Conv(240, 60, groups=3, epilogue="relu")], 14, 14),
    "gc 60→240 g3 7×7 bias": ([Conv(60, 240, groups=3, epilogue="bias")], 7, 7),
    "gc 96→48 g4 15×15 s2 relu6": ([Conv(96, 48, groups=4, stride=2, epilogue="relu6")], 15, 15),
    "gc 48→96 g8 9×11 hswish": ([Conv(48, 96, groups=8, epilogue="hswish")], 9, 11),
    "gc 34→38 g2 13×13 bias": ([Conv(34, 38, groups=2, epilogue="bias")], 13, 13),
    "gc 64→64 g8 7×7": ([Conv(64, 64, groups=8)], 7, 7),
    "gc 12→20 g2 15×15 k3 s2": ([Conv(12, 20, kernel=3, stride=2, groups=2)], 15, 15),
    "gc 64→64 g4 13×13 k3 d2 relu": (
        [Conv(64, 64, kernel=3, dilation=2, groups=4, epilogue="relu")],
        13,
        13,
    ),
    "gc 18→27 g3 9×7 k3 bias+relu": (
        [Conv(18, 27, kernel=3, groups=3, epilogue="bias_relu")],
        9,
        7,
    ),
}


def import_network(network: Network, tmp_path: Path) -> RelaxModel:
    relax_model, _ = import_onnx(network.onnx(tmp_path / "net.onnx"), name="net")
    return relax_model


def expected_schedule(layer: Conv) -> str:
    if layer.groups == layer.in_channels == layer.out_channels:
        return DEPTHWISE
    if layer.groups > 1:
        return GROUPED
    return POINTWISE if layer.kernel == 1 and not any(layer.padding()) else DENSE


def run_module(module: Any, target: Any, data: np.ndarray) -> np.ndarray:
    """Build an already-optimized module (no Relax pipeline; the TIR lowered as builds lower it)
    and run ``main`` on the host."""
    executable = tvm.compile(
        module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline()
    )
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return machine["main"](tvm.runtime.tensor(data)).numpy()


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
    calls = called_kernels(module)
    assert calls.count(name) == 1
    assert all(call == name or "pack_nchwc" in call for call in calls), calls

    data = np.random.default_rng(1).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def loop_orders(module: Any) -> list[str]:
    """The pointwise loop order each scheduled pointwise kernel records in its block."""
    pattern = re.compile(rf'"{re.escape(rules.LOOP_ORDER_ATTR)}": "(\w+)"')
    orders = []
    for func in scheduled_functions(module).values():
        found = set(pattern.findall(func.script()))
        assert len(found) <= 1, found
        orders.extend(found)
    return orders


# Pointwise, grouped (1×1 and 3×3) and dense (3×3 and the stem) convs: the register-tiled kinds
# whose loop order the caches choose.
ORDER_CASES = {
    name: CASES[name]
    for name in (
        "pw 16→32 14×14 bias+relu6",
        "pw 24→40 15×15 s2 bias",
        "pw 58→58 7×7 residual",
        "gc 240→60 g3 14×14 relu",
        "gc 12→20 g2 15×15 k3 s2",
        "gc 64→64 g4 13×13 k3 d2 relu",
    )
}
ORDER_CASES["dense 16→24 13×13 k3 relu"] = ([Conv(16, 24, kernel=3, epilogue="relu")], 13, 13)
ORDER_CASES["dense 3→16 15×15 k3 s2 (stem)"] = ([Conv(3, 16, kernel=3, stride=2)], 15, 15)


@pytest.mark.parametrize("order", [rules.WEIGHTS_STAY, rules.INPUTS_STAY])
@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_tiled_convs_match_torch_in_either_loop_order(
    case: str, order: str, tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever order the caches pick, the tile, its epilogue and the write-back are the same."""
    monkeypatch.setattr(rules, "choose_loop_order", lambda **_: order)
    layers, height, width = ORDER_CASES[case]
    network = Network(layers, height, width)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: expected_schedule(layers[0])}
    assert loop_orders(module) == [order]
    data = np.random.default_rng(1).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_shuffle_unit_matches_torch_with_inputs_staying(
    tmp_path: Path, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conv that reads its channels through the shuffle's table, in the other order."""
    monkeypatch.setattr(rules, "choose_loop_order", lambda **_: rules.INPUTS_STAY)
    network = shuffle_unit(3, 240)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: GROUPED, 1: DEPTHWISE, 2: GROUPED}
    assert loop_orders(module) == [rules.INPUTS_STAY] * 2
    data = np.random.default_rng(1).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


@pytest.mark.parametrize(
    ("layer", "size"),
    [
        # MobileNet v1's 32→64 at 112²: its 1.6 MB input overflows a Raspberry Pi 4 core's share
        # of the L2 (256 KiB), so the input stays and the weights stream.
        (Conv(32, 64, epilogue="relu"), 112),
        # ShuffleNet v1's grouped 1×1 at 56²: each group's 1 MB input slice overflows it too.
        (Conv(240, 240, groups=3, epilogue="relu"), 56),
        # A dense 3×3 on 32 channels at 56².
        (Conv(32, 64, kernel=3, epilogue="relu"), 56),
    ],
    ids=["pointwise", "grouped", "dense"],
)
def test_board_caches_pick_the_loop_order(layer: Conv, size: int, tmp_path: Path) -> None:
    """The Pi 4's caches flip the order; this machine's (if it has a few MB per core) do not."""
    network = Network([layer], size, size)
    relax_model = import_network(network, tmp_path)
    orders = {
        name: loop_orders(optimize(relax_model.module, resolve_target(name).tvm_target())[0])
        for name in ("rpi4", "host")
    }
    assert orders["rpi4"] == [rules.INPUTS_STAY]
    if cpu_info(resolve_target("host").tvm_target()).cache_per_core >= 4 * 1024 * 1024:
        assert orders["host"] == [rules.WEIGHTS_STAY]


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
    calls = called_kernels(module)
    assert [c.split("_nchwc")[0] for c in calls if "pack_nchwc" in c] == ["pack", "unpack"]
    assert len(scheduled_functions(module)) == 3
    data = np.random.default_rng(2).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def shuffle_unit(groups: int, channels: int, stride: int = 1) -> Network:
    """ShuffleNet v1's unit: grouped 1×1 + ReLU, channel shuffle, depthwise 3×3, grouped 1×1
    (+ the skip connection at stride 1)."""
    mid = channels // 4
    return Network(
        [
            Conv(channels, mid, groups=groups, epilogue="bias_relu", shuffle=groups),
            depthwise(mid, 3, stride=stride, epilogue="bias"),
            Conv(mid, channels, groups=groups, epilogue="residual" if stride == 1 else "relu"),
        ],
        height=15,
        width=15,
    )


def test_squeezenet_fire_module_stays_blocked(tmp_path: Path, host_target: Any) -> None:
    """Fire: squeeze 1×1 → (expand 1×1, expand 3×3) → concat. The 3×3 expand reads the
    squeeze's blocked output directly (its padding copied per tile, not a pass of its own)."""
    network = Network(
        [Conv(32, 16, epilogue="bias_relu"), Conv(16, 64, kernel=3, epilogue="relu")], 13, 13
    )
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: POINTWISE, 1: DENSE}
    calls = called_kernels(module)
    assert [c.split("_nchwc")[0] for c in calls if "pack_nchwc" in c] == ["pack", "unpack"]
    data = np.random.default_rng(10).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_stem_reads_the_image_in_nchw(tmp_path: Path, host_target: Any) -> None:
    """A dense conv on 3 channels reads the NCHW image as is: no pack of 3 channels into a
    whole block before it."""
    network = Network([Conv(3, 16, kernel=3, stride=2, epilogue="relu"), Conv(16, 24)], 17, 17)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: DENSE, 1: POINTWISE}
    calls = called_kernels(module)
    assert not any(call.startswith("pack") for call in calls), calls
    (dense,) = [
        f for f in scheduled_functions(module).values() if f.attrs["edgecompile.schedule"] == DENSE
    ]
    assert len(dense.params[0].shape) == 4
    data = np.random.default_rng(11).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


@pytest.mark.parametrize(
    ("groups", "channels", "stride"), [(3, 240, 1), (8, 384, 1), (2, 200, 2), (4, 272, 1)]
)
def test_shuffle_unit_stays_blocked(
    groups: int, channels: int, stride: int, tmp_path: Path, host_target: Any
) -> None:
    """The shuffle is folded into the channel order: no reshape/transpose kernel runs, the
    activations stay NCHW[x]c from the first conv to the last, and the numbers match torch."""
    network = shuffle_unit(groups, channels, stride)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.failed == {}
    assert report.schedules.applied == {0: GROUPED, 1: DEPTHWISE, 2: GROUPED}
    calls = called_kernels(module)
    scheduled = scheduled_functions(module)
    unscheduled = [call for call in calls if call not in scheduled]
    # The input is read in NCHW by the first grouped conv; the residual add packs it once.
    assert all("pack_nchwc" in call for call in unscheduled), calls
    assert sum(call.startswith("unpack") for call in unscheduled) == 1
    data = np.random.default_rng(7).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def table_params(func: tirx.PrimFunc) -> list[Any]:
    """The int32 buffers a scheduled conv reads: a grouped conv's channel table."""
    return [param for param in func.params if str(param.dtype) == "int32"]


def test_only_a_shuffled_grouped_conv_reads_a_channel_table(
    tmp_path: Path, host_target: Any
) -> None:
    """Channels in their own order are a formula (no table load per reduction step); after
    the shuffle, the second grouped conv reads its group's channels through the table."""
    network = shuffle_unit(3, 240)
    module, _ = optimize(import_network(network, tmp_path).module, host_target)
    grouped = [
        func
        for name, func in scheduled_functions(module).items()
        if func.attrs["edgecompile.schedule"] == GROUPED
    ]
    assert sorted(len(table_params(func)) for func in grouped) == [0, 1]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (np.arange(12).reshape(3, 4), AffineLanes(0, 4, 1)),
        (np.array([[0, 3, 6], [1, 4, 7]]), AffineLanes(0, 1, 3)),
        (np.array([[16, 17, 18]]), AffineLanes(16, 0, 1)),
        (np.array([[5], [9]]), AffineLanes(5, 4, 1)),
        (np.array([[0, 1], [5, 7]]), None),
        (np.array([[0, 2, 1]]), None),
    ],
)
def test_affine_lanes(table: np.ndarray, expected: AffineLanes | None) -> None:
    assert affine_lanes(table) == expected


def test_shuffled_output_is_unpacked_in_channel_order(tmp_path: Path, host_target: Any) -> None:
    """A shuffle that ends the network: the unpack gathers the channels in shuffled order."""
    network = Network([Conv(42, 60, groups=3, epilogue="relu", shuffle=3)], 7, 7)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    assert report.schedules.applied == {0: GROUPED}
    data = np.random.default_rng(8).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def test_grouped_conv_with_tiny_groups_runs_over_pixels(tmp_path: Path, host_target: Any) -> None:
    """2 output channels per group in 16 lanes would compute 8x the work in blocks: the conv
    runs in NCHW vectorized over pixels instead, its ReLU fused, and the network matches."""
    network = Network([Conv(32, 8, kernel=3, groups=4, epilogue="relu")], 9, 9)
    module, report = optimize(import_network(network, tmp_path).module, host_target)
    if cpu_info(host_target).lanes < 8:
        pytest.skip("narrow vectors fit 2-channel groups")
    assert report.schedules.applied == {0: GROUPED_PIXELS}
    assert len(called_kernels(module)) == 1  # the ReLU is the conv's epilogue
    data = np.random.default_rng(9).standard_normal(network.input_shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


def save_graph(
    path: Path, nodes: list[Any], weights: dict[str, np.ndarray], inputs: dict, outputs: dict
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def classifier_head(directory: Path, classes: int) -> tuple[Path, dict[str, np.ndarray]]:
    """conv → ReLU → global average pool → flatten → Gemm (transB, bias), as ONNX."""
    from onnx import helper

    rng = np.random.default_rng(12)
    weights = {
        "w0": rng.standard_normal((40, 16, 1, 1)).astype("float32") / 4,
        "fc": rng.standard_normal((classes, 40)).astype("float32") / 6,
        "bias": rng.standard_normal(classes).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["a0"]),
        helper.make_node("GlobalAveragePool", ["a0"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "bias"], ["output"], transB=1),
    ]
    path = save_graph(
        directory / "head.onnx", nodes, weights, {"input": [1, 16, 7, 7]}, {"output": [1, classes]}
    )
    return path, weights


@pytest.mark.parametrize("classes", [1000, 10, 37])
def test_classifier_head_is_scheduled(classes: int, tmp_path: Path, host_target: Any) -> None:
    """conv → global average pool → flatten → Gemm: the pool runs blocked (only its 1×1
    result is unpacked) and the Gemm is our packed matmul, bias fused."""
    path, weights = classifier_head(tmp_path, classes)
    rng = np.random.default_rng(14)
    module, report = optimize(import_onnx(path, name="head")[0].module, host_target)
    assert report.schedules.failed == {}
    assert report.schedules.applied == {0: POINTWISE, 1: MATMUL}
    for name in called_kernels(module):
        if name.startswith("unpack"):  # the pooled 1×1 map, not the 7×7 one
            assert [int(d) for d in module[name].params[0].shape][2:4] == [1, 1]
    data = rng.standard_normal((1, 16, 7, 7)).astype("float32")
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    features = F.relu(F.conv2d(torch.from_numpy(data.astype("float64")), t["w0"])).mean((2, 3))
    expected = (features @ t["fc"].T + t["bias"]).numpy()
    actual = run_module(module, host_target, data)
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize(("shortcut", "branch"), [(24, 216), (32, 32), (19, 45)])
def test_stride2_shuffle_unit_concat_and_pools_stay_blocked(
    shortcut: int, branch: int, tmp_path: Path, host_target: Any
) -> None:
    """ShuffleNet v1's stride-2 unit: max-pooled stem, then concat(avg-pool(x), 1×1 conv of
    x): pools (ours, scheduled) and concat run in NCHW[x]c, whether the parts fill whole
    blocks or not."""
    from onnx import helper

    rng = np.random.default_rng(13)
    weights = {
        "stem": rng.standard_normal((shortcut, 3, 3, 3)).astype("float32") / 3,
        "g": rng.standard_normal((branch, shortcut // 1, 1, 1)).astype("float32") / 5,
        "out": rng.standard_normal((8, shortcut + branch, 1, 1)).astype("float32") / 8,
    }
    nodes = [
        helper.make_node("Conv", ["input", "stem"], ["s"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node(
            "MaxPool", ["r"], ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node(
            "AveragePool", ["x"], ["avg"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Conv", ["x", "g"], ["gc"], strides=[2, 2]),
        helper.make_node("Relu", ["gc"], ["gr"]),
        helper.make_node("Concat", ["avg", "gr"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "out"], ["output"]),
    ]
    path = save_graph(
        tmp_path / "unit.onnx", nodes, weights, {"input": [1, 3, 32, 32]}, {"output": [1, 8, 4, 4]}
    )
    module, report = optimize(import_onnx(path, name="unit")[0].module, host_target)
    assert report.schedules.failed == {}
    assert report.schedules.applied == {0: DENSE, 1: POOL, 2: POINTWISE, 3: POOL, 4: POINTWISE}
    calls = called_kernels(module)
    assert [call for call in calls if "pack" in call] == [calls[-1]]  # the final unpack only
    data = rng.standard_normal((1, 3, 32, 32)).astype("float32")
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    x = F.max_pool2d(
        F.relu(F.conv2d(torch.from_numpy(data.astype("float64")), t["stem"], stride=2, padding=1)),
        3,
        2,
        1,
    )
    avg = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)  # ONNX's default
    cat = torch.cat([avg, F.relu(F.conv2d(x, t["g"], stride=2))], dim=1)
    expected = F.conv2d(cat, t["out"]).numpy()
    actual = run_module(module, host_target, data)
    assert relative_error(actual, expected) <= TOLERANCE


def test_concat_with_an_nchw_part_stays_in_nchw(tmp_path: Path, host_target: Any) -> None:
    """CondenseNet's dense connectivity: concat(NCHW features, new conv output). Blocking it
    would pack the features only to unpack the result: the concat stays NCHW."""
    from onnx import helper

    rng = np.random.default_rng(16)
    weights = {"w": rng.standard_normal((12, 20, 1, 1)).astype("float32")}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Exp", ["input"], ["features"]),  # not an op the layout pass blocks
        helper.make_node("Concat", ["features", "r"], ["output"], axis=1),
    ]
    path = save_graph(
        tmp_path / "dense.onnx", nodes, weights, {"input": [1, 20, 9, 9]}, {"output": [1, 32, 9, 9]}
    )
    module, report = optimize(import_onnx(path, name="dense")[0].module, host_target)
    assert report.schedules.applied == {0: POINTWISE}
    calls = called_kernels(module)
    assert not any(call.startswith("concat_nchwc") for call in calls), calls
    assert calls.count("pack_nchwc") == 1, calls  # the conv's input only, not the features
    data = rng.standard_normal((1, 20, 9, 9)).astype("float32")
    conv = F.relu(
        F.conv2d(torch.from_numpy(data.astype("float64")), torch.from_numpy(weights["w"]).double())
    )
    features = torch.exp(torch.from_numpy(data.astype("float64")))
    expected = torch.cat([features, conv], dim=1).numpy()
    actual = run_module(module, host_target, data)
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "ceil"),
    [(13, 3, 2, 0, True), (14, 3, 2, 0, True), (15, 3, 2, 1, True), (8, 2, 2, 0, False)],
)
def test_max_pool_floor_and_ceil_mode(
    size: int, kernel: int, stride: int, pad: int, ceil: bool, tmp_path: Path, host_target: Any
) -> None:
    """SqueezeNet's ceil-mode max pools (odd maps keep a partial last window) run blocked."""
    from onnx import helper

    rng = np.random.default_rng(15)
    weights = {"w": rng.standard_normal((20, 6, 1, 1)).astype("float32")}
    out = (size + 2 * pad - kernel + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"]),
        helper.make_node(
            "MaxPool",
            ["c"],
            ["output"],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            ceil_mode=int(ceil),
        ),
    ]
    path = save_graph(
        tmp_path / "pool.onnx",
        nodes,
        weights,
        {"input": [1, 6, size, size]},
        {"output": [1, 20, out, out]},
    )
    module, report = optimize(import_onnx(path, name="pool")[0].module, host_target)
    assert report.schedules.applied == {0: POINTWISE, 1: POOL}
    data = rng.standard_normal((1, 6, size, size)).astype("float32")
    conv = F.conv2d(
        torch.from_numpy(data.astype("float64")), torch.from_numpy(weights["w"]).double()
    )
    expected = F.max_pool2d(conv, kernel, stride, pad, ceil_mode=ceil).numpy()
    actual = run_module(module, host_target, data)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


def test_clip_bounds_are_folded_by_the_layout_pass(tmp_path: Path, host_target: Any) -> None:
    """ONNX's ``where(isnan(b), ∓inf, b)`` around each ReLU6 bound is folded in numpy, so
    FoldConstant does not compile (~25 ms each, ~140 in MobileNetV2) and run it."""
    from edgecompile.schedules.layout import blocked_layout
    from edgecompile.schedules.plan import LayoutLog

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
        ("conv", DENSE),  # a dense 3×3 conv (a stem)
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

    def broken(target: Any, report: Any, database: Any = None, extra_rules: Any = ()) -> Any:
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


def test_rpi4_stem_and_fire_compile(tmp_path: Path) -> None:
    """The dense K×K schedule for NEON, on the stem and a 3×3 expand."""
    target = resolve_target("rpi4").tvm_target()
    network = Network(
        [
            Conv(3, 24, kernel=3, stride=2, epilogue="relu"),
            Conv(24, 16, epilogue="relu"),
            Conv(16, 64, kernel=3, epilogue="relu"),
        ],
        17,
        17,
    )
    relax_model = import_network(network, tmp_path)
    module, report = optimize(relax_model.module, target)
    assert report.schedules.applied == {0: DENSE, 1: POINTWISE, 2: DENSE}
    for func in scheduled_functions(module).values():
        assert int(func.params[-1].shape[-1]) == 4
    executable, records = compile_relax(relax_model.module, target)
    assert [r["schedule"] for r in records] == [DENSE, POINTWISE, DENSE]
    assert executable is not None


def test_rpi4_classifier_head_compiles(tmp_path: Path) -> None:
    """The packed matmul for NEON: 4 outputs per vector (1000 classes), and LLVM accepts it."""
    target = resolve_target("rpi4").tvm_target()
    path, _ = classifier_head(tmp_path, 1000)
    relax_model = import_onnx(path, name="head")[0]
    module, report = optimize(relax_model.module, target)
    assert report.schedules.applied == {0: POINTWISE, 1: MATMUL}
    (matmul,) = [
        f
        for f in scheduled_functions(module).values()
        if "matmul" in str(f.attrs["edgecompile.schedule"])
    ]
    assert int(matmul.params[1].shape[-1]) == 4
    executable, records = compile_relax(relax_model.module, target)
    assert [r["schedule"] for r in records] == [POINTWISE, MATMUL]
    assert executable is not None


def test_rpi4_shuffle_unit_compiles(tmp_path: Path) -> None:
    """The grouped schedule and the folded shuffle for NEON: 4-lane blocks, and LLVM accepts
    the AArch64 code."""
    target = resolve_target("rpi4").tvm_target()
    relax_model = import_network(shuffle_unit(3, 240), tmp_path)
    module, report = optimize(relax_model.module, target)
    assert report.schedules.applied == {0: GROUPED, 1: DEPTHWISE, 2: GROUPED}
    for func in scheduled_functions(module).values():
        assert int(func.params[-1].shape[-1]) == 4
    executable, records = compile_relax(relax_model.module, target)
    assert [r["schedule"] for r in records] == [GROUPED, DEPTHWISE, GROUPED]
    assert executable is not None


@pytest.mark.emulator
def test_rpi4_numerics_on_the_emulated_board(rootfs: Path, tmp_path: Path) -> None:
    preset = resolve_target("rpi4")
    network = Network(
        [
            *inverted_residual().layers,
            depthwise(24, 5, stride=2, epilogue="hswish"),
            Conv(24, 37, epilogue="relu"),
            Conv(37, 60, kernel=3, epilogue="relu"),
            Conv(60, 60, groups=3, epilogue="bias_relu", shuffle=3),
            depthwise(60, 3, epilogue="bias"),
            Conv(60, 36, groups=3, epilogue="relu"),
        ],
        height=15,
        width=15,
    )
    relax_model = import_network(network, tmp_path)
    executable, records = compile_relax(relax_model.module, preset.tvm_target())
    assert {r["schedule"] for r in records} == {POINTWISE, DEPTHWISE, DENSE, GROUPED}
    _run_on_board(rootfs, preset, executable, network, tmp_path)


@pytest.mark.emulator
def test_rpi4_convs_with_inputs_staying_on_the_emulated_board(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop order rpi4's caches pick for wide early layers (pointwise, grouped, dense), on
    AArch64, at a size the emulator runs quickly."""
    preset = resolve_target("rpi4")
    monkeypatch.setattr(rules, "choose_loop_order", lambda **_: rules.INPUTS_STAY)
    network = Network(
        [
            *inverted_residual().layers,
            Conv(24, 36, groups=3, epilogue="relu"),
            Conv(36, 40, kernel=3, epilogue="relu"),
        ],
        15,
        15,
    )
    relax_model = import_network(network, tmp_path)
    executable, _ = compile_relax(relax_model.module, preset.tvm_target())
    module, report = optimize(relax_model.module, preset.tvm_target())
    assert report.schedules.applied == {
        0: POINTWISE, 1: DEPTHWISE, 2: POINTWISE, 3: GROUPED, 4: DENSE
    }  # fmt: skip
    assert loop_orders(module) == [rules.INPUTS_STAY] * 4
    _run_on_board(rootfs, preset, executable, network, tmp_path)


def _run_on_board(
    rootfs: Path, preset: Any, executable: Any, network: Network, tmp_path: Path
) -> None:
    from edgecompile.device.emulator import run_library_in_rootfs
    from edgecompile.toolchain import toolchain_for

    library = tmp_path / "net_rpi4.so"
    executable.export_library(str(library), fcompile=toolchain_for(preset).fcompile())
    data = np.random.default_rng(3).standard_normal(network.input_shape).astype("float32")
    (actual,) = run_library_in_rootfs(rootfs, library, {"input": data})
    assert relative_error(actual, network.reference(data)) <= TOLERANCE


# -- ShuffleNet v2's channel split: a channel slice of a blocked tensor is a subset of its lanes (no
# pack, unpack or copy around it), the concat before it gathers into an order that puts each half
# in whole blocks, and the numbers match torch.


def split_units(
    channels: int, units: int, seed: int, size: tuple[int, int]
) -> tuple[list[Any], dict[str, np.ndarray]]:
    """ONNX nodes of a 1×1 stem then ``units`` ShuffleNet v2 stride-1 units: split the channels
    in halves (two Slices), 1×1 + ReLU → depthwise 3×3 → 1×1 + ReLU on the second half,
    concat with the first, shuffle with two groups."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    half = channels // 2
    weights: dict[str, np.ndarray] = {
        "stem": rng.standard_normal((channels, 8, 1, 1)).astype("float32") / 3,
        "begin0": np.array([0], "int64"),
        "mid": np.array([half], "int64"),
        "end": np.array([channels], "int64"),
        "axis": np.array([1], "int64"),
    }
    nodes = [
        helper.make_node("Conv", ["input", "stem"], ["s"]),
        helper.make_node("Relu", ["s"], ["x0"]),
    ]
    for u in range(units):
        x = f"x{u}"
        weights[f"a{u}"] = rng.standard_normal((half, half, 1, 1)).astype("float32") / 5
        weights[f"d{u}"] = rng.standard_normal((half, 1, 3, 3)).astype("float32") / 3
        weights[f"b{u}"] = rng.standard_normal((half, half, 1, 1)).astype("float32") / 5
        nodes += [
            helper.make_node("Slice", [x, "begin0", "mid", "axis"], [f"left{u}"]),
            helper.make_node("Slice", [x, "mid", "end", "axis"], [f"right{u}"]),
            helper.make_node("Conv", [f"right{u}", f"a{u}"], [f"ra{u}"]),
            helper.make_node("Relu", [f"ra{u}"], [f"rr{u}"]),
            helper.make_node(
                "Conv", [f"rr{u}", f"d{u}"], [f"rd{u}"], group=half, pads=[1, 1, 1, 1]
            ),
            helper.make_node("Conv", [f"rd{u}", f"b{u}"], [f"rb{u}"]),
            helper.make_node("Relu", [f"rb{u}"], [f"rout{u}"]),
            helper.make_node("Concat", [f"left{u}", f"rout{u}"], [f"cat{u}"], axis=1),
        ]
        nodes += shuffle_nodes(f"cat{u}", f"x{u + 1}", channels, size, u, weights)
    return nodes, weights


def shuffle_nodes(
    source: str,
    out: str,
    channels: int,
    size: tuple[int, int],
    index: int,
    weights: dict[str, np.ndarray],
) -> list[Any]:
    from onnx import helper

    weights[f"grouped{index}"] = np.array([1, 2, channels // 2, *size], "int64")
    weights[f"merged{index}"] = np.array([1, channels, *size], "int64")
    return [
        helper.make_node("Reshape", [source, f"grouped{index}"], [f"g{index}"]),
        helper.make_node("Transpose", [f"g{index}"], [f"t{index}"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", [f"t{index}", f"merged{index}"], [out]),
    ]


def reference(data: np.ndarray, weights: dict[str, np.ndarray], units: int) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items() if v.ndim == 4}
    x = F.relu(F.conv2d(torch.from_numpy(data.astype("float64")), t["stem"]))
    for u in range(units):
        half = x.shape[1] // 2
        left, right = x[:, :half], x[:, half:]
        right = F.relu(F.conv2d(right, t[f"a{u}"]))
        right = F.conv2d(right, t[f"d{u}"], padding=1, groups=half)
        right = F.relu(F.conv2d(right, t[f"b{u}"]))
        cat = torch.cat([left, right], dim=1)
        n, c, h, w = cat.shape
        x = cat.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
    return x.numpy()


@pytest.mark.parametrize(("channels", "units"), [(116, 3), (48, 2), (20, 2)])
def test_channel_split_stays_blocked(
    channels: int, units: int, tmp_path: Path, host_target: Any
) -> None:
    """No layout move between the stem's pack and the final unpack: the slices are lane
    subsets, the concats gather into the next split's halves, the shuffles are free."""
    nodes, weights = split_units(channels, units, seed=channels, size=(9, 11))
    from onnx import helper

    nodes.append(helper.make_node("Identity", [f"x{units}"], ["output"]))
    shape = [1, 8, 9, 11]
    path = save_graph(
        tmp_path / "split.onnx", nodes, weights, {"input": shape}, {"output": [1, channels, 9, 11]}
    )
    module, report = optimize(import_onnx(path, name="split")[0].module, host_target)
    assert report.schedules.failed == {}
    assert set(report.schedules.applied.values()) == {POINTWISE, DEPTHWISE}
    calls = called_kernels(module)
    moves = [call.split("_nchwc")[0] for call in calls if "pack_nchwc" in call]
    assert moves == ["pack", "unpack"], calls
    assert not any("strided_slice" in call or "transpose" in call for call in calls), calls
    assert sum(call.startswith("concat_nchwc") for call in calls) == units
    data = np.random.default_rng(3).standard_normal(shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights, units)) <= TOLERANCE


def test_sliced_output_is_unpacked_through_the_lanes(tmp_path: Path, host_target: Any) -> None:
    """A slice of a blocked, shuffled tensor that leaves the network (no blocked consumer):
    the unpack reads its channels through the sliced lane order."""
    from onnx import helper

    nodes, weights = split_units(40, 1, seed=5, size=(6, 6))
    weights["from"] = np.array([7], "int64")
    weights["to"] = np.array([33], "int64")
    nodes.append(helper.make_node("Slice", ["x1", "from", "to", "axis"], ["output"]))
    shape = [1, 8, 6, 6]
    path = save_graph(
        tmp_path / "slice.onnx", nodes, weights, {"input": shape}, {"output": [1, 26, 6, 6]}
    )
    module, _ = optimize(import_onnx(path, name="slice")[0].module, host_target)
    data = np.random.default_rng(4).standard_normal(shape).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights, 1)[:, 7:33]) <= TOLERANCE


def test_split_order_puts_each_slice_in_whole_blocks() -> None:
    order = split_order(116, [(0, 58), (58, 116)], 16)
    assert order is not None and order.total == 128
    assert list(order.lanes[:58]) == list(range(58))
    assert list(order.lanes[58:]) == list(range(64, 122))
    assert split_order(10, [(0, 6), (4, 10)], 4) is None  # overlapping slices


def test_unshuffled_is_the_inverse_of_the_shuffle() -> None:
    target = ChannelOrder(np.random.default_rng(0).permutation(24), 32)
    for groups in (2, 3, 4):
        assert unshuffled(target, groups).shuffled(groups).same(target)


def test_rpi4_channel_split_compiles(tmp_path: Path) -> None:
    """The split and the permuting concat for NEON (4-lane vectors): still no layout move, and
    LLVM accepts the AArch64 code (the concat's vector shuffles included)."""
    from onnx import helper

    nodes, weights = split_units(58, 2, seed=6, size=(7, 7))
    nodes.append(helper.make_node("Identity", ["x2"], ["output"]))
    path = save_graph(
        tmp_path / "split.onnx", nodes, weights, {"input": [1, 8, 7, 7]}, {"output": [1, 58, 7, 7]}
    )
    relax_model = import_onnx(path, name="split")[0]
    target = resolve_target("rpi4").tvm_target()
    module, report = optimize(relax_model.module, target)
    assert report.schedules.failed == {}
    calls = called_kernels(module)
    assert [call.split("_nchwc")[0] for call in calls if "pack_nchwc" in call] == [
        "pack",
        "unpack",
    ]
    executable, records = compile_relax(relax_model.module, target)
    assert all(r["schedule"] != TVM_DEFAULT for r in records)
    assert executable is not None
