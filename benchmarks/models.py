"""Whole zoo models, untuned: TVM with our schedules vs TVM's default lowering vs ONNX Runtime vs
torch, at 1 and 2 threads, with each engine's ratio to ONNX Runtime and the geomean.

    /work/venv/bin/python benchmarks/models.py                       # the issue's seven models
    /work/venv/bin/python benchmarks/models.py --models shufflenet_v1 --threads 1 --no-default
    /work/venv/bin/python benchmarks/models.py --rounds 5 --repeat 30

A script, not a test: numbers depend on the machine and its load. Every model is built once per
variant (``edgecompile.build``, which also verifies it against ONNX Runtime), then measured
with ``edgecompile.benchmarking.bench_local`` (TVM's default build as one of its
``extra_artifacts``):
all engines of one thread count run in one fresh process on the same seeded input, after their
outputs are checked to agree. A ratio is always
taken within one such process (engine median / ORT median), so load from other processes
hits both sides of it; ``--rounds`` repeats that and prints the median ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The bar: geomean <= 1.0x ORT over these at 1 thread (<= 1.2x at 2), none above 1.3x.
MODELS = (
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "shufflenet_v1",
    "shufflenet_v2",
    "squeezenet1_1",
    "mnasnet_a1",
)
OURS = "ours"
DEFAULT = "tvm-default"


@dataclass
class Measurement:
    """Per (model, threads): median latency (ms) and ratio to ORT of each engine over rounds."""

    milliseconds: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def add(self, engine: str, median_ms: float, ratio: float | None) -> None:
        self.milliseconds.setdefault(engine, []).append(median_ms)
        if ratio is not None:
            self.ratios.setdefault(engine, []).append(ratio)

    def median_ms(self, engine: str) -> float | None:
        values = self.milliseconds.get(engine)
        return statistics.median(values) if values else None

    def ratio(self, engine: str) -> float | None:
        values = self.ratios.get(engine)
        return statistics.median(values) if values else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per engine and round")
    parser.add_argument("--rounds", type=int, default=3, help="bench rounds; medians printed")
    parser.add_argument("--no-default", action="store_true", help="skip TVM's (slow) default")
    parser.add_argument("--no-torch", action="store_true", help="skip torch eager")
    parser.add_argument("--build-dir", help="keep the built artifacts here (default: temporary)")
    return parser.parse_args(argv)


def build_variants(
    name: str, variants: Sequence[str], output_dir: Path
) -> dict[str, tuple[Path, float]]:
    """Each variant's host artifact of ``name`` and its build time in seconds."""
    from edgecompile.builder import build

    built = {}
    for variant in variants:
        start = time.perf_counter()
        result = build(
            name,
            "host",
            output_dir=output_dir / variant,
            custom_schedules=variant == OURS,
            records=False,  # untuned: never the records in the user's cache
        )
        seconds = time.perf_counter() - start
        status = result.artifact.manifest.verification["status"]
        print(
            f"  built {name} ({variant}) in {seconds:.0f} s, verification {status}",
            file=sys.stderr,
            flush=True,
        )
        built[variant] = (result.artifact.directory, seconds)
    return built


def measure(
    artifacts: dict[str, tuple[Path, float]],
    threads: Sequence[int],
    args: argparse.Namespace,
) -> dict[int, Measurement]:
    """``--rounds`` rounds of bench_local: every variant, ORT and torch timed in the same
    process per thread count (the other variants as ``extra_artifacts``)."""
    from edgecompile.benchmarking import bench_local

    compare = ("ort",) if args.no_torch else ("ort", "torch")
    results = {count: Measurement() for count in threads}
    (main_directory, _), *_ = artifacts.values()
    extra = {variant: str(directory) for variant, (directory, _) in artifacts.items()}
    extra.pop(OURS)
    for _ in range(args.rounds):
        report = bench_local(
            str(main_directory),
            compare=compare,
            threads=threads,
            repeat=args.repeat,
            extra_artifacts=extra,
        )
        for timing in report.timings:
            engine = OURS if timing.engine == "tvm" else timing.engine
            results[timing.threads].add(engine, timing.median_ms, timing.ratio_to_ort)
    return results


def geomean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from edgecompile._table import format_table
    from edgecompile.benchmarking import parse_list
    from edgecompile.targets import resolve_target

    threads = parse_list(args.threads, int)
    variants = [OURS] if args.no_default else [OURS, DEFAULT]
    engines = [*variants, "ort", *([] if args.no_torch else ["torch"])]
    target = resolve_target("host").tvm_target()
    print(
        f"host {target.attrs.get('mcpu')}, load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} cores; {args.rounds} round(s) × {args.repeat} runs, medians"
    )
    table: dict[tuple[str, int], Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-models-") as scratch:
        output_dir = Path(args.build_dir or scratch)
        for name in parse_list(args.models):
            artifacts = build_variants(name, variants, output_dir)
            for count, measurement in measure(artifacts, threads, args).items():
                table[(name, count)] = measurement
    for count in threads:
        print(f"\n{count} thread(s): median ms (ratio to ONNX Runtime)")
        rows = []
        for name in parse_list(args.models):
            measurement = table[(name, count)]
            row = [name]
            for engine in engines:
                ratio = "" if engine == "ort" else f" ({cell(measurement.ratio(engine))})"
                row.append(f"{cell(measurement.median_ms(engine), 2)}{ratio}")
            rows.append(row)
        means = ["geomean ratio"]
        for engine in engines:
            ratios = [table[(name, count)].ratio(engine) for name in parse_list(args.models)]
            known = [r for r in ratios if r is not None]
            means.append(cell(geomean(known)) if engine != "ort" and known else "1.00")
        rows.append(means)
        print(format_table(["model", *engines], rows))


if __name__ == "__main__":
    main()
