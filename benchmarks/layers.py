"""Time every distinct pointwise, depthwise, grouped and dense conv of some zoo models: our
schedule vs TVM's default lowering vs ONNX Runtime; then the whole models.

    /work/venv/bin/python benchmarks/layers.py                 # 1 thread, the default models
    /work/venv/bin/python benchmarks/layers.py --threads 2
    /work/venv/bin/python benchmarks/layers.py --models mobilenet_v2 --no-default
    /work/venv/bin/python benchmarks/layers.py --models shufflenet_v1 --kinds grouped --no-models

A script, not a test: numbers depend on the machine and its load. Every number is the median of
``--repeat`` rounds, and each round samples all sides of a comparison once (interleaved), so a
burst of load from another process hits them alike; rerun on a quiet machine before quoting.

Per layer, each side runs the bare convolution (no bias or activation):

- ours: the scheduled NCHW[x]c PrimFunc alone, as it runs inside a network whose activations
  stay blocked (the pack/unpack at the network's edges are not in it). Grouped and dense convs
  read their input blocked too (as behind another of our convs), except a conv on fewer than
  ``PLAIN_INPUT_CHANNELS`` channels (a stem on the image), which reads the NCHW image;
- TVM default: the PrimFunc ``LegalizeOps`` makes for the NCHW conv, built untuned;
- ONNX Runtime: its Conv kernel alone, as its profiler times it, in a one-node ONNX model run
  with ``intra_op_num_threads`` = ``--threads``: where its NCHWc transformer kicks in, the
  reorders into and out of its blocked layout (which a network pays once) are left out, like
  our pack/unpack. The profiler counts whole microseconds: compare layers under ~20 µs with care.

Whole models: ``main`` through the Relax VM (untuned, with and without our schedules) vs ONNX
Runtime on the same static ONNX file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("mobilenet_v2", "shufflenet_v2", "shufflenet_v1", "squeezenet1_1", "condensenet74_c4_g4")
KINDS = ("pointwise", "depthwise", "grouped", "conv")
MIN_REPEAT_SECONDS = 0.05
# A conv on fewer input channels than this is a stem on the image: its input stays NCHW.
PLAIN_INPUT_CHANNELS = 8


@dataclass(frozen=True)
class ConvLayer:
    """One distinct convolution: everything that changes its kernel."""

    kind: str
    data_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    def out_shape(self) -> tuple[int, int, int, int]:
        batch, _, height, width = self.data_shape
        out_channels, _, kernel_h, kernel_w = self.weight_shape
        top, left, bottom, right = self.padding
        out_h = (height + top + bottom - self.dilation[0] * (kernel_h - 1) - 1) // self.strides[0]
        out_w = (width + left + right - self.dilation[1] * (kernel_w - 1) - 1) // self.strides[1]
        return batch, out_channels, out_h + 1, out_w + 1

    def label(self) -> str:
        _, channels, height, width = self.data_shape
        out_channels, _, kernel_h, _ = self.weight_shape
        text = f"{channels}→{out_channels} {height}×{width}"
        if self.kind == "depthwise":
            text = f"{channels} {height}×{width} k{kernel_h}"
        elif kernel_h > 1:
            text += f" k{kernel_h}"
        if self.groups > 1 and self.kind != "depthwise":
            text += f" g{self.groups}"
        text += f" s{self.strides[0]}"
        if self.dilation != (1, 1):
            text += f" d{self.dilation[0]}"
        return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument(
        "--kinds", default=",".join(KINDS),
        help=f"comma-separated conv kinds to time per layer, of {', '.join(KINDS)}",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="TVM and ORT threads (default 1)")
    parser.add_argument("--repeat", type=int, default=7, help="timed repeats; medians printed")
    parser.add_argument("--no-default", action="store_true", help="skip TVM's (slow) default")
    parser.add_argument("--no-layers", action="store_true", help="whole models only")
    parser.add_argument("--no-models", action="store_true", help="per-layer table only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.kinds.split(",")) - set(KINDS))
    if unknown:
        parser.error(f"unknown conv kind(s) {', '.join(unknown)}: use {', '.join(KINDS)}")
    return args


Sampler = Callable[[], float]


def python_sampler(run: Callable[[], Any]) -> Sampler:
    """One sample = the mean time of enough ``run()`` calls to last ~50 ms (after a warm-up)."""
    run()
    start = time.perf_counter()
    run()
    number = max(1, int(MIN_REPEAT_SECONDS / max(time.perf_counter() - start, 1e-7)))

    def sample() -> float:
        start = time.perf_counter()
        for _ in range(number):
            run()
        return (time.perf_counter() - start) / number

    return sample


def evaluator_sampler(module: Any, name: str, args: Sequence[Any]) -> Sampler:
    """One sample = TVM's ``time_evaluator`` (C++ timing loop) over at least ~50 ms."""
    import tvm

    timer = module.time_evaluator(
        name, tvm.cpu(), number=1, repeat=1, min_repeat_ms=int(MIN_REPEAT_SECONDS * 1000)
    )
    return lambda: float(timer(*args).results[0])


