"""The report as text: ``results.csv``, ``index.md`` and the terminal summary."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from edgecompile._atomic import atomic_file
from edgecompile.reporting.measure import OP_CLASSES
from edgecompile.reporting.plots import PLOT_MAC, PLOT_MULTIPLY_ADDS, PLOT_OP_CLASSES
from edgecompile.reporting.results import FP32_OF, NO_PROFILE, TUNED, ModelResult, ZooReport
from edgecompile.reporting.stats import correlation_sentences, engine_ratio, geomean, int8_ratios

CSV_FIELDS = (
    "model",
    "family",
    "input_size",
    "engine",
    "threads",
    "median_ms",
    "p90_ms",
    "min_ms",
    "mean_ms",
    "ratio_to_ort",
    # An int8 engine's median over its fp32 counterpart's (tvm-int8 / tvm, ort-int8 / ort), and
    # tvm-int8's over ort-int8's: the int8 build against ORT on the same QDQ model.
    "ratio_to_fp32",
    "ratio_to_ort_int8",
    "max_relative_error",
    "params",
    "multiply_adds",
    "memory_access",
    "status",
    "error",
    # What this engine's build lost to a failure (our pipeline, or a rule that raised): its
    # times are then partly TVM's default lowering's, not our schedules'.
    "schedule_fallback",
)


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def write_csv(
    path: Path, results: Sequence[ModelResult], engines: Sequence[str], threads: Sequence[int]
) -> None:
    """One row per model × engine × thread count; a failed model keeps its rows, without times."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in results:
            error = "; ".join(f"{f.stage}: {f.problem}" for f in result.failures)
            for engine in engines:
                for count in threads:
                    timing = result.timing(engine, count)
                    row = {
                        "model": result.model,
                        "family": result.family,
                        "input_size": "x".join(map(str, result.input_size)),
                        "engine": engine,
                        "threads": count,
                        "params": _number(result.params),
                        "multiply_adds": _number(result.multiply_adds),
                        "memory_access": _number(result.memory_access),
                        "status": result.status,
                        "error": error,
                        "schedule_fallback": result.schedule_fallbacks.get(engine, ""),
                    }
                    if timing is not None:
                        row.update(
                            median_ms=_number(timing.median_ms, 6),
                            p90_ms=_number(timing.p90_ms, 6),
                            min_ms=_number(timing.min_ms, 6),
                            mean_ms=_number(timing.mean_ms, 6),
                            ratio_to_ort=_number(timing.ratio_to_ort, 6),
                            max_relative_error=_number(timing.max_relative_error, 3),
                        )
                        if engine in FP32_OF:
                            ratio = engine_ratio(result, engine, FP32_OF[engine], count)
                            row["ratio_to_fp32"] = _number(ratio, 6)
                        if engine == "tvm-int8":
                            ratio = engine_ratio(result, engine, "ort-int8", count)
                            row["ratio_to_ort_int8"] = _number(ratio, 6)
                    writer.writerow(row)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(str(cell)) for cell in row) + " |" for row in rows]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _build_seconds(seconds: float | None, reused: bool) -> str:
    return "-" if seconds is None else f"{seconds:.1f}" + (" (reused)" if reused else "")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def fallback_lines(report: ZooReport) -> list[str]:
    """One line per model whose build lost schedules to a failure (our pipeline failed, or a
    rule raised): ``<model> (<engine>): <what>``. Its times are partly TVM's default lowering's."""
    return [
        f"{result.model} ({engine}): {fallback}"
        for result in report.models
        for engine, fallback in result.schedule_fallbacks.items()
    ]


def _fallback_warning(report: ZooReport) -> list[str]:
    """index.md's first paragraph when some build fell back: loud, above every number."""
    lines = fallback_lines(report)
    if not lines:
        return []
    models = len({r.model for r in report.models if r.schedule_fallbacks})
    return [
        f"**Warning: {models} model(s) built with schedule fallbacks** (a failure, not a "
        "decision: our pipeline failed or a schedule rule raised, so TVM's default lowering "
        "built part or all of the model, and its `tvm` times are not our schedules'; "
        "`build --explain` names the kernels):",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]


