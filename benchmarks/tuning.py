"""Latency vs tuning time: MetaSchedule on this machine, from our hand schedules onwards.

    /work/venv/bin/python benchmarks/tuning.py                         # mobilenet_v2, shufflenet_v2
    /work/venv/bin/python benchmarks/tuning.py --models shufflenet_v1 --budget 30m --step 64
    /work/venv/bin/python benchmarks/tuning.py --threads 2 --plot tuning.png
    /work/venv/bin/python benchmarks/tuning.py --models mobilenet_v2 --target x86-64-v2 \
        --budget 5m --once                                             # one tune, one point

A script, not a test. For each model: build untuned (our schedules, no records), then tune in
steps of ``--step`` trials into a fresh records folder, and after each step build with the
records and time tuned vs untuned vs ONNX Runtime in one process run (``bench_local``: same
seeded input, same thread count, outputs checked first). Stops once the tuning time spent
reaches ``--budget``. Prints one table per model and plots the curves. ``--once``: a single
tune with ``--budget`` as its time budget (as ``edgecompile tune --time-budget``), then the
same timing, and the knob values that won per kernel (as ``records show`` prints them).
``--target``: a preset this machine runs natively, e.g. the stand-ins ``x86-64-v2`` (SSE4.2,
4 lanes) and ``x86-64-v3`` (AVX2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODELS = ("mobilenet_v2", "shufflenet_v2")


@dataclass(frozen=True)
class Point:
    """One step of the curve."""

    trials: int
    tuning_seconds: float
    tuned_ms: float
    untuned_ms: float
    ort_ms: float

    @property
    def ratio_to_ort(self) -> float:
        return self.tuned_ms / self.ort_ms


def curve(
    model: str,
    *,
    budget_seconds: float,
    step: int,
    threads: int,
    repeat: int,
    work: Path,
    target: str = "host",
    once: bool = False,
) -> list[Point]:
    from edgecompile.benchmarking import bench_local
    from edgecompile.builder import build
    from edgecompile.progress import Progress
    from edgecompile.tuning import TUNE_STAGES, tune

    records = work / "records"
    untuned = build(model, target, output_dir=work / "untuned", records=False).artifact
    points: list[Point] = []
    spent = 0.0
    trials = 0
    while True:
        if trials:
            result = tune(
                model, target, trials=None if once else trials, records=records,
                threads=threads, progress=Progress(TUNE_STAGES),
                time_budget=budget_seconds if once else None,
            )  # fmt: skip
            if once:
                trials = result.trials_run
            chosen = sum(task.uses == "tuned" for task in result.tasks)
            print(
                f"{model}: {chosen}/{len(result.tasks)} kernels use a tuned schedule after "
                "the re-measurement",
                flush=True,
            )
            spent += result.seconds
            tuned_dir = build(model, target, output_dir=work / f"tuned-{trials}", records=records)
            print_knobs(target, records)
            tuned_path = str(tuned_dir.artifact.directory)
        else:
            tuned_path = str(untuned.directory)
        report = bench_local(
            tuned_path,
            compare=["ort"],
            threads=[threads],
            repeat=repeat,
            extra_artifacts={"untuned": untuned.directory},
        )
        by_engine = {t.engine: t.median_ms for t in report.timings}
        point = Point(trials, spent, by_engine["tvm"], by_engine["untuned"], by_engine["ort"])
        points.append(point)
        print(
            f"{model}: {trials:5d} trials, {spent / 60:5.1f} min tuning: tuned "
            f"{point.tuned_ms:.2f} ms, untuned {point.untuned_ms:.2f} ms, ORT "
            f"{point.ort_ms:.2f} ms ({point.ratio_to_ort:.2f}x ORT)",
            flush=True,
        )
        if spent >= budget_seconds or (once and len(points) == 2):
            return points
        trials += step  # with --once, the tune's own count replaces it


def print_knobs(target: str, records: Path) -> None:
    """The kernels a build takes from the records: times and the knob values that won."""
    from edgecompile.records import store_for, summarize
    from edgecompile.targets import resolve_target

    for kernel in summarize(store_for(resolve_target(target), records)):
        if kernel.uses == "tuned":
            print(
                f"  {kernel.name}: {kernel.untuned_ms} → {kernel.tuned_ms} ms"
                f" ({kernel.schedule}) {kernel.knobs}",
                flush=True,
            )


def print_table(model: str, points: list[Point]) -> None:
    from edgecompile._table import format_table

    rows = [
        [
            p.trials,
            f"{p.tuning_seconds / 60:.1f}",
            f"{p.tuned_ms:.2f}",
            f"{p.untuned_ms:.2f}",
            f"{p.ort_ms:.2f}",
            f"{p.ratio_to_ort:.2f}",
        ]
        for p in points
    ]
    print(f"\n{model}")
    print(format_table(["trials", "tuning min", "tuned ms", "untuned ms", "ORT ms", "x ORT"], rows))
    best = min(points, key=lambda p: p.tuned_ms)
    ratios = [p.tuned_ms / p.untuned_ms for p in points]
    print(
        f"best {best.tuned_ms:.2f} ms = {best.ratio_to_ort:.2f}x ORT after {best.trials} trials; "
        f"tuned/untuned median {statistics.median(ratios):.2f}"
    )


def plot(curves: dict[str, list[Point]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for axis, (model, points) in zip(axes[0], curves.items(), strict=True):
        minutes = [p.tuning_seconds / 60 for p in points]
        axis.plot(minutes, [p.tuned_ms for p in points], "o-", label="TVM tuned")
        axis.plot(minutes, [p.untuned_ms for p in points], "--", label="TVM untuned (ours)")
        axis.plot(minutes, [p.ort_ms for p in points], ":", label="ONNX Runtime")
        axis.set_title(model)
        axis.set_xlabel("tuning time (min)")
        axis.set_ylabel("latency (ms)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    from edgecompile.tuning import parse_duration

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--budget", default="30m", help="Tuning time per model (e.g. 30m).")
    parser.add_argument("--step", type=int, default=64, help="Trials per step of the curve.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--plot", type=Path, default=Path("tuning.png"))
    parser.add_argument("--work", type=Path, help="Keep builds and records here.")
    parser.add_argument("--target", default="host", help="Board preset (default: host).")
    parser.add_argument(
        "--once", action="store_true", help="One tune of --budget (its time budget), timed once."
    )
    args = parser.parse_args(argv)
    budget = parse_duration(args.budget) or 0.0
    curves = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-tuning-") as scratch:
        root = args.work or Path(scratch)
        for model in args.models:
            curves[model] = curve(
                model,
                budget_seconds=budget,
                step=args.step,
                threads=args.threads,
                repeat=args.repeat,
                work=root / model,
                target=args.target,
                once=args.once,
            )
    for model, points in curves.items():
        print_table(model, points)
    plot(curves, args.plot)
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
