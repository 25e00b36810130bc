"""Fault injection on ``edgecompile tune``, run as a user runs it: a subprocess, its own $TMPDIR.

The build's faults are in test_faults.py; this is the tune's half (SIGKILL and SIGINT mid-search
are in test_tune.py). A tune is stopped

- by SIGTERM while it works: in the search, and while it measures the untuned kernels (found
  by its progress lines in the pipe, ``[k/N] <stage>``; the stage must say it ``failed``, so
  the signal landed where the test meant it to);
- by SIGINT, SIGTERM or SIGKILL before it wrote a record: while it reads the ONNX file and
  while it imports it into Relax (a shim holds it there and touches ``$FAULT_READY``);

each signal sent to the tune's own process (see :meth:`Running.send` for why not a Ctrl-C to
its whole process group);

and then: the exit code is the shell's, nothing is left in $TMPDIR (after SIGKILL: once the
next tune ran), the records store is byte-identical or readable, and a rerun of the same
command finishes the work. Two tunes on one store: the second is refused at once with one
``Error:`` line while the first holds it, and the first finishes with all its records.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecompile.records import SEARCHED, RecordStore, record_schedule, store_for
from edgecompile.targets import resolve_target
from edgecompile.tuning import MAX_TRIALS_PER_ROUND
from edgecompile.tuning.pipeline import SCRATCH_PREFIX

#: Python start-up, ``import tvm`` and the measurement workers' start on a loaded machine.
READY_TIMEOUT_S = 180
EXIT_TIMEOUT_S = 120
#: A whole tune of the tiny model (a few kernels, a few trials).
RUN_TIMEOUT_S = 400
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
MESSAGE = {signal.SIGINT: "Interrupted.", signal.SIGTERM: "Terminated."}
#: How long a stage is given to begin its work before it is stopped (the untuned kernels'
#: measurement takes seconds: building each in the worker, then timing it).
SETTLE_S = 0.5
#: Search candidates of a whole tune (a rerun of a finished one searches nothing).
TRIALS = 8
#: The tune stopped mid-search needs more than one round, to be stopped after the first.
SEARCH_TRIALS = 2 * MAX_TRIALS_PER_ROUND
#: ``[k/N] label``: a stage's start in a pipe (``[k/N] done in`` / ``failed after`` its end).
STAGE_LINE = re.compile(r"^\[(?P<number>\d+)/(?P<total>\d+)\] (?P<label>.*)$")

#: ``edgecompile`` with one function wrapped (``$FAULT_HOOK``, ``module:name``): the wrapper
#: touches ``$FAULT_READY``, then waits -- for a signal, or until ``$FAULT_RELEASE`` exists,
#: and then runs the function.
SHIM = """
import importlib, os, sys, time
from pathlib import Path
from edgecompile.cli import main

module_name, name = os.environ["FAULT_HOOK"].split(":")
module = importlib.import_module(module_name)
original = getattr(module, name)
ready = Path(os.environ["FAULT_READY"])
release = os.environ.get("FAULT_RELEASE")

def held(*args, **kwargs):
    ready.touch()
    if release is None:
        # Short sleeps: a signal another thread caught runs its Python handler only when the
        # main thread runs Python again.
        for _ in range(3000):
            time.sleep(0.1)
        sys.exit("shim: no signal came")
    deadline = time.monotonic() + 300
    while not Path(release).exists():
        if time.monotonic() > deadline:
            sys.exit("shim: never released")
        time.sleep(0.05)
    return original(*args, **kwargs)

