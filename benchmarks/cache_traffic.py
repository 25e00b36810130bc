"""The conv loop order each board's caches pick, and the memory traffic it saves.

    /work/venv/bin/python benchmarks/cache_traffic.py                  # rpi4, the default models
    /work/venv/bin/python benchmarks/cache_traffic.py --board rpi3 --models xception
    /work/venv/bin/python benchmarks/cache_traffic.py --no-simulate    # the decisions only
    /work/venv/bin/python benchmarks/cache_traffic.py --all            # check every decision

First a table: every distinct pointwise, grouped and dense K×K conv of the models, its input
and weight sizes, and the loop order :func:`edgecompile.schedules.rules.choose_loop_order` picks
for each board preset (and this machine) from its caches, as the schedule records it.

Then, for the layers where ``--board`` keeps the inputs (not the weights) staying (``--all``:
for every layer), both orders run under valgrind's cache simulator (callgrind) with the board's
geometry: its L1d, and as the last level the share of cache one core can count on while all
cores run. There is no board here, so the kernels are the board's schedule (its blocks and tile:
4 float32 lanes, like NEON) compiled for a 128-bit x86 (SSE) stand-in that valgrind can run;
"LL misses" counts the cache lines a kernel fetched from beyond that cache, i.e. from DRAM on
the board. valgrind models no hardware prefetcher, so this is traffic, not time: it says which
order moves fewer bytes, not how much faster the board runs. Needs ``valgrind``; TVM's import
under it takes ~1.5 min.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from layers import ConvLayer, blocked_input, conv_module, model_layers, print_table

MODELS = ("xception", "mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "squeezenet1_1")
KINDS = ("pointwise", "grouped", "conv")
PRESETS = ("rpi3", "rpi4", "rpi5", "jetson-nano-cpu", "host")
# A 128-bit x86 target: code valgrind can run (no AVX-512). The blocks and tiles built for it are
# the board's (its CpuInfo is patched in), not what TVM reports for this target.
STAND_IN = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64", "num-cores": 1}
LINE_BYTES = 64
# "The picked order moved no more than the other", with room for the simulation's own noise.
AGREEMENT = 1.05
# TVM's name for the exported entry of a PrimFunc whose global symbol is ``name``.
KERNEL_PREFIX = "__tvm_ffi_"
# Associativity simulated: the Cortex-A72's L1d is 2-way, the boards' L2/L3 16-way.
L1_WAYS, LAST_LEVEL_WAYS = 2, 16

DRIVER = """
import sys
import numpy as np
import tvm

rng = np.random.default_rng(0)
for path in sys.argv[1:]:
    module = tvm.runtime.load_module(path)
    shapes = [line.split() for line in open(path + ".shapes")]
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in s]).astype("float32"))
            for s in shapes]
    module[open(path + ".symbol").read()](*args)
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"conv kinds, of {', '.join(KINDS)}"
    )
    parser.add_argument("--board", default="rpi4", help="the preset whose caches are simulated")
    parser.add_argument("--no-simulate", action="store_true", help="print the decisions only")
    parser.add_argument(
        "--all",
        action="store_true",
        help="simulate every layer, not only those where the board keeps the inputs (~2x longer)",
    )
    return parser.parse_args(argv)


def scheduled_kernel(layer: ConvLayer, cpu: Any, order: str | None = None) -> tuple[Any, str]:
    """The layer's conv PrimFunc as ``cpu``'s layout and rule schedule it (``order`` forced, or
    picked from ``cpu``'s caches), and the order it got."""
    import tvm
    from tvm import s_tir, tirx

    from edgecompile.schedules import compute, pipeline, rules

    rule_by_schedule = {
        compute.POINTWISE: rules.PointwiseNCHWc,
        compute.GROUPED: rules.GroupedNCHWc,
        compute.DENSE: rules.DenseConvNCHWc,
    }
    weight = np.random.default_rng(0).standard_normal(layer.weight_shape).astype("float32")
    producer = layer.kind in ("grouped", "conv") and blocked_input(layer)
    # The board's blocks, not the ones TVM reports for an x86 target (it answers this host's
    # vector width whatever the mcpu).
    original = pipeline.cpu_info
    pipeline.cpu_info = lambda _target: cpu
    try:
        target = tvm.target.Target(STAND_IN)
        module, _ = pipeline.fused_module(conv_module(layer, weight, producer), target)
    finally:
        pipeline.cpu_info = original
    for func in module.functions.values():
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        for name, rule in rule_by_schedule.items():
            block = rules.find_block(sch, name)
            # With a producer in front, the layer is the conv that is not that 1×1.
            if block is not None and not (producer and name == compute.POINTWISE):
                rule(order).schedule(sch, block, cpu)
                picked = str(sch.get(block).annotations[rules.LOOP_ORDER_ATTR])
                return sch.mod["main"], picked
    raise SystemExit(f"{layer.label()}: left to TVM's default by the layout pass")


