"""One small model of every zoo family through our Relax pipeline at 32×32: no whole-pipeline
failure, no kernel a rule raised on.

Why: a rule that raised on one kernel shape once failed the whole pipeline, so 10 zoo models
quietly fell back to TVM's default lowering (up to 29x ORT), and only a full zoo run noticed.
The pipeline now costs such a bug only its kernels (``report.rule_errors``), which is quieter
still, so this check looks for both. It runs :func:`~edgecompile.schedules.optimize` (layout,
fusion, every rule), not the LLVM build: that is where rules fail, and the build after it is a
few seconds more per model (the builds of the other tests cover it).

Cost: exporting a model through torch's dynamo exporter takes ~3-4 s whatever the input size, so
the default run takes three families with varied graphs (SE blocks and h-swish, channel split
and shuffle, fire modules' concats); the rest run with ``-m slow``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecompile.errors import last_line
from edgecompile.schedules.pipeline import PIPELINE_FAILED, STRICT_RULES_ENV

SIZE = (32, 32)
#: The smallest (fewest multiply-adds) model of each family, or the variant that once broke.
FAMILY_MODELS = {
    "condensenet": "condensenet74_c8_g8",
    "espnet": "espnet",
    "espnet_v2": "espnet_v2_x0_5",
    "mnasnet": "mnasnet_a1_x0_5",  # a1: squeeze-and-excitation blocks (b1 has none)
    "mobilenet_v1": "mobilenet_v1_x0_25_r128",
    "mobilenet_v2": "mobilenet_v2_x0_35",
    "mobilenet_v3": "mobilenet_v3_small_x0_75",
    # g3: 2 and 4 groups (the misaligned blocked concat) are test_blocked_resize's
    "shufflenet_v1": "shufflenet_v1_g3_x0_25",
    "shufflenet_v2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "xception": "xception",
}
#: In the default run (~3-9 s each, ~22 s together); the others are marked slow.
DEFAULT_RUN = frozenset({"squeezenet", "mobilenet_v3", "shufflenet_v2"})


def relax_module(model: str, scratch: Path) -> Any:
    """``model`` at :data:`SIZE` in Relax, as ``build`` imports it (the exporter's own check
    against ONNX Runtime left out: it tests the exporter, not our pipeline)."""
    from edgecompile.export import export_onnx, load_torch_model
    from edgecompile.importer import import_onnx

    onnx_path = scratch / f"{model}.onnx"
    export_onnx(load_torch_model(model, input_size=SIZE), onnx_path, verify=False)
    return import_onnx(onnx_path, name=model)[0].module


def pipeline_problems(module: Any, target: Any) -> list[str]:
    """What our pipeline lost on ``module``: its failure as a whole (the strict mode's
    :class:`~edgecompile.schedules.pipeline.RuleCrashed` too: it names the rule and kernel), or
    each kernel a rule raised on. Empty: every kernel went through our rules as designed."""
    from edgecompile.schedules import optimize

    try:
        _, report = optimize(module, target)
    except Exception as exc:
        return [f"{PIPELINE_FAILED}: {type(exc).__name__}: {last_line(str(exc))}"]
    return [f"{error.kernel}: {error}" for error in report.rule_errors]


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return relax_module(FAMILY_MODELS["squeezenet"], tmp_path_factory.mktemp("onnx"))


def test_every_family_has_a_model_here() -> None:
    from edgecompile.zoo.catalog import builtin_models

    families = {entry.summary.family for entry in builtin_models().values()}
    assert set(FAMILY_MODELS) == families
    assert all(builtin_models()[m].summary.family == f for f, m in FAMILY_MODELS.items())


@pytest.mark.parametrize(
    "family",
    [
        family if family in DEFAULT_RUN else pytest.param(family, marks=pytest.mark.slow)
        for family in FAMILY_MODELS
    ],
)
def test_the_pipeline_schedules_a_small_model_of_each_family(
    family: str, host_target: Any, squeezenet: Any, tmp_path: Path
) -> None:
    model = FAMILY_MODELS[family]
    module = squeezenet if family == "squeezenet" else relax_module(model, tmp_path)
    assert pipeline_problems(module, host_target) == []


@pytest.mark.parametrize("strict", [True, False])
def test_the_check_fails_on_a_rule_that_raises(
    strict: bool, squeezenet: Any, host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecompile.schedules.rules import PoolNCHWc

    if strict:
        monkeypatch.setenv(STRICT_RULES_ENV, "1")
    else:
        monkeypatch.delenv(STRICT_RULES_ENV, raising=False)
    original = PoolNCHWc.try_schedule

    def broken(self: Any, func: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        if original(self, func, target, *args, **kwargs) is not None:
            raise KeyError("injected")
        return None

    monkeypatch.setattr(PoolNCHWc, "try_schedule", broken)
    problems = pipeline_problems(squeezenet, host_target)
    assert problems
    assert all(PoolNCHWc.schedule_name in problem for problem in problems)
    assert strict == any(PIPELINE_FAILED in problem for problem in problems)
