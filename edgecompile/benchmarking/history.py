"""The bench history: every bench's numbers, so a board bench can be read next to this machine's.

Every bench, here (:func:`edgecompile.benchmarking.bench_local`) or on a board
(:func:`edgecompile.device.remote.bench_on_device`), appends one JSON line per engine and
thread count (:func:`record_history`); a board bench then finds this machine's latest numbers
for the same model and input shape (:func:`compare_with_host`). Imports nothing of either
bench, so both can use it.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from edgecompile._cache import cache_root
from edgecompile.artifact import Artifact
from edgecompile.benchmarking.timing import EngineTiming

#: Where a bench appends its numbers: True = :func:`default_history_path`, False = nowhere.
History = str | Path | bool
#: A file of its own for the history; else ``bench.jsonl`` in the cache folder (below).
HISTORY_ENV = "EDGECOMPILE_BENCH_HISTORY"
HISTORY_VERSION = 1
_REQUIRED = {"run": str, "time": str, "model": str, "input_shapes": list, "engine": str}


def default_history_path() -> Path:
    """``$EDGECOMPILE_BENCH_HISTORY``, else ``bench.jsonl`` in edgecompile's cache root."""
    if os.environ.get(HISTORY_ENV):
        return Path(os.environ[HISTORY_ENV]).expanduser()
    return cache_root() / "bench.jsonl"


def _history_file(history: History | None) -> Path | None:
    if history is False:
        return None
    if history is True or history is None:
        return default_history_path()
    return Path(history).expanduser()


