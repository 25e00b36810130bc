"""Tuning records: one MetaSchedule JSON database per TVM target, under a records directory.

Stage 3b of the pipeline: ``tune`` writes records here, ``build`` reads them. Layout::

    <root>/                                   default ~/.cache/edgecompile/records
      <mcpu>-<arch>-<digest>/                 one store per target (digest of its JSON)
        target.json                           the full TVM target and the preset it came from
        database_workload.json                MetaSchedule's JSONDatabase files
        database_tuning_record.json
        kernels.json                          workload → kernel name, for display
        baselines.json                        trace digest → untuned schedule it replays
        neighbours.json                       trace digest → "neighbours": the neighbour pass's
        choices.json                          workload → what a build uses (tune's re-measure)
        .lock                                 held while a tune or an import writes

Why one store per target: MetaSchedule does not filter records by ``mcpu``, so one database for
two targets would apply x86 schedules to a Cortex-A72. The store's name is derived from the
target itself, so records for one target cannot be looked up for another.

Crash safety: the database appends one line per measured candidate (open, write, close), so a
``kill -9`` can at worst leave a torn last line: the only line a reader may drop and a writer
may delete. Any other damage (a garbage line mid-file, a wrong schema, another target's record,
a record whose workload line is damaged) costs only those lines: readers skip them and keep
every good record (workloads keep their line numbers), a build says so in one line, and a
writer copies both files to ``damaged-<time>/`` in the store before rewriting them without
those lines. Readers never modify files: they load a cleaned snapshot, so a build can run
beside a tune. ``records import`` checks its whole file first and writes all or nothing.

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
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile._atomic import atomic_file
from edgecompile._names import check_plain_name, safe_name
from edgecompile.errors import EdgecompileError, first_line, last_line
from edgecompile.targets import BoardPreset, triple_problem

RECORDS_ENV = "EDGECOMPILE_RECORDS"
WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
TARGET_FILE = "target.json"
LOCK_FILE = ".lock"
NAMES_FILE = "kernels.json"
BASELINES_FILE = "baselines.json"
CHOICES_FILE = "choices.json"
NEIGHBOURS_FILE = "neighbours.json"
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
    # mcpu and mtriple may come from an import file: the folder's name is made plain.
    return f"{safe_name(mcpu)[:40]}-{safe_name(arch)[:20]}-{digest}"


@dataclass(frozen=True)
class Damage:
    """A line (or file) of a store no reader can use and no writer may silently delete."""

    file: str
    #: 1-based line number; 0 for a whole file (kernels.json, choices.json, ...).
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class CleanLines:
    """The usable lines of a store, renumbered so ``records`` index into ``workloads``.

    ``dropped`` counts torn last lines (a crash while appending: the only lines a writer may
    drop); ``damaged`` is everything else left out (garbage, a wrong schema, another target's
    record, a record whose workload line is damaged): a writer moves those aside, never
    deletes them.
    """

    workloads: list[str]
    records: list[str]
    dropped: int
    damaged: tuple[Damage, ...] = ()

    def digest(self) -> str:
        content = "\n".join([*self.workloads, "", *self.records])
        return hashlib.sha256(content.encode()).hexdigest()


def _split_lines(path: Path) -> tuple[list[bytes], bytes]:
    """The file's newline-terminated lines, and what follows the last newline (a torn line,
    or a complete one whose newline is missing). Split on ``\\n`` only, as MetaSchedule does:
    a JSON string may hold U+2028, which ``str.splitlines`` would split on."""
    data = path.read_bytes() if path.exists() else b""
    *complete, tail = data.split(b"\n")
    return complete, tail


@dataclass(frozen=True)
class _Unparsable:
    """A line that is not JSON at all (what a torn line is)."""

    reason: str


def _parse(raw: bytes) -> Any:
    """The line's JSON, or :class:`_Unparsable` saying why there is none."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _Unparsable("not UTF-8 text")
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
        return _Unparsable("not JSON")


