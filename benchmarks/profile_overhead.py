"""How far `edgecompile profile`'s per-layer sum is from the end-to-end time printed beside it.

    /work/venv/bin/python benchmarks/profile_overhead.py                  # squeezenet1_1, 128x128
    /work/venv/bin/python benchmarks/profile_overhead.py --models mobilenet_v2 --input-size 224
    /work/venv/bin/python benchmarks/profile_overhead.py --rounds 5 --runs 10

A script, not a test: the gap depends on the machine and its load. The instrument costs a Python
call per VM instruction (~2 µs, ~130 calls on squeezenet1_1), partly inside the timed spans, so
on a small input (0.7 ms end to end at 64x64) that alone is ~20%; where a model does real work
(~2.5 ms at 128x128) a quiet machine keeps the gap under 15%. Each round profiles afresh and
prints |sum / end-to-end - 1|; the best round is the instrument's cost, the spread the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

#: What a quiet machine keeps the gap under at 128x128 (the bound tests used to assert).
EXPECTED_GAP = 0.15


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="squeezenet1_1", help="comma-separated zoo names")
    parser.add_argument("--input-size", default="128", help="HEIGHT or HEIGHTxWIDTH [128]")
    parser.add_argument("--rounds", type=int, default=3, help="profiles per model [3]")
    parser.add_argument("--runs", type=int, default=7, help="instrumented runs per profile [7]")
    parser.add_argument("--threads", type=int, help="TVM threads [all cores]")
    args = parser.parse_args(argv)

    from edgecompile.benchmarking.local import parse_list, resolve_host_artifact
    from edgecompile.benchmarking.profile import profile_local

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="edgecompile-profile-") as scratch:
        for name in parse_list(args.models):
            artifact = resolve_host_artifact(name, input_size=args.input_size, output_dir=scratch)
            gaps = []
            for _ in range(args.rounds):
                report = profile_local(
                    str(artifact.directory), runs=args.runs, warmup=2, threads=args.threads
                )
                gaps.append(abs(report.layer_sum_ms / report.end_to_end_ms - 1))
                print(
                    f"{name} {args.input_size}: sum of kernels {report.layer_sum_ms:.3f} ms, "
                    f"end to end {report.end_to_end_ms:.3f} ms, gap {gaps[-1]:.1%}",
                    flush=True,
                )
            best = min(gaps)
            worst = max(worst, best)
            verdict = "within" if best <= EXPECTED_GAP else "ABOVE"
            print(f"{name}: best gap {best:.1%}, {verdict} {EXPECTED_GAP:.0%}")
    return 0 if worst <= EXPECTED_GAP else 1


if __name__ == "__main__":
    sys.exit(main())