def decisions(layers: list[ConvLayer], presets: Sequence[str]) -> dict[str, list[str]]:
    from edgecompile.schedules import cpu_info
    from edgecompile.targets import resolve_target

    picked = {}
    for name in presets:
        cpu = cpu_info(resolve_target(name).tvm_target())
        picked[name] = [scheduled_kernel(layer, cpu)[1] for layer in layers]
    return picked


def build_kernel(layer: ConvLayer, order: str, cpu: Any, directory: Path) -> Path:
    """The layer's kernel scheduled for ``cpu`` in ``order``, built for the stand-in."""
    import tvm

    from edgecompile.schedules.tir import register_tir_pipeline

    func, _ = scheduled_kernel(layer, cpu, order)
    target = tvm.target.Target(STAND_IN)
    symbol = f"conv_{len(list(directory.glob('*.so')))}_{order}"
    library = tvm.tirx.build(
        tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)}),
        target,
        pipeline=register_tir_pipeline(),
    )
    path = directory / f"{symbol}.so"
    shapes = [[int(d) for d in param.shape] for param in func.params]
    library.export_library(str(path))
    Path(f"{path}.shapes").write_text("".join(" ".join(map(str, s)) + "\n" for s in shapes))
    Path(f"{path}.symbol").write_text(symbol)
    return path


def cache_geometry(cpu: Any) -> tuple[str, str]:
    """``--D1`` and ``--LL`` for the board: its L1d, and one core's share of the last level."""
    l1 = next(level for level in cpu.caches if level.level == 1)
    return (
        f"{l1.size},{L1_WAYS},{LINE_BYTES}",
        f"{cpu.cache_per_core},{LAST_LEVEL_WAYS},{LINE_BYTES}",
    )


def simulate(paths: list[Path], cpu: Any, directory: Path) -> dict[str, int]:
    """LL misses (reads + writes) per kernel symbol, one cold call each, under callgrind's
    cache simulator, counting only inside the kernels (their parallel-loop bodies have no
    symbol, so only callgrind's inclusive costs attribute them)."""
    d1, ll = cache_geometry(cpu)
    out = directory / "callgrind.out"
    driver = directory / "driver.py"
    driver.write_text(DRIVER)
    command = [
        "valgrind", "--tool=callgrind", "--cache-sim=yes", f"--D1={d1}", f"--LL={ll}",
        f"--toggle-collect={KERNEL_PREFIX}*", f"--callgrind-out-file={out}",
        sys.executable, str(driver), *map(str, paths),
    ]  # fmt: skip
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    print(f"callgrind --D1={d1} --LL={ll} over {len(paths)} kernels ...", file=sys.stderr)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--show=DLmr,DLmw", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return ll_misses_by_symbol(annotated, [path.stem for path in paths])


def ll_misses_by_symbol(annotated: str, symbols: list[str]) -> dict[str, int]:
    """DLmr + DLmw of each kernel's entry function, inclusive of what it calls, from
    ``callgrind_annotate --inclusive=yes --show=DLmr,DLmw``."""
    totals = dict.fromkeys(symbols, 0)
    for line in annotated.splitlines():
        match = re.match(r"\s*([\d,]+) \(.*?\)\s+([\d,]+) \(.*?\)\s+\S*:(\S+)", line)
        if not match or not match[3].startswith(KERNEL_PREFIX):
            continue
        symbol = match[3][len(KERNEL_PREFIX) :]
        if symbol in totals:
            misses = int(match[1].replace(",", "")) + int(match[2].replace(",", ""))
            totals[symbol] = max(totals[symbol], misses)
    return totals


