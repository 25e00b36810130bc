"""Damaged record stores (issue #19.2): readers keep every good record, writers never delete
one, and a build (and ``records show``) says so in one line instead of crashing. And
``records import`` (#19.4): it checks the whole file first, writes all or nothing, and never
files a record under a target it was not tuned for; names from the file (its preset, its
target's CPU) never become paths outside the records folder (#19.3).

The store is made with MetaSchedule's own database (no tuning: a few traces of a tiny PrimFunc
committed as records), so each test sees real record lines in well under a second.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecompile.errors import EdgecompileError
from edgecompile.records import (
    RECORDS_FILE,
    WORKLOADS_FILE,
    Choice,
    RecordStore,
    describe_knobs,
    export_records,
    import_records,
    knob_values,
    list_stores,
    load_store,
    store_for,
    store_name,
    summarize,
)
from edgecompile.targets import resolve_target

WORKLOADS = 4
RECORDS_PER_WORKLOAD = 3


def _prim_module(rows: int) -> Any:
    import tvm
    from tvm import te

    a = te.placeholder((rows, 8), name="a")
    b = te.compute((rows, 8), lambda i, j: a[i, j] * 2.0, name="b")
    return tvm.IRModule({"main": te.create_prim_func([a, b])})


def make_store(root: Path) -> RecordStore:
    """A host store: :data:`WORKLOADS` workloads with :data:`RECORDS_PER_WORKLOAD` records each
    (distinct traces: the rows are split by different factors), committed by MetaSchedule."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    preset = resolve_target("host")
    store = store_for(preset, root)
    target = preset.tvm_target()
    names = {}
    with store.writer() as database:
        for w in range(WORKLOADS):
            module = _prim_module(8 * (w + 1))
            workload = database.commit_workload(module)
            names[str(workload.as_json()[0])] = f"kernel{w}"
            for r in range(RECORDS_PER_WORKLOAD):
                schedule = s_tir.Schedule(module)
                (rows, _) = schedule.get_loops(schedule.get_sblock("b"))
                schedule.split(rows, [None, 2**r])
                database.commit_tuning_record(
                    ms.database.TuningRecord(
                        schedule.trace,
                        workload,
                        [1e-5 * (r + 1)],
                        target,
                        ArgInfo.from_entry_func(module),
                    )
                )
    store.add_kernel_names(names)
    return store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> RecordStore:
    return make_store(tmp_path_factory.mktemp("pristine"))


@pytest.fixture()
def store(pristine: RecordStore, tmp_path: Path) -> RecordStore:
    """A fresh copy of the pristine store (tests damage it)."""
    shutil.copytree(pristine.path, tmp_path / pristine.path.name)
    return store_for(resolve_target("host"), tmp_path)


def by_kernel(store: RecordStore) -> dict[str, list[str]]:
    """Kernel name → its records' bodies (as text): what a record *is*, whatever its line."""
    names = store.kernel_names()
    return {
        names[workload]: sorted(json.dumps(body) for body in bodies)
        for workload, bodies in store.records_by_workload().items()
    }


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines))


def test_the_store_is_what_the_tests_assume(store: RecordStore) -> None:
    clean = store.lines()
    assert len(clean.workloads) == WORKLOADS
    assert len(clean.records) == WORKLOADS * RECORDS_PER_WORKLOAD
    assert clean.dropped == 0 and not clean.damaged and store.damage_note() is None
    assert len(by_kernel(store)) == WORKLOADS


@pytest.mark.parametrize("position", range(WORKLOADS))
def test_garbage_workload_line_costs_only_that_kernel(store: RecordStore, position: int) -> None:
    """A workload line overwritten with garbage: the other kernels keep every record (before:
    readers stopped at the garbage, and the next writer deleted everything after it)."""
    before = by_kernel(store)
    lines = lines_of(store.workload_path)
    lost = store.kernel_names()[json.loads(lines[position])[0]]
    lines[position] = b"\x00garbage{"
    write_lines(store.workload_path, lines)

    expected = {name: bodies for name, bodies in before.items() if name != lost}
    assert by_kernel(store) == expected
    note = store.damage_note()
    assert note is not None and "\n" not in note
    assert f"{WORKLOADS_FILE} line {position + 1}" in note
    assert {k.name for k in summarize(store)} == set(expected)

    # A writer moves the damaged files aside whole, then keeps every good record live.
    original = (store.workload_path.read_bytes(), store.record_path.read_bytes())
    with store.writer():
        pass
    assert by_kernel(store) == expected and store.damage_note() is None
    (quarantine,) = store.quarantined()
    kept = ((quarantine / WORKLOADS_FILE).read_bytes(), (quarantine / RECORDS_FILE).read_bytes())
    assert kept == original  # the lost kernel's records are still on disk, byte for byte
    store.snapshot()  # and MetaSchedule loads the repaired store


