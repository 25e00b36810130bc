"""PReLU (per-channel slope) and un-folded batch norm in the blocked layout: ESPNet v2's
activation after every merge. Each is a blocked elementwise op fused as the producing conv's
epilogue, or, after a concat or a sum, an elementwise kernel of its own on the blocked value --
never an unpack and a pack around it. Numerics against torch on the host; compile for rpi4.

Channel counts are not multiples of the lanes (18, 9, 7: neither 16 nor 4), so the padding lanes
of every packed slope and scale are exercised.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from edgecompile.export import relative_error
from edgecompile.importer import import_onnx
from edgecompile.schedules import DENSE, POINTWISE, compile_relax, optimize, rules
from edgecompile.schedules.analysis import called_kernels, sblocks
from edgecompile.schedules.coverage import assert_no_missed_schedules
from edgecompile.schedules.packing import batch_norm_affine
from edgecompile.targets import resolve_target

from .test_conv_schedules import (
    TOLERANCE,
    run_module,
    save_graph,
    scheduled_functions,
)

CHANNELS, HALF, OUT = 18, 9, 7
SHAPE = (1, 6, 11, 11)
EPSILON = 1e-3


def _batch_norm_weights(rng: np.random.Generator, name: str) -> dict[str, np.ndarray]:
    return {
        f"{name}_gamma": rng.uniform(0.5, 1.5, CHANNELS).astype("float32"),
        f"{name}_beta": rng.standard_normal(CHANNELS).astype("float32"),
        f"{name}_mean": rng.standard_normal(CHANNELS).astype("float32"),
        f"{name}_var": rng.uniform(0.5, 2.0, CHANNELS).astype("float32"),
    }


def esp_like_block(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """3×3 conv → PReLU (an epilogue); two 1×1 branches → concat → BatchNorm → PReLU (after a
    concat: nothing to fold into); + the first PReLU's output → BatchNorm → PReLU (after a
    sum) → 1×1 conv. As ESPNet v2's EESP unit, with the torch exporter's (C, 1, 1) slopes."""
    rng = np.random.default_rng(21)
    weights = {
        "w0": rng.standard_normal((CHANNELS, SHAPE[1], 3, 3)).astype("float32") / 4,
        "s0": rng.uniform(-0.5, 0.5, (CHANNELS, 1, 1)).astype("float32"),
        "wa": rng.standard_normal((HALF, CHANNELS, 1, 1)).astype("float32") / 4,
        "wb": rng.standard_normal((HALF, CHANNELS, 1, 1)).astype("float32") / 4,
        **_batch_norm_weights(rng, "bn1"),
        "s1": rng.uniform(-0.5, 0.5, (CHANNELS, 1, 1)).astype("float32"),
        **_batch_norm_weights(rng, "bn2"),
        "s2": rng.uniform(-0.5, 0.5, (CHANNELS, 1, 1)).astype("float32"),
        "wo": rng.standard_normal((OUT, CHANNELS, 1, 1)).astype("float32") / 4,
    }

    def batch_norm(source: str, name: str, output: str) -> Any:
        inputs = [source, *(f"{name}_{p}" for p in ("gamma", "beta", "mean", "var"))]
        return helper.make_node("BatchNormalization", inputs, [output], epsilon=EPSILON)

    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c0", "s0"], ["p0"]),
        helper.make_node("Conv", ["p0", "wa"], ["a"]),
        helper.make_node("Conv", ["p0", "wb"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        batch_norm("cat", "bn1", "n1"),
        helper.make_node("PRelu", ["n1", "s1"], ["p1"]),
        helper.make_node("Add", ["p1", "p0"], ["sum"]),
        batch_norm("sum", "bn2", "n2"),
        helper.make_node("PRelu", ["n2", "s2"], ["p2"]),
        helper.make_node("Conv", ["p2", "wo"], ["output"]),
    ]
    output_shape = [1, OUT, *SHAPE[2:]]
    path = save_graph(
        directory / "esp.onnx", nodes, weights, {"input": list(SHAPE)}, {"output": output_shape}
    )
    return path, weights


def reference(data: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v.astype("float64")) for k, v in weights.items()}

    def batch_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            t[f"{name}_mean"],
            t[f"{name}_var"],
            t[f"{name}_gamma"],
            t[f"{name}_beta"],
            eps=EPSILON,
        )

    x = torch.from_numpy(data.astype("float64"))
    p0 = F.prelu(F.conv2d(x, t["w0"], padding=1), t["s0"].reshape(-1))
    cat = torch.cat([F.conv2d(p0, t["wa"]), F.conv2d(p0, t["wb"])], dim=1)
    p1 = F.prelu(batch_norm(cat, "bn1"), t["s1"].reshape(-1))
    p2 = F.prelu(batch_norm(p1 + p0, "bn2"), t["s2"].reshape(-1))
    return F.conv2d(p2, t["wo"]).numpy()


EXPECTED = {0: DENSE, 1: POINTWISE, 2: POINTWISE, 3: POINTWISE}


def test_prelu_and_batch_norm_stay_blocked_and_match_torch(
    tmp_path: Path, host_target: Any
) -> None:
    path, weights = esp_like_block(tmp_path)
    module, report = optimize(import_onnx(path, name="esp")[0].module, host_target)
    assert report.schedules.failed == {}
    assert report.schedules.applied == EXPECTED

    # No layout glue: the stem reads the image in NCHW, and the one unpack is the output's.
    calls = called_kernels(module)
    glue = [call for call in calls if "pack" in call or "layout_transform" in call]
    assert glue == [calls[-1]], calls
    # Every PReLU and batch norm is the blocked one (TVM's would be named without _nchwc).
    for call in calls:
        for op in ("prelu", "batch_norm"):
            assert call.count(op) == call.count(f"{op}_nchwc"), calls

    # The first PReLU is the stem's epilogue, inlined into its register tile's write-back.
    scheduled = scheduled_functions(module)
    (stem,) = [name for name, func in scheduled.items() if "conv_nchwc" in name]
    assert "prelu_nchwc" in stem, stem
    assert not any(b.name_hint == "prelu_nchwc" for b in sblocks(scheduled[stem].body))

    # After the concat, batch norm → PReLU → + → batch norm → PReLU is one kernel of our
    # elementwise rule: one parallel, vectorized pass, the intermediates inlined.
    functions = {gv.name_hint: func for gv, func in module.functions_items()}
    (merge,) = [call for call in calls if "batch_norm_nchwc" in call]
    text = functions[merge].script()
    assert rules.BlockedElementwise.schedule_name in text
    assert "T.parallel" in text and "T.vectorized" in text
    assert len(list(sblocks(functions[merge].body))) == 2, text  # the root and one stage

    data = np.random.default_rng(22).standard_normal(SHAPE).astype("float32")
    actual = run_module(module, host_target, data)
    assert relative_error(actual, reference(data, weights)) <= TOLERANCE


def test_rpi4_prelu_and_batch_norm_compile(tmp_path: Path) -> None:
    """The same block for NEON's 4 lanes (18 channels: two padding lanes in the last block)."""
    path, _ = esp_like_block(tmp_path)
    relax_model = import_onnx(path, name="esp")[0]
    target = resolve_target("rpi4").tvm_target()
    module, report = optimize(relax_model.module, target)
    assert report.schedules.applied == EXPECTED
    calls = called_kernels(module)
    assert [call for call in calls if "pack" in call] == [calls[-1]], calls
    executable, records = compile_relax(relax_model.module, target)
    assert executable is not None
    assert [r["schedule"] for r in records] == list(EXPECTED.values())


