"""Latency vs tuning time, per model and target: issue #15's done-when measurement, unattended.

    python benchmarks/tuning.py --targets host,x86-64-v3,x86-64-v2 \\
        --models mobilenet_v2 shufflenet_v2 squeezenet1_1 mnasnet_a1 --budget 20m \\
        --step-minutes 5 --work /work/tuning-run --results /work/tuning-run/results.jsonl
    python benchmarks/tuning.py ... --resume          # after a crash or reboot: the rest only
    python benchmarks/tuning.py --summarize /work/tuning-run/results.jsonl   # tables + plot

A script, not a test. Per (model, target) pair, in a child process of its own (a crash or a
hang of TVM costs that pair only: recorded as failed with its reason, and the run goes on):

1. untuned builds (our schedules, no records) for the target and for this machine (``host``,
   the "native untuned build" the stand-ins' goals are relative to), timed: the curve's 0 point;
2. ``tune`` with a time budget of ``--step-minutes`` into the pair's one records folder, again
   and again until ``--budget`` is spent (the last step shorter if the budget asks); after each
   step a build with the records, and the point: tuned, untuned (same target), native untuned
   and ONNX Runtime timed in ONE process run, interleaved, ``--threads`` each (``bench_local``
   with ``extra_artifacts``, outputs checked against ORT first); the share of the model's kernel
   time (calls × re-measured time) from kernels whose search record won the re-measurement;
   and the knob values that won (as ``records show`` prints them). A tuned library byte for
   byte the untuned one (no record won) is given the untuned time, its own timing kept as
   ``tuned_measured_ms``: the difference is the run's noise, not tuning.

A second ``tune`` into the same records continues from them, it does not start over: the
search records so far are kept and counted (``trials_before``), the untuned baselines are not
measured again (same trace), MetaSchedule's evolutionary search draws its initial population
from the store's best records (our schedules' default points and the earlier winners), and the
re-measurement judges again only kernels that got new records. What restarts with each step is
MetaSchedule's state: its xgboost cost model and population start fresh, and each step pays the
model's preparation (export, import, task extraction: ~10-30 s) and MetaSchedule's setup of the
tasks' search (~0.1 s a task quiet, far more under load) out of its own time budget, so
``--step-minutes`` spends a little less time searching than one tune of ``--budget`` would.
The curve's x axis is the tuning time actually spent (the tunes' own clocks, builds and
timings not counted).

Every point is appended to ``--results`` as a JSON line as soon as it is measured (fsync'ed),
with a ``start`` line before a pair and a ``done`` or ``failed`` line after it; a truncated last
line (the machine went down mid-write) is skipped when read. ``--resume`` skips the pairs that
have a ``done`` (or ``failed``, unless ``--retry-failed``) line; a pair cut off half-way starts
over, its old records folder moved aside as ``records-<time>`` (nothing is deleted). Every
build and records folder stays under ``--work``.

``--summarize FILE`` (no tuning; also printed at the end of a run): the issue's done-when table
per target -- geomean over the models of tuned / native untuned and tuned / own untuned at the
end of the budget, per model the share of kernel time from won records, whether 95% of the
final gain came within the first half of the budget, tuned / ORT -- and one plot (``--plot``)
of the curves per target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgecompile.errors import EdgecompileError, last_line

DEFAULT_MODELS = ("mobilenet_v2", "shufflenet_v2", "squeezenet1_1", "mnasnet_a1")
#: The preset whose untuned build every target is compared with ("the native untuned build").
NATIVE = "host"
#: Engine names of the extra builds timed beside the tuned one (not names of ``ENGINES``).
UNTUNED_ENGINE = "untuned"
NATIVE_ENGINE = "native-untuned"
#: Issue #15's goals, geomean over the models at the end of the budget: tuned / native
#: untuned per stand-in; tuned / own untuned on this host, and on at least one stand-in.
NATIVE_GOALS = {"x86-64-v3": 1.3, "x86-64-v2": 2.4}
HOST_OWN_GOAL = 0.92
STAND_IN_OWN_GOAL = 0.85
WON_SHARE_GOAL = 0.25
EARLY_GAIN_SHARE = 0.95
#: A final gain below this (1 - tuned / untuned) is within a run's noise: no gain to reach by
#: half the budget (a 0.1% gain reached "1103%" early, a ratio of two noises).
MIN_FINAL_GAIN = 0.01
ORT_GOAL = 0.8
#: A pair's child process gets its budget twice over plus this, for builds and timings; a
#: hang beyond it is killed and recorded as a failure.
PAIR_SLACK_SECONDS = 30 * 60


# --------------------------------------------------------------------------------------------
# the results file


def append_result(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line, on disk before this returns: a crash or a reboot keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(entry, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_results(path: Path) -> list[dict[str, Any]]:
    """The entries of a results file; a line that does not parse (cut off by a crash) is
    skipped, with a note on stderr."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            print(f"{path}:{number}: skipped a damaged line", file=sys.stderr, flush=True)
            continue
        if isinstance(entry, dict) and "kind" in entry:
            entries.append(entry)
    return entries