_SHASH = re.compile(r"[0-9]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def workload_problem(entry: Any) -> str | None:
    """Why a parsed workload line is not one MetaSchedule wrote (``[shash, base64 module]``)."""
    if isinstance(entry, _Unparsable):
        return entry.reason
    if not (isinstance(entry, list) and len(entry) == 2):
        return "not a [hash, module] pair"
    shash, module = entry
    if not (isinstance(shash, str) and _SHASH.fullmatch(shash)):
        return "its hash is not a decimal number"
    if not (isinstance(module, str) and module and len(module) % 4 == 0):
        return "its module is not base64"
    if not _BASE64.fullmatch(module):
        return "its module is not base64"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The target fields that decide what a record's schedule was tuned for.
_IDENTITY_KEYS = ("kind", "mtriple", "mcpu", "mattr", "num-cores", "model")


def _identity_value(value: Any) -> Any:
    """``mattr = "+neon"`` and ``["+neon"]`` are one target; TVM exports the list."""
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    if isinstance(value, str) and "," in value:
        return tuple(value.split(","))
    return (value,) if isinstance(value, str) else value


#: Compared even when the store's target leaves them out (TVM adds no mcpu of its own).
_ALWAYS_COMPARED = ("kind", "mcpu")


def target_mismatch(record_target: dict[str, Any], target: dict[str, Any]) -> str | None:
    """How a record's target differs from the store's (in the fields that decide a schedule),
    or None. TVM adds fields to the targets it writes (keys, tag, features, the host's mtriple
    when none was given): apart from kind and mcpu, only the fields the store's target names
    are compared."""
    for key in _IDENTITY_KEYS:
        if key not in target and key not in _ALWAYS_COMPARED:
            continue
        if _identity_value(record_target.get(key)) != _identity_value(target.get(key)):
            return (
                f"tuned for {key} {record_target.get(key)!r}, not {target.get(key)!r} "
                f"({target_label(record_target)} vs {target_label(target)})"
            )
    return None


def target_label(target: dict[str, Any]) -> str:
    return f"{target.get('mcpu', 'generic')}, {target.get('mtriple', target.get('kind', '?'))}"


def record_problem(entry: Any, target: dict[str, Any]) -> str | None:
    """Why a parsed record line is not ``[workload index, [trace, run_secs, target, args]]``
    of ``target`` (the workload index itself is checked against the workload file)."""
    if isinstance(entry, _Unparsable):
        return entry.reason
    if not (isinstance(entry, list) and len(entry) == 2):
        return "not an [index, record] pair"
    index, body = entry
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return "its workload index is not a whole number"
    if not (isinstance(body, list) and len(body) == 4):
        return "its record is not [trace, run_secs, target, args_info]"
    trace, run_secs, record_target, args = body
    if not (
        isinstance(trace, list) and len(trace) == 2 and all(isinstance(t, list) for t in trace)
    ):
        return "its trace is not [instructions, decisions]"
    if run_secs is not None and not (
        isinstance(run_secs, list) and all(_is_number(s) for s in run_secs)
    ):
        return "its run_secs are not a list of numbers"
    if args is not None and not isinstance(args, list):
        return "its args_info is not a list"
    if not isinstance(record_target, dict):
        return "it names no target"
    problem = triple_problem(record_target.get("mtriple"))
    if problem is not None:  # MetaSchedule would hand it to TVM, which crashes on some
        return problem
    mismatch = target_mismatch(record_target, target)
    return None if mismatch is None else f"another target's record: {mismatch}"


def _renumber(line: str, index: int) -> str:
    """``line`` pointing at workload ``index``; the record's own text is kept byte for byte."""
    return re.sub(r"^\s*\[\s*[0-9]+", f"[{index}", line, count=1)


def _clean(workload_path: Path, record_path: Path, target: dict[str, Any]) -> CleanLines:
    damaged: list[Damage] = []
    dropped = 0
    # Records point at workloads by line number: a damaged workload line keeps its number (the
    # lines after it are still good), and the usable ones are renumbered for the reader.
    complete, tail = _split_lines(workload_path)
    lines = [*complete, tail] if tail else complete
    position: dict[int, int] = {}  # line index in the file → index among usable workloads
    workloads: list[str] = []
    for number, raw in enumerate(lines):
        if not raw.strip() and not any(later.strip() for later in lines[number:]):
            break  # blank lines at the end hold nothing and number nothing
        entry = _parse(raw)
        problem = workload_problem(entry)
        if problem is None:
            position[number] = len(workloads)
            workloads.append(raw.decode())
        elif tail and number == len(complete) and isinstance(entry, _Unparsable):
            dropped += 1  # torn by a crash while appending: possible on the last line only
        else:
            damaged.append(Damage(workload_path.name, number + 1, problem))
    workload_lines = len(lines)
    complete, tail = _split_lines(record_path)
    records: list[str] = []
    for number, raw in enumerate([*complete, tail] if tail else complete):
        if not raw.strip():
            continue  # an empty line holds nothing to lose
        entry = _parse(raw)
        problem = record_problem(entry, target)
        if problem is None and entry[0] not in position:
            state = "damaged" if entry[0] < workload_lines else "missing"
            problem = f"its workload (line {entry[0] + 1} of {workload_path.name}) is {state}"
        if problem is None:
            line = raw.decode()
            new_index = position[entry[0]]
            records.append(line if new_index == entry[0] else _renumber(line, new_index))
        elif tail and number == len(complete) and isinstance(entry, _Unparsable):
            dropped += 1
        else:
            damaged.append(Damage(record_path.name, number + 1, problem))
    return CleanLines(workloads, records, dropped, tuple(damaged))


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


def _read_json_map(path: Path) -> tuple[dict[str, Any], Damage | None]:
    """A side file (kernels, baselines, choices): its object, or {} and why it is unusable."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        return {}, Damage(path.name, 0, f"unreadable ({first_line(error)})")
    if not isinstance(data, dict):
        return {}, Damage(path.name, 0, f"holds a {type(data).__name__}, not an object")
    return data, None


def _text_map(path: Path) -> tuple[dict[str, str], list[Damage]]:
    data, damage = _read_json_map(path)
    kept = {k: v for k, v in data.items() if isinstance(v, str)}
    damaged = [damage] if damage else []
    if len(kept) < len(data):
        damaged.append(Damage(path.name, 0, f"{len(data) - len(kept)} entries are not texts"))
    return kept, damaged


@dataclass(frozen=True)
class RecordStore:
    """The records of one target: a folder holding a MetaSchedule JSON database."""

    path: Path
    target: dict[str, Any]
    preset: str
    #: Records MetaSchedule itself refused when a build loaded them (see :meth:`snapshot`).
    unloadable: list[Damage] = field(default_factory=list, compare=False, repr=False)

    @property
    def workload_path(self) -> Path:
        return self.path / WORKLOADS_FILE

    @property
    def record_path(self) -> Path:
        return self.path / RECORDS_FILE

    def exists(self) -> bool:
        return self.record_path.exists() and self.record_path.stat().st_size > 0

    def lines(self) -> CleanLines:
        return _clean(self.workload_path, self.record_path, self.target)

    def damage(self) -> list[Damage]:
        """Everything of this store no reader uses (torn last lines aside)."""
        found = list(self.lines().damaged) + list(self.unloadable)
        for name in (NAMES_FILE, BASELINES_FILE):
            found += _text_map(self.path / name)[1]
        found += self._choices()[1]
        return found

    def damage_note(self) -> str | None:
        """One line saying the store is damaged and what happens to the damaged lines, or
        None. Nothing is lost: the lines stay in the files until the next writer moves them
        aside (to ``damaged-*/`` in the store)."""
        found = self.damage()
        if not found:
            return None
        plural = "" if len(found) == 1 else "s"
        return (
            f"the records of {self.preset} in {self.path} have {len(found)} damaged "
            f"line{plural} (first: {found[0]}), left out; they stay on disk until the next "
            "tune or import moves them to damaged-*/ there"
        )

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
        return _text_map(self.path / NAMES_FILE)[0]

    def baselines(self) -> dict[str, str]:
        """Trace digest → who made it, for the untuned baselines ``tune`` measured first.

        Search candidates descend from those traces (they seed the search) and keep their
        marks, so a record is a baseline only if its trace is exactly a baseline's.
        """
        return _text_map(self.path / BASELINES_FILE)[0]

    def add_baselines(self, baselines: dict[str, str]) -> None:
        self._write_map(BASELINES_FILE, {**self.baselines(), **baselines})

    def neighbours(self) -> dict[str, str]:
        """Trace digest → the pass that found it, for the records of ``tune``'s neighbour pass
        (search records all the same: only ``records show`` tells them apart)."""
        return _text_map(self.path / NEIGHBOURS_FILE)[0]

    def add_neighbours(self, neighbours: dict[str, str]) -> None:
        if neighbours:
            self._write_map(NEIGHBOURS_FILE, {**self.neighbours(), **neighbours})

    def latest_records(self, count: int) -> list[Any]:
        """The bodies of the last ``count`` records written (a writer's own latest commits:
        the database appends one line per commit)."""
        lines = self.lines().records[-count:] if count > 0 else []
        return [json.loads(line)[1] for line in lines]

    def _choices(self) -> tuple[dict[str, Choice], list[Damage]]:
        data, damage = _read_json_map(self.path / CHOICES_FILE)
        damaged = [damage] if damage else []
        choices: dict[str, Choice] = {}
        for key, entry in data.items():
            try:
                choices[key] = Choice.from_dict(entry)
            except (AttributeError, KeyError, TypeError, ValueError):
                damaged.append(Damage(CHOICES_FILE, 0, f"the entry of {key[:20]!r} is damaged"))
        return choices, damaged

    def choices(self) -> dict[str, Choice]:
        """Workload hash → what a build uses for it (see :class:`Choice`)."""
        return self._choices()[0]

    def add_choices(self, choices: dict[str, Choice]) -> None:
        merged = {**self.choices(), **choices}
        self._write_map(CHOICES_FILE, {k: c.to_dict() for k, c in merged.items()})

    def add_kernel_names(self, names: dict[str, str]) -> None:
        self._write_map(NAMES_FILE, {**self.kernel_names(), **names})

    def _write_map(self, name: str, merged: dict[str, Any]) -> None:
        """Rewrite a side file; a damaged one is first copied aside (never just overwritten)."""
        path = self.path / name
        damaged = self._choices()[1] if name == CHOICES_FILE else _text_map(path)[1]
        if damaged:
            self._quarantine([path])
        with atomic_file(path) as staging:
            staging.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")

    def _quarantine(self, paths: list[Path]) -> Path:
        """Copies of ``paths`` in a fresh ``damaged-<time>/`` folder of the store."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = Path(tempfile.mkdtemp(prefix=f"damaged-{stamp}-", dir=self.path))
        for path in paths:
            if path.exists():
                shutil.copy2(path, folder / path.name)
        return folder

    def quarantined(self) -> list[Path]:
        """The ``damaged-*/`` folders writers moved damaged lines to (oldest first)."""
        return sorted(self.path.glob("damaged-*/")) if self.path.is_dir() else []

    def decisions(self) -> dict[str, Decision]:
        """Workload hash → what a build uses for it: the one answer ``tune``'s table, ``records
        show`` and the build itself read (see :class:`Decision`)."""
        clean = self.lines()
        hashes = [_workload_hash(line) for line in clean.workloads]
        grouped: dict[str, list[Any]] = {}
        for line in clean.records:
            index, body = json.loads(line)
            grouped.setdefault(hashes[index], []).append(body)
        choices, baselines = self.choices(), self.baselines()
        return {
            workload: decide(bodies, choices.get(workload), baselines)
            for workload, bodies in grouped.items()
        }

    def applied_records(self) -> list[str]:
        """The record lines a build applies: per workload, those of the record its
        :class:`Decision` names (none when the untuned schedule is decided)."""
        clean = self.lines()
        decisions = self.decisions()
        hashes = [_workload_hash(line) for line in clean.workloads]
        applied = []
        for line in clean.records:
            index, body = json.loads(line)
            decision = decisions.get(hashes[index])
            if decision is not None and decision.record == trace_digest(body):
                applied.append(line)
        return applied

    def digest(self) -> str:
        """Identity of what a build applies from this store (records and choices)."""
        clean = self.lines()
        return CleanLines(clean.workloads, self.applied_records(), 0).digest()

    def snapshot(self) -> Any:
        """A read-only MetaSchedule database of the records a build applies (files untouched).

        A record MetaSchedule cannot load (a trace that no longer fits its workload) is left
        out and added to :attr:`unloadable`, instead of failing every build of the target.
        """
        clean = self.lines()
        applied = self.applied_records()
        try:
            return self._database(clean.workloads, applied)
        except Exception:  # TVM's own error types; find the culprits (slower) and leave them out
            workloads, records, damage = _loadable(clean.workloads, applied)
            self.unloadable.extend(damage)
            return self._database(workloads, records)

    @staticmethod
    def _database(workload_lines: list[str], record_lines: list[str]) -> Any:
        from tvm.s_tir import meta_schedule as ms

        with tempfile.TemporaryDirectory(prefix="edgecompile-records-") as scratch:
            workloads, records = Path(scratch) / WORKLOADS_FILE, Path(scratch) / RECORDS_FILE
            workloads.write_text("".join(f"{line}\n" for line in workload_lines))
            records.write_text("".join(f"{line}\n" for line in record_lines))
            # JSONDatabase reads both files in its constructor and only touches them on commit.
            return ms.database.JSONDatabase(
                str(workloads), str(records), allow_missing=False, module_equality="structural"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (a file lock), with the target written and the files clean."""
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
            yield

    @contextlib.contextmanager
    def writer(self) -> Iterator[Any]:
        """The store's JSON database, for appending; one writer at a time (a file lock)."""
        from tvm.s_tir import meta_schedule as ms

        def database() -> Any:
            return ms.database.JSONDatabase(
                str(self.workload_path),
                str(self.record_path),
                allow_missing=True,
                module_equality="structural",
            )

        with self._locked():
            try:
                opened = database()
            except Exception:  # TVM's own error types: a line that only looks right
                clean = self.lines()
                workloads, records, damage = _loadable(clean.workloads, clean.records)
                if not damage:
                    raise
                self._quarantine([self.workload_path, self.record_path])
                self._rewrite(workloads, records)
                opened = database()
            yield opened

    def _write_target(self) -> None:
        target_file = self.path / TARGET_FILE
        if target_file.exists():
            stored = _read_target_file(self.path)
            if canonical_target(stored["target"]) != canonical_target(self.target):
                raise EdgecompileError(
                    f"{self.path} holds records for a different target ({stored['preset']})",
                    "pass the records folder's parent, or a separate --records DIR",
                )
            return
        with atomic_file(target_file) as staging:
            staging.write_text(
                json.dumps({"preset": self.preset, "target": self.target}, indent=2) + "\n"
            )

    def _repair(self) -> Path | None:
        """Make the files exactly their usable lines, so MetaSchedule can load and append.

        A torn last line is dropped; any other damaged line is first copied aside with both
        files (``damaged-*/``, returned), so nothing but a torn line is ever lost.
        """
        clean = self.lines()
        exact = all(
            _file_bytes(path) == "".join(f"{line}\n" for line in lines).encode()
            for path, lines in (
                (self.workload_path, clean.workloads),
                (self.record_path, clean.records),
            )
        )
        if exact:  # else also rewritten: blank lines, a missing last newline (no data in them)
            return None
        quarantine = None
        if clean.damaged:
            quarantine = self._quarantine([self.workload_path, self.record_path])
        self._rewrite(clean.workloads, clean.records)
        return quarantine

    def _rewrite(self, workloads: list[str], records: list[str]) -> None:
        # Workloads first: a crash between the two leaves extra workloads, never a record
        # pointing at a workload line that is not there.
        for path, lines in ((self.workload_path, workloads), (self.record_path, records)):
            with atomic_file(path) as staging:
                staging.write_text("".join(f"{line}\n" for line in lines))


def _loadable(
    workload_lines: list[str], record_lines: list[str]
) -> tuple[list[str], list[str], list[Damage]]:
    """The lines MetaSchedule loads (records renumbered), and what it refused: lines that pass
    our schema check but not MetaSchedule's (a module that does not decode, a trace that does
    not replay on its workload). Slow (one TVM parse per line): only after a load failed."""
    from tvm.s_tir import meta_schedule as ms

    damage: list[Damage] = []
    workloads: list[Any] = []
    for line in workload_lines:
        try:
            workloads.append(ms.database.Workload.from_json(json.loads(line)))
        except Exception as error:  # TVM's own error types
            workloads.append(None)
            damage.append(Damage(WORKLOADS_FILE, 0, f"unloadable workload: {last_line(error)}"))
    position = {}
    kept_workloads = []
    for index, (line, workload) in enumerate(zip(workload_lines, workloads, strict=True)):
        if workload is not None:
            position[index] = len(kept_workloads)
            kept_workloads.append(line)
    kept_records = []
    for line in record_lines:
        index, body = json.loads(line)
        if index not in position:
            damage.append(Damage(RECORDS_FILE, 0, "a record of an unloadable workload"))
            continue
        try:
            ms.database.TuningRecord.from_json(body, workloads[index])
        except Exception as error:  # TVM's own error types
            damage.append(Damage(RECORDS_FILE, 0, f"unloadable record: {last_line(error)}"))
            continue
        kept_records.append(_renumber(line, position[index]))
    return kept_workloads, kept_records, damage


def _file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _read_target_file(path: Path) -> dict[str, Any]:
    """A store's target.json, checked: ``{"preset": plain name, "target": {... "kind"}}``."""
    where = path / TARGET_FILE
    try:
        stored = json.loads(where.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise EdgecompileError(
            f"{path} is not a records folder ({TARGET_FILE}: {first_line(error)})",
            "pass a folder that `edgecompile tune` wrote, or its parent",
        ) from None
    target = stored.get("target") if isinstance(stored, dict) else None
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise EdgecompileError(
            f"{where} is damaged (no target with a 'kind')",
            "restore it, or move the folder out of the records folder",
        )
    preset = check_plain_name(stored.get("preset"), "preset name", str(where))
    return {"preset": preset, "target": target}


def _root(records: str | Path | None) -> Path:
    return Path(records).expanduser() if records is not None else default_records_root()


def store_for(preset: BoardPreset, records: str | Path | None = None) -> RecordStore:
    """The store of ``preset``'s target under ``records`` (a root of stores, or one store)."""
    target = dict(preset.target)
    root = _root(records)
    if (root / TARGET_FILE).exists():  # --records pointed at one target's store
        stored = _read_target_file(root)
        if canonical_target(stored["target"]) != canonical_target(target):
            raise EdgecompileError(
                f"the records in {root} were tuned for {stored['preset']} "
                f"({stored['target'].get('mcpu', 'generic')}), not for {preset.name}",
                "tune for this target first, or pass the records folder of this target",
            )
        return RecordStore(root, target, preset.name)
    return RecordStore(root / store_name(target), target, preset.name)


def load_store(path: Path) -> RecordStore:
    stored = _read_target_file(path)
    return RecordStore(path, dict(stored["target"]), stored["preset"])


def list_stores(records: str | Path | None = None) -> list[RecordStore]:
    """Every store under ``records`` (or the store ``records`` itself)."""
    root = _root(records)
    if (root / TARGET_FILE).exists():
        return [load_store(root)]
    if not root.is_dir():
        return []
    return [load_store(child) for child in sorted(root.iterdir()) if (child / TARGET_FILE).exists()]


def uses_label(uses: str, pending: bool) -> str:
    """What a build uses for a kernel, as every command prints it."""
    return f"{uses} (not re-measured)" if pending else uses


@dataclass(frozen=True)
class Decision:
    """What a build uses for one workload, and on what grounds.

    With a :class:`Choice` (tune's re-measurement), its verdict. Without one (a tune interrupted
    before its re-measurement, records from elsewhere), the fastest search record by its single
    measurement, as MetaSchedule itself would pick -- ``pending`` until a rerun of the tune
    re-measures it; with no search record, the untuned schedule (the untuned baselines replay
    what the build compiles anyway).
    """

    #: Trace digest of the record a build applies; None: the untuned schedule.
    record: str | None
    pending: bool
    untuned_ms: float | None = None
    tuned_ms: float | None = None
    #: The record a build applies won a re-measurement (a later tune's new records may still
    #: be ``pending``: until they are judged, the confirmed winner stays in use).
    confirmed: bool = False

    @property
    def uses(self) -> str:
        return "tuned" if self.record is not None else UNTUNED

    @property
    def label(self) -> str:
        """``uses`` as the tables print it."""
        return uses_label(self.uses, self.pending)


def _applicable(body: Any) -> bool:
    """Whether a build can apply the record: MetaSchedule never returns one whose trace has no
    instruction (the unscheduled kernel, TVM's default lowering: what a build does anyway)."""
    trace = body[0] if isinstance(body, list) and body else None
    return isinstance(trace, list) and bool(trace) and bool(trace[0])


def decide(bodies: list[Any], choice: Choice | None, baselines: dict[str, str]) -> Decision:
    """The :class:`Decision` for one workload's record ``bodies`` (the order written)."""
    digests = {trace_digest(body) for body in bodies if _applicable(body)}
    searched = {trace_digest(body) for body in bodies} - baselines.keys()
    if choice is not None and (not choice.uses_tuned or choice.record in digests):
        pending = choice.records != len(bodies) and bool(searched)
        record = choice.record if choice.uses_tuned else None
        return Decision(record, pending, choice.untuned_ms, choice.tuned_ms, choice.uses_tuned)
    timed = [(t, body) for body in bodies if (t := mean_seconds(body[1])) is not None]
    untuned = [t for t, body in timed if trace_digest(body) in baselines]
    untuned_ms = round(min(untuned) * 1e3, 6) if untuned else None
    applicable = [
        (t, body) for t, body in timed if trace_digest(body) not in baselines and _applicable(body)
    ]
    if not applicable:
        return Decision(None, False, untuned_ms)
    best_seconds, best = min(applicable, key=lambda pair: pair[0])
    return Decision(trace_digest(best), True, untuned_ms, round(best_seconds * 1e3, 6))


@dataclass(frozen=True)
class WorkloadSummary:
    """One tuned kernel: its name, records, the best time and who made it, what a build uses."""

    name: str
    trials: int
    best_ms: float | None
    schedule: str
    #: ``tuned`` / ``untuned``: the workload's :class:`Decision`.
    uses: str = UNTUNED
    untuned_ms: float | None = None
    tuned_ms: float | None = None
    #: Search records no re-measurement has judged yet (rerun the tune).
    pending: bool = False
    #: What a build uses won a re-measurement (see :attr:`Decision.confirmed`).
    confirmed: bool = False
    #: The knob values of what a build uses (:func:`describe_knobs`); "" without knobs.
    knobs: str = ""

    @property
    def uses_label(self) -> str:
        return uses_label(self.uses, self.pending)

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


def record_schedule(
    record_body: Any, baselines: dict[str, str], neighbours: dict[str, str] | None = None
) -> str:
    """Who made a record: an untuned baseline's name (our rule, tvm-default), the neighbour
    pass (when ``neighbours`` is given) or the search."""
    digest = trace_digest(record_body)
    return baselines.get(digest) or (neighbours or {}).get(digest, SEARCHED)


#: The block annotations a design space's point carries in its trace (``schedules.knobs.
#: KNOBS_ATTR``, ``schedules.rules.LOOP_ORDER_ATTR``), spelled here so reading them imports no
#: TVM.
_KNOBS_KEY = "edgecompile.knobs"
_LOOP_ORDER_KEY = "edgecompile.loop_order"
#: ``schedules.knobs.UNROLL_ATTR`` and ``UNROLL_KNOB``: the unroll depth, a categorical sample.
_UNROLL_KEY = "meta_schedule.unroll_explicit"
_UNROLL_KNOB = "unroll steps"
#: The loop order's name among the knob values.
LOOP_ORDER_KNOB = "order"


def knob_values(record_body: Any) -> dict[str, int | str]:
    """The knobs of one of our design spaces a record's trace holds: each sampled tile's inner
    extent (its decision) by the knob's name, and the loop order. Empty for a trace without
    them: TVM's default or generic space, records written before the knobs were named."""
    trace = record_body[0] if isinstance(record_body, list) and record_body else None
    if not isinstance(trace, list) or not trace or not isinstance(trace[0], list):
        return {}
    decided = trace[1] if len(trace) > 1 and isinstance(trace[1], list) else []
    decisions = {
        entry[0]: entry[1]
        for entry in decided
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
    }
    names: list[str] = []
    tiles: list[Any] = []
    order: str | None = None
    unroll: int | None = None
    categorical: dict[str, Any] = {}  # output variable: the chosen candidate
    for index, inst in enumerate(trace[0]):
        if not isinstance(inst, list) or len(inst) < 4:
            continue
        kind, inputs, attrs, outputs = inst[:4]
        if not isinstance(inputs, list) or not isinstance(attrs, list):
            continue
        if kind == "SamplePerfectTile":
            tiles.append(decisions.get(index))
        elif kind == "SampleCategorical" and _names_variable(outputs) and _listed(attrs):
            chosen = decisions.get(index)
            if isinstance(chosen, int) and 0 <= chosen < len(attrs[0]):
                categorical[outputs[0]] = attrs[0][chosen]
        elif kind == "Annotate" and attrs == [_UNROLL_KEY] and _names_variable(inputs[1:]):
            value = categorical.get(inputs[1])
            unroll = int(value) if _is_number(value) else unroll
        elif kind == "Annotate" and attrs and len(inputs) == 2 and isinstance(inputs[1], str):
            try:
                value = json.loads(inputs[1])  # the annotation's value, a JSON string
            except ValueError:
                continue
            if attrs[0] == _KNOBS_KEY and isinstance(value, str):
                names = value.split(",")
            elif attrs[0] == _LOOP_ORDER_KEY and isinstance(value, str):
                order = value
    values: dict[str, int | str] = {}
    if len(names) == len(tiles):
        for name, tile in zip(names, tiles, strict=True):
            if isinstance(tile, list) and tile and _is_number(tile[-1]):
                values[name] = int(tile[-1])
    if unroll is not None:
        values[_UNROLL_KNOB] = unroll
    if order is not None:
        values[LOOP_ORDER_KNOB] = order
    return values


def _names_variable(values: Any) -> bool:
    """Whether ``values`` (a trace instruction's inputs or outputs) starts with a variable."""
    return isinstance(values, list) and bool(values) and isinstance(values[0], str)


def _listed(attrs: Any) -> bool:
    return isinstance(attrs, list) and bool(attrs) and isinstance(attrs[0], list)


def describe_knobs(values: dict[str, int | str], defaults: dict[str, int | str]) -> str:
    """Knob values as ``records show`` prints them, a changed one with the untuned schedule's
    value first: ``oc tile 2 → 4, pixel tile 7, reduction unroll 4, order weights``."""
    return ", ".join(
        f"{name} {defaults[name]} → {value}"
        if name in defaults and defaults[name] != value
        else f"{name} {value}"
        for name, value in values.items()
    )


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
    neighbours = store.neighbours()
    decisions = store.decisions()
    hashes = [_workload_hash(line) for line in clean.workloads]
    grouped: dict[int, list[Any]] = {}
    for line in clean.records:
        index, body = json.loads(line)
        grouped.setdefault(index, []).append(body)
    summaries = []
    for index, bodies in grouped.items():
        timed = [(t, b) for b in bodies if (t := mean_seconds(b[1])) is not None]
        best_time, best = min(timed, key=lambda pair: pair[0], default=(None, None))
        decision = decisions[hashes[index]]
        defaults = next(
            (
                knobs
                for body in bodies
                if trace_digest(body) in baselines and (knobs := knob_values(body))
            ),
            {},
        )
        used = next((body for body in bodies if trace_digest(body) == decision.record), None)
        summaries.append(
            WorkloadSummary(
                name=names.get(hashes[index], f"workload {hashes[index][:10]}"),
                trials=len(bodies),
                best_ms=None if best_time is None else round(best_time * 1e3, 4),
                schedule="-" if best is None else record_schedule(best, baselines, neighbours),
                uses=decision.uses,
                untuned_ms=decision.untuned_ms,
                tuned_ms=decision.tuned_ms,
                pending=decision.pending,
                confirmed=decision.confirmed,
                knobs=describe_knobs(knob_values(used) if used else defaults, defaults),
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
        "neighbours": store.neighbours(),
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


def _payload_error(path: Path, problem: str) -> EdgecompileError:
    return EdgecompileError(
        f"{path}: {problem}; nothing was imported",
        "pass the file `edgecompile records export` wrote, unedited",
    )


def _read_payload(path: Path) -> dict[str, Any]:
    """The export file, checked entry by entry before anything is written (one-line errors)."""
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise EdgecompileError(
            f"cannot read records file {path}: {first_line(error)}",
            "pass a file written by `edgecompile records export`",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise EdgecompileError(
            f"{path} is not an edgecompile records export",
            "pass a file written by `edgecompile records export`",
        )
    target = payload.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise _payload_error(path, "its target is not an object with a 'kind'")
    check_plain_name(payload.get("preset"), "preset name", str(path))
    for key in ("workloads", "records"):
        lines = payload.get(key)
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise _payload_error(path, f"its {key} are not a list of JSON lines")
    for number, line in enumerate(payload["workloads"], 1):
        problem = workload_problem(_parse(line.encode()))
        if problem is not None:
            raise _payload_error(path, f"workload {number} is damaged ({problem})")
    for number, line in enumerate(payload["records"], 1):
        entry = _parse(line.encode())
        problem = record_problem(entry, target)
        if problem is None and entry[0] >= len(payload["workloads"]):
            problem = f"it points at workload {entry[0] + 1}, which the file does not hold"
        if problem is not None:
            raise _payload_error(path, f"record {number} is not usable ({problem})")
    for key in ("kernels", "baselines", "neighbours", "choices"):
        entries = payload.get(key, {})
        if not isinstance(entries, dict):
            raise _payload_error(path, f"its {key} are not an object")
    for key in ("kernels", "baselines", "neighbours"):
        if not all(isinstance(v, str) for v in payload.get(key, {}).values()):
            raise _payload_error(path, f"its {key} map to something other than texts")
    for key, entry in payload.get("choices", {}).items():
        try:
            Choice.from_dict(entry)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise _payload_error(path, f"its choice for {key[:20]!r} is damaged") from None
    return payload


def _check_loadable(path: Path, payload: dict[str, Any]) -> None:
    """MetaSchedule parses every workload and replays every trace on its workload, as a build
    will: a record that only looks right is refused here, not in every later build."""
    from tvm.s_tir import meta_schedule as ms

    workloads: dict[int, Any] = {}
    for number, line in enumerate(payload["records"], 1):
        index, body = json.loads(line)
        try:
            if index not in workloads:
                workloads[index] = ms.database.Workload.from_json(
                    json.loads(payload["workloads"][index])
                )
            ms.database.TuningRecord.from_json(body, workloads[index])
        except Exception as error:  # TVM's own error types
            raise _payload_error(
                path, f"record {number} does not load in MetaSchedule ({last_line(error)})"
            ) from None


def import_records(source: str | Path, records: str | Path | None = None) -> ImportResult:
    """Merge an exported records file into the store of its own target (never another).

    All or nothing: every entry is checked first (its schema, that each record was tuned for
    the file's target, that MetaSchedule loads it); then the new records are written in one
    atomic replace of each database file.
    """
    path = Path(source)
    payload = _read_payload(path)
    _check_loadable(path, payload)
    target = dict(payload["target"])
    store = RecordStore(_root(records) / store_name(target), target, payload["preset"])
    added = skipped = 0
    with store._locked():
        clean = store.lines()  # the writer's repair left only usable lines
        workloads = list(clean.workloads)
        index_of = {line: index for index, line in enumerate(workloads)}
        known = {_record_key(line) for line in clean.records}
        new_records = []
        for line in payload["records"]:
            key = _record_key(line)
            if key in known:
                skipped += 1
                continue
            index, _ = json.loads(line)
            workload = payload["workloads"][index]
            if workload not in index_of:
                index_of[workload] = len(workloads)
                workloads.append(workload)
            new_records.append(_renumber(line, index_of[workload]))
            known.add(key)
        if new_records:
            store._rewrite(workloads, [*clean.records, *new_records])
        added = len(new_records)
        store.add_kernel_names(payload.get("kernels", {}))
        store.add_baselines(payload.get("baselines", {}))
        store.add_neighbours(payload.get("neighbours", {}))
        choices = payload.get("choices", {})
        if choices and added:
            # A choice decided on the exporting machine holds here only where this store had
            # nothing of its own for the workload; elsewhere the next tune re-measures.
            own = store.choices()
            store.add_choices({k: Choice.from_dict(v) for k, v in choices.items() if k not in own})
    return ImportResult(store, added, skipped)


def _record_key(record_json: str) -> str:
    """A record's identity for de-duplication: its trace, run times and target (not the index)."""
    entry = json.loads(record_json)
    body = entry[1]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