BAD_RECORD_LINES = {
    "garbage": b"garbage",
    "not-utf8": b"[0, \xff]",
    "wrong-schema": b"[0, [1]]",  # before: IndexError in records show, crash in every build
    "body-is-object": b'[0, {"trace": 1}]',
    "index-out-of-range": b'[99, [[[], []], [1e-05], {"kind": "llvm"}, []]]',
    "bool-index": b"[true, [[[], []], null, {}, []]]",
    "run-secs-text": b'[0, [[[], []], ["fast"], {"kind": "llvm"}, []]]',
    "json-string": b'"a JSON string is no torn line"',
    "nested-too-deep": b"[" * 100_000,  # RecursionError in json.loads
}


#: Traces whose knobs ``records show`` cannot read: it shows none, never a traceback.
BAD_KNOB_TRACES = [
    [[["SamplePerfectTile", 1, 2, 3]], [[[0], [1, 2]]]],  # an unhashable decision index
    [[["SampleCategorical", [], [[0, 16]], [[1]]]], [[0, 1]]],  # an unhashable output
    [[["Annotate", ["b0", ["v1"]], ["meta_schedule.unroll_explicit"], []]], []],
    [[["Annotate", 5, ["edgecompile.knobs"], []]], []],
    [[["SampleCategorical", [], [[0, 16]], ["v1"]]], [[0, 7]]],  # a decision out of range
    [
        [
            ["SamplePerfectTile", [], [], ["v1"]],
            ["Annotate", ["b", '"a,b"'], ["edgecompile.knobs"], []],
        ],
        [[0, ["x"]]],
    ],
]


@pytest.mark.parametrize("trace", BAD_KNOB_TRACES)
def test_knobs_of_a_damaged_trace_are_none(trace: Any) -> None:
    assert knob_values([trace, [1e-5], {}, []]) == {}


def test_knobs_are_read_from_a_trace_alone() -> None:
    trace = [
        [
            ["SamplePerfectTile", ["l1"], [2, 16], ["v2", "v3"]],
            ["SampleCategorical", [], [[0, 16, 64], [0.3, 0.3, 0.4]], ["v4"]],
            ["Annotate", ["b0", "v4"], ["meta_schedule.unroll_explicit"], []],
            ["Annotate", ["b1", '"oc tile"'], ["edgecompile.knobs"], []],
            ["Annotate", ["b1", '"inputs"'], ["edgecompile.loop_order"], []],
        ],
        [[0, [7, 4]], [1, 2]],
    ]
    values = knob_values([trace, [1e-5], {}, []])
    assert values == {"oc tile": 4, "unroll steps": 64, "order": "inputs"}
    defaults = {"oc tile": 2, "unroll steps": 0, "order": "inputs"}
    assert describe_knobs(values, defaults) == "oc tile 2 → 4, unroll steps 0 → 64, order inputs"


@pytest.mark.parametrize("bad", list(BAD_RECORD_LINES), ids=list(BAD_RECORD_LINES))
@pytest.mark.parametrize("position", [0, 5, WORKLOADS * RECORDS_PER_WORKLOAD])
def test_bad_record_line_anywhere(store: RecordStore, bad: str, position: int) -> None:
    before = by_kernel(store)
    lines = lines_of(store.record_path)
    lines.insert(position, BAD_RECORD_LINES[bad])
    if position == len(lines) - 1:
        lines.append(b"")  # a complete last line (with its newline): damage, not a torn line
    write_lines(store.record_path, lines)

    assert by_kernel(store) == before
    assert store.lines().damaged and store.lines().dropped == 0
    summarize(store)
    store.snapshot()
    with store.writer():
        pass
    assert by_kernel(store) == before and not store.lines().damaged
    assert BAD_RECORD_LINES[bad] in (store.quarantined()[0] / RECORDS_FILE).read_bytes()


