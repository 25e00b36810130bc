"""The zoo report flags a model whose build lost schedules to a failure -- our pipeline failing
as a whole, or a rule raising on some kernels -- loudly: a line at the top of index.md, a column
of its runs table, a CSV column and a terminal line; so do ``bench`` and ``profile``'s notes.
From made-up manifests: no model is built or timed."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgecompile.reporting import builds
from edgecompile.reporting.results import ModelResult, ZooReport
from edgecompile.reporting.tables import format_summary, write_csv, write_index
from edgecompile.schedules.coverage import build_fallback
from edgecompile.schedules.pipeline import PIPELINE_FAILED, RULE_ERRORS_KEY

from .test_report_int8 import zoo

RULE_ERRORS = [
    {"kernel": "fused_pointwise_nchwc_relu1", "rule": "edgecompile.pointwise_nchwc",
     "error": "IndexError: boom", "layer": 2},
    {"kernel": "unpack_nchwc", "rule": "edgecompile.unpack_nchwc",
     "error": "IndexError: boom", "layer": None},
]  # fmt: skip
SCHEDULED = {"index": 0, "op": "conv2d", "kind": "pointwise", "schedule": "edgecompile.x"}


def manifest(schedules: list[dict[str, Any]], extra: dict[str, Any]) -> Any:
    return SimpleNamespace(schedules=schedules, extra=extra, build_seconds=1.0, records=None)


def test_build_fallback_names_a_pipeline_failure_or_the_rule_errors() -> None:
    assert build_fallback([SCHEDULED], {}) is None
    failed = {**SCHEDULED, "schedule": "tvm-default", "fallback": f"{PIPELINE_FAILED}: boom"}
    assert build_fallback([failed], {}) == f"{PIPELINE_FAILED}: boom"
    text = build_fallback([SCHEDULED], {RULE_ERRORS_KEY: RULE_ERRORS})
    assert text is not None and text.startswith("2 kernels fell back")
    assert "fused_pointwise_nchwc_relu1 (layer 2): edgecompile.pointwise_nchwc raised" in text


def test_prepare_model_records_each_builds_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cost = SimpleNamespace(params=1, multiply_adds=2, memory_access=3)
    monkeypatch.setattr(builds, "model_costs", lambda name, size: (cost, []))
    fallen = manifest([SCHEDULED], {RULE_ERRORS_KEY: RULE_ERRORS[:1]})

    def build_host_artifact(name: str, builds_dir: Path, **options: Any) -> Any:
        return SimpleNamespace(directory=tmp_path / name, manifest=fallen), False

    monkeypatch.setattr(builds, "build_host_artifact", build_host_artifact)
    prepared = builds.prepare_model(
        "squeezenet1_1", tmp_path, input_size=(32, 32), seed=0, rebuild=False
    )
    (text,) = prepared.fields["schedule_fallbacks"].values()
    assert list(prepared.fields["schedule_fallbacks"]) == ["tvm"]
    assert text == build_fallback(fallen.schedules, fallen.extra)


@pytest.mark.parametrize("fell_back", [False, True])
def test_a_cached_build_that_fell_back_is_rebuilt(
    fell_back: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tvm

    from edgecompile import __version__
    from edgecompile.builder import artifact_name
    from edgecompile.targets import resolve_target

    preset = resolve_target("host")
    directory = tmp_path / f"{artifact_name('squeezenet1_1')}-{preset.name}"
    directory.mkdir()
    (directory / "m.onnx").write_bytes(b"")
    cached = SimpleNamespace(
        directory=directory,
        manifest=SimpleNamespace(
            model="squeezenet1_1",
            inputs=[{"shape": [1, 3, 32, 32]}],
            weights="seeded random weights (seed 0)",
            target=dict(preset.target),
            tvm_version=str(tvm.__version__),
            edgecompile_version=__version__,
            verification={"status": "skipped"},
            records=None,
            schedules=[SCHEDULED],
            extra={"onnx": "m.onnx", **({RULE_ERRORS_KEY: RULE_ERRORS} if fell_back else {})},
        ),
    )
    rebuilt = SimpleNamespace(artifact="rebuilt")
    monkeypatch.setattr("edgecompile.artifact.load_artifact", lambda path: cached)
    monkeypatch.setattr("edgecompile.builder.build", lambda *args, **kwargs: rebuilt)
    artifact, reused = builds.build_host_artifact(
        "squeezenet1_1", tmp_path, input_size=(32, 32), seed=0, rebuild=False
    )
    assert (artifact, reused) == (("rebuilt", False) if fell_back else (cached, True))


def _report(folder: Path, models: list[ModelResult]) -> ZooReport:
    return zoo(folder, models, engines=("tvm", "ort"), threads=(1,))


def test_the_report_flags_a_fallen_back_build_at_the_top_and_in_its_row(tmp_path: Path) -> None:
    fallback = build_fallback([SCHEDULED], {RULE_ERRORS_KEY: RULE_ERRORS})
    assert fallback is not None
    models = [
        ModelResult(model="good", family="f", input_size=(32, 32)),
        ModelResult(
            model="fell", family="f", input_size=(32, 32), schedule_fallbacks={"tvm": fallback}
        ),
    ]
    report = _report(tmp_path, models)
    write_index(Path(report.index), report)
    index = Path(report.index).read_text().splitlines()
    # Above the machine line and every number: the report's first paragraph.
    assert index[2].startswith("**Warning: 1 model(s) built with schedule fallbacks**")
    assert index[4] == f"- fell (tvm): {fallback}"
    header = next(line for line in index if line.startswith("| model | status"))
    column = header.split(" | ").index("schedule fallback")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in index if line.startswith("| ")}
    assert rows["| fell"][column] == f"tvm: {fallback}".replace("|", "\\|")
    assert rows["| good"][column] == "-"

    write_csv(Path(report.results_csv), models, ["tvm", "ort"], [1])
    with open(report.results_csv) as handle:
        flagged = {
            (r["model"], r["engine"]): r["schedule_fallback"] for r in csv.DictReader(handle)
        }
    assert flagged == {
        ("good", "tvm"): "", ("good", "ort"): "", ("fell", "tvm"): fallback, ("fell", "ort"): "",
    }  # fmt: skip
    assert f"SCHEDULE FALLBACK fell (tvm): {fallback}" in format_summary(report).splitlines()


def test_a_report_without_fallbacks_has_no_warning(tmp_path: Path) -> None:
    report = _report(tmp_path, [ModelResult(model="good", family="f", input_size=(32, 32))])
    write_index(Path(report.index), report)
    assert "schedule fallbacks" not in Path(report.index).read_text()
    assert "SCHEDULE FALLBACK" not in format_summary(report)


def test_bench_and_profile_notes_name_the_fallback() -> None:
    from edgecompile.benchmarking.local import note_fallback

    notes: list[str] = []
    note_fallback(notes, "tvm", SimpleNamespace(manifest=manifest([SCHEDULED], {})))
    assert notes == []
    failed = {**SCHEDULED, "schedule": "tvm-default", "fallback": f"{PIPELINE_FAILED}: boom"}
    note_fallback(notes, "tvm-tuned", SimpleNamespace(manifest=manifest([failed], {})))
    (note,) = notes
    assert note.startswith("tvm-tuned: its build lost schedules to a failure")
    assert f"{PIPELINE_FAILED}: boom" in note
