"""A fuzz pass over every file a user hands edgecompile (issue #19): ONNX models, ``.npy``
inputs, preset ``.toml`` files, manifests, record stores and records exports.

Each input kind gets damaged copies of a valid file (bytes flipped, cut short, lines replaced,
fields given JSON of the wrong type, random names) and its loader must either succeed or raise
:class:`EdgecompileError` -- never another exception, which the CLI would print as a traceback.
Record stores must also never lose a record the damage did not touch, and a refused import must
leave the store as it was. One CLI round per kind checks the same through ``main``: exit 0 or
exit 2 with one ``Error:`` line.

Bounded: every test has a fixed example budget and the module runs in well under a minute on
two cores. The examples are derandomized (the same every run: a failure reproduces); set
``EDGECOMPILE_FUZZ=explore`` for fresh random examples on every run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecompile.errors import EdgecompileError

FUZZ = settings(
    derandomize=os.environ.get("EDGECOMPILE_FUZZ") != "explore",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies ----------------------------------------------------------------------------------

#: Any JSON value (nested a little): the wrong type for whatever field it lands in.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, a slice cut out or random bytes spliced in."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "splice", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


def loads_or_refuses(load: Callable[[], Any]) -> Any:
    """Run a loader: its value, or None when it refused with an EdgecompileError in one line."""
    try:
        return load()
    except EdgecompileError as error:
        assert "\n" not in str(error), f"not one line: {error}"
        return None


def cli_round(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    """``edgecompile ARGV``: exit 0, or 2 with exactly one ``Error:`` line; never a traceback."""
    from edgecompile.cli import main

    capsys.readouterr()
    code = 0
    try:
        main(argv)
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code in (0, 2), (code, captured.err)
    if code == 2:
        errors = captured.err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("Error: "), captured.err
    return code


@pytest.fixture()
def scratch(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A fresh empty folder per Hypothesis example (tmp_path is one per test)."""
    made = []

    def fresh() -> Path:
        folder = tmp_path / f"ex{len(made)}"
        folder.mkdir()
        made.append(folder)
        return folder

    yield fresh


# --- ONNX ----------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_onnx_files(tiny_onnx: Path, scratch: Callable[[], Path], data: st.DataObject) -> None:
    from edgecompile.importer import import_onnx

    path = scratch() / "model.onnx"
    path.write_bytes(data.draw(mutated(tiny_onnx.read_bytes())))
    loads_or_refuses(lambda: import_onnx(path))


# --- .npy ----------------------------------------------------------------------------------------


def _valid_npy(folder: Path) -> bytes:
    path = folder / "valid.npy"
    np.save(path, np.arange(24, dtype="float32").reshape(1, 2, 3, 4))
    return path.read_bytes()


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_npy_files(scratch: Callable[[], Path], data: st.DataObject) -> None:
    from edgecompile.runner import load_input_files

    folder = scratch()
    path = folder / "input.npy"
    path.write_bytes(data.draw(mutated(_valid_npy(folder))))
    loaded = loads_or_refuses(lambda: load_input_files([path]))
    if loaded is not None:
        assert all(array.dtype.kind in "biuf" for array in loaded)


# --- preset .toml --------------------------------------------------------------------------------

VALID_TOML = b"""[myboard]
description = "a board"
threads = 4
rpc_key = "myboard"
target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a72", mattr = ["+neon"] }
"""


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_toml_files(scratch: Callable[[], Path], data: st.DataObject) -> None:
    from edgecompile._names import plain_name_problem
    from edgecompile.targets import load_preset_file, resolve_target

    path = scratch() / "board.toml"
    path.write_bytes(data.draw(mutated(VALID_TOML)))
    presets = loads_or_refuses(lambda: load_preset_file(path))
    for name in presets or {}:
        assert plain_name_problem(name) is None
    loads_or_refuses(lambda: resolve_target(str(path)))


@settings(FUZZ, max_examples=120)
@given(name=st.text(max_size=20), value=json_values)
def test_toml_names_and_values(scratch: Callable[[], Path], name: str, value: Any) -> None:
    """Any table name and any value for a field: accepted only as a plain name."""
    from edgecompile._names import plain_name_problem
    from edgecompile.targets import load_preset_file

    quoted = json.dumps(name)  # a TOML basic string is a JSON string
    field = json.dumps(value) if isinstance(value, str | int | bool) else '"x"'
    path = scratch() / "board.toml"
    path.write_text(f'[{quoted}]\ndescription = {field}\ntarget = {{ kind = "llvm" }}\n')
    presets = loads_or_refuses(lambda: load_preset_file(path))
    for accepted in presets or {}:
        assert plain_name_problem(accepted) is None