@pytest.mark.parametrize("file", [WORKLOADS_FILE, RECORDS_FILE])
def test_torn_last_line_is_the_only_line_dropped(store: RecordStore, file: str) -> None:
    before = by_kernel(store)
    path = store.path / file
    data = path.read_bytes()
    path.write_bytes(data + data.split(b"\n")[0][: len(data.split(b"\n")[0]) // 2])
    clean = store.lines()
    assert clean.dropped == 1 and not clean.damaged and store.damage_note() is None
    assert by_kernel(store) == before
    with store.writer():
        pass
    assert path.read_bytes() == data and not store.quarantined()


def test_another_targets_record_is_not_applied(store: RecordStore) -> None:
    """A record line that says it was tuned for another CPU is never applied here."""
    lines = lines_of(store.record_path)
    index, body = json.loads(lines[0])
    body[2] = {**body[2], "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu"}
    lines[0] = json.dumps([index, body]).encode()
    write_lines(store.record_path, lines)
    assert len(store.lines().records) == WORKLOADS * RECORDS_PER_WORKLOAD - 1
    assert "another target's record" in str(store.lines().damaged[0])
    assert body not in [json.loads(line)[1] for line in store.applied_records()]


def test_a_record_target_tvm_would_crash_on_is_refused() -> None:
    """MetaSchedule builds a TVM Target from each record's target: TVM's ARM parser crashes
    the process (SIGSEGV) on some malformed triples, so such a record never reaches it."""
    from edgecompile.records import record_problem

    body = [[[], []], [1e-5], {"kind": "llvm", "mtriple": "aarch64linux-gnu"}, []]
    assert "ARM architecture" in (record_problem([0, body], {"kind": "llvm"}) or "")


@pytest.mark.parametrize("file", ["kernels.json", "choices.json", "baselines.json"])
def test_damaged_side_file_is_copied_aside_before_a_write(store: RecordStore, file: str) -> None:
    (store.path / file).write_text('{"a": ')
    assert store.damage_note() is not None
    store.add_choices({"w": Choice("untuned", 1.0, None, 1)})
    store.add_kernel_names({"w": "k"})
    store.add_baselines({"d": "ours"})
    assert any((q / file).read_text() == '{"a": ' for q in store.quarantined())
    assert store.choices()["w"].record == "untuned" and store.kernel_names()["w"] == "k"


def test_one_bad_choice_keeps_the_others(store: RecordStore) -> None:
    store.add_choices({"w1": Choice("untuned", 1.0, None, 1), "w2": Choice("x", 1.0, 0.5, 2)})
    data = json.loads((store.path / "choices.json").read_text())
    data["w1"] = {"record": "untuned"}  # no "records"
    (store.path / "choices.json").write_text(json.dumps(data))
    assert set(store.choices()) == {"w2"}
    assert "choices.json" in (store.damage_note() or "")


def test_damaged_target_file_is_one_line(store: RecordStore, tmp_path: Path) -> None:
    (store.path / "target.json").write_text('["not", "a", "target"]')
    with pytest.raises(EdgecompileError, match=r"target\.json is damaged"):
        load_store(store.path)
    with pytest.raises(EdgecompileError, match=r"target\.json is damaged"):
        list_stores(tmp_path)
    with pytest.raises(EdgecompileError, match=r"target\.json is damaged"), store.writer():
        pass
    (store.path / "target.json").write_text('{"preset": "../../x", "target": {"kind": "llvm"}}')
    with pytest.raises(EdgecompileError, match=re.escape("preset name '../../x'")):
        load_store(store.path)


def test_records_show_and_list_with_a_damaged_store(
    store: RecordStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecompile.cli import main

    lines = lines_of(store.record_path)
    lines.insert(2, b"[0, [1]]")
    write_lines(store.record_path, lines)
    for argv in (["records", "show"], ["records", "list"]):
        main([*argv, "--records", str(tmp_path)])  # returns: exit code 0
        _, err = capsys.readouterr()
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "damaged line" in warnings[0], err
    main(["records", "show", "--records", str(tmp_path), "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert sum(k["trials"] for k in shown) == WORKLOADS * RECORDS_PER_WORKLOAD


def test_build_with_a_damaged_store_says_so_in_one_line(
    store: RecordStore,
    tmp_path: Path,
    make_tiny_onnx: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgecompile.cli import main

    lines = lines_of(store.workload_path)
    lines[1] = b"garbage"
    write_lines(store.workload_path, lines)
    records = lines_of(store.record_path)
    records.insert(4, b"[0, [1]]")
    write_lines(store.record_path, records)
    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    argv = ["build", str(model), "--target", "host", "--no-verify", "-o", str(tmp_path / "out")]
    main([*argv, "--records", str(tmp_path)])  # returns: exit code 0
    _, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "damaged line" in warnings[0] and "Traceback" not in err


# records import


RECORDS = WORKLOADS * RECORDS_PER_WORKLOAD


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An export of a host store of :data:`RECORDS` records, as a parsed payload."""
    root = tmp_path_factory.mktemp("source")
    path = export_records(make_store(root), root / "export.json")
    return json.loads(path.read_text())


def write_payload(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(json.dumps(payload))
    return path


def files_under(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip_and_again(exported: dict[str, Any], tmp_path: Path) -> None:
    source = write_payload(tmp_path / "x.json", exported)
    first = import_records(source, tmp_path / "r")
    assert (first.added, first.skipped) == (RECORDS, 0)
    assert sorted(first.store.lines().records) == sorted(exported["records"])
    assert first.store.lines().workloads == exported["workloads"]
    again = import_records(source, tmp_path / "r")
    assert (again.added, again.skipped) == (0, RECORDS)
    assert len(first.store.lines().records) == RECORDS


def test_import_into_a_store_with_records_renumbers_its_workloads(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    """Half the workloads are already there: the new records point at the right ones."""
    half = {**exported, "records": [r for r in exported["records"] if json.loads(r)[0] % 2]}
    import_records(write_payload(tmp_path / "half.json", half), tmp_path / "r")
    result = import_records(write_payload(tmp_path / "all.json", exported), tmp_path / "r")
    assert result.added == RECORDS - len(half["records"])
    merged = result.store.records_by_workload()
    original = {}
    for line in exported["records"]:
        index, body = json.loads(line)
        original.setdefault(json.loads(exported["workloads"][index])[0], []).append(body)
    assert {w: sorted(map(json.dumps, b)) for w, b in merged.items()} == {
        w: sorted(map(json.dumps, b)) for w, b in original.items()
    }
    result.store.snapshot()  # MetaSchedule loads the merged files


def _bad_seventh(payload: dict[str, Any], how: str) -> dict[str, Any]:
    records = list(payload["records"])
    index, body = json.loads(records[6])
    records[6] = {
        "garbage": "not json",
        "wrong-schema": json.dumps([index, body[:2]]),
        "bad-index": json.dumps([len(payload["workloads"]) + 3, body]),
        "bad-trace": json.dumps([index, [[[["NoSuchInstruction", [], [], []]], []], *body[1:]]]),
    }[how]
    return {**payload, "records": records}


@pytest.mark.parametrize("how", ["garbage", "wrong-schema", "bad-index", "bad-trace"])
def test_a_bad_seventh_record_imports_nothing(
    exported: dict[str, Any], tmp_path: Path, how: str
) -> None:
    """Before: records 1-6 were committed, then a traceback (or a crash in every build)."""
    source = write_payload(tmp_path / "bad.json", _bad_seventh(exported, how))
    root = tmp_path / "r"
    with pytest.raises(EdgecompileError, match="record 7") as raised:
        import_records(source, root)
    assert "\n" not in str(raised.value) and "nothing was imported" in str(raised.value)
    assert files_under(root) == {}


def test_a_bad_record_leaves_an_existing_store_untouched(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "r"
    half = {**exported, "records": exported["records"][: RECORDS // 2]}
    import_records(write_payload(tmp_path / "half.json", half), root)
    before = files_under(root)
    with pytest.raises(EdgecompileError, match="record 7"):
        import_records(write_payload(tmp_path / "b.json", _bad_seventh(exported, "garbage")), root)
    assert files_under(root) == before


@pytest.mark.parametrize("board", ["rpi4", "aarch64", "generic-llvm"])
def test_a_payload_whose_target_was_edited_is_refused(
    exported: dict[str, Any], tmp_path: Path, board: str
) -> None:
    """Before: imported into the rpi4 store (its lines still saying the host's CPU) and applied
    to ARM builds."""
    preset = resolve_target('{"kind": "llvm"}' if board == "generic-llvm" else board)
    edited = {**exported, "target": dict(preset.target), "preset": preset.name}
    root = tmp_path / "r"
    with pytest.raises(EdgecompileError, match="another target's record") as raised:
        import_records(write_payload(tmp_path / "edited.json", edited), root)
    assert "record 1" in str(raised.value)
    assert not store_for(preset, root).exists() and files_under(root) == {}


def test_one_record_of_another_target_is_refused(exported: dict[str, Any], tmp_path: Path) -> None:
    records = list(exported["records"])
    index, body = json.loads(records[3])
    body[2] = {**body[2], "mcpu": "cortex-a72"}
    records[3] = json.dumps([index, body])
    with pytest.raises(EdgecompileError, match=r"record 4 .*another target's record"):
        import_records(
            write_payload(tmp_path / "x.json", {**exported, "records": records}), tmp_path / "r"
        )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"preset": "../../x"}, "preset name '../../x'"),
        ({"preset": ".hidden"}, "starts with '.'"),
        ({"preset": 7}, "preset name 7"),
        ({"target": "llvm"}, "not an object with a 'kind'"),
        ({"workloads": "x"}, "not a list of JSON lines"),
        ({"records": [1, 2]}, "not a list of JSON lines"),
        ({"workloads": ['["1", "not base64!"]']}, "workload 1 is damaged"),
        ({"kernels": {"a": 1}}, "kernels map to something other than texts"),
        ({"choices": {"a": {"record": 1}}}, "choice for 'a' is damaged"),
        ({"choices": []}, "choices are not an object"),
    ],
)
def test_bad_payload_fields_are_one_line(
    exported: dict[str, Any], tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    root = tmp_path / "r"
    with pytest.raises(EdgecompileError, match=re.escape(expected)) as raised:
        import_records(write_payload(tmp_path / "x.json", {**exported, **change}), root)
    assert "\n" not in str(raised.value)
    assert files_under(root) == {}
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mcpu", ["../../evil", "/etc", "a\x00b", "..", "x" * 300, ".hidden"])
def test_store_names_from_a_target_are_plain(mcpu: str) -> None:
    from edgecompile._names import plain_name_problem

    name = store_name({"kind": "llvm", "mcpu": mcpu, "mtriple": f"{mcpu}-linux"})
    assert plain_name_problem(name) is None, name


def test_import_cli_refusal_is_one_line(
    exported: dict[str, Any], tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    source = write_payload(tmp_path / "bad.json", _bad_seventh(exported, "wrong-schema"))
    line = cli_error(["records", "import", str(source), "--records", str(tmp_path / "r")])
    assert "record 7" in line and "nothing was imported" in line
    assert files_under(tmp_path / "r") == {}


def test_import_into_a_damaged_store_keeps_its_good_records(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "r"
    half = {**exported, "records": exported["records"][: RECORDS // 2]}
    store = import_records(write_payload(tmp_path / "half.json", half), root).store
    kept = list(store.lines().records)
    with store.record_path.open("ab") as handle:
        handle.write(b"garbage\n")
    result = import_records(write_payload(tmp_path / "all.json", exported), root)
    assert result.added == RECORDS - len(kept)
    assert set(kept) <= set(result.store.lines().records)
    (quarantine,) = result.store.quarantined()
    assert b"garbage" in (quarantine / "database_tuning_record.json").read_bytes()


def test_a_store_is_found_again_after_import(exported: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "r"
    import_records(write_payload(tmp_path / "x.json", exported), root)
    (listed,) = list_stores(root)
    assert isinstance(listed, RecordStore)
    assert listed.path == store_for(resolve_target("host"), root).path
    shutil.rmtree(root)