def interleaved_medians(samplers: dict[str, Sampler], repeat: int) -> dict[str, float]:
    """Median per sampler over ``repeat`` rounds, each round sampling every side once.

    Interleaving keeps the comparison fair on a shared machine: a burst of load from another
    process hits every side of the same round, not just whichever ran during it.
    """
    samples: dict[str, list[float]] = {key: [] for key in samplers}
    for sample in samplers.values():
        sample()  # warm-up
    for _ in range(repeat):
        for key, sample in samplers.items():
            samples[key].append(sample())
    return {key: statistics.median(values) for key, values in samples.items()}


def model_layers(module: Any, kinds: Sequence[str] = KINDS) -> list[tuple[ConvLayer, int]]:
    """Distinct convs of ``kinds`` in ``main`` with how often each occurs."""
    from tvm import relax

    from edgecompile.importer import heavy_ops
    from edgecompile.schedules.pipeline import conv_indices

    index_to_call = {}
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            index_to_call[binding.var] = binding.value
    calls = {index: index_to_call[var] for var, index in conv_indices(module).items()}
    counts: dict[ConvLayer, int] = {}
    for op in heavy_ops(module):
        if op.get("kind") not in kinds or op["index"] not in calls:
            continue
        call = calls[op["index"]]
        assert isinstance(call, relax.Call)
        pads = [int(p) for p in call.attrs.padding]
        layer = ConvLayer(
            kind=op["kind"],
            data_shape=tuple(op["shapes"][0]),
            weight_shape=tuple(op["shapes"][1]),
            strides=tuple(op["strides"]),  # type: ignore[arg-type]
            padding=tuple(pads * 2 if len(pads) == 2 else pads),  # type: ignore[arg-type]
            dilation=tuple(op["dilation"]),  # type: ignore[arg-type]
            groups=int(op["groups"]),
        )
        counts[layer] = counts.get(layer, 0) + 1
    return list(counts.items())


def blocked_input(layer: ConvLayer) -> bool:
    """Whether our schedule reads this layer's input in NCHW[x]c inside a network."""
    return layer.kind in ("pointwise", "depthwise") or layer.data_shape[1] >= PLAIN_INPUT_CHANNELS


def conv_module(layer: ConvLayer, weight: np.ndarray, producer: bool = False) -> Any:
    """A Relax module whose ``main`` is this one convolution; ``producer`` puts a 1×1 conv in
    front, so that our layout pass hands the layer a blocked input, as in a network."""
    from tvm import relax

    builder = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType(layer.data_shape, "float32"))
    channels = layer.data_shape[1]
    with builder.function("main", [data]):
        with builder.dataflow():
            source: Any = data
            if producer:
                identity = np.eye(channels, dtype="float32").reshape(channels, channels, 1, 1)
                source = builder.emit(relax.op.nn.conv2d(data, relax.const(identity)))
            conv = relax.op.nn.conv2d(
                source,
                relax.const(weight),
                strides=layer.strides,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
            )
            output = builder.emit_output(conv)
        builder.emit_func_output(output)
    return builder.get()


def random_args(func: Any, rng: np.random.Generator) -> list[Any]:
    import tvm

    return [
        tvm.runtime.tensor(
            np.asarray(rng.standard_normal([int(d) for d in param.shape])).astype(str(param.dtype))
        )
        for param in func.params
    ]


def primfunc_sampler(func: Any, target: Any, rng: np.random.Generator) -> Sampler:
    import tvm

    from edgecompile.schedules.tir import register_tir_pipeline

    library = tvm.tirx.build(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
        target,
        pipeline=register_tir_pipeline(),
    )
    return evaluator_sampler(library, "main", random_args(func, rng))


def ours_sampler(layer: ConvLayer, weight: np.ndarray, target: Any) -> Sampler | None:
    """Our scheduled PrimFunc for the layer (the blocked conv alone, no pack/unpack), or None
    if the layout pass left it to TVM (the reason is printed)."""
    from tvm import tirx

    from edgecompile.schedules import optimize

    producer = layer.kind in ("grouped", "conv") and blocked_input(layer)
    module, report = optimize(conv_module(layer, weight, producer), target)
    op_index = 1 if producer else 0
    if op_index not in report.schedules.applied:
        plan = report.layout.plans.get(op_index)
        reason = report.schedules.failed.get(op_index) or (plan.reason if plan else "?")
        print(f"  {layer.label()}: TVM default ({reason})", file=sys.stderr, flush=True)
        return None
    name = report.schedules.applied[op_index]
    scheduled = [
        func
        for func in module.functions.values()
        if isinstance(func, tirx.PrimFunc) and func.attrs.get("edgecompile.schedule") == name
    ]
    return primfunc_sampler(scheduled[-1], target, np.random.default_rng(1))