def test_batch_norm_affine_is_topis_formula() -> None:
    rng = np.random.default_rng(23)
    gamma, beta, mean = (rng.standard_normal(5).astype("float32") for _ in range(3))
    variance = rng.uniform(0.1, 2, 5).astype("float32")
    x = rng.standard_normal((3, 5)).astype("float64")
    for scale, center in [(True, True), (False, True), (True, False)]:
        factor, shift = batch_norm_affine(gamma, beta, mean, variance, 1e-5, scale, center)
        expected = (x - mean) / np.sqrt(variance.astype("float64") + 1e-5)
        expected = expected * gamma if scale else expected
        expected = expected + beta if center else expected
        np.testing.assert_allclose(x * factor + shift, expected, rtol=1e-6, atol=1e-6)


GLUE_AROUND = re.compile(r"unpack_nchwc\d*_(prelu|batch_norm)\d*(_|$)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_espnet_v2_keeps_prelu_and_batch_norm_blocked(tmp_path: Path, host_target: Any) -> None:
    """The whole ESPNet v2 (x0.5): built and verified against ONNX Runtime, no missed schedule,
    every batch norm blocked, and no kernel that unpacks a value only to apply a PReLU or a
    batch norm to it in NCHW (before, one such pair sat after every EESP unit)."""
    import edgecompile

    result = edgecompile.build("espnet_v2_x0_5", "host", output_dir=tmp_path, keep_onnx=True)
    assert_no_missed_schedules(result.artifact.manifest.schedules, "espnet_v2_x0_5")
    (onnx_path,) = tmp_path.rglob("*.onnx")
    module, _ = optimize(import_onnx(onnx_path, name="espnet_v2")[0].module, host_target)
    calls = called_kernels(module)
    assert [call for call in calls if GLUE_AROUND.search(call)] == []
    norms = [call for call in calls if "batch_norm" in call]
    assert norms
    assert all(call.count("batch_norm") == call.count("batch_norm_nchwc") for call in norms)
