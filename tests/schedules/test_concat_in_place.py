"""Channel concats of blocked tensors cost no kernel: the producers write straight into their slab
of the concat's storage (SqueezeNet's fire modules). Numerics against torch on the host, which
kernels still run, nesting, the cases left alone, and the rpi4 build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from onnx import helper

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import optimize
from edgecompile.schedules.analysis import called_kernels
from edgecompile.schedules.tir import register_tir_pipeline
from edgecompile.targets import resolve_target

from .test_conv_schedules import TOLERANCE, run_module, save_graph

CHANNELS, SQUEEZE, EXPAND = 32, 16, 32
SIZE = 13  # prime: the expand convs' row tiles have a tail
GROUPS = 4  # the dense block's grouped convs (CondenseNet's learned groups)


def _conv(name: str, source: str, out: str, pad: int) -> list[Any]:
    return [
        helper.make_node("Conv", [source, name], [f"{out}_pre"], pads=[pad] * 4),
        helper.make_node("Relu", [f"{out}_pre"], [out]),
    ]


def fire_graph(directory: Path, shape: str) -> tuple[Path, dict[str, np.ndarray]]:
    """A fire module, ``shape`` picking what follows the squeeze:

    - ``fire``: expand 1×1 ∥ expand 3×3 → concat → 1×1 conv (SqueezeNet);
    - ``nested``: inner = concat(e1, e3); e5 = 3×3 conv of inner; concat(inner, e5) → 1×1 conv
      (a dense block's growing concat: e5 reads the storage it is written into);
    - ``shared``: concat(e1, e3) and concat(e1, e5), summed → 1×1 conv (e1 cannot sit in both).
    """
    rng = np.random.default_rng(3)

    def weight(out: int, inp: int, k: int) -> np.ndarray:
        return (rng.standard_normal((out, inp, k, k)) / np.sqrt(inp * k * k)).astype("float32")

    weights = {
        "ws": weight(SQUEEZE, CHANNELS, 1),
        "we1": weight(EXPAND, SQUEEZE, 1),
        "we3": weight(EXPAND, SQUEEZE, 3),
        "we5": weight(EXPAND, SQUEEZE, 3),
    }
    nodes = [
        *_conv("ws", "input", "s", 0),
        *_conv("we1", "s", "e1", 0),
        *_conv("we3", "s", "e3", 1),
    ]
    if shape == "fire":
        nodes.append(helper.make_node("Concat", ["e1", "e3"], ["cat"], axis=1))
        joined = 2 * EXPAND
    elif shape == "nested":
        weights["we5"] = weight(EXPAND, 2 * EXPAND, 3)
        nodes += [
            helper.make_node("Concat", ["e1", "e3"], ["inner"], axis=1),
            *_conv("we5", "inner", "e5", 1),
            helper.make_node("Concat", ["inner", "e5"], ["cat"], axis=1),
        ]
        joined = 3 * EXPAND
    else:
        nodes += [
            *_conv("we5", "s", "e5", 1),
            helper.make_node("Concat", ["e1", "e3"], ["c1"], axis=1),
            helper.make_node("Concat", ["e1", "e5"], ["c2"], axis=1),
            helper.make_node("Add", ["c1", "c2"], ["cat"]),
        ]
        joined = 2 * EXPAND
    weights["wo"] = weight(CHANNELS, joined, 1)
    nodes.append(helper.make_node("Conv", ["cat", "wo"], ["output"]))
    shape_in = [1, CHANNELS, SIZE, SIZE]
    path = save_graph(
        directory / f"{shape}.onnx", nodes, weights, {"input": shape_in}, {"output": shape_in}
    )
    return path, weights


def reference(shape: str, data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    s = F.relu(F.conv2d(torch.from_numpy(data), w["ws"]))
    e1, e3 = F.relu(F.conv2d(s, w["we1"])), F.relu(F.conv2d(s, w["we3"], padding=1))
    if shape == "fire":
        cat = torch.cat([e1, e3], 1)
    elif shape == "nested":
        inner = torch.cat([e1, e3], 1)
        cat = torch.cat([inner, F.relu(F.conv2d(inner, w["we5"], padding=1))], 1)
    else:
        e5 = F.relu(F.conv2d(s, w["we5"], padding=1))
        cat = torch.cat([e1, e3], 1) + torch.cat([e1, e5], 1)
    return F.conv2d(cat, w["wo"]).numpy()


def _concat_calls(module: Any) -> list[str]:
    return [name for name in called_kernels(module) if "concat" in name]


def _check(shape: str, tmp_path: Path, target: Any) -> list[str]:
    path, weights = fire_graph(tmp_path, shape)
    module, _ = optimize(import_onnx(path)[0].module, target)
    data = np.random.default_rng(4).standard_normal((1, CHANNELS, SIZE, SIZE)).astype("float32")
    actual = run_module(module, target, data)
    assert relative_error(actual, reference(shape, data, weights)) <= TOLERANCE
    return _concat_calls(module)


def test_fire_module_runs_no_concat_kernel(tmp_path: Path, host_target: Any) -> None:
    assert _check("fire", tmp_path, host_target) == []


def test_nested_concats_share_one_storage(tmp_path: Path, host_target: Any) -> None:
    assert _check("nested", tmp_path, host_target) == []


def test_a_tensor_in_two_concats_is_placed_in_one_only(tmp_path: Path, host_target: Any) -> None:
    """e1 can live in one concat's slab only: the other concat still copies (and is right)."""
    assert len(_check("shared", tmp_path, host_target)) == 1


def test_fire_module_compiles_for_rpi4_without_a_concat(tmp_path: Path) -> None:
    target = resolve_target("rpi4").tvm_target()
    path, _ = fire_graph(tmp_path, "fire")
    module, _ = optimize(import_onnx(path)[0].module, target)
    assert _concat_calls(module) == []
    # The producers' output buffers take a symbolic offset: LLVM's AArch64 code accepts it.
    tvm.compile(module, target=target, relax_pipeline=None, tir_pipeline=register_tir_pipeline())


def dense_block_graph(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """CondenseNet's dense block in miniature, where the features stay in NCHW: a channel gather
    (its learned grouping) of the input, then twice: grouped 1×1 conv of the gathered
    features (which reads NCHW, writes blocked) → ReLU → concat(features, it) in NCHW, the
    next gather reading that; a last gather and grouped conv make the output. The blocked new
    channels are fewer than the NCHW ones, so each concat stays NCHW and unpacks them."""
    rng = np.random.default_rng(5)
    weights = {
        "perm0": rng.permutation(CHANNELS).astype("int64"),
        "w1": (rng.standard_normal((SQUEEZE, CHANNELS // GROUPS, 1, 1)) / 3).astype("float32"),
        "perm1": rng.permutation(CHANNELS + SQUEEZE).astype("int64"),
        "w2": (rng.standard_normal((SQUEEZE, (CHANNELS + SQUEEZE) // GROUPS, 1, 1)) / 3).astype(
            "float32"
        ),
        "perm2": rng.permutation(CHANNELS + 2 * SQUEEZE).astype("int64"),
        "wo": (
            rng.standard_normal((CHANNELS, (CHANNELS + 2 * SQUEEZE) // GROUPS, 1, 1)) / 4
        ).astype("float32"),
    }
    nodes = [
        helper.make_node("Gather", ["input", "perm0"], ["f0"], axis=1),
        helper.make_node("Conv", ["f0", "w1"], ["n1_pre"], group=GROUPS),
        helper.make_node("Relu", ["n1_pre"], ["n1"]),
        helper.make_node("Concat", ["f0", "n1"], ["f1"], axis=1),
        helper.make_node("Gather", ["f1", "perm1"], ["g1"], axis=1),
        helper.make_node("Conv", ["g1", "w2"], ["n2_pre"], group=GROUPS),
        helper.make_node("Relu", ["n2_pre"], ["n2"]),
        helper.make_node("Concat", ["f1", "n2"], ["f2"], axis=1),
        helper.make_node("Gather", ["f2", "perm2"], ["g2"], axis=1),
        helper.make_node("Conv", ["g2", "wo"], ["output"], group=GROUPS),
    ]
    shape_in = [1, CHANNELS, SIZE, SIZE]
    # The gathers' int64 indices are initializers like the weights.
    path = save_graph(
        directory / "dense.onnx", nodes, weights, {"input": shape_in}, {"output": shape_in}
    )
    return path, weights


def dense_block_reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    f0 = torch.from_numpy(data)[:, w["perm0"]]
    f1 = torch.cat([f0, F.relu(F.conv2d(f0, w["w1"], groups=GROUPS))], 1)
    f2 = torch.cat([f1, F.relu(F.conv2d(f1[:, w["perm1"]], w["w2"], groups=GROUPS))], 1)
    return F.conv2d(f2[:, w["perm2"]], w["wo"], groups=GROUPS).numpy()


def test_nchw_concats_of_a_dense_block_take_their_blocked_parts_unpacked_in_place(
    tmp_path: Path, host_target: Any
) -> None:
    """Each blocked part is unpacked by a kernel of its own, so the NCHW concats are TOPI's alone
    and placed: no kernel copies the growing features (fused into the unpack, every concat
    was a kernel copying all of them again)."""
    path, weights = dense_block_graph(tmp_path)
    module, _ = optimize(import_onnx(path)[0].module, host_target)
    kernels = called_kernels(module)
    assert [name for name in kernels if "concat" in name] == [], kernels
    # The two new parts' unpacks and the output's.
    assert sum(name.startswith("unpack_nchwc") for name in kernels) == 3, kernels
    data = np.random.default_rng(6).standard_normal((1, CHANNELS, SIZE, SIZE)).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, dense_block_reference(data, weights)) <= TOLERANCE


def packed_part_graph(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A blocked concat with an NCHW part, as CondenseNet's training-form dense blocks have:
    1×1 conv → ReLU (blocked, 32 channels) ∥ a channel gather of the input (NCHW, 16) →
    concat → 1×1 conv. The NCHW part has fewer channels than the blocked one, so it is packed
    and the concat stays blocked."""
    rng = np.random.default_rng(7)
    weights = {
        "w1": (rng.standard_normal((CHANNELS, CHANNELS, 1, 1)) / 6).astype("float32"),
        "pick": rng.permutation(CHANNELS)[:SQUEEZE].astype("int64"),
        "wo": (rng.standard_normal((CHANNELS, CHANNELS + SQUEEZE, 1, 1)) / 7).astype("float32"),
    }
    nodes = [
        *_conv("w1", "input", "f", 0),
        helper.make_node("Gather", ["input", "pick"], ["g"], axis=1),
        helper.make_node("Concat", ["f", "g"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wo"], ["output"]),
    ]
    shape_in = [1, CHANNELS, SIZE, SIZE]
    path = save_graph(
        directory / "packed.onnx", nodes, weights, {"input": shape_in}, {"output": shape_in}
    )
    return path, weights


def test_nchw_part_of_a_blocked_concat_is_packed_into_its_slab(
    tmp_path: Path, host_target: Any
) -> None:
    """The NCHW part is packed by a kernel of its own, so the blocked concat is placed: no
    kernel copies the blocked part (fused with the pack, the concat was one kernel that did)."""
    path, weights = packed_part_graph(tmp_path)
    module, _ = optimize(import_onnx(path)[0].module, host_target)
    kernels = called_kernels(module)
    assert _concat_calls(module) == [], kernels
    assert any(name.startswith("pack_nchwc") for name in kernels), kernels
    data = np.random.default_rng(8).standard_normal((1, CHANNELS, SIZE, SIZE)).astype("float32")
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    source = torch.from_numpy(data)
    joined = torch.cat([F.relu(F.conv2d(source, w["w1"])), source[:, w["pick"]]], 1)
    expected = F.conv2d(joined, w["wo"]).numpy()
    assert relative_error(run_module(module, host_target, data), expected) <= TOLERANCE