# --- manifest ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    from edgecompile.builder import build

    out = tmp_path_factory.mktemp("artifact")
    return build(str(tiny_onnx), "host", output_dir=out, verify=False).artifact.directory


def _artifact_copy(artifact: Path, folder: Path) -> Path:
    copy = folder / artifact.name
    shutil.copytree(artifact, copy)
    return copy


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_manifest_bytes(
    tiny_artifact: Path, scratch: Callable[[], Path], data: st.DataObject
) -> None:
    from edgecompile.artifact import MANIFEST, load_artifact

    copy = _artifact_copy(tiny_artifact, scratch())
    manifest = copy / MANIFEST
    manifest.write_bytes(data.draw(mutated(manifest.read_bytes())))
    loaded = loads_or_refuses(lambda: load_artifact(copy))
    if loaded is not None:
        assert loaded.library.resolve().parent == copy.resolve()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_manifest_fields(
    tiny_artifact: Path, scratch: Callable[[], Path], data: st.DataObject
) -> None:
    """A field of the right manifest given a value of any type, or a random name."""
    from edgecompile.artifact import MANIFEST, load_artifact

    copy = _artifact_copy(tiny_artifact, scratch())
    manifest = json.loads((copy / MANIFEST).read_text())
    key = data.draw(st.sampled_from(sorted(manifest)))
    manifest[key] = data.draw(json_values | st.text(max_size=30))
    (copy / MANIFEST).write_text(json.dumps(manifest))
    loaded = loads_or_refuses(lambda: load_artifact(copy))
    if loaded is not None:
        assert loaded.library.resolve().parent == copy.resolve()


# --- record stores -------------------------------------------------------------------------------


def _record_store_maker() -> Callable[[Path], Any]:
    """test_records.make_store, without importing a test module (importlib mode)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_records_fixture", Path(__file__).with_name("test_records.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_store


@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _record_store_maker()(tmp_path_factory.mktemp("store"))


def _records_of(store: Any) -> set[tuple[str, str]]:
    """(workload hash, record body) of every record a reader sees."""
    return {
        (workload, json.dumps(body, sort_keys=True))
        for workload, bodies in store.records_by_workload().items()
        for body in bodies
    }


@st.composite
def damaged_lines(draw: st.DrawFn, lines: list[bytes]) -> tuple[list[bytes], set[int]]:
    """``lines`` with a few damaged (and which original positions were touched). Lines are
    replaced in place or appended/inserted: a workload keeps its line number, as damage on a
    disk (or a torn append) does."""
    lines = list(lines)
    touched: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["garbage", "json", "flip", "tear", "blank"]))
        if kind == "garbage":
            lines[at] = draw(st.binary(max_size=40)).replace(b"\n", b" ")
        elif kind == "json":
            lines[at] = json.dumps(draw(json_values)).encode()
        elif kind == "flip" and lines[at]:
            index = draw(st.integers(0, len(lines[at]) - 1))
            flipped = bytearray(lines[at])
            flipped[index] ^= draw(st.integers(1, 255))
            lines[at] = bytes(flipped).replace(b"\n", b" ")
        elif kind == "tear":
            at = len(lines) - 1
            lines[at] = lines[at][: draw(st.integers(0, max(len(lines[at]) - 1, 0)))]
        else:
            lines[at] = b""
        touched.add(at)
    return lines, touched


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_record_stores_never_lose_a_good_record(
    pristine_store: Any, scratch: Callable[[], Path], data: st.DataObject
) -> None:
    from edgecompile.records import RecordStore, summarize

    folder = scratch() / pristine_store.path.name
    shutil.copytree(pristine_store.path, folder)
    store = RecordStore(folder, pristine_store.target, pristine_store.preset)
    workloads = store.workload_path.read_bytes().split(b"\n")[:-1]
    records = store.record_path.read_bytes().split(b"\n")[:-1]
    hashes = [json.loads(line)[0] for line in workloads]
    good = set()
    damage_workloads = data.draw(st.booleans())
    new_workloads, hit_workloads = (
        data.draw(damaged_lines(workloads)) if damage_workloads else (workloads, set())
    )
    new_records, hit_records = data.draw(damaged_lines(records))
    for number, line in enumerate(records):
        index, body = json.loads(line)
        if number not in hit_records and index not in hit_workloads:
            good.add((hashes[index], json.dumps(body, sort_keys=True)))
    torn = data.draw(st.booleans())
    store.workload_path.write_bytes(b"\n".join(new_workloads) + b"\n")
    store.record_path.write_bytes(b"\n".join(new_records) + (b"" if torn else b"\n"))

    # readers: never raise, and see every good record
    assert good <= _records_of(store)
    summarize(store)
    note = store.damage_note()
    assert note is None or "\n" not in note
    store.applied_records()
    store.snapshot()
    # a writer: keeps every good record, leaves a store MetaSchedule loads
    with store.writer():
        pass
    assert good <= _records_of(store)
    assert not store.lines().damaged
    store.snapshot()


# --- records exports (import payloads) -----------------------------------------------------------


@pytest.fixture(scope="module")
def export_payload(pristine_store: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgecompile.records import export_records

    path = export_records(pristine_store, tmp_path_factory.mktemp("export") / "export.json")
    return json.loads(path.read_text())


def _files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@st.composite
def damaged_payloads(draw: st.DrawFn, payload: dict[str, Any]) -> bytes:
    """The export's text with bytes flipped, or one field / one line given any JSON value."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(payload).encode()))
    payload = json.loads(json.dumps(payload))
    key = draw(st.sampled_from(sorted(payload)))
    if key in ("workloads", "records") and draw(st.booleans()):
        at = draw(st.integers(0, len(payload[key]) - 1))
        payload[key][at] = json.dumps(draw(json_values))
    elif key == "target" and draw(st.booleans()):
        payload[key] = {
            **payload[key],
            draw(st.sampled_from(sorted(payload[key]))): draw(json_values),
        }
    else:
        payload[key] = draw(json_values)
    return json.dumps(payload).encode()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_import_payloads_all_or_nothing(
    export_payload: dict[str, Any], scratch: Callable[[], Path], data: st.DataObject
) -> None:
    from edgecompile.records import import_records, list_stores

    folder = scratch()
    root = folder / "records"
    half = {**export_payload, "records": export_payload["records"][:5]}
    (folder / "half.json").write_text(json.dumps(half))
    import_records(folder / "half.json", root)
    (store,) = list_stores(root)
    before_files, before_records = _files_under(root), _records_of(store)

    source = folder / "payload.json"
    source.write_bytes(data.draw(damaged_payloads(export_payload)))
    result = loads_or_refuses(lambda: import_records(source, root))
    if result is None:
        assert _files_under(root) == before_files  # nothing written
    else:
        for listed in list_stores(root):
            assert listed.path.parent == root
        if result.store.path == store.path:
            assert before_records <= _records_of(store)


