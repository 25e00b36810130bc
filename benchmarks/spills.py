"""Kernels that spill vector registers inside their innermost loop, per (model, target), untuned.

    python benchmarks/spills.py                                   # default models × boards
    python benchmarks/spills.py --models squeezenet1_1 --targets rpi4 --kernels
    python benchmarks/spills.py --models squeezenet1_1,espnet --targets x86-64-v3 --kernels
    python benchmarks/spills.py --json spills.json
    python benchmarks/spills.py --targets armv7 --asm spills/   # each spilling kernel's listing

A script, not a timing: it compiles each model for each target (no board needed) and reads the
assembly (:func:`edgecompile.schedules.spills.module_spills`). Each model is exported and
imported once, then compiled per target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("mobilenet_v2", "shufflenet_v2", "squeezenet1_1", "mnasnet_a1")
TARGETS = ("rpi4", "rpi5", "rpi3", "armv7", "x86-64-v2", "x86-64-v3")


def measure(
    models: list[str], targets: list[str], show_kernels: bool, asm_dir: Path | None = None
) -> list[dict[str, object]]:
    from edgecompile.builder import prepare_model
    from edgecompile.schedules import compile_relax
    from edgecompile.schedules.spills import kernel_assembly, module_assembly, module_spills
    from edgecompile.targets import resolve_target

    rows = []
    for model in models:
        with tempfile.TemporaryDirectory() as scratch:
            relax_model, _, _ = prepare_model(model, Path(scratch))
        for name in targets:
            target = resolve_target(name).tvm_target()
            start = time.perf_counter()
            executable, _ = compile_relax(relax_model.module, target)
            spills = module_spills(executable, target)
            seconds = time.perf_counter() - start
            spilling = sorted(k for k, s in spills.items() if s.spills)
            row = {
                "model": model,
                "target": name,
                "kernels": len(spills),
                "spilling": len(spilling),
                "innermost_accesses": sum(s.innermost for s in spills.values()),
                "seconds": round(seconds, 1),
            }
            if show_kernels:
                row["spilling_kernels"] = {k: spills[k].innermost for k in spilling}
            if asm_dir is not None and spilling:
                asm_dir.mkdir(parents=True, exist_ok=True)
                listings = kernel_assembly(module_assembly(executable))
                for kernel in spilling:
                    (asm_dir / f"{model}-{name}-{kernel}.s").write_text(listings[kernel])
            rows.append(row)
            print(
                f"{model:16} {name:10} {row['spilling']:3}/{row['kernels']:<3} kernels spill, "
                f"{row['innermost_accesses']:5} stack accesses in innermost loops "
                f"({seconds:.0f} s)",
                flush=True,
            )
            if show_kernels:
                for kernel in spilling:
                    print(f"    {kernel}: {spills[kernel].innermost}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help="zoo names (spaces or commas)"
    )
    parser.add_argument(
        "--targets", nargs="+", default=list(TARGETS), help="presets (spaces or commas)"
    )
    parser.add_argument("--kernels", action="store_true", help="List the spilling kernels.")
    parser.add_argument("--json", type=Path, help="Also write the rows to this file.")
    parser.add_argument(
        "--asm", type=Path, help="Write each spilling kernel's assembly into this folder."
    )
    args = parser.parse_args(argv)
    from edgecompile.errors import EdgecompileError
    from edgecompile.targets import resolve_target
    from edgecompile.zoo import resolve_name

    try:  # every name checked before the first model is exported
        models = [resolve_name(m) for item in args.models for m in item.split(",") if m]
        targets = [t for item in args.targets for t in item.split(",") if t]
        for target in targets:
            resolve_target(target)
    except EdgecompileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    rows = measure(models, targets, args.kernels, args.asm)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