@dataclass
class PairRun:
    """One attempt at a (model, target) pair as the results file holds it."""

    model: str
    target: str
    attempt: str
    start: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.end is not None and self.end["kind"] == "done"

    @property
    def failed(self) -> bool:
        return self.end is not None and self.end["kind"] == "failed"


def pair_runs(entries: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[PairRun]]:
    """(model, target) → its attempts in the order they started."""
    attempts: dict[str, PairRun] = {}
    by_pair: dict[tuple[str, str], list[PairRun]] = {}
    for entry in entries:
        key = (entry.get("model"), entry.get("target"))
        attempt = entry.get("attempt")
        run = attempts.get(attempt)
        if run is None:
            run = PairRun(str(key[0]), str(key[1]), str(attempt))
            attempts[attempt] = run
            by_pair.setdefault((run.model, run.target), []).append(run)
        if entry["kind"] == "start":
            run.start = entry
        elif entry["kind"] == "point":
            run.points.append(entry)
        elif entry["kind"] in ("done", "failed"):
            run.end = entry
    return by_pair


def chosen_run(runs: Sequence[PairRun]) -> PairRun:
    """The attempt a summary reports: the last one that finished, else the last one."""
    finished = [run for run in runs if run.done]
    return finished[-1] if finished else runs[-1]


def pairs_to_run(
    models: Sequence[str], targets: Sequence[str], entries: Iterable[dict[str, Any]], *,
    retry_failed: bool = False,
) -> list[tuple[str, str]]:  # fmt: skip
    """The (model, target) pairs a ``--resume`` still has to run, target by target."""
    runs = pair_runs(entries)

    def complete(pair: tuple[str, str]) -> bool:
        return any(run.done or (run.failed and not retry_failed) for run in runs.get(pair, []))

    return [(m, t) for t in targets for m in models if not complete((m, t))]


# --------------------------------------------------------------------------------------------
# one pair


def step_budgets(budget_seconds: float, step_seconds: float) -> list[float]:
    """The time budget of each ``tune`` of a curve: whole steps, the last one what is left."""
    if budget_seconds <= 0 or step_seconds <= 0:
        raise EdgecompileError(
            "the budget and the step must be positive", "use e.g. --budget 20m --step-minutes 5"
        )
    count = math.ceil(budget_seconds / step_seconds - 1e-9)
    return [min(step_seconds, budget_seconds - i * step_seconds) for i in range(count)]


def won(kernel: dict[str, Any]) -> bool:
    """A build uses a search record that won a re-measurement: judged now (not pending), or
    by an earlier step's verdict that stays in use while a later step's records wait."""
    return kernel["uses"] == "tuned" and (not kernel.get("pending") or kernel.get("confirmed"))


def won_share(tasks: Sequence[dict[str, Any]]) -> float | None:
    """The share of the model's kernel time (calls × the time of what a build uses) in kernels
    whose search record won the re-measurement (:func:`won`). Kernels of unknown time (never
    measured) are left out; None if every one is."""
    times = [(task["weight"] * task["uses_ms"], task) for task in tasks if task.get("uses_ms")]
    total = sum(t for t, _ in times)
    if not times or total <= 0:
        return None
    return sum(t for t, task in times if won(task)) / total