def write_index(path: Path, report: ZooReport) -> None:
    from edgecompile._table import human_count

    ok = len(report.models) - len(report.failed)
    threads_text = ", ".join(map(str, report.threads))
    board = report.board
    lines = [
        "# edgecompile zoo report" + (f" on a {board['preset']} board" if board else ""),
        "",
        *_fallback_warning(report),
        *_where_measured(report),
        f"{len(report.models)} models ({ok} measured, {len(report.failed)} failed) in "
        f"{report.wall_seconds / 60:.1f} min. Batch 1; each latency is the median of "
        f"{report.repeat} timed runs after {report.warmup} warm-up runs, at {threads_text} "
        f"thread(s), every engine on the same seeded input (seed {report.seed}) with its output "
        + (
            "checked against ONNX Runtime on the building machine first (max relative error "
            "≤ 1e-4). On the board each engine is timed in a process of its own, one after "
            "the other."
            if board
            else "checked against ONNX Runtime first."
        ),
        "",
        "Engines: `tvm` = TVM untuned, with edgecompile's schedules; "
        + (
            f"`{TUNED}` = the same model built with "
            + ("the preset's" if board else "this machine's")
            + " MetaSchedule tuning records applied, timed in the same runs; "
            if TUNED in report.engines
            else ""
        )
        + (
            "`tvm-int8` = the model quantized to int8 on scikit-image's photographs and built "
            "as `build --int8` does (outputs checked by SQNR against fp32); "
            if "tvm-int8" in report.engines
            else ""
        )
        + (
            "`ort-int8` = ONNX Runtime on the same int8 (QDQ) model; "
            if "ort-int8" in report.engines
            else ""
        )
        + (
            f"`ort` = ONNX Runtime {board['onnxruntime']} (CPU provider) in the board's Python "
            "on the static ONNX model TVM compiled. "
            if board and "ort" in report.engines
            else ""
            if board
            else "`ort` = ONNX Runtime (CPU provider) on the static ONNX model TVM compiled; "
            "`torch` = torch eager. "
        )
        + (
            "vs ORT = engine median / ORT median at the same thread count."
            if "ort" in report.engines
            else ""
        ),
        *[f"Note: {note}" for note in report.notes],
        "",
        "## What predicts latency here",
        "",
        "Spearman rank correlation, over the models measured, of each cost with the median "
        "latency (1.0 = the cost orders the models exactly as their latency does):",
        "",
        *[f"- {sentence}" for sentence in correlation_sentences(report.correlations)],
        "",
        f"![latency vs multiply-adds]({PLOT_MULTIPLY_ADDS})",
        f"![latency vs MAC]({PLOT_MAC})",
        "",
        "## Latency",
        "",
    ]
    # Without ORT (a board whose Python has none) there is no ratio to show.
    with_ort = "ort" in report.engines
    headers = ["model", "engine"]
    for count in report.threads:
        headers += [f"{count}T ms", f"{count}T vs ORT"] if with_ort else [f"{count}T ms"]
    headers += ["multiply-adds", "params", "MAC"]
    rows = []
    for result in report.models:
        for position, engine in enumerate(report.engines):
            row = [result.model if position == 0 else "", engine]
            for count in report.threads:
                timing = result.timing(engine, count)
                row.append(_ms(timing.median_ms if timing else None))
                if with_ort:
                    row.append(_ratio(timing.ratio_to_ort if timing else None))
            first = position == 0
            row += [
                human_count(result.multiply_adds) if first and result.multiply_adds else "",
                human_count(result.params) if first and result.params else "",
                human_count(result.memory_access) if first and result.memory_access else "",
            ]
            rows.append(row)
    lines += _markdown_table(headers, rows)
    lines += _int8_section(report)
    if board:
        lines += ["", "## Time by op class", "", NO_PROFILE[0].upper() + NO_PROFILE[1:]]
    else:
        lines += _op_class_section(report)
    lines += [
        "",
        "## ShuffleNet v2's guidelines (G1–G4)",
        "",
        "From `edgecompile inspect`: G1 equal channel width minimises MAC, G2 group convolution "
        "raises MAC, G3 fragmentation lowers parallelism, G4 element-wise ops are not free.",
        "",
    ]
    guidelines = list(dict.fromkeys(g for r in report.models for g in r.findings))
    rows = [
        [result.model, *[result.findings.get(guideline, "-") for guideline in guidelines]]
        for result in report.models
        if result.findings
    ]
    lines += _markdown_table(["model", *guidelines], rows)
    lines += ["", "## Runs", ""]
    tuned = TUNED in report.engines
    rows = []
    for result in report.models:
        row = [
            result.model,
            result.status,
            "x".join(map(str, result.input_size)),
            _build_seconds(result.build_seconds, result.build_reused),
        ]
        if tuned:
            row += [
                _build_seconds(result.tuned_build_seconds, result.tuned_build_reused),
                "-" if result.tuned_kernels is None else str(result.tuned_kernels),
            ]
        row += [
            _seconds(result.stage_seconds.get("bench")),
            f"{result.wall_seconds:.1f}",
            "; ".join(f"{engine}: {text}" for engine, text in result.schedule_fallbacks.items())
            or "-",
            "; ".join(f"{f.stage}: {f.problem}" for f in result.failures) or "-",
        ]
        rows.append(row)
    headers = ["model", "status", "input", "build s"]
    if tuned:
        headers += ["tuned build s", "kernels from records"]
    headers += ["bench s", "wall s", "schedule fallback", "problem"]
    lines += _markdown_table(headers, rows)
    lines += [
        "",
        "`results.csv` has one row per model × engine × thread count: "
        + ", ".join(f"`{name}`" for name in CSV_FIELDS)
        + ". MAC (`memory_access`) is in elements, as in ShuffleNet v2.",
        "",
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines))


