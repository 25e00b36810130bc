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
  ``PLAIN_INPUT_CHANNELS`` channels (a stem on the image), which reads the NCHW image. A layer
  whose input comes from a channel shuffle in its network (directly, or through ops that keep
  the channel order in our layout: activations, pools, a depthwise conv; e.g. ShuffleNet v1's
  grouped 1×1 after shuffle → depthwise) is built behind the same chain: a 1×1 conv with the
  groups of the conv feeding that shuffle (which sets the lanes it permutes), then the
  shuffle's reshape/permute/reshape. Our layout pass folds the shuffle into the layer (a
  grouped conv then reads its input through a channel table), as in the network. Such a layer
  is also timed with its input in plain channel order ("plain"), and the script stops if a
  grouped one reads its input no differently there;
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
    # The input's channel order in its network: 0 = plain; g = after a channel shuffle of g
    # groups, of the output of a conv with ``shuffle_source_groups`` groups (whose layout
    # sets the lanes the shuffle permutes: a grouped conv may pad each group to whole blocks).
    shuffle_groups: int = 0
    shuffle_source_groups: int = 1

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
        if self.shuffle_groups:
            text += f" after shuffle g{self.shuffle_groups}"
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
    from edgecompile.schedules.analysis import conv_indices
    from edgecompile.schedules.analysis import uses as _uses

    bindings = {}
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            bindings[binding.var] = binding.value
    calls = {index: bindings[var] for var, index in conv_indices(module).items()}
    uses = _uses(module["main"])
    counts: dict[ConvLayer, int] = {}
    for op in heavy_ops(module):
        if op.get("kind") not in kinds or op["index"] not in calls:
            continue
        call = calls[op["index"]]
        assert isinstance(call, relax.Call)
        pads = [int(p) for p in call.attrs.padding]
        shuffle_groups, source_groups = input_shuffle(call.args[0], bindings, uses)
        layer = ConvLayer(
            kind=op["kind"],
            data_shape=tuple(op["shapes"][0]),
            weight_shape=tuple(op["shapes"][1]),
            strides=tuple(op["strides"]),  # type: ignore[arg-type]
            padding=tuple(pads * 2 if len(pads) == 2 else pads),  # type: ignore[arg-type]
            dilation=tuple(op["dilation"]),  # type: ignore[arg-type]
            groups=int(op["groups"]),
            shuffle_groups=shuffle_groups,
            shuffle_source_groups=source_groups,
        )
        counts[layer] = counts.get(layer, 0) + 1
    return list(counts.items())


def _order_source(value: Any) -> Any:
    """The var whose channel order ``value``'s result keeps in our layout pass (an activation,
    a pool, a depthwise conv; a binary op takes its first blocked operand's), else None."""
    from tvm import relax

    from edgecompile.schedules.layout import _BINARY, _DIVIDE, _POOLS, _UNARY

    name = _op(value)
    depthwise = name == "relax.nn.conv2d" and _is_depthwise(value)
    if name in _UNARY or name in _POOLS or depthwise:
        return value.args[0] if isinstance(value.args[0], relax.Var) else None
    if name in _BINARY or name == _DIVIDE:  # the order of its first blocked operand
        return next((arg for arg in value.args if isinstance(arg, relax.Var)), None)
    return None


def _is_depthwise(call: Any) -> bool:
    from edgecompile.schedules.analysis import static_shape

    groups = int(call.attrs.groups)
    out_channels, in_per_group = (static_shape(call.args[1]) or (0, 0))[:2]
    return groups > 1 and in_per_group == 1 and out_channels == groups


def input_shuffle(var: Any, bindings: dict[Any, Any], uses: Any) -> tuple[int, int]:
    """``(g, source groups)`` if ``var`` (a conv's input) is, through ops that keep the channel
    order, the result of a channel shuffle of ``g`` groups that our layout pass folds
    (:func:`~edgecompile.schedules.patterns.shuffle_chain`), ``source groups`` being those of the
    conv whose output it shuffles; ``(0, 1)`` for an input in plain channel order."""
    from edgecompile.schedules.patterns import shuffle_chain

    while var in bindings:
        value = bindings[var]
        # A shuffle ends in reshape(permute_dims(reshape(source))): find its first reshape.
        permute = bindings.get(value.args[0]) if _op(value) == "relax.reshape" else None
        split = permute.args[0] if _op(permute) == "relax.permute_dims" else None
        if split in bindings:
            chain = shuffle_chain(split, bindings[split], *uses)
            if chain is not None and chain[1][2].same_as(var):
                return chain[0], _source_groups(bindings[split].args[0], bindings)
        var = _order_source(value)
    return 0, 1