setattr(module, name, held)
main(sys.argv[1:])
"""
#: Where the shim holds a tune before any record is written: the ``[1/N] read ONNX`` stage and
#: the ``[2/N] import into TVM Relax`` stage (what ``prepare_model`` calls in each).
BEFORE_RECORDS = {
    "read ONNX": "edgecompile.builder:_onnx_input_shapes",
    "import into TVM Relax": "edgecompile.builder:import_onnx",
}
#: Holds a tune at the start of its search: the untuned records are written, the lock held.
AT_SEARCH = "edgecompile.tuning.pipeline:run_search"


def edgecompile_argv(*args: str) -> list[str]:
    """The installed ``edgecompile`` command, as a user runs it."""
    return [str(Path(sys.executable).with_name("edgecompile")), *args]


@dataclass
class Workspace:
    """One test's folders: the records root, the tune's $TMPDIR, the helpers' folder."""

    root: Path
    records: Path
    tmpdir: Path
    onnx: Path
    library_leftovers: frozenset[str]

    @property
    def store(self) -> RecordStore:
        return store_for(resolve_target("host"), self.records)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.tmpdir),
            "EDGECOMPILE_PROGRESS": "on",
            "EDGECOMPILE_RECORDS": str(self.records),
            **extra,
        }

    def tune_args(self, trials: int = TRIALS, *options: str) -> list[str]:
        return [
            "tune", str(self.onnx), "--target", "host", "--threads", "1",
            "--trials", str(trials), "--records", str(self.records), *options,
        ]  # fmt: skip

    def held_argv(
        self, hook: str, trials: int = TRIALS, *options: str
    ) -> tuple[list[str], dict[str, str]]:
        """A tune the shim holds in ``hook`` (until a signal, or ``$FAULT_RELEASE`` exists)."""
        shim = self.root / "shim.py"
        shim.write_text(SHIM)
        env = self.env(FAULT_HOOK=hook, FAULT_READY=str(self.ready))
        return [sys.executable, str(shim), *self.tune_args(trials, *options)], env

    @property
    def ready(self) -> Path:
        return self.root / "ready"

    @property
    def release(self) -> Path:
        return self.root / "release"

    def leftovers(self) -> list[str]:
        """What is in $TMPDIR that importing the libraries alone does not leave there too."""
        return sorted(p.name for p in self.tmpdir.iterdir() if p.name not in self.library_leftovers)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the records root: the store, its lock file, its target)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def searched_records(store: RecordStore) -> list[str]:
    baselines = store.baselines()
    return [
        line
        for line in store.lines().records
        if record_schedule(json.loads(line)[1], baselines) == SEARCHED
    ]


