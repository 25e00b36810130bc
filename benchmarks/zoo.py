"""The zoo benchmark behind `edgecompile report`: every zoo model at its default size, built for
this machine, timed against ONNX Runtime and torch eager at 1 and 2 threads, and profiled; with
tuning records for this machine (the default cache or --records DIR), also built with them and
timed as tvm-tuned.

    /work/venv/bin/python benchmarks/zoo.py                          # whole zoo -> report/
    /work/venv/bin/python benchmarks/zoo.py --models 'mobilenet_v2*' -o /tmp/report
    /work/venv/bin/python benchmarks/zoo.py --models shufflenet --threads 1 --repeat 20
    /work/venv/bin/python benchmarks/zoo.py --models squeezenet1_1 --records /tmp/records

Writes report/index.md (tables, G1–G4 findings, Spearman ρ of multiply-adds and of MAC with
latency), report/results.csv and three PNG plots, then prints the summary table, and a warning
line on stderr for models whose build fell back to TVM's default lowering (our pipeline failed,
or a schedule rule raised). Host builds are cached in report/builds/ and reused by the next run
(--rebuild to redo them). A script, not a
test: numbers depend on the machine and its load (index.md records both); rerun on a quiet
machine before quoting them.
"""

from __future__ import annotations

import argparse
import sys

import edgecompile
from edgecompile.errors import EdgecompileError
from edgecompile.progress import Progress
from edgecompile.reporting import DEFAULT_ENGINES, format_summary, progress_stages, select_models


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", help="names, globs or substrings, comma-separated [all]")
    parser.add_argument("-o", "--output-dir", default="report", help="output folder [report]")
    parser.add_argument("--threads", type=_numbers, default=[1, 2], help="e.g. 1,2 [1,2]")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per engine [10]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first [2]")
    parser.add_argument(
        "--engines", default=",".join(DEFAULT_ENGINES), help="engines to time [all available]"
    )
    parser.add_argument("--input-size", help="HEIGHT or HEIGHTxWIDTH for every model")
    parser.add_argument("--rebuild", action="store_true", help="ignore cached builds")
    parser.add_argument(
        "--records", metavar="DIR", help="tuning records for tvm-tuned [the default cache]"
    )
    parser.add_argument(
        "--build-jobs", type=int, metavar="N", help="models built at once [one per core, <= 4]"
    )
    args = parser.parse_args(argv)
    try:
        names = select_models(args.models)
        result = edgecompile.report(
            names,
            args.output_dir,
            threads=args.threads,
            engines=[engine for engine in args.engines.split(",") if engine],
            repeat=args.repeat,
            warmup=args.warmup,
            input_size=args.input_size,
            rebuild=args.rebuild,
            records=args.records,
            build_jobs=args.build_jobs,
            progress=Progress(progress_stages(len(names), args.build_jobs)),
        )
    except EdgecompileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    fell_back = [model.model for model in result.models if model.schedule_fallbacks]
    if fell_back:  # their tvm times are partly TVM's default lowering's: never a quiet line
        print(
            f"warning: {len(fell_back)} model(s) built with schedule fallbacks "
            f"({', '.join(fell_back)}): see the top of {result.index}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
