"""Tuning records: one MetaSchedule JSON database per TVM target, under a records directory.

Stage 3b of the pipeline: ``tune`` writes records here, ``build`` reads them. Layout::

    <root>/                                   default ~/.cache/edgecompile/records
      <mcpu>-<arch>-<digest>/                 one store per target (digest of its JSON)
        target.json                           the full TVM target and the preset it came from
        database_workload.json                MetaSchedule's JSONDatabase files
        database_tuning_record.json
        kernels.json                          workload → kernel name, for display
        baselines.json                        trace digest → untuned schedule it replays
        choices.json                          workload → what a build uses (tune's re-measure)
        .lock                                 held while a tune or an import writes

Why one store per target: MetaSchedule does not filter records by ``mcpu``, so one database for
two targets would apply x86 schedules to a Cortex-A72. The store's name is derived from the
target itself, so records for one target cannot be looked up for another.

Crash safety: the database appends one line per measured candidate (open, write, close), so a
``kill -9`` can at worst leave a torn last line; every reader drops torn lines (and records
whose workload line is missing), and a writer repairs the files before appending. Readers never
modify files: they load a cleaned snapshot, so a build can run beside a tune.

Why choices: a record's time is one measurement, and the fastest of a few hundred search
candidates beats one measurement of the untuned schedule by luck alone (measured: mobilenet_v2
came out 5% slower "tuned"). ``tune`` therefore re-measures the search's best records against the
untuned schedule, interleaved, and writes the verdict per workload to choices.json; a build
applies only the chosen record, or none at all when the untuned schedule won.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgecompile._atomic import atomic_file
from edgecompile.errors import EdgecompileError
from edgecompile.targets import BoardPreset

RECORDS_ENV = "EDGECOMPILE_RECORDS"
WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
TARGET_FILE = "target.json"
LOCK_FILE = ".lock"
NAMES_FILE = "kernels.json"
BASELINES_FILE = "baselines.json"
CHOICES_FILE = "choices.json"
#: ``Choice.record`` when the untuned schedule (ours, or TVM's default) won the re-measurement.
UNTUNED = "untuned"
EXPORT_FORMAT = "edgecompile-records/1"


def default_records_root() -> Path:
    """``$EDGECOMPILE_RECORDS``, else ``$XDG_CACHE_HOME/edgecompile/records`` (~/.cache)."""
    if os.environ.get(RECORDS_ENV):
        return Path(os.environ[RECORDS_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgecompile" / "records"


def canonical_target(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


def store_name(target: dict[str, Any]) -> str:
    """``cortex-a72-aarch64-1f2e3d4c5b``: readable, and unique to the full target JSON."""
    digest = hashlib.sha256(canonical_target(target).encode()).hexdigest()[:10]
    mcpu = str(target.get("mcpu") or "generic")
    arch = str(target.get("mtriple") or target.get("kind", "llvm")).split("-")[0]
    return f"{mcpu}-{arch}-{digest}".replace("/", "_")


@dataclass(frozen=True)
class CleanLines:
    """The parseable lines of a store, and how many torn or orphaned ones were left out."""

    workloads: list[str]
    records: list[str]
    dropped: int

    def digest(self) -> str:
        content = "\n".join([*self.workloads, "", *self.records])
        return hashlib.sha256(content.encode()).hexdigest()


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def _clean(workload_path: Path, record_path: Path) -> CleanLines:
    workloads: list[str] = []
    dropped = 0
    for line in _read_lines(workload_path):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not (isinstance(entry, list) and len(entry) == 2):
            # Records point at workloads by line number: only a torn line at the very end can be
            # dropped without renumbering, and a torn line can only be the last one written.
            dropped += 1
            break
        workloads.append(line)
    records: list[str] = []
    for line in _read_lines(record_path):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        valid = (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], int)
            and 0 <= entry[0] < len(workloads)
        )
        if valid:
            records.append(line)
        elif line.strip():
            dropped += 1
    return CleanLines(workloads, records, dropped)


@dataclass(frozen=True)
class Choice:
    """What a build uses for one workload, decided by re-measuring (``tune``'s last step)."""

    #: Trace digest of the chosen record, or :data:`UNTUNED`.
    record: str
    #: Re-measured medians; ``tuned_ms`` is the best search record's (None if the search found
    #: nothing faster even in its own single measurements, so nothing was re-measured).
    untuned_ms: float | None
    tuned_ms: float | None
    #: The workload's record count when decided: once a later tune adds records, decide again.
    records: int

    @property
    def uses_tuned(self) -> bool:
        return self.record != UNTUNED

    @property
    def uses(self) -> str:
        return "tuned" if self.uses_tuned else UNTUNED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Choice:
        def number(key: str) -> float | None:
            value = entry.get(key)
            return None if value is None else float(value)

        return cls(
            str(entry["record"]), number("untuned_ms"), number("tuned_ms"), int(entry["records"])
        )


def _workload_hash(workload_line: str) -> str:
    return str(json.loads(workload_line)[0])


@dataclass(frozen=True)
class RecordStore:
    """The records of one target: a folder holding a MetaSchedule JSON database."""

    path: Path
    target: dict[str, Any]
    preset: str

    @property
    def workload_path(self) -> Path:
        return self.path / WORKLOADS_FILE

    @property
    def record_path(self) -> Path:
        return self.path / RECORDS_FILE

    def exists(self) -> bool:
        return self.record_path.exists() and self.record_path.stat().st_size > 0

    def lines(self) -> CleanLines:
        return _clean(self.workload_path, self.record_path)

    def records_by_workload(self) -> dict[str, list[Any]]:
        """Workload hash → the parsed bodies of its valid records, in the order written."""
        clean = self.lines()
        hashes = [_workload_hash(line) for line in clean.workloads]
        grouped: dict[str, list[Any]] = {}
        for line in clean.records:
            index, body = json.loads(line)
            grouped.setdefault(hashes[index], []).append(body)
        return grouped

    def kernel_names(self) -> dict[str, str]:
        """Workload hash → the kernel's name in the model it was tuned for (for display)."""
        try:
            return dict(json.loads((self.path / NAMES_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    def baselines(self) -> dict[str, str]:
        """Trace digest → who made it, for the untuned baselines ``tune`` measured first.

        Search candidates descend from those traces (they seed the search) and keep their
        marks, so a record is a baseline only if its trace is exactly a baseline's.
        """
        try:
            return dict(json.loads((self.path / BASELINES_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    def add_baselines(self, baselines: dict[str, str]) -> None:
        merged = {**self.baselines(), **baselines}
        with atomic_file(self.path / BASELINES_FILE) as staging:
            staging.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")

    def choices(self) -> dict[str, Choice]:
        """Workload hash → what a build uses for it (see :class:`Choice`)."""
        try:
            entries = json.loads((self.path / CHOICES_FILE).read_text())
            return {str(k): Choice.from_dict(v) for k, v in dict(entries).items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def add_choices(self, choices: dict[str, Choice]) -> None:
        merged = {**self.choices(), **choices}
        with atomic_file(self.path / CHOICES_FILE) as staging:
            staging.write_text(
                json.dumps({k: c.to_dict() for k, c in merged.items()}, indent=1, sort_keys=True)
                + "\n"
            )

    def add_kernel_names(self, names: dict[str, str]) -> None:
        merged = {**self.kernel_names(), **names}
        with atomic_file(self.path / NAMES_FILE) as staging:
            staging.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")

    def applied_records(self) -> list[str]:
        """The record lines a build applies. Per workload: with a choice, only the chosen
        record (none when the untuned schedule won); with only untuned baselines, none (they
        replay what the build compiles anyway); otherwise all (MetaSchedule takes the
        fastest: a tune interrupted before its re-measurement, or records from elsewhere)."""
        clean = self.lines()
        choices = self.choices()
        baselines = self.baselines()
        hashes = [_workload_hash(line) for line in clean.workloads]
        parsed = [json.loads(line) for line in clean.records]
        searched = {index for index, body in parsed if trace_digest(body) not in baselines}
        applied = []
        for line, (index, body) in zip(clean.records, parsed, strict=True):
            choice = choices.get(hashes[index])
            chosen = choice is not None and trace_digest(body) == choice.record
            if chosen or (choice is None and index in searched):
                applied.append(line)
        return applied

    def digest(self) -> str:
        """Identity of what a build applies from this store (records and choices)."""
        clean = self.lines()
        return CleanLines(clean.workloads, self.applied_records(), 0).digest()

    def snapshot(self) -> Any:
        """A read-only MetaSchedule database of the records a build applies (files untouched)."""
        from tvm.s_tir import meta_schedule as ms

        clean = self.lines()
        with tempfile.TemporaryDirectory(prefix="edgecompile-records-") as scratch:
            workloads, records = Path(scratch) / WORKLOADS_FILE, Path(scratch) / RECORDS_FILE
            workloads.write_text("".join(f"{line}\n" for line in clean.workloads))
            records.write_text("".join(f"{line}\n" for line in self.applied_records()))
            # JSONDatabase reads both files in its constructor and only touches them on commit.
            return ms.database.JSONDatabase(
                str(workloads), str(records), allow_missing=False, module_equality="structural"
            )

    @contextlib.contextmanager
    def writer(self) -> Iterator[Any]:
        """The store's JSON database, for appending; one writer at a time (a file lock)."""
        from tvm.s_tir import meta_schedule as ms

        self.path.mkdir(parents=True, exist_ok=True)
        self._write_target()
        with open(self.path / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EdgecompileError(
                    f"another edgecompile process is writing the records in {self.path}",
                    "wait for that tune or import to finish, or pass --records DIR for a "
                    "separate set of records",
                ) from None
            self._repair()
            yield ms.database.JSONDatabase(
                str(self.workload_path),
                str(self.record_path),
                allow_missing=True,
                module_equality="structural",
            )

    def _write_target(self) -> None:
        target_file = self.path / TARGET_FILE
        if target_file.exists():
            stored = json.loads(target_file.read_text())
            if canonical_target(stored.get("target", {})) != canonical_target(self.target):
                raise EdgecompileError(
                    f"{self.path} holds records for a different target ({stored.get('preset')})",
                    "pass the records folder's parent, or a separate --records DIR",
                )
            return
        with atomic_file(target_file) as staging:
            staging.write_text(
                json.dumps({"preset": self.preset, "target": self.target}, indent=2) + "\n"
            )

    def _repair(self) -> None:
        """Rewrite the files without torn lines (atomically), so appends start on a clean line."""
        clean = self.lines()
        if clean.dropped == 0 and all(
            not path.exists() or path.read_bytes().endswith(b"\n") or path.stat().st_size == 0
            for path in (self.workload_path, self.record_path)
        ):
            return
        for path, lines in (
            (self.workload_path, clean.workloads),
            (self.record_path, clean.records),
        ):
            with atomic_file(path) as staging:
                staging.write_text("".join(f"{line}\n" for line in lines))


def _root(records: str | Path | None) -> Path:
    return Path(records).expanduser() if records is not None else default_records_root()


def store_for(preset: BoardPreset, records: str | Path | None = None) -> RecordStore:
    """The store of ``preset``'s target under ``records`` (a root of stores, or one store)."""
    target = dict(preset.target)
    root = _root(records)
    if (root / TARGET_FILE).exists():  # --records pointed at one target's store
        stored = json.loads((root / TARGET_FILE).read_text())
        if canonical_target(stored.get("target", {})) != canonical_target(target):
            raise EdgecompileError(
                f"the records in {root} were tuned for {stored.get('preset')} "
                f"({stored.get('target', {}).get('mcpu', 'generic')}), not for {preset.name}",
                "tune for this target first, or pass the records folder of this target",
            )
        return RecordStore(root, target, preset.name)
    return RecordStore(root / store_name(target), target, preset.name)


def load_store(path: Path) -> RecordStore:
    try:
        stored = json.loads((path / TARGET_FILE).read_text())
    except (OSError, ValueError) as error:
        raise EdgecompileError(
            f"{path} is not a records folder ({TARGET_FILE}: {error})",
            "pass a folder that `edgecompile tune` wrote, or its parent",
        ) from None
    return RecordStore(path, dict(stored["target"]), str(stored.get("preset", "?")))


def list_stores(records: str | Path | None = None) -> list[RecordStore]:
    """Every store under ``records`` (or the store ``records`` itself)."""
    root = _root(records)
    if (root / TARGET_FILE).exists():
        return [load_store(root)]
    if not root.is_dir():
        return []
    return [load_store(child) for child in sorted(root.iterdir()) if (child / TARGET_FILE).exists()]


@dataclass(frozen=True)
class WorkloadSummary:
    """One tuned kernel: its name, records, the best time and who made it, what a build uses."""

    name: str
    trials: int
    best_ms: float | None
    schedule: str
    #: ``tuned`` / ``untuned`` (re-measured by tune), or ``best record`` (not re-measured yet).
    uses: str = "best record"
    untuned_ms: float | None = None
    tuned_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``schedule`` of a record MetaSchedule's search produced (not one of our hand schedules).
SEARCHED = "metaschedule"
_SCHEDULED_BY_MARK = re.compile(
    r'\["Annotate",\["[^"]*","\\"([^"\\]+)\\""\],\["edgecompile\.scheduled_by"\]'
)


def trace_digest(record_body: Any) -> str:
    """Identity of a record's trace (the first field of a record line's body)."""
    trace = record_body[0] if isinstance(record_body, list) and record_body else record_body
    text = json.dumps(trace, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def mark_of(record_body: Any) -> str | None:
    """The ``edgecompile.scheduled_by`` mark a trace carries (our rule or tvm-default), if any."""
    found = _SCHEDULED_BY_MARK.search(json.dumps(record_body, separators=(",", ":")))
    return found.group(1) if found else None


def record_schedule(record_body: Any, baselines: dict[str, str]) -> str:
    """Who made a record: an untuned baseline's name (our rule, tvm-default) or the search."""
    return baselines.get(trace_digest(record_body), SEARCHED)


def mean_seconds(run_secs: Any) -> float | None:
    """A record's measured time; None for a candidate that failed to build or run."""
    values = [float(v) for v in run_secs or []]
    values = [v for v in values if v < 1e9]  # MetaSchedule stores 1e10 for a failed run
    return sum(values) / len(values) if values else None


def summarize(store: RecordStore) -> list[WorkloadSummary]:
    """Per workload of ``store``: kernel name, records, best measured time, who made the best.

    Reads the JSON lines directly (no TVM import): ``records list`` stays instant.
    """
    clean = store.lines()
    names = store.kernel_names()
    baselines = store.baselines()
    choices = store.choices()
    hashes = [_workload_hash(line) for line in clean.workloads]
    grouped: dict[int, list[Any]] = {}
    for line in clean.records:
        index, body = json.loads(line)
        grouped.setdefault(index, []).append(body)
    summaries = []
    for index, bodies in grouped.items():
        timed = [(t, b) for b in bodies if (t := mean_seconds(b[1])) is not None]
        best_time, best = min(timed, key=lambda pair: pair[0], default=(None, None))
        choice = choices.get(hashes[index])
        summaries.append(
            WorkloadSummary(
                name=names.get(hashes[index], f"workload {hashes[index][:10]}"),
                trials=len(bodies),
                best_ms=None if best_time is None else round(best_time * 1e3, 4),
                schedule="-" if best is None else record_schedule(best, baselines),
                uses="best record" if choice is None else choice.uses,
                untuned_ms=None if choice is None else choice.untuned_ms,
                tuned_ms=None if choice is None else choice.tuned_ms,
            )
        )
    return sorted(summaries, key=lambda s: -(s.best_ms or 0.0))


def export_records(store: RecordStore, output: str | Path) -> Path:
    """One portable JSON file: the store's target and its valid lines."""
    clean = store.lines()
    if not clean.records:
        raise EdgecompileError(
            f"no tuning records for {store.preset} in {store.path}",
            "run `edgecompile tune MODEL --target " + store.preset + "` first",
        )
    payload = {
        "format": EXPORT_FORMAT,
        "preset": store.preset,
        "target": store.target,
        "workloads": clean.workloads,
        "records": clean.records,
        "kernels": store.kernel_names(),
        "baselines": store.baselines(),
        "choices": {k: c.to_dict() for k, c in store.choices().items()},
    }
    output = Path(output)
    with atomic_file(output) as staging:
        staging.write_text(json.dumps(payload) + "\n")
    return output


@dataclass(frozen=True)
class ImportResult:
    store: RecordStore
    added: int
    skipped: int


def import_records(source: str | Path, records: str | Path | None = None) -> ImportResult:
    """Merge an exported records file into the store of its own target (never another)."""
    from tvm.s_tir import meta_schedule as ms

    path = Path(source)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EdgecompileError(
            f"cannot read records file {path}: {error}",
            "pass a file written by `edgecompile records export`",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise EdgecompileError(
            f"{path} is not an edgecompile records export",
            "pass a file written by `edgecompile records export`",
        )
    target = dict(payload["target"])
    store = RecordStore(
        _root(records) / store_name(target), target, str(payload.get("preset", "?"))
    )
    with tempfile.TemporaryDirectory(prefix="edgecompile-import-") as scratch:
        raw_workloads, raw_records = Path(scratch) / "w.json", Path(scratch) / "r.json"
        raw_workloads.write_text("".join(f"{line}\n" for line in payload.get("workloads", [])))
        raw_records.write_text("".join(f"{line}\n" for line in payload.get("records", [])))
        incoming = _clean(raw_workloads, raw_records)
    known = {_record_key(line) for line in store.lines().records}
    added = skipped = 0
    with store.writer() as database:
        workloads: dict[int, Any] = {}
        for line in incoming.records:
            index, body = json.loads(line)
            key = _record_key(line)
            if key in known:
                skipped += 1
                continue
            if index not in workloads:
                parsed = ms.database.Workload.from_json(json.loads(incoming.workloads[index]))
                workloads[index] = database.commit_workload(parsed.mod)
            database.commit_tuning_record(
                ms.database.TuningRecord.from_json(body, workloads[index])
            )
            known.add(key)
            added += 1
    names = payload.get("kernels")
    if isinstance(names, dict):
        store.add_kernel_names({str(k): str(v) for k, v in names.items()})
    baselines = payload.get("baselines")
    if isinstance(baselines, dict):
        store.add_baselines({str(k): str(v) for k, v in baselines.items()})
    choices = payload.get("choices")
    if isinstance(choices, dict) and added:
        # A choice decided on the exporting machine holds here only where this store had
        # nothing of its own for the workload; elsewhere the next tune re-measures.
        own = store.choices()
        store.add_choices(
            {
                str(k): Choice.from_dict(v)
                for k, v in choices.items()
                if str(k) not in own and isinstance(v, dict)
            }
        )
    return ImportResult(store, added, skipped)


def _record_key(record_json: str) -> str:
    """A record's identity for de-duplication: its trace, run times and target (not the index)."""
    entry = json.loads(record_json)
    body = entry[1]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