def host_cpu_name() -> str:
    """This machine's CPU as /proc/cpuinfo names it ("AMD EPYC"), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _utc_now() -> str:
    # ISO 8601 with a fixed width and "Z": strings sort in time order, so readers need no parsing.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# writing


def history_entry(
    artifact: Artifact,
    input_shapes: Sequence[Sequence[int]],
    timing: EngineTiming,
    where: Mapping[str, Any],
    library_sha256: str | None,
    *,
    run: str = "",
    time_utc: str = "",
) -> dict[str, Any]:
    """One history line: which build of which model, one engine at one thread count, where.

    ``library_sha256`` is the TVM library timed (None for ORT/torch, which do not run it);
    ``run`` groups the lines of one bench call, so a reader never mixes two runs' numbers;
    left empty, it and ``time_utc`` are stamped when the lines are recorded.
    """
    return {
        "version": HISTORY_VERSION,
        "run": run,
        "time": time_utc,
        "model": artifact.manifest.model,
        "input_shapes": [[int(d) for d in shape] for shape in input_shapes],
        "preset": artifact.manifest.preset,
        "mcpu": artifact.manifest.target.get("mcpu"),
        "weights": artifact.manifest.weights,
        "library_sha256": library_sha256,
        "engine": timing.engine,
        "threads": timing.threads,
        "median_ms": timing.median_ms,
        "p90_ms": timing.p90_ms,
        "min_ms": timing.min_ms,
        "where": dict(where),
    }


def record_history(entries: list[dict[str, Any]], history: History, notes: list[str]) -> None:
    """Stamp ``entries`` as one run and append them; a failure is a note, not a failed bench:
    the measurement the user asked for is worth more than its copy in the cache."""
    run, now = uuid.uuid4().hex[:12], _utc_now()
    for entry in entries:
        entry["run"], entry["time"] = entry["run"] or run, entry["time"] or now
    try:
        append_history(entries, history)
    except OSError as error:
        notes.append(f"bench history not written ({error.strerror or error})")


def append_history(entries: Sequence[Mapping[str, Any]], history: History = True) -> Path | None:
    """Append ``entries`` to the history as JSON lines, in one ``O_APPEND`` write.

    One write: two benches appending at once do not interleave their lines, and a crash leaves
    at most a torn last line, which :func:`read_history` skips. A torn line from an earlier crash
    has no newline, so one goes first: else the new first line would be glued to it and lost.
    """
    path = _history_file(history)
    if path is None or not entries:
        return None
    payload = "".join(json.dumps(dict(entry), sort_keys=True) + "\n" for entry in entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            payload = "\n" + payload
        data = payload.encode()
        while data:  # a short write (signal, nearly full disk) leaves the rest to write
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    return path


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(size - 1)
        return file.read(1)


# --------------------------------------------------------------------------------------------
# reading it back for a board bench


def read_history(history: History = True) -> list[dict[str, Any]]:
    """Every well-formed line of the history, oldest first; torn or foreign lines are skipped
    (a crash mid-append, or a newer version's line this one cannot read)."""
    path = _history_file(history)
    if path is None or not path.is_file():
        return []
    entries = []
    with path.open("rb") as file:
        for raw in file:
            try:
                entry = json.loads(raw)
            except ValueError:  # includes UnicodeDecodeError
                continue
            if (
                isinstance(entry, dict)
                and entry.get("version") == HISTORY_VERSION
                and all(isinstance(entry.get(k), kind) for k, kind in _REQUIRED.items())
                and isinstance(entry.get("where"), dict)
                and isinstance(entry.get("median_ms"), (int, float))
            ):
                entries.append(entry)
    return entries


def host_history(
    model: str,
    input_shapes: Sequence[Sequence[int]],
    *,
    threads: int | None = None,
    history: History = True,
) -> list[dict[str, Any]]:
    """The latest host bench of ``model`` at ``input_shapes`` (any host preset): its lines at one
    thread count, one per engine; [] when this machine never benched it.

    ``threads`` picks that count when it was measured, else the latest run's counts are taken,
    closest to ``threads`` (fewest when None). Lines of one run only: engines timed in the same
    run saw the same load, so their ratios mean something; a mix of runs would not.
    """
    shapes = [[int(d) for d in shape] for shape in input_shapes]
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for entry in read_history(history):
        if (
            entry["where"].get("kind") == "host"
            and entry["model"] == model
            and entry["input_shapes"] == shapes
        ):
            groups.setdefault((entry["run"], entry.get("threads")), []).append(entry)
    if not groups:
        return []
    same = [lines for (_, count), lines in groups.items() if threads and count == threads]

    def latest_first(lines: list[dict[str, Any]]) -> tuple[str, int]:
        count = lines[0].get("threads") or 0
        return lines[0]["time"], -abs(count - threads) if threads else -count

    return max(same or groups.values(), key=latest_first)


@dataclass(frozen=True)
class HostComparison:
    """This machine's latest numbers for a board result's model, and the board's ratio to them."""

    cpu: str
    threads: int | None
    time: str
    preset: str
    library_sha256: str | None
    #: engine → {"median_ms", "p90_ms", "min_ms"}, in the order the host bench timed them.
    timings: dict[str, dict[str, float]]
    #: board median / host TVM median (None when the host run did not time "tvm").
    board_over_host_tvm: float | None


def compare_with_host(
    model: str,
    input_shapes: Sequence[Sequence[int]],
    board_median_ms: float,
    *,
    threads: int | None = None,
    history: History = True,
) -> HostComparison | None:
    """The board's median next to :func:`host_history`; None when there is nothing to compare."""
    lines = host_history(model, input_shapes, threads=threads, history=history)
    if not lines:
        return None
    first = lines[0]
    timings = {
        line["engine"]: {
            key: float(line.get(key) or 0.0) for key in ("median_ms", "p90_ms", "min_ms")
        }
        for line in lines
    }
    tvm = timings.get("tvm", {}).get("median_ms")
    return HostComparison(
        cpu=str(first["where"].get("cpu") or "unknown CPU"),
        threads=first.get("threads"),
        time=first["time"],
        preset=str(first.get("preset") or "host"),
        library_sha256=next(
            (line.get("library_sha256") for line in lines if line["engine"] == "tvm"), None
        ),
        timings=timings,
        board_over_host_tvm=board_median_ms / tvm if tvm else None,
    )


def host_bench_command(artifact: Artifact, threads: int | None) -> str:
    """The command that records host numbers a board bench of ``artifact`` can be read against:
    same model (the ONNX file for an ONNX build), same input size, the board's thread count."""
    manifest = artifact.manifest
    source = manifest.model
    if manifest.weights.startswith("ONNX file "):
        source = manifest.weights.removeprefix("ONNX file ")
    words = ["edgecompile", "bench", source]
    shape = manifest.inputs[0]["shape"] if len(manifest.inputs) == 1 else []
    if len(shape) == 4:  # NCHW: pin the size, else the host build takes the model's default
        height, width = shape[2], shape[3]
        words += ["--input-size", str(height) if height == width else f"{height}x{width}"]
    words += ["--threads", str(threads or 1)]
    return " ".join(words)


class BoardBench(Protocol):
    """What :func:`format_host_comparison` reads of a board bench
    (:class:`edgecompile.device.remote.BenchResult`), named here so this module need not import
    the board's."""

    @property
    def model(self) -> str: ...

    @property
    def input_shapes(self) -> list[list[int]]: ...

    @property
    def host(self) -> HostComparison | None: ...

    @property
    def host_command(self) -> str: ...


def format_host_comparison(result: BoardBench) -> str:
    """One line under a board bench's numbers: the host's, or how to get them."""
    host = result.host
    if host is None:
        shape = ", ".join("x".join(map(str, s)) for s in result.input_shapes)
        return (
            f"host: no measurements of {result.model} ({shape}) on this machine yet; "
            f"record them with `{result.host_command}`"
        )
    count = host.threads
    threads = f"{count} thread{'s' if count != 1 else ''}" if count else "? threads"
    when = host.time.replace("T", " ")[:16] + " UTC"
    preset = "" if host.preset == "host" else f", {host.preset}"
    engines = ", ".join(f"{engine} {t['median_ms']:.2f} ms" for engine, t in host.timings.items())
    ratio = host.board_over_host_tvm
    tail = f" -> board/host tvm {ratio:.1f}x" if ratio is not None else ""
    return f"host ({host.cpu}, {threads}{preset}, {when}): {engines}{tail}"
