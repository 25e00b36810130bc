"""Names users already type: torchvision's and timm's aliases, and suggestions by meaning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from edgecompile.errors import EdgecompileError
from edgecompile.zoo import (
    catalog_summary,
    get_model,
    list_models,
    model_aliases,
    model_info,
    register_model,
    registry,
    resolve_name,
)
from edgecompile.zoo.names import parse_name

ALIASES = {
    # torchvision
    "shufflenet_v2_x1_0": "shufflenet_v2",
    "mobilenet_v2_x1_0": "mobilenet_v2",
    "mnasnet1_0": "mnasnet_b1",
    "mnasnet0_5": "mnasnet_b1_x0_5",
    # timm
    "mobilenetv2_050": "mobilenet_v2_x0_5",
    "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv3_large_100": "mobilenet_v3_large",
    "mobilenetv3_small_100": "mobilenet_v3_small",
    "mnasnet_100": "mnasnet_b1",
    "mnasnet_050": "mnasnet_b1_x0_5",
    "semnasnet_100": "mnasnet_a1",
    "legacy_xception": "xception",
    # the grid's explicit spelling of a default variant
    "shufflenet_v1_g3_x1_0": "shufflenet_v1",
    "mobilenet_v1_x0_5_r224": "mobilenet_v1_x0_5",
    "mobilenet_v3_small_x1_0": "mobilenet_v3_small",
    # spellings of one name: hub prefix, weights tag, case
    "timm/mobilenetv2_100.ra_in1k": "mobilenet_v2",
    "MNASNet1_0": "mnasnet_b1",
}

# Parameter counts torchvision documents and timm publishes (millions, 2 decimals) for the
# names above: an alias is only right if the architecture is the same.
TORCHVISION_PARAMS = {
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "mnasnet0_5": 2_218_512,
    "mnasnet1_0": 4_383_312,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}
TIMM_PARAMS_M = {
    "mobilenetv2_035": 1.68,
    "mobilenetv2_050": 1.97,
    "mobilenetv2_075": 2.64,
    "mobilenetv2_100": 3.50,
    "mobilenetv2_140": 6.11,
    "mobilenetv3_large_100": 5.48,
    "mobilenetv3_small_100": 2.54,
    "mnasnet_100": 4.38,
    "semnasnet_100": 3.89,
    "legacy_xception": 22.86,
}


@pytest.mark.parametrize(("alias", "name"), sorted(ALIASES.items()))
def test_alias_resolves_to_the_same_model(alias: str, name: str) -> None:
    assert resolve_name(alias) == name
    assert model_info(alias) is model_info(name)


@pytest.mark.parametrize(("name", "params"), sorted(TORCHVISION_PARAMS.items()))
def test_torchvision_names_have_torchvision_parameter_counts(name: str, params: int) -> None:
    summary = catalog_summary(name)
    assert summary is not None and summary.params == params


@pytest.mark.parametrize(("name", "millions"), sorted(TIMM_PARAMS_M.items()))
def test_timm_names_have_timm_parameter_counts(name: str, millions: float) -> None:
    summary = catalog_summary(name)
    assert summary is not None and round(summary.params / 1e6, 2) == millions


@pytest.mark.parametrize(
    "name",
    # timm's 0.75× MobileNet v3 keeps a full-width head (3.99M/2.04M params, ours 3.38M/1.65M);
    # timm's mobilenetv1_100 uses ReLU6; tf_* pad as TensorFlow; xception41 is aligned Xception.
    [
        "mobilenetv3_large_075", "mobilenetv3_small_075", "mobilenetv1_100",
        "tf_mobilenetv3_large_100", "xception41",
    ],
)  # fmt: skip
def test_a_different_architecture_is_not_an_alias(name: str) -> None:
    with pytest.raises(EdgecompileError, match="unknown model"):
        resolve_name(name)


def test_get_model_builds_an_alias() -> None:
    model = get_model("mnasnet0_5")
    assert sum(p.numel() for p in model.parameters()) == 2_218_512


def test_list_models_matches_aliases_and_returns_model_names() -> None:
    assert list_models("mobilenetv2_05*") == ["mobilenet_v2_x0_5"]
    assert "shufflenet_v1" in list_models("shufflenet_v1_g3*")
    assert list_models("semnasnet") == ["mnasnet_a1", "mnasnet_a1_x0_5"]
    assert "mobilenetv2_100" in model_aliases("mobilenet_v2")


@pytest.mark.parametrize(
    ("typed", "first"),
    [
        # torchvision's widths the zoo lacks: the same family (B1), nearest widths first
        ("mnasnet0_75", ["mnasnet_b1", "mnasnet_b1_x0_5"]),
        ("mnasnet1_3", ["mnasnet_b1"]),
        ("mobilenetv3_large_075", ["mobilenet_v3_large_x0_75"]),
        ("mobilenetv2_120d", ["mobilenet_v2_x1_3"]),
        ("shufflenet_v1_g3_x0_75", ["shufflenet_v1", "shufflenet_v1_g3_x0_5"]),
        ("shufflenet_v1_g8_x3_0", ["shufflenet_v1_g8_x2_0"]),
        ("shufflenet_v2_x0_75", ["shufflenet_v2", "shufflenet_v2_x0_5"]),
        ("mobilenet_v1_x0_5_r96", ["mobilenet_v1_x0_5_r128"]),
        ("semnasnet_140", ["mnasnet_a1"]),
    ],
)
def test_suggestions_are_the_nearest_models_of_the_family(typed: str, first: list[str]) -> None:
    with pytest.raises(EdgecompileError) as caught:
        resolve_name(typed)
    suggested = str(caught.value).split("did you mean ")[1].rstrip("?)").split(", ")
    assert suggested[: len(first)] == first


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("mobilnet_v2", "mobilenet_v2"), ("squezenet1_1", "squeezenet1_1"), ("xceptoin", "xception")],
)
def test_a_typo_outside_any_family_is_matched_by_spelling(typed: str, expected: str) -> None:
    with pytest.raises(EdgecompileError, match=f"did you mean {expected}"):
        resolve_name(typed)


def test_a_network_the_zoo_lacks_gets_no_far_fetched_suggestion() -> None:
    with pytest.raises(EdgecompileError, match="see `edgecompile models`"):
        resolve_name("resnet50")


def test_parse_name_reads_the_conventions() -> None:
    assert parse_name("mobilenetv2_050").width == 0.5
    assert parse_name("mnasnet0_75").width == 0.75
    assert parse_name("semnasnet_100").variant == {"a1"}
    assert parse_name("shufflenet_v1_g8_x0_25").groups == 8
    assert parse_name("mobilenet_v1_x0_25_r128").resolution == 128
    assert parse_name("squeezenet1_0").width is None
    assert parse_name("resnet50").family is None


def test_a_user_model_gets_aliases_and_cannot_take_a_builtin_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    register_model("tiny_net", lambda: torch.nn.Identity(), family="tiny", aliases=("tiny",))
    assert resolve_name("tiny") == "tiny_net"
    assert list_models(family="tiny") == ["tiny_net"]
    assert catalog_summary("tiny") is None  # no shipped facts: a build counts it
    for taken in ("mnasnet1_0", "tiny", "xception"):
        with pytest.raises(ValueError, match="twice"):
            register_model(taken, lambda: torch.nn.Identity(), family="tiny")


def test_looking_names_up_imports_no_torch_and_only_the_family_used() -> None:
    code = (
        "import sys\n"
        "from edgecompile.zoo import list_models, resolve_name, catalog_summary, model_info\n"
        "assert len(list_models()) == 72 and resolve_name('mnasnet1_0') == 'mnasnet_b1'\n"
        "assert catalog_summary('mobilenetv2_050').params > 0\n"
        "assert 'torch' not in sys.modules\n"
        "model_info('mnasnet1_0')\n"
        "assert 'edgecompile.zoo.mnasnet' in sys.modules\n"
        "assert 'edgecompile.zoo.xception' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
