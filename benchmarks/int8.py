"""int8 builds vs fp32 and ONNX Runtime (issue #18): per model, our fp32 build, our int8 build
of the QDQ model ``edgecompile quantize`` writes, ORT on that QDQ model and ORT on the fp32 one,
all at 1 thread, timed interleaved in this one process.

    /work/main/.venv/bin/python benchmarks/int8.py                    # the issue's five models
    /work/main/.venv/bin/python benchmarks/int8.py --models mobilenet_v2 --rounds 3
    /work/main/.venv/bin/python benchmarks/int8.py --quantized /tmp/q  # reuse <model>.int8.onnx
    /work/main/.venv/bin/python benchmarks/int8.py --target x86-64-v3  # AVX2, no VNNI

A script, not a test: numbers depend on the machine and its load. Each round times every
engine in rows of 5 calls after 0.1 s of settling (``benchmarking.timing.time_interleaved``),
``--repeat`` calls each, so load from other processes hits all of them; the table shows the
median over rounds and the two ratios the issue sets bars for (int8 ≤ 0.5× our fp32, ≤ 1.0×
ORT int8, geomean). ``--target``: a preset this machine runs (``x86-64-v3``: our kernels for
AVX2 without VNNI); ORT picks its kernels from the machine whatever the target.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# TVM's thread pool reads this when it first starts: one thread, like ORT's sessions.
os.environ["TVM_NUM_THREADS"] = "1"

MODELS = ("mobilenet_v2", "mobilenet_v1", "shufflenet_v2", "squeezenet1_1", "mnasnet_a1")
ENGINES = ("ours-fp32", "ours-int8", "ort-int8", "ort-fp32")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median shown)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per engine and round")
    parser.add_argument("--quantized", help="folder of <model>.int8.onnx to reuse (else made)")
    parser.add_argument("--build-dir", help="keep the builds here (default: temporary)")
    parser.add_argument("--target", default="host", help="the preset both builds are for")
    return parser.parse_args(argv)


def engines_for(
    name: str, folder: Path, quantized: Path, target: str = "host"
) -> tuple[dict[str, Callable], Any]:
    """Build both variants of ``name``; one zero-argument runner per engine on one input."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgecompile import build, quantize

    int8_onnx = quantized / f"{name}.int8.onnx"
    if not int8_onnx.exists():
        quantize(name, output=int8_onnx)
    fp32 = build(name, target, output_dir=folder, keep_onnx=True)
    # Verified below, on the same input as the timing: a model whose fp32 glue puts it past
    # the build's 2-step check still gets its row, with its steps.
    int8 = build(str(int8_onnx), target, output_dir=folder, verify=False)
    fp32_onnx = next(fp32.artifact.directory.glob("*.onnx"))
    shape = [int(d.dim_value) for d in _onnx_input(fp32_onnx).type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def tvm_runner(artifact: Any) -> Callable:
        library = tvm.runtime.load_module(str(artifact.library))
        machine = relax.VirtualMachine(library, tvm.cpu())
        data = tvm.runtime.tensor(x)
        return lambda: machine["main"](data)

    def ort_runner(path: Path) -> Callable:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)

    runners = {
        "ours-fp32": tvm_runner(fp32.artifact),
        "ours-int8": tvm_runner(int8.artifact),
        "ort-int8": ort_runner(int8_onnx),
        "ort-fp32": ort_runner(fp32_onnx),
    }
    return runners, _output_steps(runners["ours-int8"](), runners["ort-int8"](), int8_onnx)


def _output_steps(ours: Any, theirs: list[np.ndarray], int8_onnx: Path) -> float | None:
    """Max difference of our int8 output from ORT's, in the output's quantization steps."""
    from edgecompile.importer import import_onnx
    from edgecompile.schedules.int8 import output_steps

    steps = output_steps(import_onnx(int8_onnx, name="model")[0].module)
    if not steps:
        return None
    return float(np.abs(ours.numpy() - theirs[0]).max() / steps[0])


def _onnx_input(path: Path) -> Any:  # an onnx ValueInfoProto
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def measure(runners: dict[str, Callable], rounds: int, repeat: int) -> dict[str, float]:
    """Median ms per engine: each round times every engine's ``repeat`` runs, interleaved in
    rows after settling (:func:`~edgecompile.benchmarking.timing.time_interleaved`)."""
    from edgecompile.benchmarking.timing import time_interleaved

    calls = {engine: (lambda _inputs, run=run: run()) for engine, run in runners.items()}
    samples: dict[str, list[float]] = {engine: [] for engine in runners}
    for round_ in range(rounds):
        seconds = time_interleaved(calls, [], repeat, warmup=3 if round_ == 0 else 0)
        for engine, times in seconds.items():
            samples[engine].append(statistics.median(times) * 1e3)
    return {engine: statistics.median(values) for engine, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.build_dir or scratch)
        quantized = Path(args.quantized or folder)
        quantized.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            runners, steps = engines_for(name, folder, quantized, args.target)
            ms = measure(runners, args.rounds, args.repeat)
            rows.append((name, ms, steps))
            print(_row(name, ms, steps), flush=True)
    print()
    print(_header())
    for name, ms, steps in rows:
        print(_row(name, ms, steps))
    for label, engine in (("int8 / our fp32", "ours-fp32"), ("int8 / ORT int8", "ort-int8")):
        ratios = [ms["ours-int8"] / ms[engine] for _, ms, _ in rows]
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"geomean {label}: {geomean:.2f}x")
    return 0


def _header() -> str:
    columns = " ".join(f"{e:>10}" for e in ENGINES)
    return f"{'model':<15} {columns} {'/fp32':>7} {'/ort8':>7} {'steps':>6}"


def _row(name: str, ms: dict[str, float], steps: float | None) -> str:
    columns = " ".join(f"{ms[e]:>10.3f}" for e in ENGINES)
    to_fp32 = ms["ours-int8"] / ms["ours-fp32"]
    to_ort = ms["ours-int8"] / ms["ort-int8"]
    shown = f"{steps:.1f}" if steps is not None else "-"
    return f"{name:<15} {columns} {to_fp32:>7.2f} {to_ort:>7.2f} {shown:>6}"


if __name__ == "__main__":
    sys.exit(main())
