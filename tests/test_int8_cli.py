"""int8 from the user's side: ``build --int8`` (quantize, then build, in one command, beside the
fp32 build), ``--explain``'s int8 column, the ``tvm-int8`` bench engine beside ``ort-int8``, the
rpi4/rpi5 int8 libraries, and one ``Error:`` line for each mistake, made before torch or TVM load.

Cheap: the small classifier of ``test_quantize`` (two 3×3 convs, a pool, a Gemm; 32×32 input),
built once for the module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgecompile.artifact import load_artifact
from edgecompile.cli import cli

from .test_quantize import write_classifier, write_images

#: What the int8 build of the classifier must keep against ORT on the same QDQ model.
MAX_STEPS = 2.0


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier(tmp_path_factory.mktemp("int8-model") / "classifier.onnx")


@pytest.fixture(scope="module")
def built(classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``build --int8 --explain`` into a folder that already holds the fp32 build."""
    out = tmp_path_factory.mktemp("int8-build")
    runner = CliRunner()
    fp32 = runner.invoke(cli, ["build", str(classifier), "-o", str(out)], catch_exceptions=False)
    assert fp32.exit_code == 0, fp32.output
    result = runner.invoke(
        cli,
        ["build", str(classifier), "--int8", "--explain", "-o", str(out)],
        catch_exceptions=False,
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_build_int8_writes_its_own_folder_beside_the_fp32_build(built: tuple[Path, str]) -> None:
    out, _ = built
    fp32 = load_artifact(out / "classifier-host")
    int8 = load_artifact(out / "classifier-int8-host")
    assert "max_output_steps" not in fp32.manifest.verification  # the fp32 build is intact
    assert "int8" not in fp32.manifest.extra
    assert int8.manifest.model == "classifier"
    assert int8.library.name == "classifier.so"
    # Checked against ORT running the same QDQ model, in output steps.
    assert int8.manifest.verification["status"] == "passed"
    assert int8.manifest.verification["max_output_steps"] <= MAX_STEPS
    # The QDQ model that was compiled is kept beside the library.
    qdq = onnx.load(str(int8.directory / int8.manifest.extra["int8"]["onnx"]))
    ops = {node.op_type for node in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_build_int8_prints_and_keeps_the_accuracy_report(built: tuple[Path, str]) -> None:
    out, printed = built
    accuracy = load_artifact(out / "classifier-int8-host").manifest.extra["int8"]["accuracy"]
    calibration, held_out = accuracy["calibration"], accuracy["held_out"]
    assert calibration["images"] > 0 and held_out["images"] > 0
    assert not set(calibration["files"]) & set(held_out["files"])
    assert held_out["sqnr_db"] > 10
    lines = printed.splitlines()
    row = next(line for line in lines if line.startswith("held-out"))
    # The printed SQNR is the manifest's.
    assert f"{held_out['sqnr_db']:.1f}" in row.split()
    assert any(line.startswith("verified against ONNX Runtime:") for line in lines)


def test_explain_of_an_int8_build_says_int8_or_why_fp32(built: tuple[Path, str]) -> None:
    out, printed = built
    records = load_artifact(out / "classifier-int8-host").manifest.schedules
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    assert " int8 " in header
    convs = [r for r in records if r["op"] == "conv2d"]
    assert convs and all(r.get("int8") for r in convs)  # both convs fold
    rows = {line.split()[0]: line for line in lines if line.strip()[:1].isdigit()}
    for record in records:  # each row says what the manifest says of its op
        row = rows[str(record["index"])]
        if record.get("int8"):  # "int8" as a cell of its own, not in a kernel's name
            assert re.search(r"\sint8(\s|$)", row) and "fp32:" not in row
        else:
            assert f"fp32: {record.get('int8_fallback', 'no int8 kernel for')}" in row
    folded = sum(1 for r in records if r.get("int8"))
    summary = next(line for line in lines if line.endswith("in fp32"))
    assert f"; {folded} in int8, {len(records) - folded} in fp32" in summary


def test_explain_column_names_the_reason_a_conv_stayed_fp32() -> None:
    from edgecompile.explain import format_explain
    from edgecompile.schedules.pipeline import PIPELINE_FAILED

    records = [
        {"index": 0, "op": "conv2d", "kind": "conv", "schedule": "edgecompile.x", "int8": True},
        {
            "index": 1,
            "op": "conv2d",
            "kind": "pointwise",
            "schedule": "edgecompile.pointwise",
            "int8_fallback": "its weight is uint8, not int8",
        },
    ]
    text = format_explain(records)
    assert "fp32: its weight is uint8, not int8" in text
    assert text.endswith("; 1 in int8, 1 in fp32")
    # An fp32 build has no int8 column.
    plain = [{k: v for k, v in records[1].items() if k != "int8_fallback"}]
    assert "int8" not in format_explain(plain)
    # An int8 build TVM's lowering built whole (our pipeline failed) has no verdicts per op,
    # but the manifest knows it is int8: each op is fp32, and says why.
    failed = [{**plain[0], "schedule": "tvm-default", "fallback": f"{PIPELINE_FAILED}: boom"}]
    assert f"fp32: {PIPELINE_FAILED} (see fallback)" in format_explain(failed, int8=True)


def test_bench_times_tvm_int8_beside_ort_int8(classifier: Path, tmp_path: Path) -> None:
    from edgecompile.benchmarking import bench_local

    report = bench_local(
        str(classifier),
        compare=["tvm-int8", "ort", "ort-int8"],
        repeat=2,
        warmup=1,
        isolate=False,
        output_dir=tmp_path,
        history=False,
    )
    assert report.engines == ["tvm", "tvm-int8", "ort", "ort-int8"]
    errors = {t.engine: t.max_relative_error for t in report.timings}
    # Held to the int8 check (SQNR), not the float tolerance its quantization cannot meet...
    assert errors["tvm-int8"] > 1e-4
    # ...and the same QDQ model as ort-int8's: the two int8 engines' outputs nearly agree.
    assert errors["tvm-int8"] == pytest.approx(errors["ort-int8"], rel=0.05)
    assert all(t.median_ms > 0 for t in report.timings)


def test_bench_reuses_a_build_int8_of_the_zoo_model_only_if_it_matches(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    """``build MODEL --int8`` then ``bench MODEL --compare tvm-int8``: the build is reused when
    it is the one the engine would make (default calibration), and never as the fp32 build."""
    import shutil

    from edgecompile.benchmarking.local import existing_build

    out, _ = built
    build_dir = tmp_path / "build"
    folder = build_dir / "squeezenet1_1-int8-host"
    shutil.copytree(out / "classifier-int8-host", folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # Disguised as the zoo model built at 32x32 with seeded weights, as bench builds it.
    manifest.update(model="squeezenet1_1", weights="seeded random weights (seed 0)")
    manifest["inputs"][0]["shape"] = [1, 3, 32, 32]
    manifest_path.write_text(json.dumps(manifest))

    def found(**options: object) -> Path | None:
        artifact = existing_build(
            "squeezenet1_1",
            input_size="32",
            build_dir=build_dir,
            **options,  # type: ignore[arg-type]
        )
        return None if artifact is None else artifact.directory

    assert found(int8=True) == folder
    assert found() is None  # not the fp32 build, whatever it holds
    shutil.copytree(folder, build_dir / "squeezenet1_1-host")
    assert found() is None  # an int8 build in the fp32 build's place is not one
    manifest["extra"]["int8"]["accuracy"]["images_from"] = "5 images in photos"
    manifest_path.write_text(json.dumps(manifest))
    assert found(int8=True) is None  # calibrated on other images than the engine's


def test_bench_refuses_tvm_int8_on_an_int8_build(
    built: tuple[Path, str], cli_error: Callable[[list[str]], str]
) -> None:
    out, _ = built
    line = cli_error(["bench", str(out / "classifier-int8-host"), "--compare", "tvm-int8"])
    assert "int8 build already" in line


def test_report_times_the_int8_engines_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report hands tvm-int8 and ort-int8 to the bench (which builds and checks them)."""
    from edgecompile.benchmarking import local
    from edgecompile.reporting import measure
    from edgecompile.reporting.results import DEFAULT_ENGINES, ENGINES

    asked: list[list[str]] = []

    def fake_bench(source: str, **options: object) -> object:
        asked.append(list(options["compare"]))  # type: ignore[call-overload]
        return type("Report", (), {"timings": []})()

    monkeypatch.setattr(local, "bench_local", fake_bench)
    engines = ["tvm", "tvm-int8", "ort", "ort-int8"]
    measure._bench_model("a", engines=engines, threads=[1], repeat=1, warmup=0, seed=0, workers={})
    assert asked == [["tvm-int8", "ort", "ort-int8"]]
    assert {"tvm-int8", "ort-int8"} <= set(ENGINES)
    assert not {"tvm-int8", "ort-int8"} & set(DEFAULT_ENGINES)  # a report asks for them


@pytest.mark.parametrize("board", ["rpi4", "rpi5"])
def test_int8_libraries_compile_for_the_boards(
    board: str, classifier: Path, tmp_path: Path
) -> None:
    from edgecompile.builder import build

    artifact = build(str(classifier), board, output_dir=tmp_path, int8=True).artifact
    assert artifact.directory.name == f"classifier-int8-{board}"
    assert artifact.manifest.arch == "aarch64"
    assert any(record.get("int8") for record in artifact.manifest.schedules)


def test_a_failed_int8_build_keeps_the_quantized_model(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration is the slow part: a build that fails after it leaves the QDQ model and its
    accuracy report in the output folder and says how to rebuild from them."""
    import edgecompile.builder as builder
    from edgecompile.errors import EdgecompileError

    def failing_compile(*args: object, **kwargs: object) -> None:
        raise EdgecompileError("the compile failed", "report it")

    monkeypatch.setattr(builder, "_compile", failing_compile)
    with pytest.raises(EdgecompileError) as failure:
        builder.build(str(classifier), "host", output_dir=tmp_path, int8=True)
    kept = tmp_path / "classifier.int8.onnx"
    assert failure.value.fix == f"report it; the quantized model is kept: edgecompile build {kept}"
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(kept)).graph.node)
    report = json.loads((tmp_path / "classifier.int8.accuracy.json").read_text())
    assert report["path"] == str(kept) and "held_out" in report["accuracy"]
    assert not (tmp_path / "classifier-int8-host").exists()


# --------------------------------------------------------------------------------------------
# Mistakes: one line, exit 2, before torch or TVM load.

_ERRORS_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from edgecompile.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exited:
                code = exited.code
        results.append([code, err.getvalue()])
    heavy = sorted({"torch", "tvm", "onnxruntime"} & set(sys.modules))
    print(json.dumps({"results": results, "heavy": heavy}))
    """
)


def test_int8_mistakes_are_one_line_before_torch_or_tvm_load(
    classifier: Path, tmp_path: Path
) -> None:
    quantized = tmp_path / "classifier.int8.onnx"
    from edgecompile.quantization import quantize

    quantize(str(classifier), output=quantized)
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    write_images(broken, 3)
    (broken / "img01.png").write_bytes(b"not a png")
    out = str(tmp_path / "out")
    cases = {
        "already quantized": ["build", str(quantized), "--int8", "-o", out],
        "no JPEG or PNG images": [
            "build", "mobilenet_v2", "--int8", "--calibration", str(empty), "-o", out,
        ],
        "cannot decode calibration image": [
            "build", "mobilenet_v2", "--int8", "--calibration", str(broken), "-o", out,
        ],
        "--calibration is for int8 builds": [
            "build", "mobilenet_v2", "--calibration", str(broken), "-o", out,
        ],
    }  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", _ERRORS_SCRIPT, json.dumps(list(cases.values()))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    for (expected, argv), (code, stderr) in zip(cases.items(), answer["results"], strict=True):
        lines = stderr.strip().splitlines()
        assert code == 2, (argv, stderr)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], stderr
    assert answer["heavy"] == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_quantize_refuses_an_already_quantized_model(
    classifier: Path, tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    quantized = tmp_path / "c.int8.onnx"
    from edgecompile.quantization import quantize

    quantize(str(classifier), output=quantized)
    line = cli_error(["quantize", str(quantized), "-o", str(tmp_path / "again.onnx")])
    assert "already quantized" in line and "edgecompile build" in line


# --------------------------------------------------------------------------------------------
# On the emulated board (slow): the rpi4 and rpi5 int8 libraries match ORT's QDQ result.


@pytest.mark.slow
@pytest.mark.parametrize("model", ["classifier", "mobilenet_v2"])
@pytest.mark.parametrize(("board", "cpu"), [("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")])
def test_int8_library_matches_ort_on_the_emulated_board(
    model: str, board: str, cpu: str, classifier: Path, rootfs: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from edgecompile.builder import build
    from edgecompile.device import emulator
    from edgecompile.export import example_input
    from edgecompile.importer import import_onnx
    from edgecompile.schedules.int8 import VERIFY_STEPS, output_steps

    source = str(classifier) if model == "classifier" else model
    artifact = build(source, board, output_dir=tmp_path, int8=True).artifact
    qdq = artifact.directory / artifact.manifest.extra["int8"]["onnx"]
    spec = artifact.manifest.inputs[0]
    data = example_input(spec["shape"], seed=7).astype(np.float32)
    (board_output,) = emulator.run_library_in_rootfs(
        rootfs, artifact.library, {spec["name"]: data}, cpu=cpu, timeout=900
    )
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    expected = session.run(None, {spec["name"]: data})[0]
    step = max(output_steps(import_onnx(qdq, name="qdq")[0].module) or [0.0])
    assert step > 0
    assert board_output.shape == expected.shape
    assert float(np.abs(board_output - expected).max()) / step <= VERIFY_STEPS
