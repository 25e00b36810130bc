"""Every registered model: builds, runs at its input size, and matches the literature's counts."""

from __future__ import annotations

import pytest
import torch

from edgecompile.inspection import measure_model, summarize_model
from edgecompile.zoo import get_model, list_models, model_info

ALL_MODELS = list_models()

# Parameter counts of the reference implementations (1000-class heads; see each module's docstring
# for the implementation matched).
PARAMS = {
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "mnasnet_b1": 4_383_312,
    "mnasnet_b1_x0_5": 2_218_512,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v1": 4_231_976,
    "xception": 22_855_952,
    "shufflenet_v1": 1_865_728,
    "condensenet74_c8_g8": 2_935_416,
    "espnet_v2_x0_5": 1_241_332,
    "espnet_v2": 1_670_072,
}

# Multiply-adds the papers report, in millions, and how close ours (conv + linear) must be.
MULTIPLY_ADDS = {
    "mobilenet_v1": (569, 0.03),
    "mobilenet_v2": (300, 0.03),
    "mobilenet_v3_large": (217, 0.03),
    "mobilenet_v3_small": (56, 0.03),
    "shufflenet_v2": (146, 0.03),
    "mnasnet_a1": (312, 0.03),
    "shufflenet_v1": (140, 0.03),
    # CondenseNet's 274M comes from the authors' measure_model, which also counts ReLUs (11.0M),
    # pooling (1.7M) and the unpruned classifier with its bias (2.1M); conv + linear alone is
    # 261.5M, so the paper's figure is within 5% here, not 3%.
    "condensenet74_c8_g8": (274, 0.05),
    "condensenet74_c4_g4": (529, 0.03),
    "espnet_v2": (86, 0.03),
    "espnet_v2_x0_5": (28, 0.06),  # the paper rounds; EdgeNets' own counter gives 28.2M
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape_at_default_input_size(name: str) -> None:
    info = model_info(name)
    model = get_model(name)
    with torch.no_grad():
        out = model(torch.randn(info.input_shape))
    if info.task == "classification":
        assert out.shape == (1, 1000)
    else:
        assert out.shape == (1, 19, *info.input_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_reference(name: str) -> None:
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(MULTIPLY_ADDS))
def test_multiply_adds_match_paper(name: str) -> None:
    paper_millions, tolerance = MULTIPLY_ADDS[name]
    ours = summarize_model(name).multiply_adds / 1e6
    assert abs(ours - paper_millions) <= tolerance * paper_millions, f"{ours:.1f}M"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_summary_counts_every_parameter(name: str) -> None:
    # measure_model costs models on the meta device; it must agree with the real model.
    summary = measure_model(name)
    assert summary.params == sum(p.numel() for p in get_model(name).parameters())
    assert summary.multiply_adds > 0


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "mobilenet_v3_small", "squeezenet1_1"])
def test_seeded_weights_are_reproducible(name: str) -> None:
    first, again, other = get_model(name, seed=1), get_model(name, seed=1), get_model(name, seed=2)
    first_state, other_state = first.state_dict(), other.state_dict()
    for key, tensor in again.state_dict().items():
        assert torch.equal(tensor, first_state[key])
    assert any(
        not torch.equal(t, other_state[k]) for k, t in first_state.items() if t.is_floating_point()
    )
