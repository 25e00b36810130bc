"""How close each op class of an untuned build runs to its target's arithmetic peak on this
machine: the ceiling a schedule, tuned or not, cannot pass.

    python benchmarks/roofline.py                       # default models, host + stand-ins
    python benchmarks/roofline.py --models mobilenet_v2 --targets x86-64-v3 --threads 1
    python benchmarks/roofline.py --peaks-only          # the peaks alone, ~15 s
    python benchmarks/roofline.py --json roofline.json

A script, not a test: numbers depend on the machine and its load. Per target (built for that
target, run here, so only targets this CPU executes: ``host`` and the x86 stand-ins):

- the peak: a kernel of independent multiply-add chains (``CHAINS`` accumulators of the target's
  vector width, each step ``acc = acc * a + b``), built for the target as our kernels are; one
  FMA where the ISA has it, a multiply and an add where it has not (SSE4.2). Counted as two
  flops per lane and step;
- per model: the untuned build (no tuning records), profiled per kernel through the Relax VM
  (``edgecompile profile``), each kernel's multiply-adds counted from the layers the manifest
  joins it to (output elements × input channels per group × window; a matmul's M × K × N), summed
  per op class: its time, share, Gflop/s and share of the peak;
- per model and target: the kernels' time beside the time its multiply-adds alone take at the
  target's peak (a floor no schedule, tuned or fused, goes below), each over the native
  (``host``) build's kernels.

What it is for: a stand-in's goal stated against the native build (``x86-64-v3`` ≤ 1.3× ``host``)
is bounded by how the two ISAs' peaks compare on the machine measuring it. Where arithmetic
bounds a layer, an ISA with a third of the peak takes about three times as long however it is
scheduled; a class already near its target's peak has nothing left for a search to find.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MODELS = ("mobilenet_v2", "shufflenet_v2", "squeezenet1_1", "mnasnet_a1")
TARGETS = ("host", "x86-64-v3", "x86-64-v2")
#: Independent accumulators of the peak kernel: with the two constants, the 16 registers of
#: AVX2 and SSE. SSE4.2's chain is a multiply then an add, spread over three pipes: 12 chains
#: reach 96% of what 14 do here, 8 chains 76%.
CHAINS = 14
#: Steps of each chain per call of the peak kernel (~10⁸ flops at 16 lanes).
STEPS = 1 << 18
#: The chains' constants: a fixed point at 1 (1 × a + b = 1), so the values stay finite.
MULTIPLIER, ADDEND = 0.75, 0.25
#: Op classes whose arithmetic is counted (the manifest's ``kind``); others show time only.
COUNTED = ("pointwise", "depthwise", "grouped", "conv", "matmul")


def layer_multiply_adds(layer: dict[str, Any]) -> int | None:
    """Multiply-adds of one manifest schedule entry (a heavy op of ``main``): a conv's output
    elements × input channels per group × window, a matmul's output elements × the reduced
    dimension; None for anything else, or an entry without its output shape (a build from
    before manifests had it)."""
    output, shapes = layer.get("output"), layer.get("shapes") or []
    if not output or not shapes:
        return None
    if layer.get("op") == "conv2d" and len(shapes) > 1:
        _, per_group, *window = shapes[1]
        return math.prod(output) * per_group * math.prod(window)
    if layer.get("op") == "matmul" and len(shapes) > 1:
        return math.prod(output) * shapes[0][-1]
    return None


def op_class_rows(
    kernels: Iterable[dict[str, Any]], layers: Sequence[dict[str, Any]], peak_gflops: float
) -> list[dict[str, Any]]:
    """Per op class, slowest first: time, share, multiply-adds, Gflop/s and share of
    ``peak_gflops``. ``kernels``: the profile's rows (``time_ms``, ``op``, ``layers``: the
    manifest indices the kernel computes); ``layers``: the manifest's schedule entries. A class
    with a kernel whose arithmetic is unknown gets no rate (rather than a rate too high)."""
    by_index = {layer["index"]: layer for layer in layers}
    time_ms: dict[str, float] = defaultdict(float)
    macs: dict[str, int | None] = defaultdict(int)
    for kernel in kernels:
        op = kernel.get("op") or "other"
        time_ms[op] += kernel["time_ms"]
        if op not in COUNTED:
            macs[op] = None
            continue
        counts = [layer_multiply_adds(by_index.get(i, {})) for i in kernel.get("layers") or []]
        known = bool(counts) and all(c is not None for c in counts) and macs[op] is not None
        macs[op] = (macs[op] or 0) + sum(counts) if known else None  # type: ignore[operator]
    total = sum(time_ms.values())
    rows = []
    for op in sorted(time_ms, key=lambda o: -time_ms[o]):
        gflops = 2 * macs[op] / (time_ms[op] * 1e6) if macs[op] and time_ms[op] > 0 else None
        rows.append({
            "op": op,
            "time_ms": time_ms[op],
            "share": time_ms[op] / total if total else 0.0,
            "multiply_adds": macs[op],
            "gflops": gflops,
            "of_peak": gflops / peak_gflops if gflops is not None else None,
        })  # fmt: skip
    return rows


def chains_kernel(target_name: str, threads: int, steps: int = STEPS) -> tuple[Any, tuple]:
    """The peak kernel built for ``target_name``: ``threads`` × :data:`CHAINS` accumulators of
    the target's vector width, each taken ``steps`` times through ``acc = acc * a + b`` from the
    input's values. Returns the loaded function and its buffers' shape."""
    import tvm
    from tvm.script import tirx as T

    from edgecompile.schedules.cpu import cpu_info
    from edgecompile.targets import resolve_target

    target = resolve_target(target_name).tvm_target()
    lanes = cpu_info(target).lanes
    shape = (threads, CHAINS, lanes)

    @T.prim_func
    def chains(a: T.Buffer(shape, "float32"), out: T.Buffer(shape, "float32")):
        for t in T.parallel(threads):
            acc = T.alloc_buffer((CHAINS, lanes), "float32", scope="local")
            for c in T.unroll(CHAINS):
                for lane in T.vectorized(lanes):
                    acc[c, lane] = a[t, c, lane]
            for _ in range(steps):
                for c in T.unroll(CHAINS):
                    for lane in T.vectorized(lanes):
                        acc[c, lane] = acc[c, lane] * T.float32(MULTIPLIER) + T.float32(ADDEND)
            for c in T.unroll(CHAINS):
                for lane in T.vectorized(lanes):
                    out[t, c, lane] = acc[c, lane]

    return tvm.compile(tvm.IRModule({"main": chains}), target=target).jit(), shape


def arithmetic_floor_ms(rows: Iterable[dict[str, Any]], peak_gflops: float) -> float:
    """The time the counted multiply-adds of ``rows`` take at ``peak_gflops``: a lower bound
    for any schedule of the same arithmetic, tuned or fused (fusing saves memory traffic, not
    arithmetic)."""
    return sum(2 * (row["multiply_adds"] or 0) for row in rows) / (peak_gflops * 1e6)


def measure_peak(target_name: str, threads: int, repeat: int = 15) -> float:
    """Gflop/s of :func:`chains_kernel` run here on ``threads`` threads (each thread its own
    chains): the fastest of ``repeat`` calls, a peak being what the core does when nothing gets
    in its way."""
    import numpy as np
    import tvm

    library, shape = chains_kernel(target_name, threads)
    device = tvm.cpu()
    values = tvm.runtime.tensor(np.ones(shape, "float32"), device)
    result = tvm.runtime.tensor(np.zeros(shape, "float32"), device)
    timer = library.time_evaluator("main", device, number=1, repeat=repeat)
    seconds = min(timer(values, result).results)
    return 2 * math.prod(shape) * STEPS / seconds / 1e9


def profile_model(model: str, target_name: str, threads: int, runs: int) -> dict[str, Any]:
    """The untuned build of ``model`` for ``target_name``, profiled here: its kernels and the
    manifest's layers."""
    import edgecompile
    from edgecompile.benchmarking.profile import profile_local

    with tempfile.TemporaryDirectory() as scratch:
        built = edgecompile.build(model, target_name, output_dir=scratch, records=False)
        folder = built.artifact.directory
        report = profile_local(str(folder), runs=runs, threads=threads)
    layers = built.artifact.manifest.to_dict()["schedules"]
    return {
        "kernels": [
            {"time_ms": k.time_ms, "op": k.op, "layers": list(k.layers)} for k in report.layers
        ],
        "layers": layers,
        "end_to_end_ms": report.end_to_end_ms,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(results: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    lines = ["| target | peak Gflop/s | of host's peak |", "|---|---|---|"]
    host = peaks.get("host")
    for target, peak in peaks.items():
        lines.append(f"| `{target}` | {peak:.0f} | {_percent(peak / host) if host else '-'} |")
    if results:
        lines += [
            "",
            "| model | target | op class | ms | share | Gflop/s | of peak |",
            "|---|---|---|---|---|---|---|",
        ]
    for result in results:
        for row in result["rows"]:
            gflops = "-" if row["gflops"] is None else f"{row['gflops']:.1f}"
            lines.append(
                f"| {result['model']} | `{result['target']}` | {row['op']} "
                f"| {row['time_ms']:.3f} | {_percent(row['share'])} | {gflops} "
                f"| {_percent(row['of_peak'])} |"
            )
    if results:
        lines += [
            "",
            "| model | target | kernels ms | arithmetic at peak, ms | kernels / host's "
            "| arithmetic at peak / host's kernels |",
            "|---|---|---|---|---|---|",
        ]
    host_ms = {r["model"]: r["kernels_ms"] for r in results if r["target"] == "host"}
    for result in results:
        native = host_ms.get(result["model"])
        ratios = (
            [f"{result['kernels_ms'] / native:.2f}×", f"{result['floor_ms'] / native:.2f}×"]
            if native
            else ["-", "-"]
        )
        lines.append(
            f"| {result['model']} | `{result['target']}` | {result['kernels_ms']:.2f} "
            f"| {result['floor_ms']:.2f} | {' | '.join(ratios)} |"
        )
    return "\n".join(lines)


def checked_names(targets: Sequence[str], models: Sequence[str]) -> tuple[list[str], list[str]]:
    """The presets and zoo names asked for, before any work: every target one this machine runs
    (its kernels are timed here), every model in the zoo."""
    from edgecompile.errors import EdgecompileError
    from edgecompile.targets import resolve_target
    from edgecompile.zoo import resolve_name

    presets = [resolve_target(target) for target in targets if target]
    elsewhere = [preset.name for preset in presets if not preset.is_host]
    if not presets or elsewhere:
        raise EdgecompileError(
            f"{', '.join(elsewhere)} does not run on this machine" if elsewhere else "no targets",
            "give presets this CPU runs, e.g. --targets host,x86-64-v3,x86-64-v2",
        )
    return [preset.name for preset in presets], [resolve_name(model) for model in models if model]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--targets", default=",".join(TARGETS), help="presets this CPU runs")
    parser.add_argument("--threads", type=int, default=1, help="threads [1]")
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per build [20]")
    parser.add_argument("--peaks-only", action="store_true", help="measure the peaks only")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        parser.error("--threads and --runs must be 1 or more")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from edgecompile.errors import EdgecompileError

    try:
        targets, models = checked_names(args.targets.split(","), args.models.split(","))
    except EdgecompileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    models = [] if args.peaks_only else models
    peaks = {}
    for target in targets:
        peaks[target] = measure_peak(target, args.threads)
        print(f"{target}: peak {peaks[target]:.0f} Gflop/s", file=sys.stderr, flush=True)
    results = []
    for model in models:
        for target in targets:
            start = time.perf_counter()
            profiled = profile_model(model, target, args.threads, args.runs)
            rows = op_class_rows(profiled["kernels"], profiled["layers"], peaks[target])
            results.append({
                "model": model,
                "target": target,
                "rows": rows,
                "kernels_ms": sum(row["time_ms"] for row in rows),
                "floor_ms": arithmetic_floor_ms(rows, peaks[target]),
                **profiled,
            })  # fmt: skip
            print(
                f"{model} {target}: {profiled['end_to_end_ms']:.2f} ms end to end "
                f"({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(format_table(results, peaks))
    if args.json:
        args.json.write_text(json.dumps({"peaks": peaks, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