def assert_readable(workspace: Workspace) -> None:
    """``records show`` reads the store (one that holds no record yet is said so, in one
    ``Error:`` line), and no line of it is torn or damaged."""
    lines = workspace.store.lines()
    assert lines.dropped == 0 and not lines.damaged, lines
    shown = subprocess.run(
        edgecompile_argv("records", "show", "--records", str(workspace.records)),
        env=workspace.env(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert "Traceback" not in shown.stderr and "damaged" not in shown.stderr, shown.stderr
    if lines.records:
        assert shown.returncode == 0, shown.stderr
    else:
        assert shown.returncode == 2, shown.stderr
        assert shown.stderr.startswith("Error: no tuning records"), shown.stderr
        assert len(shown.stderr.splitlines()) == 1, shown.stderr


class Running:
    """A command started in a session of its own (killed whole at the end of the test), its
    stdout and stderr read line by line as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.err)

    def stages(self) -> list[tuple[int, str]]:
        """The stages started so far: (number, label)."""
        with self._changed:
            matches = [STAGE_LINE.match(line) for line in self.err]
        return [
            (int(m["number"]), m["label"])
            for m in matches
            if m and not m["label"].startswith(("done in ", "failed after "))
        ]

    def ended(self) -> set[int]:
        """The stages that ended so far (done or failed)."""
        with self._changed:
            matches = [STAGE_LINE.match(line) for line in self.err]
        return {
            int(m["number"])
            for m in matches
            if m and m["label"].startswith(("done in ", "failed after "))
        }

    def wait_for_stage(self, label_start: str) -> int:
        """Until a stage whose label starts with ``label_start`` started; its number."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        with self._changed:
            while True:
                for number, label in self.stages():
                    if label.startswith(label_start):
                        return number
                if self.process.poll() is not None:
                    pytest.fail(
                        f"the tune ended ({self.process.returncode}) before the "
                        f"{label_start!r} stage:\n{self.stderr}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"no {label_start!r} stage in {READY_TIMEOUT_S} s:\n{self.stderr}")
                self._changed.wait(0.2)

    def wait_for_file(self, ready: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None:
                self.finish(EXIT_TIMEOUT_S)
                pytest.fail(
                    f"the tune ended ({self.process.returncode}) before the stop point:\n"
                    f"{self.stderr}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the tune never reached the stop point in {READY_TIMEOUT_S} s")
            time.sleep(0.05)

    def send(self, signum: signal.Signals) -> None:
        """The signal to the tune alone, as ``kill -INT/-TERM/-9 PID`` sends it.

        (The whole process group, as a terminal's Ctrl-C, is its own test below.)
        """
        self.process.send_signal(signum)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the command; its exit code, stdout and stderr."""
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            # A SIGKILLed tune's orphaned workers may hold the pipes open: what it said is read.
            reader.join(timeout=5)
        with self._changed:
            return self.process.returncode, "\n".join(self.out), "\n".join(self.err)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=EXIT_TIMEOUT_S)


def failed_stage(stderr: str) -> int | None:
    """The number of the stage the command's progress says failed, if one did."""
    for line in stderr.splitlines():
        match = STAGE_LINE.match(line)
        if match and match["label"].startswith("failed after "):
            return int(match["number"])
    return None


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library_leftovers(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """What importing ONNX Runtime and TVM alone leaves in a fresh $TMPDIR (ORT writes a
    session file): not the tune's to remove."""
    tmpdir = tmp_path_factory.mktemp("import-tmpdir")
    subprocess.run(
        [sys.executable, "-c", "import onnxruntime, tvm"],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        check=True,
        timeout=READY_TIMEOUT_S,
    )
    return frozenset(p.name for p in tmpdir.iterdir())


@pytest.fixture()
def processes() -> Iterator[list[Running]]:
    """Commands a test started; each killed whole at the end (a SIGKILLed tune's workers live
    on until they notice)."""
    started: list[Running] = []
    yield started
    for running in started:
        running.kill_group()


@pytest.fixture()
def workspace(
    tmp_path: Path, library_leftovers: frozenset[str], make_tiny_onnx: Callable[..., Path]
) -> Workspace:
    """An empty records root and an empty $TMPDIR."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    onnx = make_tiny_onnx(helpers / "tiny.onnx")
    return Workspace(helpers, tmp_path / "records", tmpdir, onnx, library_leftovers)


@pytest.fixture(scope="module")
def tuned_records(
    tmp_path_factory: pytest.TempPathFactory,
    library_leftovers: frozenset[str],
    make_tiny_onnx: Callable[..., Path],
) -> Path:
    """A records root a finished tune of the tiny model (``TRIALS``) wrote, copied into each
    test that needs a store an interrupted tune must leave as it was."""
    root = tmp_path_factory.mktemp("tuned")
    (root / "tmpdir").mkdir()
    done = Workspace(
        root, root / "records", root / "tmpdir", make_tiny_onnx(root / "tiny.onnx"),
        library_leftovers,
    )  # fmt: skip
    result = subprocess.run(
        edgecompile_argv(*done.tune_args()),
        env=done.env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert len(searched_records(done.store)) >= TRIALS
    return done.records


@pytest.fixture()
def tuned_workspace(workspace: Workspace, tuned_records: Path) -> Workspace:
    shutil.copytree(tuned_records, workspace.records)
    return workspace


def rerun(workspace: Workspace, trials: int) -> dict[str, object]:
    """The same tune again, to its end; what it reports (``--json``)."""
    result = subprocess.run(
        edgecompile_argv(*workspace.tune_args(trials, "--json")),
        env=workspace.env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert workspace.leftovers() == []
    return json.loads(result.stdout)


# --- Ctrl-C at a terminal: the whole process group ------------------------------------------


@pytest.mark.timeout(900)
def test_ctrl_c_to_the_process_group_stops_the_tune_without_worker_tracebacks(
    workspace: Workspace, processes: list[Running]
) -> None:
    """A terminal's Ctrl-C reaches every process of its foreground group. TVM's build and
    measurement workers, then starting, used to die in Python's start-up with a "Fatal Python
    error" traceback on the tune's stderr; they now run in a session of their own."""
    tune = Running(edgecompile_argv(*workspace.tune_args(SEARCH_TRIALS)), workspace.env())
    processes.append(tune)
    tune.wait_for_stage("measure")  # the workers start here
    time.sleep(0.5)
    os.killpg(tune.process.pid, signal.SIGINT)
    code, _, err = tune.finish(EXIT_TIMEOUT_S)
    assert code == EXIT_CODE[signal.SIGINT], err
    assert err.strip().splitlines()[-1] == MESSAGE[signal.SIGINT], err
    assert "Fatal Python error" not in err and "Traceback" not in err, err
    assert workspace.leftovers() == []


# --- SIGTERM while the tune works ---------------------------------------------------------------


@pytest.mark.timeout(900)
def test_sigterm_mid_search_exits_143_keeps_the_records_and_the_rerun_resumes(
    workspace: Workspace, processes: list[Running]
) -> None:
    """SIGTERM once the search wrote its first records: exit 143 and "Terminated." (not "tuning
    failed", not exit 2), the search stage said it failed, no candidate's folder left in
    $TMPDIR, the store readable, and the same command again runs only the missing trials."""
    tune = Running(edgecompile_argv(*workspace.tune_args(SEARCH_TRIALS)), workspace.env())
    processes.append(tune)
    search = tune.wait_for_stage("search")
    store = workspace.store
    untuned = len(store.lines().records)
    assert untuned >= 1  # the untuned kernels were measured before the search began
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(store.lines().records) == untuned:
        later = [label for number, label in tune.stages() if number > search]
        assert not later, f"the search ended before it wrote a record: {later}"
        assert tune.process.poll() is None, tune.stderr
        assert time.monotonic() < deadline, f"no search record in {READY_TIMEOUT_S} s"
        time.sleep(0.1)
    tune.send(signal.SIGTERM)
    code, out, err = tune.finish(EXIT_TIMEOUT_S)

    assert code == EXIT_CODE[signal.SIGTERM], err
    assert err.strip().splitlines()[-1] == MESSAGE[signal.SIGTERM], err
    assert "tuning failed" not in err and "Traceback" not in err, err
    assert failed_stage(err) == search, err
    assert out == ""  # no results table of a tune that did not finish
    assert workspace.leftovers() == []
    assert_readable(workspace)
    kept = store.lines().records
    searched = len(searched_records(store))
    assert 1 <= searched < SEARCH_TRIALS

    resumed = rerun(workspace, SEARCH_TRIALS)
    assert resumed["trials_before"] == searched
    rest = SEARCH_TRIALS - searched
    assert 0 < int(resumed["trials_run"]) <= rest + MAX_TRIALS_PER_ROUND  # at most a round over
    assert set(kept) <= set(store.lines().records)
    assert_readable(workspace)


@pytest.mark.timeout(900)
def test_sigterm_while_measuring_untuned_kernels_exits_143_and_the_rerun_finishes(
    workspace: Workspace, processes: list[Running]
) -> None:
    tune = Running(edgecompile_argv(*workspace.tune_args()), workspace.env())
    processes.append(tune)
    untuned = tune.wait_for_stage("measure the untuned kernels")
    # Into the stage's work: a signal the instant its line is written may land before the stage
    # has begun (the write releases the GIL), where no stage can say it failed.
    time.sleep(SETTLE_S)
    assert untuned not in tune.ended(), f"the stage ended before the signal:\n{tune.stderr}"
    tune.send(signal.SIGTERM)
    code, out, err = tune.finish(EXIT_TIMEOUT_S)

    assert code == EXIT_CODE[signal.SIGTERM], err
    assert err.strip().splitlines()[-1] == MESSAGE[signal.SIGTERM], err
    assert "tuning failed" not in err and "Traceback" not in err, err
    assert failed_stage(err) == untuned, err  # the signal landed in that stage
    assert out == ""
    assert workspace.leftovers() == []
    assert_readable(workspace)
    kept = workspace.store.lines().records
    assert searched_records(workspace.store) == []  # stopped before the search

    finished = rerun(workspace, TRIALS)
    assert finished["trials_before"] == 0
    assert int(finished["trials_run"]) >= TRIALS
    assert set(kept) <= set(workspace.store.lines().records)
    assert searched_records(workspace.store)
    assert_readable(workspace)


# --- signals before any record is written -------------------------------------------------------


@pytest.mark.timeout(600)
# Each signal in one of the two stages (both signals end the same way in each stage: the
# build's fault tests cover that; two cases instead of four keep CI's time).
@pytest.mark.parametrize(
    ("signum", "stage"),
    [(signal.SIGINT, "read ONNX"), (signal.SIGTERM, "import into TVM Relax")],
    ids=["SIGINT-read-ONNX", "SIGTERM-import"],
)
def test_interrupted_before_records_exits_cleanly_and_leaves_the_store_as_it_was(
    stage: str,
    signum: signal.Signals,
    tuned_workspace: Workspace,
    processes: list[Running],
) -> None:
    before = snapshot(tuned_workspace.records)
    argv, env = tuned_workspace.held_argv(BEFORE_RECORDS[stage])
    tune = Running(argv, env)
    processes.append(tune)
    tune.wait_for_file(tuned_workspace.ready)
    tune.send(signum)
    code, out, err = tune.finish(EXIT_TIMEOUT_S)

    assert code == EXIT_CODE[signum], err
    assert err.strip().splitlines()[-1] == MESSAGE[signum], err
    assert "Traceback" not in err and out == "", (out, err)
    numbers = {label: number for number, label in tune.stages()}
    assert failed_stage(err) == numbers[stage], err  # the signal landed in that stage
    assert snapshot(tuned_workspace.records) == before
    assert tuned_workspace.leftovers() == []


@pytest.mark.timeout(900)
def test_killed_before_records_the_store_is_intact_and_the_next_tune_cleans_up(
    tuned_workspace: Workspace, processes: list[Running]
) -> None:
    """SIGKILL (nothing of the tune runs after it) in each stage before records, in turn; then
    the same tune to its end, which removes the scratch folder the last one left."""
    workspace = tuned_workspace
    before = snapshot(workspace.records)
    killed: list[int] = []
    for stage, hook in BEFORE_RECORDS.items():
        argv, env = workspace.held_argv(hook)
        tune = Running(argv, env)
        processes.append(tune)
        tune.wait_for_file(workspace.ready)
        tune.send(signal.SIGKILL)
        code, _out, err = tune.finish(EXIT_TIMEOUT_S)
        assert code == EXIT_CODE[signal.SIGKILL], err
        assert snapshot(workspace.records) == before, stage
        killed.append(tune.process.pid)
        workspace.ready.unlink()
    # Each tune removed the scratch folder of the one killed before it: only the last one's is
    # there (named by its pid, so a tune can tell a dead process's folder from a running one's).
    left = workspace.leftovers()
    assert len(left) == 1 and left[0].startswith(f"{SCRATCH_PREFIX}{killed[-1]}-"), left

    records = workspace.store.lines().records
    again = rerun(workspace, TRIALS)  # asserts $TMPDIR is empty afterwards
    assert again["trials_run"] == 0  # the killed tunes took nothing from the finished one
    assert set(records) <= set(workspace.store.lines().records)
    assert_readable(workspace)


# --- two tunes on one store ---------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_second_tune_on_a_store_in_use_is_refused_and_the_first_finishes(
    workspace: Workspace, processes: list[Running]
) -> None:
    """The first tune is held at the start of its search (the store's lock held, its untuned
    records written); a second on the same store and $TMPDIR ends at once with exit 2 and one
    ``Error:`` line naming the store, writing nothing; released, the first finishes and the
    store holds every record it reports."""
    argv, env = workspace.held_argv(AT_SEARCH, TRIALS, "--json")
    first = Running(argv, {**env, "FAULT_RELEASE": str(workspace.release)})
    processes.append(first)
    first.wait_for_file(workspace.ready)
    store = workspace.store
    before = snapshot(workspace.records)
    before_records = store.lines().records
    assert before_records  # the first's untuned records, which the second must not touch

    second = Running(edgecompile_argv(*workspace.tune_args()), workspace.env())
    processes.append(second)
    code, out, err = second.finish(RUN_TIMEOUT_S)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "another edgecompile process" in errors[0] and str(store.path) in errors[0], err
    assert "Traceback" not in err and out == "", (out, err)
    assert snapshot(workspace.records) == before
    # The second's scratch folder is gone; the first's is still in use.
    left = workspace.leftovers()
    assert len(left) == 1 and left[0].startswith(f"{SCRATCH_PREFIX}{first.process.pid}-"), left

    workspace.release.touch()
    code, out, err = first.finish(RUN_TIMEOUT_S)
    assert code == 0, err
    result = json.loads(out)
    assert int(result["trials_run"]) >= TRIALS
    records = store.lines().records
    assert set(before_records) <= set(records)
    # Every record the first reports is in the store, and the store holds no other.
    assert sum(task["records"] for task in result["tasks"]) == len(records)
    assert searched_records(store)
    assert workspace.leftovers() == []
    assert_readable(workspace)