class PairWork(Protocol):
    """What a pair's curve needs done: builds, tunes, timings (:class:`TvmWork`; tests fake it)."""

    def untuned(self, model: str, target: str, folder: Path) -> Path: ...

    def tune(
        self, model: str, target: str, records: Path, seconds: float, threads: int
    ) -> dict[str, Any]: ...

    def tuned(self, model: str, target: str, records: Path, folder: Path) -> Path: ...

    def time(
        self, main: Path, extras: dict[str, Path], threads: int, repeat: int
    ) -> dict[str, float]: ...

    def winners(self, target: str, records: Path) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Settings:
    budget_seconds: float
    step_seconds: float
    threads: int
    repeat: int
    work: Path
    results: Path


def pair_folder(settings: Settings, model: str, target: str) -> Path:
    return settings.work / target / model


def run_pair(
    model: str, target: str, settings: Settings, work: PairWork, attempt: str | None = None
) -> bool:
    """Measure one pair's curve, each point appended to the results as it comes; a failure is
    recorded as the pair's ``failed`` line (its reason) instead of raised. True if done."""
    from edgecompile._interrupts import raise_if_interrupt

    attempt = attempt or uuid.uuid4().hex[:12]
    folder = pair_folder(settings, model, target)
    base = {"model": model, "target": target, "attempt": attempt}
    append_result(
        settings.results,
        {
            **base,
            "kind": "start",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_seconds": settings.budget_seconds,
            "step_seconds": settings.step_seconds,
            "threads": settings.threads,
            "repeat": settings.repeat,
            "folder": str(folder),
            **machine_facts(),
        },
    )
    try:
        _measure_curve(model, target, settings, work, folder, base)
    except Exception as error:
        raise_if_interrupt(error)
        reason = f"{type(error).__name__}: {last_line(error)}"
        append_result(settings.results, {**base, "kind": "failed", "reason": reason})
        say(f"{model} on {target}: FAILED ({reason}); going on")
        return False
    append_result(settings.results, {**base, "kind": "done"})
    return True


def _measure_curve(
    model: str, target: str, settings: Settings, work: PairWork, folder: Path, base: dict
) -> None:
    records = folder / "records"
    if records.exists():  # an earlier attempt's, cut off: kept aside, the curve starts over
        aside = folder / f"records-{time.strftime('%Y%m%dT%H%M%S')}"
        records.rename(aside)
        say(f"{model} on {target}: an earlier attempt's records moved to {aside}")
    native = is_native(target)
    untuned = work.untuned(model, target, folder / "untuned")
    extras = {} if native else {NATIVE_ENGINE: work.untuned(model, NATIVE, folder / "native")}
    timed = work.time(untuned, extras, settings.threads, settings.repeat)
    point = {"step": 0, "planned_seconds": 0.0, "tuning_seconds": 0.0, "trials": 0}
    record_point(settings, base, point, timed["tvm"], timed, native, None, [])
    spent = planned = 0.0
    trials = 0
    for step, seconds in enumerate(step_budgets(settings.budget_seconds, settings.step_seconds), 1):
        say(f"{model} on {target}: step {step}, tune for {seconds / 60:.1f} min")
        tuned_result = work.tune(model, target, records, seconds, settings.threads)
        spent += tuned_result["seconds"]
        planned += seconds
        trials += tuned_result["trials_run"]
        tuned = work.tuned(model, target, records, folder / f"tuned-{step}")
        extras_now = {UNTUNED_ENGINE: untuned, **extras}
        timed = work.time(tuned, extras_now, settings.threads, settings.repeat)
        point = {"step": step, "planned_seconds": planned, "tuning_seconds": spent}
        point["trials"] = trials
        tune_facts = {k: v for k, v in tuned_result.items() if k != "tasks"}
        if same_library(tuned, untuned):
            # No record won: the build is byte for byte the untuned one, so its time is the
            # untuned one's; what its separate timing said is kept (the run's noise floor).
            point["same_library_as_untuned"] = True
            point["tuned_measured_ms"] = timed["tvm"]
            timed = {**timed, "tvm": timed[UNTUNED_ENGINE]}
        record_point(
            settings, base, point, timed[UNTUNED_ENGINE], timed, native, tuned_result,
            work.winners(target, records), tune_facts,
        )  # fmt: skip


