"""benchmarks/roofline.py: the arithmetic it counts per layer (checked against the zoo's own
multiply-adds), the op-class rows, and a peak kernel that does the steps it counts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import edgecompile

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "roofline.py"
FACTS = Path(edgecompile.__file__).parent / "zoo" / "facts.json"


@pytest.fixture(scope="module")
def roofline():
    spec = importlib.util.spec_from_file_location("benchmarks_roofline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_layers_of_a_build_add_up_to_the_models_multiply_adds(roofline, build_once) -> None:
    # squeezenet1_1's stem has no padding (224 -> 111): an output size guessed from the input
    # and the stride would count it wrong
    layers = build_once("squeezenet1_1", "host").artifact.manifest.to_dict()["schedules"]
    facts = {m["name"]: m for m in json.loads(FACTS.read_text())["models"]}
    counted = {layer["index"]: roofline.layer_multiply_adds(layer) for layer in layers}
    arithmetic = {layer["index"] for layer in layers if layer["op"] in ("conv2d", "matmul")}
    assert {i for i, count in counted.items() if count is not None} == arithmetic
    assert len(arithmetic) < len(layers)  # its max pools are listed and not counted
    assert sum(counted[i] for i in arithmetic) == facts["squeezenet1_1"]["multiply_adds"]


def test_op_class_rows_rate_each_class_and_refuse_to_guess(roofline) -> None:
    def conv(index: int, data: list[int], weight: list[int], output: list[int] | None):
        layer = {"index": index, "op": "conv2d", "shapes": [data, weight]}
        return layer if output is None else {**layer, "output": output}

    layers = [
        conv(0, [1, 8, 4, 4], [16, 8, 1, 1], [1, 16, 4, 4]),
        conv(1, [1, 16, 4, 4], [16, 1, 3, 3], [1, 16, 2, 2]),
        conv(2, [1, 16, 2, 2], [16, 1, 3, 3], None),  # a manifest from before outputs
        {"index": 3, "op": "matmul", "shapes": [[1, 64], [64, 10]], "output": [1, 10]},
    ]
    kernels = [
        {"time_ms": 0.002, "op": "pointwise", "layers": [0]},
        {"time_ms": 0.001, "op": "depthwise", "layers": [1]},
        {"time_ms": 0.001, "op": "depthwise", "layers": [2]},
        {"time_ms": 0.0005, "op": "matmul", "layers": [3]},
        {"time_ms": 0.0005, "op": None, "layers": []},
    ]
    listed = roofline.op_class_rows(kernels, layers, peak_gflops=10.0)
    rows = {row["op"]: row for row in listed}
    assert list(rows) == ["pointwise", "depthwise", "matmul", "other"]  # slowest first
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0)
    assert rows["pointwise"]["multiply_adds"] == 16 * 16 * 8
    assert rows["pointwise"]["gflops"] == pytest.approx(2 * 16 * 16 * 8 / 0.002 / 1e6)
    assert rows["pointwise"]["of_peak"] == pytest.approx(rows["pointwise"]["gflops"] / 10.0)
    assert rows["matmul"]["multiply_adds"] == 64 * 10
    # one depthwise kernel's arithmetic is unknown: no rate for the class, not a rate too high
    assert rows["depthwise"]["gflops"] is None and rows["depthwise"]["of_peak"] is None
    assert rows["other"]["gflops"] is None
    # the floor counts only the arithmetic it knows: pointwise and matmul, at the peak
    floor = roofline.arithmetic_floor_ms(listed, peak_gflops=10.0)
    assert floor == pytest.approx(2 * (16 * 16 * 8 + 64 * 10) / 10e6)


def test_the_peak_kernel_takes_every_step_it_is_timed_for(roofline) -> None:
    import tvm

    steps = 5
    library, shape = roofline.chains_kernel("x86-64-v2", threads=2, steps=steps)
    assert shape == (2, roofline.CHAINS, 4)  # SSE4.2: four float32 lanes
    values = np.random.default_rng(0).standard_normal(shape).astype("float32")
    result = tvm.runtime.tensor(np.zeros(shape, "float32"))
    library["main"](tvm.runtime.tensor(values), result)
    expected = values.copy()
    for _ in range(steps):
        expected = expected * np.float32(roofline.MULTIPLIER) + np.float32(roofline.ADDEND)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


def test_targets_it_cannot_run_here_and_unknown_models_stop_it_before_any_work(
    roofline, capsys
) -> None:
    assert roofline.main(["--targets", "host,rpi4", "--peaks-only"]) == 2
    assert "rpi4 does not run on this machine" in capsys.readouterr().err
    assert roofline.main(["--models", "mobilenetv9"]) == 2
    assert "unknown model 'mobilenetv9'" in capsys.readouterr().err
    targets, models = roofline.checked_names(["x86-64-v2"], ["mobilenet_v2_x1_0"])
    assert (targets, models) == (["x86-64-v2"], ["mobilenet_v2"])  # the alias, resolved