def kib(size: int) -> str:
    return f"{size / 1024:.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    from edgecompile.export import export_onnx, load_torch_model
    from edgecompile.importer import import_onnx
    from edgecompile.schedules import cpu_info
    from edgecompile.schedules.rules import INPUTS_STAY, WEIGHTS_STAY
    from edgecompile.targets import resolve_target

    presets = list(dict.fromkeys([*PRESETS, args.board]))
    board = cpu_info(resolve_target(args.board).tvm_target())
    layers: dict[ConvLayer, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompile-cache-") as scratch:
        for name in args.models.split(","):
            path = Path(scratch) / f"{name}.onnx"
            export_onnx(load_torch_model(name), path)
            relax_model, _ = import_onnx(path, name=name)
            for layer, _count in model_layers(relax_model.module, args.kinds.split(",")):
                layers.setdefault(layer, set()).add(name)
    ordered = sorted(layers, key=lambda layer: -layer.data_shape[1] * layer.data_shape[2] ** 2)
    picked = decisions(ordered, presets)
    for name in presets:
        cpu = cpu_info(resolve_target(name).tvm_target())
        print(f"{name}: {', '.join(map(str, cpu.caches))}; {kib(cpu.cache_per_core)} KiB a core")
    rows = []
    for index, layer in enumerate(ordered):
        row = [layer.label(), ",".join(sorted(layers[layer]))]
        row += [kib(4 * math.prod(layer.data_shape)), kib(4 * math.prod(layer.weight_shape))]
        rows.append(row + [picked[name][index] for name in presets])
    print(f"\nloop order by board ({len(ordered)} distinct convs of {args.kinds}):")
    print_table(["layer", "models", "input KiB", "weight KiB", *presets], rows)
    simulated = [
        (layer, order)
        for layer, order in zip(ordered, picked[args.board], strict=True)
        if args.all or order == INPUTS_STAY
    ]
    if args.no_simulate or not simulated:
        if not simulated:
            print(f"\n{args.board} keeps the weights staying on every layer: nothing to simulate")
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind, or --no-simulate")
    with tempfile.TemporaryDirectory(prefix="edgecompile-callgrind-") as scratch:
        directory = Path(scratch)
        built = [
            (layer, order, build_kernel(layer, WEIGHTS_STAY, board, directory),
             build_kernel(layer, INPUTS_STAY, board, directory))
            for layer, order in simulated
        ]  # fmt: skip
        misses = simulate([path for *_, w, i in built for path in (w, i)], board, directory)
    print_traffic(built, misses, args.board)


def print_traffic(built: list[tuple[ConvLayer, str, Path, Path]], misses: dict[str, int],
                  board: str) -> None:  # fmt: skip
    """Both orders' traffic per layer, and how often the rule picked the one moving less."""
    from edgecompile.schedules.rules import INPUTS_STAY

    rows, flipped_ratios, agreed = [], [], 0
    for layer, order, weights_path, inputs_path in built:
        weights, inputs = misses[weights_path.stem], misses[inputs_path.stem]
        if not weights or not inputs:
            raise SystemExit(f"{layer.label()}: callgrind attributed no misses to the kernels")
        chosen, other = (inputs, weights) if order == INPUTS_STAY else (weights, inputs)
        agreed += chosen <= other * AGREEMENT
        if order == INPUTS_STAY:
            flipped_ratios.append(inputs / weights)
        rows.append([layer.label(), mib(weights), mib(inputs), order, f"{chosen / other:.2f}"])
    print(f"\n{board}: traffic beyond the cache (LL misses × {LINE_BYTES} B), one call each:")
    print_table(["layer", "weights stay MiB", "inputs stay MiB", "picked", "picked/other"], rows)
    print(f"the picked order moved at most {AGREEMENT:.2f}x the other's bytes on {agreed} of "
          f"{len(built)} layers")  # fmt: skip
    if flipped_ratios:
        geomean = float(np.exp(np.mean(np.log(flipped_ratios))))
        print(f"where it picked the inputs staying ({len(flipped_ratios)} layers): traffic "
              f"{geomean:.2f}x the weights-staying order's, geomean "
              f"({min(flipped_ratios):.2f}-{max(flipped_ratios):.2f})")  # fmt: skip


def mib(lines: int) -> str:
    return f"{lines * LINE_BYTES / 2**20:.2f}"


if __name__ == "__main__":
    main()