# --- one CLI round per kind ----------------------------------------------------------------------


@settings(FUZZ, max_examples=5)
@given(data=st.data())
def test_cli_rounds(
    tiny_onnx: Path,
    tiny_artifact: Path,
    pristine_store: Any,
    export_payload: dict[str, Any],
    scratch: Callable[[], Path],
    capsys: pytest.CaptureFixture[str],
    data: st.DataObject,
) -> None:
    folder = scratch()
    # ONNX: build stops at the import (a damaged model) or builds; --no-verify keeps it short
    model = folder / "model.onnx"
    model.write_bytes(data.draw(mutated(tiny_onnx.read_bytes())))
    cli_round(["build", str(model), "--no-verify", "-o", str(folder / "out")], capsys)
    # .npy and manifest: run the tiny artifact with a damaged input, then a damaged manifest
    artifact = _artifact_copy(tiny_artifact, folder)
    npy = folder / "input.npy"
    npy.write_bytes(data.draw(mutated(_valid_npy(folder))))
    cli_round(["run", str(artifact), "--input", str(npy)], capsys)
    manifest = artifact / "manifest.json"
    manifest.write_bytes(data.draw(mutated(manifest.read_bytes())))
    cli_round(["run", str(artifact)], capsys)
    # .toml: resolved by records show (then "no records": exit 2, or a one-line refusal)
    toml = folder / "board.toml"
    toml.write_bytes(data.draw(mutated(VALID_TOML)))
    cli_round(["records", "show", "--target", str(toml), "--records", str(folder)], capsys)
    # records: a damaged store listed and shown
    store = folder / "records" / pristine_store.path.name
    shutil.copytree(pristine_store.path, store)
    lines, _ = data.draw(
        damaged_lines(store.joinpath("database_tuning_record.json").read_bytes().split(b"\n")[:-1])
    )
    store.joinpath("database_tuning_record.json").write_bytes(b"\n".join(lines) + b"\n")
    cli_round(["records", "list", "--records", str(folder / "records")], capsys)
    cli_round(["records", "show", "--records", str(folder / "records")], capsys)
    # import payload
    payload = folder / "payload.json"
    payload.write_bytes(data.draw(damaged_payloads(export_payload)))
    cli_round(["records", "import", str(payload), "--records", str(folder / "imported")], capsys)
