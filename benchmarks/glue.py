"""Layout glue per model: the share of a model's kernel time spent in kernels that convert
between NCHW and the blocked layout (packs, unpacks, layout transforms, and whatever fusion put
in the same kernel), from ``edgecompile profile`` at one thread; beside it, the share of the
other data movement (concats, slices, gathers). Issue #16's bar: glue at most 5% for ESPNet,
CondenseNet, ESPNet v2, SqueezeNet and Xception.

    /work/venv/bin/python benchmarks/glue.py                              # the five families
    /work/venv/bin/python benchmarks/glue.py --models condensenet74_c4_g4,espnet_v2_x0_5
    /work/venv/bin/python benchmarks/glue.py --models report/builds/espnet-host  # a built artifact

A script, not a test: shares come from timing, which depends on the machine. A model name is
built for this machine first (in a temporary folder); an artifact folder is profiled as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from edgecompile.benchmarking.profile import ProfileReport
from edgecompile.reporting.measure import DATA_MOVEMENT, op_class_of

#: One model per family of the issue (the smallest where the family has several).
MODELS = ("espnet", "condensenet74_c4_g4", "espnet_v2_x0_5", "squeezenet1_1", "xception")
#: The issue's bound on glue, percent of the kernel time.
BOUND = 5.0


#: Words of a kernel name (TVM joins the fused ops' names with "_") that mark a layout change.
LAYOUT_WORDS = frozenset({"pack", "unpack", "layout"})


def is_layout_glue(name: str) -> bool:
    """Whether a profiled kernel converts between layouts (``pack_nchwc``,
    ``fused_unpack_nchwc2_concatenate3``, ``layout_transform``), by its name."""
    return bool(set(re.split(r"[_.]+", re.sub(r"\d+", "", name))) & LAYOUT_WORDS)


def glue_rows(report: ProfileReport) -> list[tuple[str, int, float, float]]:
    """``(kernel, calls, ms, share %)`` of each layout-glue kernel of a profile, slowest
    first."""
    return [
        (layer.name, layer.calls, layer.time_ms, layer.share)
        for layer in report.layers
        if layer.op is None and is_layout_glue(layer.name)
    ]


def other_movement_share(report: ProfileReport) -> float:
    """Percent of the kernel time in the other data-movement kernels (the report's class)."""
    return sum(
        layer.share
        for layer in report.layers
        if op_class_of(layer.name, layer.op) == DATA_MOVEMENT and not is_layout_glue(layer.name)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="zoo names or artifact dirs")
    parser.add_argument("--runs", type=int, default=10, help="instrumented runs per model")
    parser.add_argument("--threads", type=int, default=1, help="TVM threads [1]")
    parser.add_argument("--top", type=int, default=5, help="glue kernels listed per model")
    args = parser.parse_args(argv)

    from edgecompile.benchmarking.profile import profile_local

    over = []
    for source in (name.strip() for name in args.models.split(",") if name.strip()):
        report = profile_local(source, runs=args.runs, threads=args.threads)
        rows = glue_rows(report)
        share = sum(row[3] for row in rows)
        glue_ms = sum(row[2] for row in rows)
        verdict = "ok" if share <= BOUND else f"ABOVE {BOUND:g}%"
        print(
            f"{report.model}: glue {share:.1f}% ({glue_ms:.3f} of {report.layer_sum_ms:.3f} ms,"
            f" {len(rows)} kernels) {verdict}; other data movement"
            f" {other_movement_share(report):.1f}%"
        )
        for name, calls, ms, row_share in rows[: args.top]:
            print(f"    {row_share:5.1f}%  {ms:7.3f} ms  x{calls}  {name}")
        if share > BOUND:
            over.append(report.model)
    if over:
        print(f"glue above {BOUND:g}%: {', '.join(over)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
