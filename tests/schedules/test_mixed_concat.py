"""A channel concat of blocked values with a smaller NCHW one (ESPNet's stem output joined by
the image average-pooled to its size): the NCHW part is packed and the concat, and the batch
norm → PReLU after it, stay blocked -- not the blocked parts unpacked, concatenated in NCHW and
normalised there by TVM's lowering. Numerics against torch on the host; compile for rpi4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import compile_relax, optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.targets import resolve_target

from .test_conv_schedules import TOLERANCE, run_module, save_graph

IMAGE = (1, 3, 26, 26)  # the stem and the pool halve it to 13: a row with a tail
STEM, OUT = 18, 7  # channels; 18 + 3 = 21 after the concat: padding lanes on 16 and 4 lanes
EPSILON = 1e-3


def level1(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """ESPNet's first level: 3×3/2 conv → PReLU, concat with the 3×3/2 average-pooled image,
    BatchNorm → PReLU, then a 1×1 conv."""
    rng = np.random.default_rng(31)
    joined = STEM + IMAGE[1]
    weights = {
        "w0": rng.standard_normal((STEM, IMAGE[1], 3, 3)).astype("float32") / 4,
        "s0": rng.uniform(-0.5, 0.5, (STEM, 1, 1)).astype("float32"),
        "gamma": rng.uniform(0.5, 1.5, joined).astype("float32"),
        "beta": rng.standard_normal(joined).astype("float32"),
        "mean": rng.standard_normal(joined).astype("float32"),
        "var": rng.uniform(0.5, 2.0, joined).astype("float32"),
        "s1": rng.uniform(-0.5, 0.5, (joined, 1, 1)).astype("float32"),
        "w1": rng.standard_normal((OUT, joined, 1, 1)).astype("float32") / 4,
    }
    same = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=same, strides=[2, 2]),
        helper.make_node("PRelu", ["c0", "s0"], ["p0"]),
        helper.make_node(
            "AveragePool", ["input"], ["image"], kernel_shape=[3, 3], strides=[2, 2], pads=same
        ),
        helper.make_node("Concat", ["p0", "image"], ["cat"], axis=1),
        helper.make_node(
            "BatchNormalization",
            ["cat", "gamma", "beta", "mean", "var"],
            ["norm"],
            epsilon=EPSILON,
        ),
        helper.make_node("PRelu", ["norm", "s1"], ["p1"]),
        helper.make_node("Conv", ["p1", "w1"], ["output"]),
    ]
    half = [IMAGE[2] // 2, IMAGE[3] // 2]
    path = save_graph(
        directory / "level1.onnx",
        nodes,
        weights,
        {"input": list(IMAGE)},
        {"output": [1, OUT, *half]},
    )
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}
    x = torch.from_numpy(data.astype("float64"))
    stem = F.prelu(F.conv2d(x, t["w0"], stride=2, padding=1), t["s0"].reshape(-1))
    image = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    cat = torch.cat([stem, image], dim=1)
    norm = F.batch_norm(cat, t["mean"], t["var"], t["gamma"], t["beta"], eps=EPSILON)
    return F.conv2d(F.prelu(norm, t["s1"].reshape(-1)), t["w1"]).numpy()


def blocked_glue(calls: list[str]) -> tuple[list[str], list[str]]:
    """The kernels that pack and those that unpack."""
    unpacks = [call for call in calls if "unpack" in call]
    packs = [call for call in calls if "pack" in call and "unpack" not in call]
    return packs, unpacks


def test_concat_packs_the_small_nchw_part_and_matches_torch(
    tmp_path: Path, host_target: Any
) -> None:
    path, weights = level1(tmp_path)
    module, report = optimize(import_onnx(path, name="level1")[0].module, host_target)
    assert report.schedules.failed == {}
    calls = called_kernels(module)
    packs, unpacks = blocked_glue(calls)
    # One pack, of the 3-channel pooled image; the one unpack is the model's output.
    assert len(packs) == 1 and unpacks == [calls[-1]], calls
    # The batch norm and PReLU after the concat run on the blocked value.
    norms = [call for call in calls if "batch_norm" in call or "prelu" in call]
    assert norms and all("nchwc" in call for call in norms), calls

    data = np.random.default_rng(32).standard_normal(IMAGE).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE


def test_rpi4_mixed_concat_compiles(tmp_path: Path) -> None:
    path, _ = level1(tmp_path)
    relax_model = import_onnx(path, name="level1")[0]
    target = resolve_target("rpi4").tvm_target()
    module, _ = optimize(relax_model.module, target)
    calls = called_kernels(module)
    packs, unpacks = blocked_glue(calls)
    assert len(packs) == 1 and unpacks == [calls[-1]], calls
    executable, _ = compile_relax(relax_model.module, target)
    assert executable is not None


def features_and_gather(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """CondenseNet's pattern: a conv's output gathered by channel (an NCHW op, so the conv's
    output gets an NCHW copy), the gathered channels concatenated back onto it."""
    rng = np.random.default_rng(33)
    weights = {
        "w0": rng.standard_normal((STEM, IMAGE[1], 3, 3)).astype("float32") / 4,
        "index": np.array([5, 0, 17, 3, 3, 9], dtype="int64"),
    }
    half = [IMAGE[2] // 2, IMAGE[3] // 2]
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Gather", ["c0", "index"], ["picked"], axis=1),
        helper.make_node("Concat", ["c0", "picked"], ["output"], axis=1),
    ]
    outputs = {"output": [1, STEM + len(weights["index"]), *half]}
    path = save_graph(directory / "gather.onnx", nodes, weights, {"input": list(IMAGE)}, outputs)
    return path, weights


def test_concat_stays_nchw_when_its_blocked_part_has_an_nchw_copy(
    tmp_path: Path, host_target: Any
) -> None:
    path, weights = features_and_gather(tmp_path)
    module, _ = optimize(import_onnx(path, name="gather")[0].module, host_target)
    calls = called_kernels(module)
    packs, unpacks = blocked_glue(calls)
    assert packs == [] and len(unpacks) == 1, calls  # the conv's one NCHW copy, for both

    data = np.random.default_rng(34).standard_normal(IMAGE).astype("float32")
    stem = F.conv2d(
        torch.from_numpy(data.astype("float64")),
        torch.from_numpy(weights["w0"].astype("float64")),
        stride=2,
        padding=1,
    )
    expected = torch.cat([stem, stem[:, torch.from_numpy(weights["index"])]], dim=1).numpy()
    assert relative_error(run_module(module, host_target, data), expected) <= TOLERANCE
