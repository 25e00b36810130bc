"""The registry: names, lookups, errors and checkpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import edgecompile.zoo
from edgecompile.errors import EdgecompileError
from edgecompile.zoo import get_model, list_models, model_info, register_model

FAMILIES = {
    "shufflenet_v1", "shufflenet_v2", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "mnasnet",
    "squeezenet", "xception", "condensenet", "espnet", "espnet_v2",
}  # fmt: skip


def test_every_seed_family_is_registered() -> None:
    assert {model_info(name).family for name in list_models()} == FAMILIES


def test_default_variants_use_the_family_name() -> None:
    for name in ("shufflenet_v1", "shufflenet_v2", "mobilenet_v1", "mobilenet_v2", "espnet"):
        assert name in list_models()
    assert model_info("shufflenet_v1").kwargs == {"groups": 3, "width": 1.0}


def test_list_models_filters_by_substring_glob_and_family() -> None:
    assert list_models("v3_small") == ["mobilenet_v3_small", "mobilenet_v3_small_x0_75"]
    assert all(n.startswith("shufflenet_v1_g8") for n in list_models("shufflenet_v1_g8*"))
    assert len(list_models("shufflenet_v1_g8*")) == 5
    assert set(list_models(family="squeezenet")) == {"squeezenet1_0", "squeezenet1_1"}


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(EdgecompileError, match="unknown model 'shufflenet_v3'") as caught:
        get_model("shufflenet_v3")
    assert "shufflenet_v1" in str(caught.value) or "shufflenet_v2" in str(caught.value)


def test_unknown_model_without_close_names_points_at_the_listing() -> None:
    with pytest.raises(EdgecompileError, match="edgecompile models"):
        model_info("zzzzzzzz")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("squeezenet1_1", lambda: torch.nn.Identity(), family="squeezenet")


def test_overrides_replace_variant_arguments() -> None:
    model = get_model("squeezenet1_1", num_classes=10)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 10)


def test_weights_round_trip(tmp_path: Path) -> None:
    source = get_model("shufflenet_v2_x0_5", seed=3)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = get_model("shufflenet_v2_x0_5", seed=4, weights=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_weights_nested_under_state_dict_load(tmp_path: Path) -> None:
    source = get_model("squeezenet1_1", seed=3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 7}, path)
    loaded = get_model("squeezenet1_1", weights=str(path))
    assert torch.equal(
        loaded.state_dict()["classifier.1.weight"], source.state_dict()["classifier.1.weight"]
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"not a checkpoint", "cannot read weights"),
        ("other_model", "does not fit"),
    ],
)
def test_bad_weights_are_one_line_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "weights.pt"
    if content == "other_model":
        torch.save(get_model("squeezenet1_0").state_dict(), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(EdgecompileError, match=message) as caught:
        get_model("squeezenet1_1", weights=str(path))
    assert "\n" not in str(caught.value)


def _zoo_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {name for name in modules if name.startswith("edgecompile.zoo")}


def test_families_share_blocks_only_through_layers() -> None:
    # One file per family; a block two families use lives in layers.py, so no family imports
    # another; registry.py imports only the leaves it looks names up in (catalog.py, names.py),
    # which, like layers.py, import no zoo module (no import cycles).
    zoo_dir = Path(edgecompile.zoo.__file__).parent
    for path in sorted(zoo_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        if path.name in ("layers.py", "catalog.py", "names.py"):
            allowed: set[str] = set()
        elif path.name == "registry.py":
            allowed = {"edgecompile.zoo.catalog", "edgecompile.zoo.names"}
        else:
            allowed = {"edgecompile.zoo.layers", "edgecompile.zoo.registry"}
        extra = _zoo_imports(path) - allowed
        assert not extra, f"{path.name} imports {sorted(extra)}"
