"""``edgecompile quantize``: a static int8 QDQ ONNX model that ONNX Runtime runs and that agrees
with fp32, calibrated on a user's folder or the default photographs (never the held-out ones),
its accuracy report beside it; and one ``Error:`` line for each mistake.

Cheap: small ONNX graphs made with onnx.helper (no torch export), 32x32 inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.cli import main
from edgecompile.quantization.accuracy import compare_outputs
from edgecompile.quantization.images import (
    HELD_OUT_EVERY,
    Preprocessing,
    default_image_sets,
    folder_image_sets,
    load_batches,
)

SIZE = 32
#: Random weights, min/max calibration on a handful of images: int8 keeps well over this.
MIN_SQNR_DB = 15.0


def write_classifier(path: Path, *, batch: int = 1) -> Path:
    """conv 3→8 → relu → conv 8→16 (stride 2) → relu → global pool → flatten → gemm 16→10."""
    rng = np.random.default_rng(1)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        values = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(values.astype(np.float32), name)

    initializers = [
        weight("w1", 8, 3, 3, 3),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
        weight("w2", 16, 8, 3, 3),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.3).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, count: int) -> list[Path]:
    """``count`` PNG photos-to-be (smooth random colour fields, different sizes)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    paths = []
    for index in range(count):
        small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((40 + 7 * index, 36 + 5 * index))
        path = folder / f"img{index:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def run_ort(path: Path, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": data})[0]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The classifier quantized once by the command (default photographs, --json)."""
    folder = tmp_path_factory.mktemp("quantize")
    model = write_classifier(folder / "classifier.onnx")
    output = folder / "out" / "classifier.int8.onnx"
    return model, output, _run_json(["quantize", str(model), "-o", str(output), "--json"])


def _run_json(argv: list[str]) -> str:
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(argv)
    return stdout.getvalue()


def test_quantized_model_is_qdq_runs_in_ort_and_agrees_with_fp32(
    quantized: tuple[Path, Path, str],
) -> None:
    model, output, printed = quantized
    proto = onnx.load(str(output))
    ops = [node.op_type for node in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Weights: int8, one scale per output channel, zero point 0 (symmetric).
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    weight_dq = [
        node
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
        and initializers.get(node.input[0], np.zeros(0)).ndim == 4
    ]
    assert len(weight_dq) == 2
    for node in weight_dq:
        values, scale, zero = (initializers[name] for name in node.input)
        assert values.dtype == np.int8
        assert scale.shape == (values.shape[0],)
        assert not np.any(zero)
    # Activations: uint8 (u8 x s8, ORT's fast int8 kernels on x86), one scale per tensor.
    activations = [node for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    assert activations
    for node in activations:
        assert initializers[node.input[1]].size == 1
        assert initializers[node.input[2]].dtype == np.uint8

    data = np.random.default_rng(3).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    agreement = compare_outputs(run_ort(model, data), run_ort(output, data))
    assert agreement.sqnr_db >= MIN_SQNR_DB

    payload = json.loads(printed)
    report = json.loads(Path(payload["report"]).read_text())
    assert Path(payload["report"]) == output.with_name("classifier.int8.accuracy.json")
    assert report == payload
    assert payload["quantized_ops"] == {"Conv": 2, "Gemm": 1}
    # an ONNX file's images: its own input size, ImageNet's mean and std
    assert payload["preprocessing"] == {
        "height": SIZE,
        "width": SIZE,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    for part in ("calibration", "held_out"):
        numbers = payload["accuracy"][part]
        assert numbers["images"] == len(numbers["files"]) > 0
        assert numbers["sqnr_db"] >= MIN_SQNR_DB
        assert 0.99 <= numbers["cosine_similarity"] <= 1.0
        assert 0.0 <= numbers["top1_agreement"] <= 1.0
    calibration = payload["accuracy"]["calibration"]["files"]
    held_out = payload["accuracy"]["held_out"]["files"]
    assert calibration and held_out and not set(calibration) & set(held_out)


def test_calibration_with_a_user_folder_holds_out_a_fifth(tmp_path: Path) -> None:
    from edgecompile import quantize

    images = write_images(tmp_path / "photos", 2 * HELD_OUT_EVERY)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")  # ignored
    model = write_classifier(tmp_path / "classifier.onnx", batch=2)  # batches of 2 too
    result = quantize(str(model), calibration=tmp_path / "photos", output=tmp_path / "q.onnx")
    report = result.accuracy
    assert report.images_from == f"{len(images)} images in {tmp_path / 'photos'}"
    assert report.held_out_images == ("img04.png", "img09.png")
    assert set(report.calibration_images) == {p.name for p in images} - {"img04.png", "img09.png"}
    assert report.calibration.images == 8 and report.held_out.images == 2
    assert report.held_out.sqnr_db >= MIN_SQNR_DB
    assert result.report_path.is_file() and result.path.is_file()


def test_calibration_and_held_out_sets_never_share_an_image(tmp_path: Path) -> None:
    default = default_image_sets()
    assert default.calibration and default.held_out
    assert not set(default.calibration) & set(default.held_out)
    assert all(path.is_file() for path in (*default.calibration, *default.held_out))
    for count in range(1, 13):
        folder = tmp_path / f"n{count}"
        write_images(folder, count)
        sets = folder_image_sets(folder)
        assert sets.calibration, count
        assert sets.held_out, count
        assert not set(sets.calibration) & set(sets.held_out), count
        in_folder = [path for path in sets.calibration + sets.held_out if path.parent == folder]
        assert len(in_folder) == count  # every image of the folder used once


def test_images_become_normalized_batches_of_the_models_batch() -> None:
    paths = default_image_sets().held_out[:3]
    batches = load_batches(paths, Preprocessing(24, 40), batch=2)
    assert [batch.shape for batch in batches] == [(2, 3, 24, 40)] * 2
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[1][1], batches[0][0])  # filled up from the start
    # ImageNet-normalized: within (0 - mean) / std .. (1 - mean) / std, dark pixels below 0
    low, high = float(np.min(batches[0])), float(np.max(batches[0]))
    assert -2.12 <= low < -1.0 and 1.0 < high <= 2.65
    # Keras' Xception scales pixels to [-1, 1]; the other families take ImageNet's statistics
    from edgecompile.zoo import model_info

    xception = Preprocessing.for_family(model_info("xception").family, 24, 40)
    (batch,) = load_batches(paths[:1], xception, batch=1)
    assert -1.0 <= float(np.min(batch)) < -0.5 and 0.5 < float(np.max(batch)) <= 1.0
    assert Preprocessing.for_family(model_info("mobilenet_v2").family, 24, 40).mean == (
        0.485,
        0.456,
        0.406,
    )


def test_compare_outputs_measures_sqnr_cosine_and_top1() -> None:
    reference = np.random.default_rng(4).standard_normal((6, 10))
    exact = compare_outputs(reference, reference.copy())
    assert exact.sqnr_db == math.inf and exact.top1_agreement == 1.0
    assert exact.to_dict()["sqnr_db"] is None and exact.to_dict()["exact"]
    noisy = compare_outputs(reference, reference * 1.1)  # noise = 0.1 x signal: 20 dB
    assert noisy.sqnr_db == pytest.approx(20.0)
    assert noisy.cosine_similarity == pytest.approx(1.0)
    assert noisy.top1_agreement == 1.0
    flipped = compare_outputs(reference, -reference)
    assert flipped.cosine_similarity == pytest.approx(-1.0)
    assert flipped.top1_agreement < 1.0
    # a segmentation output: agreement per pixel
    masks = np.zeros((1, 2, 2, 2))
    masks[0, 0] = 1.0
    other = masks.copy()
    other[0, 1, 0, 0] = 2.0
    assert compare_outputs(masks, other).top1_agreement == 0.75
    # quantized logits tied at the top: a tie of 4 holding the fp32 class counts 1/4
    logits = np.array([[0.30, 0.31, 0.32, 0.29, 0.0], [0.1, 0.9, 0.0, 0.0, 0.0]])
    tied = np.array([[0.3, 0.3, 0.3, 0.3, 0.0], [0.1, 0.9, 0.0, 0.0, 0.0]])
    assert compare_outputs(logits, tied).top1_agreement == pytest.approx((0.25 + 1.0) / 2)


def test_no_images_in_the_folder_is_one_line(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    line = cli_error(["quantize", "x.onnx", "--calibration", str(tmp_path / "empty")])
    assert "no JPEG or PNG images" in line


def test_an_image_that_does_not_decode_is_one_line(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    model = write_classifier(tmp_path / "classifier.onnx")
    line = cli_error(["quantize", str(model), "--calibration", str(tmp_path / "photos")])
    assert "cannot decode calibration image" in line and "broken.jpg" in line
    assert not (tmp_path / "classifier.int8.onnx").exists()


def test_a_model_with_no_quantizable_op_is_one_line(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    nodes = [
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "weightless",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    path = tmp_path / "weightless.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    line = cli_error(["quantize", str(path), "-o", str(tmp_path / "w.int8.onnx")])
    assert "no op to quantize" in line
    assert not (tmp_path / "w.int8.onnx").exists()


def test_an_unwritable_output_is_one_line_before_any_work(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # The model does not exist: the -o check comes first, before the model is read.
    line = cli_error(["quantize", "missing.onnx", "-o", str(blocker / "q.onnx")])
    assert "cannot write -o" in line
    line = cli_error(["quantize", "missing.onnx", "-o", str(tmp_path)])
    assert "is a folder" in line


def test_bench_engine_ort_int8_runs_the_quantized_model(tmp_path: Path) -> None:
    from edgecompile.benchmarking.engines import check_agreement, make_runners

    model = write_classifier(tmp_path / "classifier.onnx")
    spec = {
        "engines": ["ort", "ort-int8"],
        "libraries": {},
        "onnx": str(model),
        "torch": None,
        "scratch": str(tmp_path),
    }
    runners = make_runners(spec, threads=1)
    assert list(runners) == ["ort", "ort-int8"]
    assert (tmp_path / "classifier.int8.onnx").is_file()  # quantized once, in the scratch
    data = [np.random.default_rng(5).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)]
    outputs = {engine: run(data) for engine, run in runners.items()}
    assert not np.array_equal(outputs["ort"][0], outputs["ort-int8"][0])  # int8, not fp32
    reference, errors = check_agreement(outputs)
    assert reference == "ort" and errors["ort-int8"] > 1e-4  # past fp32's tolerance, accepted


def test_bench_refuses_an_int8_engine_far_from_fp32() -> None:
    from edgecompile.benchmarking.engines import check_agreement
    from edgecompile.errors import EdgecompileError

    expected = np.random.default_rng(6).standard_normal((1, 10)).astype(np.float32)
    close = expected + 0.01 * np.random.default_rng(7).standard_normal((1, 10)).astype(np.float32)
    check_agreement({"ort": [expected], "ort-int8": [close]})
    with pytest.raises(EdgecompileError, match="ort-int8 disagrees with ort: SQNR"):
        check_agreement({"ort": [expected], "ort-int8": [np.flip(expected, axis=1).copy()]})