def _source_groups(var: Any, bindings: dict[Any, Any]) -> int:
    """Groups of the conv whose output ``var`` is (through ops that keep the channel order):
    its layout sets the lanes a shuffle of ``var`` permutes. 1 (plain order) for a dense conv
    or a concat (which gathers into plain order), and with a warning for anything else."""
    value = None
    while var in bindings:
        value = bindings[var]
        if _op(value) == "relax.nn.conv2d" and not _is_depthwise(value):
            return int(value.attrs.groups)
        if _op(value) == "relax.concat":
            return 1
        var = _order_source(value)
    what = _op(value) or "a function parameter"
    print(f"  a channel shuffle of {what}: plain order assumed before it", file=sys.stderr)
    return 1


def _op(value: Any) -> str:
    return str(getattr(getattr(value, "op", None), "name", ""))


def blocked_input(layer: ConvLayer) -> bool:
    """Whether our schedule reads this layer's input in NCHW[x]c inside a network."""
    return layer.kind in ("pointwise", "depthwise") or layer.data_shape[1] >= PLAIN_INPUT_CHANNELS


def conv_module(
    layer: ConvLayer, weight: np.ndarray, producer: bool = False, network_order: bool = False
) -> Any:
    """A Relax module whose ``main`` is this one convolution; ``producer`` puts a 1×1 conv in
    front, so that our layout pass hands the layer a blocked input, as in a network.

    ``network_order`` (for a layer after a channel shuffle) puts the producer chain of the
    layer's network in front instead: a 1×1 conv with the groups of the conv feeding the
    shuffle, then the shuffle's reshape → permute_dims → reshape, which our layout pass folds
    into the layer as in the network. Every producer computes the identity."""
    from tvm import relax

    builder = relax.BlockBuilder()
    batch, channels, height, width = layer.data_shape
    shuffle = layer.shuffle_groups if network_order else 0
    data = relax.Var("data", relax.TensorType(layer.data_shape, "float32"))
    with builder.function("main", [data]):
        with builder.dataflow():
            source: Any = data
            if producer or shuffle:
                groups = layer.shuffle_source_groups if shuffle else 1
                per_group = channels // groups
                identity = np.zeros((channels, per_group, 1, 1), dtype="float32")
                identity[np.arange(channels), np.arange(channels) % per_group] = 1.0
                source = builder.emit(
                    relax.op.nn.conv2d(data, relax.const(identity), groups=groups)
                )
            if shuffle:
                split = (batch, shuffle, channels // shuffle, height, width)
                source = builder.emit(relax.op.reshape(source, split))
                source = builder.emit(relax.op.permute_dims(source, [0, 2, 1, 3, 4]))
                source = builder.emit(relax.op.reshape(source, layer.data_shape))
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


def primfunc_sampler(func: Any, target: Any, args: Sequence[Any]) -> Sampler:
    import tvm

    from edgecompile.schedules.tir import register_tir_pipeline

    library = tvm.tirx.build(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
        target,
        pipeline=register_tir_pipeline(),
    )
    return evaluator_sampler(library, "main", args)


@dataclass
class Kernel:
    """Our scheduled PrimFunc of a layer and what it runs on: the constants its module passes
    it (packed weight; a grouped conv's channel table, if it reads its input through one), and
    random data for the rest."""

    func: Any
    args: list[Any]
    table: np.ndarray | None

    def reads(self) -> str:
        """How the kernel reads its input, for the log."""
        shape = "×".join(str(int(d)) for d in self.func.params[0].shape)
        if self.table is None:
            return f"input {shape}"
        return f"input {shape} through a {'×'.join(map(str, self.table.shape))} channel table"


def our_kernel(
    layer: ConvLayer, weight: np.ndarray, target: Any, network_order: bool = True
) -> Kernel | None:
    """Our scheduled PrimFunc for the layer (the blocked conv alone, no pack/unpack), with its
    input in the channel order of its network (``network_order``, see :func:`conv_module`) or
    in plain order; None if the layout pass left it to TVM (the reason is printed)."""
    import tvm
    from tvm import ir, relax

    from edgecompile.schedules import optimize

    shuffled = network_order and layer.shuffle_groups > 0
    producer = shuffled or (layer.kind in ("grouped", "conv") and blocked_input(layer))
    module, report = optimize(conv_module(layer, weight, producer, network_order), target)
    op_index = 1 if producer else 0
    if op_index not in report.schedules.applied:
        plan = report.layout.plans.get(op_index)
        reason = report.schedules.failed.get(op_index) or (plan.reason if plan else "?")
        print(f"  {layer.label()}: TVM default ({reason})", file=sys.stderr, flush=True)
        return None
    name = next(kernel for kernel, index in report.kernel_ops.items() if index == op_index)
    call = next(
        binding.value
        for block in module["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call)
        and getattr(binding.value.op, "name_hint", None) == name
    )
    func = module[name]
    rng = np.random.default_rng(1)
    args, table = [], None
    for arg, param in zip(call.args, func.params, strict=True):
        if isinstance(arg, ir.expr.GenericConst):
            value = arg.value.numpy()
            table = value if value.dtype == np.int32 else table
        else:
            shape = [int(d) for d in param.shape]
            value = np.asarray(rng.standard_normal(shape)).astype(str(param.dtype))
        args.append(tvm.runtime.tensor(value))
    return Kernel(func, args, table)


def check_network_order(layer: ConvLayer, ours: Kernel, plain: Kernel) -> None:
    """Log how the layer reads its input in its network's order and in plain order; stop if a
    grouped conv after a shuffle would time the plain kernel (no table, or the plain one)."""
    print(
        f"  {layer.label()}: ours {ours.reads()}; in plain order {plain.reads()}",
        file=sys.stderr,
        flush=True,
    )
    if layer.kind != "grouped":
        return
    same = ours.table is not None and plain.table is not None
    if ours.table is None or (same and np.array_equal(ours.table, plain.table)):
        raise SystemExit(
            f"{layer.label()}: our layout pass did not fold the channel shuffle into this "
            "grouped conv, so its kernel would be the plain-order one: not timing it"
        )


def default_sampler(layer: ConvLayer, weight: np.ndarray, target: Any) -> Sampler:
    """The PrimFunc TVM's ``LegalizeOps`` makes for the NCHW conv, untuned."""
    from tvm import relax, tirx

    module = relax.transform.LegalizeOps()(conv_module(layer, weight))
    func = next(f for f in module.functions.values() if isinstance(f, tirx.PrimFunc))
    return primfunc_sampler(func, target, random_args(func, np.random.default_rng(1)))


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
    # ours/ort with every layer in plain channel order; ours/plain of layers after a shuffle.
    plain_ratios: dict[str, list[float]] = {}
    shuffle_costs: dict[str, list[float]] = {}
    for layer, (count, models) in sorted(
        layers.items(), key=lambda item: (item[0].kind, -item[0].data_shape[2], item[0].label())
    ):
        rng = np.random.default_rng(0)
        weight = rng.standard_normal(layer.weight_shape).astype("float32")
        samplers = {"ort": ort_layer_sampler(layer, weight, args.threads)}
        ours_kernel = our_kernel(layer, weight, target)
        if ours_kernel is not None:
            samplers["ours"] = primfunc_sampler(ours_kernel.func, target, ours_kernel.args)
        plain_kernel = None
        if ours_kernel is not None and layer.shuffle_groups:
            plain_kernel = our_kernel(layer, weight, target, network_order=False)
        if ours_kernel is not None and plain_kernel is not None:
            check_network_order(layer, ours_kernel, plain_kernel)
            samplers["plain"] = primfunc_sampler(plain_kernel.func, target, plain_kernel.args)
        if not args.no_default or ours_kernel is None:
            samplers["default"] = default_sampler(layer, weight, target)
        medians = interleaved_medians(samplers, args.repeat)
        ort, default, plain = medians["ort"], medians.get("default"), medians.get("plain")
        # A layer our layout pass leaves to TVM runs TVM's default inside the network.
        ours = medians.get("ours", default)
        assert ours is not None
        ratios.setdefault(layer.kind, []).append(ours / ort)
        plain_ratios.setdefault(layer.kind, []).append((plain or ours) / ort)
        if plain is not None:
            shuffle_costs.setdefault(layer.kind, []).append(ours / plain)
        totals["ours"] += ours * count
        totals["ort"] += ort * count
        if default is not None:
            totals["default"] += default * count
        rows.append(
            [
                layer.kind if ours_kernel is not None else f"{layer.kind}*",
                layer.label(),
                str(count),
                ",".join(sorted(m.replace("net_v", "v").replace("_", "") for m in models)),
                milliseconds(ours),
                milliseconds(plain),
                milliseconds(default),
                milliseconds(ort),
                ratio(ours, ort),
                ratio(plain, ort),
                ratio(default, ort),
            ]
        )
        print(f"  timed {layer.kind} {layer.label()}", file=sys.stderr, flush=True)
    header = ["kind", "layer", "n", "models", "ours ms", "plain ms", "tvm ms", "ort ms"]
    header += ["ours/ort", "plain/ort", "tvm/ort"]
    print_table(header, rows)
    default_total = totals["default"] if not args.no_default else None
    print(
        f"sum over layers × occurrences: ours {totals['ours'] * 1e3:.2f} ms, "
        f"tvm default {milliseconds(default_total)} ms, ort {totals['ort'] * 1e3:.2f} ms "
        f"(ours/ort {totals['ours'] / totals['ort']:.2f})"
    )
    print("* = left to TVM's default by the layout pass (its time counts as ours)")
    print(
        "ours: input in its network's channel order; plain: the same layer's kernel with its "
        "input in plain order (timed for layers after a channel shuffle)"
    )
    for kind, values in ratios.items():
        text = (
            f"{kind}: geomean ours/ort {geomean(values):.2f} over {len(values)} distinct layers, "
            f"max {max(values):.2f}"
        )
        costs = shuffle_costs.get(kind)
        if costs:
            text += (
                f"; {len(costs)} after a shuffle, ours/plain {geomean(costs):.2f} "
                f"(max {max(costs):.2f}); all in plain order: ours/ort "
                f"{geomean(plain_ratios[kind]):.2f}"
            )
        print(text)


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
