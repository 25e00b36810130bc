"""CondenseNet: condense() turns the training form into an equivalent, smaller deploy form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecompile.zoo.condensenet import (
    CondensedGroupConv,
    CondenseNet,
    LearnedGroupConv,
    condense,
    condensenet74,
)

GROUPS = [4, 8]
# Small input keeps the tests fast; the adaptive global pool makes any size valid.
INPUT_SHAPE = (2, 3, 64, 64)


def _count_multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(input_shape))
    for handle in handles:
        handle.remove()
    return total


@torch.no_grad()
def _randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine terms, so a mis-gathered channel shows."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
        elif isinstance(module, nn.Linear):
            module.bias.copy_(torch.randn(module.out_features, generator=generator))


@pytest.fixture(scope="module", params=GROUPS, ids=[f"c{g}_g{g}" for g in GROUPS])
def trained(request: pytest.FixtureRequest) -> CondenseNet:
    """A training-form CondenseNet-74 with random weights and random BN statistics."""
    groups: int = request.param
    torch.manual_seed(groups)
    model = condensenet74(groups=groups, condensed=False)
    _randomise_norms(model, torch.Generator().manual_seed(100 + groups))
    return model.eval()


@pytest.fixture(scope="module")
def final_pair(trained: CondenseNet) -> tuple[CondenseNet, CondenseNet]:
    """``trained`` brought to its final condensation stage, and its condensed form."""
    model = copy.deepcopy(trained)
    model.finish_condensation()
    return model, condense(model)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_condense_matches_final_stage_training_form(
    trained: CondenseNet, final_pair: tuple[CondenseNet, CondenseNet]
) -> None:
    model, deployed = final_pair
    assert not deployed.training
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        actual = deployed(x)
        dense = trained(x)
    assert expected.std() > 0
    assert _relative_error(actual, expected) < 1e-5
    # The masks really changed the function, so the match above is not a tautology.
    assert _relative_error(dense, expected) > 1e-2


def test_condense_from_an_early_stage_leaves_its_input_alone(trained: CondenseNet) -> None:
    model = copy.deepcopy(trained)
    model.update_condensation(0.2)  # an intermediate stage (stage 1 of C - 1)
    assert 0 < model.condensation_stage < trained.config.condense_factor - 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = condense(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.finish_condensation()
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _relative_error(deployed(x), model(x)) < 1e-5


def test_final_stage_keeps_one_over_c_inputs_per_group(
    final_pair: tuple[CondenseNet, CondenseNet],
) -> None:
    model, _ = final_pair
    factor = model.config.condense_factor
    for layer in model.learned_convs():
        assert int(layer.stage) == factor - 1
        kept = layer.kept_inputs()
        assert kept.shape == (layer.groups, layer.in_channels // factor)
        mask = layer.conv.mask[:, :, 0, 0]
        assert int(mask.sum()) == layer.out_channels * layer.in_channels // factor
    assert int(model.classifier.mask.sum()) == model.num_features // 2


def test_condensed_form_is_smaller(
    trained: CondenseNet, final_pair: tuple[CondenseNet, CondenseNet]
) -> None:
    _, deployed = final_pair
    convs = [m for m in deployed.modules() if isinstance(m, CondensedGroupConv)]
    assert len(convs) == len(trained.learned_convs()) == 36
    assert all(m.conv.groups == trained.config.groups for m in convs)
    assert all(m.index.dtype == torch.int64 for m in convs)
    assert not any(isinstance(m, LearnedGroupConv) for m in deployed.modules())

    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert params(deployed) < params(trained) / 2
    assert _count_multiply_adds(deployed, (1, 3, 64, 64)) < _count_multiply_adds(
        trained, (1, 3, 64, 64)
    )


def test_condense_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="training-form CondenseNet"):
        condense(nn.Conv2d(3, 8, 1))


def test_condense_rejects_a_condensed_model(final_pair: tuple[CondenseNet, CondenseNet]) -> None:
    _, deployed = final_pair
    with pytest.raises(ValueError, match="already condensed"):
        condense(deployed)
    with pytest.raises(ValueError, match="needs the training form"):
        deployed.finish_condensation()


def test_condense_rejects_a_corrupted_mask(trained: CondenseNet) -> None:
    model = copy.deepcopy(trained)
    layer = model.learned_convs()[3]
    with torch.no_grad():
        # One output of group 0 loses an input that its group-mates keep.
        layer.conv.mask[layer.groups, 0] = 0.0
    with pytest.raises(ValueError, match="differs between outputs of one group"):
        condense(model)
    with torch.no_grad():
        layer.conv.mask.fill_(0.5)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        condense(model)