def same_library(one: Path, other: Path) -> bool:
    """Whether two artifacts' libraries are the same bytes (their manifests' sha256)."""
    digests = []
    for artifact in (one, other):
        try:
            digests.append(json.loads((artifact / "manifest.json").read_text())["library_sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return digests[0] == digests[1]


def record_point(
    settings: Settings,
    base: dict[str, Any],
    point: dict[str, Any],
    untuned_ms: float,
    timed: dict[str, float],
    native: bool,
    tuned_result: dict[str, Any] | None,
    winners: list[dict[str, Any]],
    tune_facts: dict[str, Any] | None = None,
) -> None:
    tasks = (tuned_result or {}).get("tasks", [])
    calls = {task["name"]: task["weight"] for task in tasks}
    entry = {
        **base,
        **point,
        "kind": "point",
        "tuned_ms": timed["tvm"],
        "untuned_ms": untuned_ms,
        "native_ms": untuned_ms if native else timed[NATIVE_ENGINE],
        "ort_ms": timed["ort"],
        "won_share": won_share(tasks) if tasks else 0.0,
        "kernels": len(tasks),
        "kernels_won": sum(won(t) for t in tasks),
        "kernels_pending": sum(bool(t.get("pending")) for t in tasks),
        "winners": [{**w, "calls": calls.get(w["name"])} for w in winners],
        "tune": tune_facts,
        "tasks": tasks,
        "loadavg": round(os.getloadavg()[0], 2),
    }
    append_result(settings.results, entry)
    say(
        f"{base['model']} on {base['target']}: {point['tuning_seconds'] / 60:5.1f} min tuning: "
        f"tuned {entry['tuned_ms']:.3f} ms = {entry['tuned_ms'] / untuned_ms:.3f}x untuned, "
        f"{entry['tuned_ms'] / entry['native_ms']:.3f}x native untuned, "
        f"{entry['tuned_ms'] / entry['ort_ms']:.3f}x ORT; "
        f"{entry['kernels_won']}/{entry['kernels']} kernels won, "
        f"{100 * (entry['won_share'] or 0):.0f}% of kernel time"
    )


def is_native(target: str) -> bool:
    """Whether ``target`` (a preset name, as :func:`check_targets` gives it) is this machine's
    own: its untuned build is the native one, not timed twice."""
    return target == NATIVE


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on and with (for the README's sentence about it)."""
    import platform

    from edgecompile import __version__

    try:
        from edgecompile.benchmarking.history import host_cpu_name

        cpu = host_cpu_name()
    except Exception:  # a fact for the record, never worth failing a pair
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "edgecompile": __version__}


def say(text: str) -> None:
    """A progress line of the run, flushed (the log of an unattended run is read afterwards)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class TvmWork:
    """The real builds, tunes and timings."""

    def untuned(self, model: str, target: str, folder: Path) -> Path:
        from edgecompile.builder import build

        return build(model, target, output_dir=folder, records=False).artifact.directory

    def tune(
        self, model: str, target: str, records: Path, seconds: float, threads: int
    ) -> dict[str, Any]:
        from edgecompile.progress import Progress
        from edgecompile.tuning import TUNE_STAGES, tune

        result = tune(
            model, target, time_budget=seconds, records=records, threads=threads,
            progress=Progress(TUNE_STAGES),
        )  # fmt: skip
        return result.to_dict()

    def tuned(self, model: str, target: str, records: Path, folder: Path) -> Path:
        from edgecompile.builder import build

        return build(model, target, output_dir=folder, records=records).artifact.directory

    def time(
        self, main: Path, extras: dict[str, Path], threads: int, repeat: int
    ) -> dict[str, float]:
        from edgecompile.benchmarking import bench_local

        report = bench_local(
            str(main), compare=["ort"], threads=[threads], repeat=repeat,
            extra_artifacts=extras, history=False,
        )  # fmt: skip
        return {timing.engine: timing.median_ms for timing in report.timings}

    def winners(self, target: str, records: Path) -> list[dict[str, Any]]:
        from edgecompile.records import store_for, summarize
        from edgecompile.targets import resolve_target

        return [
            {
                "name": kernel.name,
                "untuned_ms": kernel.untuned_ms,
                "tuned_ms": kernel.tuned_ms,
                "schedule": kernel.schedule,
                "knobs": kernel.knobs,
            }
            for kernel in summarize(store_for(resolve_target(target), records))
            if won(asdict(kernel))
        ]


# --------------------------------------------------------------------------------------------
# the whole run: each pair in a child process


def pair_command(model: str, target: str, settings: Settings, attempt: str) -> list[str]:
    """This script again, for one pair (what :func:`run_pair_isolated` runs)."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--pair", model, target,
        "--attempt", attempt, "--budget", f"{settings.budget_seconds}s",
        "--step-minutes", str(settings.step_seconds / 60), "--threads", str(settings.threads),
        "--repeat", str(settings.repeat), "--work", str(settings.work),
        "--results", str(settings.results),
    ]  # fmt: skip


def run_pair_isolated(model: str, target: str, settings: Settings, timeout: float) -> bool:
    """:func:`run_pair` in a child process of its own session; if it dies (a crash in TVM, a
    kill) or outlives ``timeout`` without its ``done``/``failed`` line, that is recorded as the
    pair's failure here. True if done."""
    attempt = uuid.uuid4().hex[:12]
    child = subprocess.Popen(pair_command(model, target, settings, attempt), start_new_session=True)
    reason = None
    try:
        code = child.wait(timeout=timeout)
        if code != 0:
            reason = f"the pair's process exited with code {code}"
    except subprocess.TimeoutExpired:
        _stop_group(child)
        reason = f"the pair's process ran past {timeout / 60:.0f} min and was stopped"
    except BaseException:  # Ctrl-C or SIGTERM here: the child and its workers go too
        _stop_group(child)
        raise
    entries = read_results(settings.results) if settings.results.exists() else []
    runs = pair_runs(entries).get((model, target), [])
    mine = next((run for run in runs if run.attempt == attempt), None)
    if mine is not None and mine.end is not None:
        return mine.done
    reason = reason or "the pair's process ended without its result"
    base = {"model": model, "target": target, "attempt": attempt}
    append_result(settings.results, {**base, "kind": "failed", "reason": reason})
    say(f"{model} on {target}: FAILED ({reason}); going on")
    return False


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (it and TVM's workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(
    models: Sequence[str],
    targets: Sequence[str],
    settings: Settings,
    *,
    resume: bool = False,
    retry_failed: bool = False,
    isolate: bool = True,
    work: PairWork | None = None,
    timeout: float | None = None,
) -> int:
    """Every pair still to run, target by target; a failed pair does not stop the others.
    The number of pairs that failed."""
    entries = read_results(settings.results) if settings.results.exists() else []
    if entries and not resume:
        raise EdgecompileError(
            f"{settings.results} already holds {len(entries)} results",
            "add --resume to continue that run, or give another --results file",
        )
    todo = pairs_to_run(models, targets, entries, retry_failed=retry_failed)
    skipped = len(models) * len(targets) - len(todo)
    say(
        f"{len(todo)} (model, target) pairs to run"
        + (f", {skipped} complete before" * bool(skipped))
    )
    timeout = timeout or 2 * settings.budget_seconds + PAIR_SLACK_SECONDS
    failed = 0
    for number, (model, target) in enumerate(todo, 1):
        say(f"pair {number}/{len(todo)}: {model} on {target}")
        if isolate:
            done = run_pair_isolated(model, target, settings, timeout)
        else:
            done = run_pair(model, target, settings, work or TvmWork())
        failed += not done
    return failed


# --------------------------------------------------------------------------------------------
# the summary


def geomean(values: Sequence[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def gain_reached_by_half(points: Sequence[dict[str, Any]], budget_seconds: float) -> float | None:
    """How much of the final gain (1 - tuned/untuned at the last point, each point's untuned
    timed beside it) the curve had reached at some point within the first half of the budget
    (planned tuning time); None without a final gain of at least :data:`MIN_FINAL_GAIN`."""
    gains = [(p["planned_seconds"], 1 - p["tuned_ms"] / p["untuned_ms"]) for p in points]
    final = gains[-1][1] if gains else 0.0
    if final < MIN_FINAL_GAIN:
        return None
    early = [gain for planned, gain in gains if planned <= budget_seconds / 2 + 1e-6]
    return max(early, default=0.0) / final


@dataclass(frozen=True)
class ModelLine:
    """One pair at the end of its budget."""

    model: str
    target: str
    tuned_ms: float
    own: float
    native: float
    ort: float
    won_share: float | None
    early_gain: float | None
    minutes: float
    #: The kernels whose search record won, with their knob values (the last point's).
    winners: tuple[dict[str, Any], ...] = ()

    @property
    def early_ok(self) -> bool | None:
        return None if self.early_gain is None else self.early_gain >= EARLY_GAIN_SHARE


def model_line(run: PairRun) -> ModelLine:
    last = run.points[-1]
    return ModelLine(
        model=run.model,
        target=run.target,
        tuned_ms=last["tuned_ms"],
        own=last["tuned_ms"] / last["untuned_ms"],
        native=last["tuned_ms"] / last["native_ms"],
        ort=last["tuned_ms"] / last["ort_ms"],
        won_share=last.get("won_share"),
        early_gain=gain_reached_by_half(run.points, run.start.get("budget_seconds", 0.0)),
        minutes=last["tuning_seconds"] / 60,
        winners=tuple(last.get("winners") or ()),
    )


@dataclass(frozen=True)
class TargetSummary:
    target: str
    lines: list[ModelLine]
    #: (model, why): failed or cut-off pairs, left out of the geomeans.
    missing: list[tuple[str, str]]

    @property
    def native_geomean(self) -> float | None:
        return geomean([line.native for line in self.lines])

    @property
    def own_geomean(self) -> float | None:
        return geomean([line.own for line in self.lines])


def summarize_results(entries: Iterable[dict[str, Any]]) -> list[TargetSummary]:
    """Per target (in the order first met), its finished pairs at the end of their budget."""
    by_target: dict[str, TargetSummary] = {}
    for (model, target), runs in pair_runs(entries).items():
        summary = by_target.setdefault(target, TargetSummary(target, [], []))
        run = chosen_run(runs)
        if run.done and run.points:
            summary.lines.append(model_line(run))
        elif run.failed:
            summary.missing.append((model, f"failed: {run.end.get('reason', '?')}"))
        else:
            summary.missing.append((model, f"not finished ({len(run.points)} points measured)"))
    return list(by_target.values())


def _ratio(value: float | None, goal: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if goal is None else " ✔" if value <= goal else " ✘")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_summary(summaries: Sequence[TargetSummary]) -> str:
    """The done-when tables (Markdown, for the README) and the verdict lines."""
    out: list[str] = []
    header = (
        "| model | tuning min | tuned ms | tuned / own untuned | tuned / native untuned "
        "| tuned / ORT | kernel time from won records | gain reached by half budget |"
    )
    for summary in summaries:
        native_goal = NATIVE_GOALS.get(summary.target)
        out += [f"\n### {summary.target}\n", header, "|---" * 8 + "|"]
        for line in summary.lines:
            early = "-" if line.early_gain is None else f"{_percent(line.early_gain)}"
            early += {True: " ✔", False: " ✘", None: " (no gain)"}[line.early_ok]
            won_goal = WON_SHARE_GOAL if summary.target == NATIVE else None
            won = _percent(line.won_share)
            if won_goal is not None and line.won_share is not None:
                won += " ✔" if line.won_share >= won_goal else " ✘"
            out.append(
                f"| {line.model} | {line.minutes:.1f} | {line.tuned_ms:.3f} | {_ratio(line.own)} "
                f"| {_ratio(line.native)} | {_ratio(line.ort, ORT_GOAL)} | {won} | {early} |"
            )
        own_goal = HOST_OWN_GOAL if summary.target == NATIVE else None
        out.append(
            f"| **geomean** ({len(summary.lines)}) | | | "
            f"{_ratio(summary.own_geomean, own_goal)} | "
            f"{_ratio(summary.native_geomean, native_goal)} | "
            f"{_ratio(geomean([line.ort for line in summary.lines]), ORT_GOAL)} | | |"
        )
        for model, why in summary.missing:
            out.append(f"\n{model}: {why}")
        out += winner_lines(summary.lines)
    out += ["", *verdicts(summaries)]
    return "\n".join(out)


def winner_lines(lines: Sequence[ModelLine], top: int = 5) -> list[str]:
    """Per model, the kernels whose search record won that saved the most time (calls × ms)
    and the knob values that won, as ``records show`` prints them."""
    out = []
    for line in lines:
        if not line.winners:
            continue

        def saved(kernel: dict[str, Any]) -> float:
            before, after = kernel.get("untuned_ms"), kernel.get("tuned_ms")
            return (kernel.get("calls") or 1) * (before - after) if before and after else 0.0

        out.append(f"\n{line.model}: {len(line.winners)} kernels use a search record; most saved:")
        for kernel in sorted(line.winners, key=saved, reverse=True)[:top]:
            out.append(
                f"- {kernel['name']} ×{kernel.get('calls') or '?'}: {kernel.get('untuned_ms')} → "
                f"{kernel.get('tuned_ms')} ms ({kernel.get('knobs') or 'no knobs: generic space'})"
            )
    return out


def verdicts(summaries: Sequence[TargetSummary]) -> list[str]:
    """Issue #15's done-when goals, each with the measured value and ✔/✘."""
    lines = ["Done when (geomean over the finished models, at the end of the budget):"]
    by_target = {summary.target: summary for summary in summaries}
    for target, goal in NATIVE_GOALS.items():
        if target in by_target:
            value = by_target[target].native_geomean
            lines.append(f"- {target}: tuned / native untuned {_ratio(value, goal)} (≤ {goal})")
    stand_ins = {t: by_target[t].own_geomean for t in NATIVE_GOALS if t in by_target}
    best = min(((v, t) for t, v in stand_ins.items() if v is not None), default=None)
    if best is not None:
        lines.append(
            f"- tuned ≤ {STAND_IN_OWN_GOAL}x own untuned on at least one stand-in: best "
            f"{best[1]} {_ratio(best[0], STAND_IN_OWN_GOAL)}"
        )
    host = by_target.get(NATIVE)
    if host is not None:
        lines.append(f"- host: tuned / untuned {_ratio(host.own_geomean, HOST_OWN_GOAL)}"
                     f" (≤ {HOST_OWN_GOAL})")  # fmt: skip
        short = [line.model for line in host.lines if (line.won_share or 0) < WON_SHARE_GOAL]
        mark = "✔" if host.lines and not short else "✘"
        lines.append(
            f"- host: ≥ {WON_SHARE_GOAL:.0%} of each model's kernel time from won records "
            f"{mark}" + (f" (short: {', '.join(short)})" if short else "")
        )
    every = [line for summary in summaries for line in summary.lines]
    late = [f"{line.model} on {line.target}" for line in every if line.early_ok is False]
    mark = "✔" if every and not late else "✘"
    lines.append(
        f"- {EARLY_GAIN_SHARE:.0%} of the final gain within the first half of the budget "
        f"{mark}" + (f" (not: {', '.join(late)})" if late else "")
    )
    above = [f"{line.model} on {line.target}" for line in every if line.ort > ORT_GOAL]
    lines.append(
        f"- beyond the issue: tuned ≤ {ORT_GOAL}x ORT on every model "
        + ("✔" if every and not above else f"✘ ({len(above)} of {len(every)} above)")
    )
    return lines


def plot_curves(entries: Sequence[dict[str, Any]], path: Path) -> Path:
    """One column per target: tuned / own untuned (top) and tuned / native untuned (bottom)
    against the tuning time spent, a line per model, the issue's goals dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[PairRun]] = {}
    for (_, target), attempts in pair_runs(entries).items():
        run = chosen_run(attempts)
        if run.points:
            runs.setdefault(target, []).append(run)
    columns = max(1, len(runs))
    figure, axes = plt.subplots(2, columns, figsize=(5 * columns, 7), squeeze=False)
    for column, (target, target_runs) in enumerate(runs.items()):
        own_axis, native_axis = axes[0][column], axes[1][column]
        for run in target_runs:
            minutes = [p["tuning_seconds"] / 60 for p in run.points]
            style = "o-" if run.done else "o:"
            own_axis.plot(minutes, [p["tuned_ms"] / p["untuned_ms"] for p in run.points], style,
                          label=run.model)  # fmt: skip
            native_axis.plot(minutes, [p["tuned_ms"] / p["native_ms"] for p in run.points],
                             style, label=run.model)  # fmt: skip
        own_goal = HOST_OWN_GOAL if target == NATIVE else STAND_IN_OWN_GOAL
        own_axis.axhline(own_goal, color="grey", linestyle="--", linewidth=0.8)
        if target in NATIVE_GOALS:
            native_axis.axhline(NATIVE_GOALS[target], color="grey", linestyle="--", linewidth=0.8)
        own_axis.set_title(target)
        own_axis.set_ylabel("tuned / own untuned")
        native_axis.set_ylabel("tuned / native (host) untuned")
        native_axis.set_xlabel("tuning time (min)")
        own_axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def print_summary(results: Path, plot: Path | None) -> None:
    entries = read_results(results)
    print(format_summary(summarize_results(entries)), flush=True)
    if plot is not None:
        print(f"\nplot: {plot_curves(entries, plot)}", flush=True)


# --------------------------------------------------------------------------------------------
# the command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument(
        "--targets", "--target", default=NATIVE,
        help="Comma-separated presets this machine runs (default host), e.g. "
        "host,x86-64-v3,x86-64-v2.",
    )  # fmt: skip
    parser.add_argument("--budget", default="20m", help="Tuning time per (model, target).")
    parser.add_argument(
        "--step-minutes", type=float, default=5.0, help="Tuning time between two points."
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30, help="Timed calls per engine.")
    parser.add_argument("--work", type=Path, default=Path("tuning-run"),
                        help="Builds and records (kept).")  # fmt: skip
    parser.add_argument("--results", type=Path, help="JSON lines (default WORK/results.jsonl).")
    parser.add_argument("--plot", type=Path, help="The curves (default: the results' .png).")
    parser.add_argument("--resume", action="store_true", help="Skip the pairs already done.")
    parser.add_argument(
        "--retry-failed", action="store_true", help="With --resume, run failed pairs again."
    )
    parser.add_argument(
        "--pair-timeout", type=float, help="Minutes before a pair's process is stopped "
        "(default: twice the budget + 30)."
    )  # fmt: skip
    parser.add_argument("--summarize", type=Path, metavar="FILE", help="Only the summary.")
    parser.add_argument("--pair", nargs=2, metavar=("MODEL", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--attempt", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from edgecompile._interrupts import interrupt_exit_code, signal_handlers

    args = parse_args(argv)
    # SIGTERM and SIGHUP raise like Ctrl-C, so a stopped run stops its pair's process too.
    with signal_handlers():
        try:
            return _run(args)
        except EdgecompileError as exc:
            fix = f" — {exc.fix}" if exc.fix else ""
            print(f"Error: {exc.problem}{fix}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print("interrupted: the results so far are in the results file", file=sys.stderr)
            return interrupt_exit_code(exc)


def _run(args: argparse.Namespace) -> int:
    from edgecompile.tuning import parse_duration

    if args.summarize is not None:
        if not args.summarize.is_file():
            raise EdgecompileError(
                f"no results file {args.summarize}", "give the --results file of a run"
            )
        print_summary(args.summarize, args.plot or args.summarize.with_suffix(".png"))
        return 0
    results = args.results or args.work / "results.jsonl"
    settings = Settings(
        budget_seconds=parse_duration(args.budget) or 0.0,
        step_seconds=args.step_minutes * 60,
        threads=args.threads,
        repeat=args.repeat,
        work=args.work.resolve(),
        results=results.resolve(),
    )
    step_budgets(settings.budget_seconds, settings.step_seconds)  # checked before any work
    if args.pair is not None:  # the child process of one pair
        return 0 if run_pair(*args.pair, settings, TvmWork(), args.attempt) else 1
    targets = check_targets([t.strip() for t in args.targets.split(",") if t.strip()])
    failed = run_all(
        args.models, targets, settings, resume=args.resume, retry_failed=args.retry_failed,
        timeout=None if args.pair_timeout is None else args.pair_timeout * 60,
    )  # fmt: skip
    print_summary(settings.results, args.plot or settings.results.with_suffix(".png"))
    return 1 if failed else 0


def check_targets(targets: Sequence[str]) -> list[str]:
    """Each target's preset name, checked to be one whose libraries this machine runs (they
    are timed here), before any work."""
    from edgecompile.targets import resolve_target

    if not targets:
        raise EdgecompileError("no targets given", "use e.g. --targets host,x86-64-v3")
    names = []
    for target in targets:
        preset = resolve_target(target)
        if not preset.is_host:
            raise EdgecompileError(
                f"{target} does not run on this machine",
                "tune and time only presets this machine runs, e.g. host, x86-64-v3, x86-64-v2",
            )
        names.append(preset.name)
    return names


if __name__ == "__main__":
    sys.exit(main())