def _int8_section(report: ZooReport) -> list[str]:
    """The int8 build against ORT's int8 and against fp32, per model and as a geomean, when
    the report timed both engines of a ratio (``--engines ...,tvm-int8,ort-int8``)."""
    ratios = int8_ratios(report.engines)
    if not ratios or not report.models:
        return []
    lines = [
        "",
        "## int8",
        "",
        "Latency ratios from the same runs at each thread count: "
        + "; ".join(
            f"{label} = `{engine}` median / `{over}` median" for label, engine, over in ratios
        )
        + ". The geomean is over the models with both times.",
        "",
    ]
    headers = ["model"]
    for count in report.threads:
        headers += [f"{count}T {label}" for label, _, _ in ratios]
    rows, columns = [], []
    for result in report.models:
        row = [result.model]
        values = []
        for count in report.threads:
            for _, engine, over in ratios:
                values.append(engine_ratio(result, engine, over, count))
        row += [_ratio(value) for value in values]
        columns.append(values)
        rows.append(row)
    by_column = list(zip(*columns, strict=True)) if columns else []
    rows.append(["geomean", *[_ratio(geomean(column)) for column in by_column]])
    return lines + _markdown_table(headers, rows)


def _where_measured(report: ZooReport) -> list[str]:
    """The header's first lines: the machine (or the board, and the machine that built for
    it) the numbers come from."""
    machine = report.machine
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    load = " / ".join(map(str, machine["load_average"]))
    board = report.board
    if not board:
        return [
            f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, LLVM CPU "
            f"`{machine['llvm_cpu']}`), target `{report.target}`; {versions}, Python "
            f"{machine['python']}; load average at the end {load} (1 / 5 / 15 min).",
        ]
    cores = f"{board['cores']} cores, " if board.get("cores") else ""
    described = ", ".join(str(board[key]) for key in ("os", "glibc") if board.get(key))
    lines = [
        f"Measured {machine['date']} on the board `{board['device']}` (preset "
        f"`{board['preset']}`, LLVM CPU `{machine['llvm_cpu']}`): {board['cpu'] or 'CPU unknown'} "
        f"({cores}`{board['uname']}`{', ' + described if described else ''}), timed by the "
        f"{board['runner']} at {', '.join(map(str, report.threads))} thread(s). Built on "
        f"{machine['cpu']} ({machine['cores']} cores) with {versions}, Python "
        f"{machine['python']}.",
    ]
    if board.get("emulated"):
        lines.append(
            "**Emulated board**: qemu translates every ARM instruction on an x86 host, so these "
            "latencies say nothing about the real board; the report shows it works, not how "
            "fast it is."
        )
    return lines


