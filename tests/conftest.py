"""Shared fixtures of the build-half tests (targets, toolchain, importer, builder, runner, CLI).

Builds are the expensive part (a zoo model for the host is ~6 s on two cores), so artifacts are
built once per session through :func:`build_once` and shared by the modules that read them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def write_tiny_onnx(path: Path, *, batch: int | str = 1, size: int = 8) -> Path:
    """A three-op ONNX CNN made with onnx.helper: conv 3→4 (3×3, pad 1) → relu → global pool.

    Cheap to build for any board (well under a second), so the atomic-output and per-board
    link tests use it rather than a zoo model.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 1, 1])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def make_tiny_onnx() -> Callable[..., Path]:
    """:func:`write_tiny_onnx` (test modules cannot import conftest under importlib mode)."""
    return write_tiny_onnx


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def build_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """``build_once(model, target, **options)``: each distinct build runs once per session.

    The builder, runner and CLI tests share artifacts through this (a squeezenet1_1 host build
    is ~6 s; the machine is shared), each in a folder of its own.
    """
    import edgecompile

    cache: dict[tuple, object] = {}

    def build(model: str, target: str = "host", **options: object) -> object:
        key = (model, target, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("artifacts")
            cache[key] = edgecompile.build(model, target, output_dir=out, **options)
        return cache[key]

    return build


@pytest.fixture(autouse=True, scope="session")
def private_bench_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Benches append to a history in the user's cache; the tests' runs must not land there."""
    previous = os.environ.get("EDGECOMPILE_BENCH_HISTORY")
    os.environ["EDGECOMPILE_BENCH_HISTORY"] = str(tmp_path_factory.mktemp("bench") / "h.jsonl")
    yield
    if previous is None:
        os.environ.pop("EDGECOMPILE_BENCH_HISTORY", None)
    else:
        os.environ["EDGECOMPILE_BENCH_HISTORY"] = previous


@pytest.fixture()
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """Run ``edgecompile ARGV``, expect exit 2 after exactly one ``Error:`` line (no traceback)
    and return that line."""
    from edgecompile.cli import main

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), captured.err
        assert "Traceback" not in captured.err + captured.out
        return lines[0]

    return run
