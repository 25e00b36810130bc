"""``profile``: which kernels of the host library cost the time.

:func:`profile_local` instruments the Relax VM around each packed call and joins the kernels to
the manifest's schedules (:func:`join_schedules`), so each row says who scheduled it, and what
it computes on (:func:`precision_of`: integers, fp32, or a conversion between them), which in
an int8 build tells the integer kernels from the fp32 glue left between them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.artifact import Artifact
from edgecompile.benchmarking.local import host_artifact, note_fallback
from edgecompile.benchmarking.timing import latency_stats
from edgecompile.errors import EdgecompileError


@dataclass(frozen=True)
class LayerTime:
    """One VM kernel: median time per inference, share of the per-layer sum, schedule join."""

    name: str
    calls: int
    time_ms: float
    share: float
    op: str | None
    schedule: str | None
    matched: bool
    #: The numbers ``build --explain`` gives the ops this kernel computes ([] for glue).
    layers: list[int] = field(default_factory=list)
    #: What it computes on (:func:`precision_of`); None for the VM's bookkeeping.
    precision: str | None = None


@dataclass(frozen=True)
class ProfileReport:
    model: str
    artifact: str
    threads: int | None
    runs: int
    layers: list[LayerTime]
    layer_sum_ms: float
    end_to_end_ms: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUILTIN_ROW = "vm.builtin.* (VM bookkeeping)"

#: :func:`precision_of`'s answers.
INT8 = "int8"
FP32 = "fp32"
QUANTIZE = "fp32->int8"
DEQUANTIZE = "int8->fp32"
MIXED = "mixed"


def precision_of(inputs: Sequence[str], output: str) -> str:
    """What a kernel computes on, from the dtypes of its tensor inputs and of its output
    (the last argument of a TIR call): :data:`INT8` integers only (an integer conv, add,
    pool), :data:`FP32` floats only, :data:`QUANTIZE` / :data:`DEQUANTIZE` floats to integers
    and back (an integer conv with a dequantize fused is the latter), :data:`MIXED` both kinds
    read. ``inputs`` leaves out 1-D tensors: per-channel constants (an integer conv's float
    requantization multipliers, its int32 bias) say nothing of the data it reads."""
    kinds = {"float" if dtype.startswith(("float", "bfloat")) else "int" for dtype in inputs}
    out = "float" if output.startswith(("float", "bfloat")) else "int"
    if len(kinds) > 1:
        return MIXED
    read = kinds.pop() if kinds else out
    return {
        ("int", "int"): INT8,
        ("float", "float"): FP32,
        ("float", "int"): QUANTIZE,
        ("int", "float"): DEQUANTIZE,
    }[(read, out)]


def _kernel_category(name: str) -> str | None:
    """Which manifest op a fused kernel name stands for; None for layout/glue kernels.

    Convolutions are ``conv2d`` under TVM's lowering and ``pointwise_nchwc``,
    ``depthwise_nchwc``, ``conv_nchwc`` or ``grouped_nchwc`` under our schedules; transposed
    convolutions (ESPNet's decoder) ``conv2d_transpose``.
    """
    if "conv2d_transpose" in name:  # its own manifest op: it must not take a conv2d's entry
        return "conv2d_transpose"
    if any(word in name for word in ("conv2d", "conv_nchwc", "pointwise", "depthwise", "grouped")):
        return "conv2d"
    if "pool" in name and "unpack" not in name:
        return "pool"
    if "matmul" in name or "dense" in name:
        return "matmul"
    return None


def join_schedules(
    names: Sequence[str], schedules: Sequence[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Best-effort: the i-th conv-like kernel call gets the i-th conv2d entry, and so on.

    Fusion renames kernels (``fused_conv2d3_relu9``) and drops the op's identity, but both
    lists follow ``main``'s order, so matching by order within a kind is right whenever the
    fusion kept one heavy op per kernel. Returns call index → schedule entry. Manifests that
    name each op's ``kernel_name`` are joined by that name instead, exactly.
    """
    by_kernel: dict[str, dict[str, Any]] = {}
    for entry in schedules:
        if "kernel_name" in entry:
            by_kernel.setdefault(str(entry["kernel_name"]), entry)
    if by_kernel:
        return {index: by_kernel[name] for index, name in enumerate(names) if name in by_kernel}
    queues: dict[str, list[dict[str, Any]]] = {}
    for entry in schedules:
        op = str(entry.get("op", ""))
        kind = "matmul" if op in ("dense", "matmul", "linear") else op
        queues.setdefault(kind, []).append(entry)
    joined: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(names):
        category = _kernel_category(name)
        if category and queues.get(category):
            joined[index] = queues[category].pop(0)
    return joined


def profile_local(
    source: str,
    *,
    target: str = "host",
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    seed: int = 0,
    input_size: str | None = None,
    output_dir: str | Path | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
) -> ProfileReport:
    """Per-kernel time of the host library, from ``vm.set_instrument`` around each call.

    The instrument costs a Python call per VM instruction, so per-layer times are a little
    high; the end-to-end median is measured without it and printed next to their sum so the
    reader sees how much the instrumentation added.

    ``int8``: profile the model's int8 build instead, as ``build --int8`` makes it (quantized
    on ``calibration``, else the default photographs: :func:`.local.host_artifact`).
    """
    if runs < 1 or warmup < 0:
        raise EdgecompileError("bad --runs/--warmup", "use --runs 1 or more, --warmup 0+")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise EdgecompileError(f"bad --threads {threads}", "use 1 or more")
    notes: list[str] = []
    if calibration is not None and not int8:
        raise EdgecompileError(
            "--calibration is for int8 builds: its images calibrate the quantization",
            "add --int8, or drop --calibration",
        )
    built = host_artifact(
        source,
        target=target,
        input_size=input_size,
        seed=seed,
        output_dir=output_dir,
        notes=notes,
        int8=int8,
        calibration=calibration,
    )
    with built as artifact:
        report = _profile_artifact(artifact, runs=runs, warmup=warmup, threads=threads, seed=seed)
    return replace(report, notes=[*notes, *report.notes])


def precision_shares(layers: Sequence[LayerTime]) -> dict[str, float]:
    """Each :attr:`LayerTime.precision`'s share (%) of the kernels' time, largest first; the
    VM's bookkeeping (no precision) is left out of the whole."""
    times: dict[str, float] = {}
    for layer in layers:
        if layer.precision is not None:
            times[layer.precision] = times.get(layer.precision, 0.0) + layer.time_ms
    total = sum(times.values())
    shares = {kind: 100.0 * ms / total if total else 0.0 for kind, ms in times.items()}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def _precisions(machine: Any, main: Any, inputs: Sequence[Any]) -> dict[str, str]:
    """Each kernel's :func:`precision_of`, from the tensors one instrumented run hands it."""
    found: dict[str, str] = {}

    def instrument(_func: Any, name: str, before_run: bool, _ret: Any, *args: Any) -> int:
        if before_run and not name.startswith("vm.builtin") and name not in found:
            tensors = [arg for arg in args if hasattr(arg, "dtype") and hasattr(arg, "shape")]
            if tensors:
                data = [str(t.dtype) for t in tensors[:-1] if len(t.shape) > 1]
                found[name] = precision_of(data, str(tensors[-1].dtype))
        return 0

    machine.set_instrument(instrument)
    try:
        main(*inputs)
    finally:
        machine.set_instrument(None)
    return found


def _profile_artifact(
    artifact: Artifact, *, runs: int, warmup: int, threads: int | None, seed: int
) -> ProfileReport:
    """:func:`profile_local` once the artifact is at hand (and its library checked)."""
    import tvm
    from tvm import relax

    from edgecompile.runner import random_inputs, set_threads

    set_threads(threads)
    machine = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), tvm.cpu())
    main = machine["main"]
    inputs = [tvm.runtime.tensor(x) for x in random_inputs(artifact, seed=seed)]
    for _ in range(warmup):
        main(*inputs)
    precisions = _precisions(machine, main, inputs)

    calls: list[tuple[str, float]] = []
    started: list[int] = []

    def instrument(_func: Any, name: str, before_run: bool, _ret: Any, *_args: Any) -> int:
        if before_run:
            started.append(time.perf_counter_ns())
        else:
            calls.append((name, (time.perf_counter_ns() - started.pop()) / 1e6))
        return 0

    # Plain and instrumented runs alternate so both see the same load on a shared machine.
    per_run: list[list[tuple[str, float]]] = []
    plain: list[float] = []
    for _ in range(runs):
        machine.set_instrument(None)
        start = time.perf_counter()
        main(*inputs)
        plain.append(time.perf_counter() - start)
        machine.set_instrument(instrument)
        calls.clear()
        main(*inputs)
        per_run.append(list(calls))
    machine.set_instrument(None)
    end_to_end = latency_stats(plain)["median_ms"]

    # Calls in one run, in order; row key = kernel name (a kernel called twice is one row).
    order = [name for name, _ in per_run[0]]
    kernels = [name for name in order if not name.startswith("vm.builtin")]
    joined = join_schedules(kernels, artifact.manifest.schedules)
    rows: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(kernels):
        row = rows.setdefault(name, {"calls": 0, "entry": None})
        row["calls"] += 1
        if index in joined and row["entry"] is None:
            row["entry"] = joined[index]
    totals: dict[str, list[float]] = {name: [] for name in rows}
    builtin: list[float] = []
    for run_calls in per_run:
        sums: dict[str, float] = dict.fromkeys(rows, 0.0)
        builtin_sum = 0.0
        for name, ms in run_calls:
            if name.startswith("vm.builtin"):
                builtin_sum += ms
            else:
                sums[name] = sums.get(name, 0.0) + ms
        for name, ms in sums.items():
            totals.setdefault(name, []).append(ms)
        builtin.append(builtin_sum)
    medians = {name: float(np.median(values)) for name, values in totals.items()}
    medians[BUILTIN_ROW] = float(np.median(builtin))
    layer_sum = sum(medians.values())
    layers = []
    for name, ms in sorted(medians.items(), key=lambda item: -item[1]):
        entry = rows.get(name, {}).get("entry")
        layers.append(
            LayerTime(
                name=name,
                calls=rows[name]["calls"] if name in rows else 0,
                time_ms=ms,
                share=100.0 * ms / layer_sum if layer_sum else 0.0,
                op=entry.get("kind") if entry else None,
                schedule=entry.get("schedule") if entry else None,
                matched=entry is not None,
                layers=[
                    e["index"] for e in artifact.manifest.schedules if e.get("kernel_name") == name
                ],
                precision=precisions.get(name),
            )
        )
    notes = [
        "schedules joined by order within each op kind (conv2d, pool, matmul); unmatched rows "
        "are layout/glue kernels or ones fusion merged (rebuild to join them by kernel name)"
    ]
    if any("kernel_name" in entry for entry in artifact.manifest.schedules):
        notes = []  # joined exactly, by the kernel names the build recorded
    note_fallback(notes, "tvm", artifact)
    return ProfileReport(
        model=artifact.manifest.model,
        artifact=str(artifact.directory),
        threads=threads,
        runs=runs,
        layers=layers,
        layer_sum_ms=layer_sum,
        end_to_end_ms=end_to_end,
        notes=notes,
    )