def _op_class_section(report: ZooReport) -> list[str]:
    """The time-by-op-class table (from each model's TVM profile) and its plot."""
    profile_threads = next((r.profile_threads for r in report.models if r.profile_threads), None)
    lines = [
        "",
        f"## Time by op class (TVM profile, {profile_threads or report.threads[0]} thread)",
        "",
        "Per-kernel times from the instrumented Relax VM, summed by op class: ms (share). "
        "`other` is pools, the classifier matmul and the VM's bookkeeping. The instrument adds "
        "a little to every kernel and the sum and the end-to-end time are separate runs, so "
        "they differ a little (more on a busy machine).",
        "",
    ]
    rows = []
    for result in report.models:
        if not result.op_class_ms:
            continue
        total = sum(result.op_class_ms.values())
        rows.append(
            [
                result.model,
                _ms(total),
                _ms(result.profile_end_to_end_ms),
                *[
                    f"{ms:.2f} ({100 * ms / total:.0f}%)" if total and ms else "-"
                    for ms in (result.op_class_ms.get(name, 0.0) for name in OP_CLASSES)
                ],
            ]
        )
    lines += _markdown_table(["model", "sum ms", "end-to-end ms", *OP_CLASSES], rows)
    lines += ["", f"![time by op class]({PLOT_OP_CLASSES})"]
    return lines


def format_summary(zoo_report: ZooReport) -> str:
    """The terminal summary: latency per engine and thread count, vs ORT, and the ρ sentences."""
    from edgecompile._table import format_table, human_count

    headers = ["model", "mult-adds", "MAC"]
    # TVM's engines against ORT: the ratios the report is about.
    versus_ort = [
        e for e in ("tvm", TUNED) if e in zoo_report.engines and "ort" in zoo_report.engines
    ]
    ratios = int8_ratios(zoo_report.engines)
    for count in zoo_report.threads:
        headers += [f"{engine}@{count} ms" for engine in zoo_report.engines]
        headers += [f"{engine}/ort@{count}" for engine in versus_ort]
        headers += [f"{engine}/{over}@{count}" for _, engine, over in ratios]
    rows = []
    for result in zoo_report.models:
        row = [
            result.model,
            human_count(result.multiply_adds) if result.multiply_adds else "-",
            human_count(result.memory_access) if result.memory_access else "-",
        ]
        for count in zoo_report.threads:
            for engine in zoo_report.engines:
                timing = result.timing(engine, count)
                row.append(_ms(timing.median_ms if timing else None))
            for engine in versus_ort:
                timing = result.timing(engine, count)
                row.append(_ratio(timing.ratio_to_ort if timing else None).replace("×", "x"))
            for _, engine, over in ratios:
                ratio = engine_ratio(result, engine, over, count)
                row.append(_ratio(ratio).replace("×", "x"))
        rows.append(row)
    lines = []
    board = zoo_report.board
    if board:  # where the numbers come from, and what a board report leaves out
        lines.append(
            f"on the {board['preset']} board {board['device']} ({board['cpu'] or board['uname']}"
            f"), timed by the {board['runner']}"
            + (
                " -- EMULATED: the times say nothing about the real board"
                if board["emulated"]
                else ""
            )
        )
        lines += [f"note: {note}" for note in zoo_report.notes]
    lines += [format_table(headers, rows), ""]
    for count in zoo_report.threads if ratios else []:  # the bars are geomeans
        means = [
            f"{engine}/{over} {_ratio(geomean(values)).replace('×', 'x')}"
            for _, engine, over in ratios
            for values in [[engine_ratio(r, engine, over, count) for r in zoo_report.models]]
        ]
        lines.append(f"geomean at {count} thread(s): " + ", ".join(means))
    for sentence in correlation_sentences(zoo_report.correlations):
        lines.append(sentence.replace("**", ""))
    for result in zoo_report.failed:
        failure = result.failures[0]
        lines.append(f"{result.model}: {failure.stage} failed: {failure.problem}")
    for line in fallback_lines(zoo_report):  # times partly TVM's default's: never unnoticed
        lines.append(f"SCHEDULE FALLBACK {line}")
    lines.append(
        f"wrote {zoo_report.index}, {Path(zoo_report.results_csv).name} and "
        f"{len(zoo_report.plots)} plots in {zoo_report.wall_seconds / 60:.1f} min"
    )
    return "\n".join(lines)