def default_sampler(layer: ConvLayer, weight: np.ndarray, target: Any) -> Sampler:
    """The PrimFunc TVM's ``LegalizeOps`` makes for the NCHW conv, untuned."""
    from tvm import relax, tirx

    module = relax.transform.LegalizeOps()(conv_module(layer, weight))
    func = next(f for f in module.functions.values() if isinstance(f, tirx.PrimFunc))
    return primfunc_sampler(func, target, np.random.default_rng(1))


def ort_options(threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return options


def ort_session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime

    options = ort_options(threads)
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_layer_model(layer: ConvLayer, weight: np.ndarray) -> bytes:
    """A one-node ONNX model of the layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kernel = list(layer.weight_shape[2:])
    top, left, bottom, right = layer.padding
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=kernel,
        strides=list(layer.strides),
        pads=[top, left, bottom, right],
        dilations=list(layer.dilation),
        group=layer.groups,
    )
    graph = helper.make_graph(
        [node],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(layer.data_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(layer.out_shape()))],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_conv_kernel_ms(profile: list[dict[str, Any]], runs: int) -> float:
    """Mean time of ONNX Runtime's Conv kernel over the last ``runs`` runs of a profile
    (``enable_profiling``'s JSON events), its reorder nodes left out."""
    times = [
        event["dur"] / 1e6
        for event in profile
        if event.get("cat") == "Node"
        and event.get("name", "").endswith("_kernel_time")
        and event.get("args", {}).get("op_name") == "Conv"
    ]
    if len(times) < runs:
        raise RuntimeError("ONNX Runtime's profile has no Conv kernel events")
    return sum(times[-runs:]) / runs


def ort_layer_sampler(layer: ConvLayer, weight: np.ndarray, threads: int) -> Sampler:
    """ONNX Runtime's Conv kernel alone, from its profiler, in a one-node model of the layer.

    Timing the whole ``session.run`` would add ORT's reorders into and out of its NCHWc
    layout, which inside a network happen once at its edges (and our side times the blocked
    kernel alone too). A fresh profiling session per sample, since ORT hands over its profile
    only when a session ends.
    """
    import json

    import onnxruntime

    model = ort_layer_model(layer, weight)
    data = np.random.default_rng(2).standard_normal(layer.data_shape).astype("float32")
    probe = ort_session(model, threads)
    number = max(1, int(MIN_REPEAT_SECONDS / max(_time_once(probe, data), 1e-7)))
    # ORT appends a timestamp and ".json"; each file is deleted once read.
    prefix = os.path.join(tempfile.gettempdir(), f"edgecompile-ort-profile-{os.getpid()}")

    def sample() -> float:
        options = ort_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = prefix
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": data})
        for _ in range(number):
            session.run(None, {"x": data})
        path = Path(session.end_profiling())
        try:
            return ort_conv_kernel_ms(json.loads(path.read_text()), number)
        finally:
            path.unlink(missing_ok=True)

    return sample


def _time_once(session: Any, data: np.ndarray) -> float:
    session.run(None, {"x": data})
    start = time.perf_counter()
    session.run(None, {"x": data})
    return time.perf_counter() - start


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


def ratio(value: float | None, reference: float) -> str:
    return "-" if value is None else f"{value / reference:.2f}"


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.3f}"


def bench_layers(
    layers: dict[ConvLayer, tuple[int, set[str]]], args: argparse.Namespace, target: Any
) -> None:
    rows = []
    totals = {"ours": 0.0, "default": 0.0, "ort": 0.0}
    ratios: dict[str, list[float]] = {}
    for layer, (count, models) in sorted(
        layers.items(), key=lambda item: (item[0].kind, -item[0].data_shape[2], item[0].label())
    ):
        rng = np.random.default_rng(0)
        weight = rng.standard_normal(layer.weight_shape).astype("float32")
        samplers = {"ort": ort_layer_sampler(layer, weight, args.threads)}
        ours_side = ours_sampler(layer, weight, target)
        if ours_side is not None:
            samplers["ours"] = ours_side
        if not args.no_default or ours_side is None:
            samplers["default"] = default_sampler(layer, weight, target)
        medians = interleaved_medians(samplers, args.repeat)
        ort, default = medians["ort"], medians.get("default")
        # A layer our layout pass leaves to TVM runs TVM's default inside the network.
        ours = medians.get("ours", default)
        assert ours is not None
        ratios.setdefault(layer.kind, []).append(ours / ort)
        totals["ours"] += ours * count
        totals["ort"] += ort * count
        if default is not None:
            totals["default"] += default * count
        rows.append(
            [
                layer.kind if ours_side is not None else f"{layer.kind}*",
                layer.label(),
                str(count),
                ",".join(sorted(m.replace("net_v", "v").replace("_", "") for m in models)),
                milliseconds(ours),
                milliseconds(default),
                milliseconds(ort),
                ratio(ours, ort),
                ratio(default, ort),
            ]
        )
        print(f"  timed {layer.kind} {layer.label()}", file=sys.stderr, flush=True)
    header = ["kind", "layer", "n", "models", "ours ms", "tvm ms", "ort ms", "ours/ort", "tvm/ort"]
    print_table(header, rows)
    default_total = totals["default"] if not args.no_default else None
    print(
        f"sum over layers × occurrences: ours {totals['ours'] * 1e3:.2f} ms, "
        f"tvm default {milliseconds(default_total)} ms, ort {totals['ort'] * 1e3:.2f} ms "
        f"(ours/ort {totals['ours'] / totals['ort']:.2f})"
    )
    print("* = left to TVM's default by the layout pass (its time counts as ours)")
    for kind, values in ratios.items():
        print(
            f"{kind}: geomean ours/ort {geomean(values):.2f} over {len(values)} distinct layers, "
            f"max {max(values):.2f}"
        )


def geomean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def bench_model(name: str, relax_model: Any, static_onnx: Any, args: argparse.Namespace) -> list:
    import tvm
    from tvm import relax

    from edgecompile.export import relative_error
    from edgecompile.schedules import compile_relax
    from edgecompile.targets import resolve_target

    target = resolve_target("host").tvm_target()
    spec = relax_model.inputs[0]
    data = np.random.default_rng(0).standard_normal(spec.shape).astype(spec.dtype)
    session = ort_session(static_onnx.SerializeToString(), args.threads)
    feed = {session.get_inputs()[0].name: data}
    expected = session.run(None, feed)[0]
    samplers = {"ort": python_sampler(lambda: session.run(None, feed))}
    modes = ("ours",) if args.no_default else ("ours", "default")
    for mode in modes:
        start = time.perf_counter()
        executable, _ = compile_relax(relax_model.module, target, custom_schedules=mode == "ours")
        compile_seconds = time.perf_counter() - start
        machine = relax.VirtualMachine(executable, tvm.cpu())
        tensor = tvm.runtime.tensor(data)
        error = relative_error(machine["main"](tensor).numpy(), expected)
        samplers[mode] = evaluator_sampler(machine, "main", [tensor])
        print(
            f"  {name} {mode}: compiled in {compile_seconds:.1f} s, max rel. error vs ORT "
            f"{error:.1e}",
            file=sys.stderr,
            flush=True,
        )
    medians = interleaved_medians(samplers, args.repeat)
    ort, ours, default = medians["ort"], medians["ours"], medians.get("default")
    return [
        name,
        milliseconds(ours),
        milliseconds(default),
        milliseconds(ort),
        ratio(ours, ort),
        ratio(default, ort),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # Before TVM loads: its thread pool reads this once.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from edgecompile.export import export_onnx, load_torch_model
    from edgecompile.importer import import_onnx
    from edgecompile.targets import resolve_target

    target = resolve_target("host").tvm_target()
    print(
        f"host {target.attrs.get('mcpu')}, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; medians of {args.repeat}"
    )
    imported = {}
    layers: dict[ConvLayer, tuple[int, set[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-bench-") as scratch:
        for name in args.models.split(","):
            path = Path(scratch) / f"{name}.onnx"
            export_onnx(load_torch_model(name), path)
            relax_model, static_onnx = import_onnx(path, name=name)
            imported[name] = (relax_model, static_onnx)
            for layer, count in model_layers(relax_model.module, args.kinds.split(",")):
                total, models = layers.get(layer, (0, set()))
                layers[layer] = (total + count, models | {name})
    if not args.no_layers and not layers:
        print(f"\nno {args.kinds} convs in {args.models}: no per-layer table")
    elif not args.no_layers:
        print(f"\nper layer ({len(layers)} distinct convs: {args.kinds}), 1 batch, fp32:")
        bench_layers(layers, args, target)
    if not args.no_models:
        print("\nwhole models, untuned:")
        rows = [bench_model(name, *imported[name], args) for name in imported]
        header = ["model", "ours ms", "tvm ms", "ort ms", "ours/ort", "tvm/ort"]
        print_table(header, rows)


if __name__ == "__main__":
    main()
