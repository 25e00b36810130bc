"""User schedules (``edgecompile.schedules.user``, ``build(..., schedules_dir=...)``): loading a
directory, the one-line errors for a bad one, and builds where a user rule schedules a kernel
(the worked example's NCHW pool), overrides ours, gives up, or is broken.

The networks are a few ops on 16×16 inputs (a build is about a second); every build verifies
against ONNX Runtime, and none reads the tuning-record cache (``records=False``).
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgecompile
from edgecompile.errors import EdgecompileError
from edgecompile.schedules import POINTWISE, TVM_DEFAULT
from edgecompile.schedules.pipeline import schedule_rules
from edgecompile.schedules.rules import PointwiseNCHWc
from edgecompile.schedules.user import (
    USER_PREFIX,
    UserRule,
    load_user_schedules,
    register,
    schedule,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "schedules"


def write_onnx(path: Path, pool: str | None = "AveragePool", pointwise: bool = True) -> Path:
    """input 1×16×16×16 → [3×3/2 pool, pad 1] → [1×1 conv 16→24 + ReLU]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, current, size, channels, inits = [], "input", 16, 16, []
    if pool is not None:
        options = {"count_include_pad": 1} if pool == "AveragePool" else {}
        nodes.append(
            helper.make_node(
                pool,
                [current],
                ["p"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1] * 4,
                **options,
            )
        )
        current, size = "p", 8
    if pointwise:
        weight = np.random.default_rng(0).standard_normal((24, 16, 1, 1)).astype("float32")
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes += [
            helper.make_node("Conv", [current, "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
        ]
        current, channels = "r", 24
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    graph = helper.make_graph(
        nodes,
        "user_schedules",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def schedules_dir(tmp_path: Path, **files: str) -> Path:
    """A directory holding ``name.py`` for each keyword, dedented."""
    directory = tmp_path / "user_schedules"
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


def build(model: Path, out: Path, directory: Path | None) -> Any:
    return edgecompile.build(
        str(model), "host", output_dir=out, records=False, schedules_dir=directory
    )


def one_line(error: pytest.ExceptionInfo[EdgecompileError]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# A user rule that overrides our pointwise schedule with... our pointwise schedule: proves the
# user rule runs first and is the one the manifest names, with numbers that still verify.
OVERRIDE = """
    from edgecompile.schedules.rules import PointwiseNCHWc
    from edgecompile.schedules.user import schedule

    @schedule("my_pointwise")
    def my_pointwise(func, target):
        return PointwiseNCHWc().try_schedule(func, target)
"""


# --- loading ------------------------------------------------------------------------------------


def test_loads_the_worked_example() -> None:
    user = load_user_schedules(EXAMPLES)
    assert [rule.schedule_name for rule in user.rules] == ["user:nchw_pool"]
    source = (EXAMPLES / "nchw_pool.py").read_bytes()
    assert user.files == [("nchw_pool.py", hashlib.sha256(source).hexdigest())]
    manifest = user.to_manifest()
    assert manifest["rules"] == [{"schedule": "user:nchw_pool", "file": "nchw_pool.py"}]


def test_registration_forms(tmp_path: Path) -> None:
    directory = schedules_dir(
        tmp_path,
        a_bare="""
            from edgecompile.schedules.user import schedule

            @schedule
            def bare(func, target):
                return None
        """,
        b_named="""
            from edgecompile.schedules.user import schedule

            @schedule(name="named")
            def whatever(func, target):
                return None
        """,
        c_object="""
            from edgecompile.schedules.user import register

            class Rule:
                schedule_name = "object_rule"

                def try_schedule(self, func, target):
                    return None

            register(Rule())
            register(lambda func, target: None, "lambda_rule")
        """,
    )
    rules = load_user_schedules(directory).rules
    assert [r.schedule_name for r in rules] == [
        f"{USER_PREFIX}{name}" for name in ("bare", "named", "object_rule", "lambda_rule")
    ]
    assert [Path(r.source).name for r in rules] == ["a_bare.py", "b_named.py"] + ["c_object.py"] * 2


def test_registering_outside_a_load_returns_the_rule_unchanged() -> None:
    def rule(func: Any, target: Any) -> None:
        return None

    assert schedule(rule) is rule
    assert schedule("x")(rule) is rule
    assert register(rule) is rule


def test_same_file_name_in_two_directories_does_not_collide(tmp_path: Path) -> None:
    """Each file is a module of its own: two ``pool.py`` keep their own rules."""
    source = """
        from edgecompile.schedules.user import schedule

        @schedule("{name}")
        def rule(func, target):
            return None
    """
    first = schedules_dir(tmp_path / "one", pool=source.replace("{name}", "first"))
    second = schedules_dir(tmp_path / "two", pool=source.replace("{name}", "second"))
    assert load_user_schedules(first).rules[0].name == "first"
    assert load_user_schedules(second).rules[0].name == "second"
    assert load_user_schedules(first).rules[0].name == "first"  # loaded afresh, not cached


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "holds no .py files"),
        ({"empty": "x = 1\n"}, "no schedule registered in"),
        ({"broken": "def oops(:\n"}, "broken.py:1"),
        ({"raises": "import no_such_module_here\n"}, "ModuleNotFoundError at raises.py:1"),
        (
            {
                "a": "from edgecompile.schedules.user import register\n"
                "register(lambda f, t: None, 'twin')\n",
                "b": "from edgecompile.schedules.user import register\n"
                "register(lambda f, t: None, 'twin')\n",
            },
            "two user schedules named 'twin'",
        ),
        (
            {"bad": "from edgecompile.schedules.user import register\nregister(42)\n"},
            "cannot register int as a schedule",
        ),
        (
            {"bad": "from edgecompile.schedules.user import register\nregister(print, 'a b')\n"},
            "bad schedule name 'a b'",
        ),
    ],
)
def test_bad_directories_are_one_line_errors(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    directory = schedules_dir(tmp_path, **files)
    with pytest.raises(EdgecompileError) as error:
        load_user_schedules(directory)
    assert expected in one_line(error)


def test_missing_directory_and_a_file_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError) as error:
        load_user_schedules(tmp_path / "nope")
    assert "does not exist" in one_line(error)
    file = tmp_path / "rule.py"
    file.write_text("")
    with pytest.raises(EdgecompileError) as error:
        load_user_schedules(file)
    assert "is not a directory" in one_line(error)


def test_schedule_rules_puts_extra_rules_first() -> None:
    def mine(func: Any, target: Any) -> None:
        return None

    rules = schedule_rules(extra=[mine])
    assert isinstance(rules[0], UserRule)
    assert rules[0].schedule_name == "user:mine"
    assert [type(r) for r in rules[1:]] == [type(r) for r in schedule_rules()]
    ours = schedule_rules()
    assert ours and not any(isinstance(rule, UserRule) for rule in ours)
    assert any(isinstance(rule, PointwiseNCHWc) for rule in ours)


# --- builds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_worked_example_schedules_nchw_pools(tmp_path: Path, pool: str) -> None:
    """The 16-channel input stays NCHW (its producer is the graph input): the pool is TVM's
    default without user schedules, ``user:nchw_pool`` with them, and still verifies."""
    model = write_onnx(tmp_path / "pool.onnx", pool=pool)
    plain = build(model, tmp_path / "plain", None).artifact.manifest
    assert [r["schedule"] for r in plain.schedules] == [TVM_DEFAULT, POINTWISE]
    assert plain.user_schedules is None

    result = build(model, tmp_path / "user", EXAMPLES)
    manifest = result.artifact.manifest
    assert manifest.verification["status"] == "passed"
    assert result.max_relative_error <= 1e-4
    assert [r["schedule"] for r in manifest.schedules] == ["user:nchw_pool", POINTWISE]
    assert manifest.schedules[0]["pool"] == ("avg" if pool == "AveragePool" else "max")
    source = (EXAMPLES / "nchw_pool.py").read_bytes()
    assert manifest.user_schedules == {
        "dir": str(EXAMPLES),
        "files": [{"file": "nchw_pool.py", "sha256": hashlib.sha256(source).hexdigest()}],
        "rules": [{"schedule": "user:nchw_pool", "file": "nchw_pool.py", "kernels": 1}],
    }


def test_user_rule_overrides_ours(tmp_path: Path) -> None:
    model = write_onnx(tmp_path / "pw.onnx", pool=None)
    result = build(model, tmp_path / "out", schedules_dir(tmp_path, override=OVERRIDE))
    manifest = result.artifact.manifest
    assert manifest.verification["status"] == "passed"
    assert [r["schedule"] for r in manifest.schedules] == ["user:my_pointwise"]


def test_user_rule_that_gives_up_hands_the_kernel_to_ours(tmp_path: Path) -> None:
    directory = schedules_dir(
        tmp_path,
        shy="""
            from edgecompile.schedules.user import ScheduleFailed, schedule

            @schedule("shy")
            def shy(func, target):
                raise ScheduleFailed("tile does not fit")
        """,
    )
    result = build(write_onnx(tmp_path / "m.onnx", pool=None), tmp_path / "o", directory)
    (record,) = result.artifact.manifest.schedules
    assert record["schedule"] == POINTWISE
    assert record["fallback"] == "user:shy: tile does not fit"


def test_user_rule_raising_is_one_line_naming_file_rule_and_line(tmp_path: Path) -> None:
    directory = schedules_dir(
        tmp_path,
        buggy="""
            from edgecompile.schedules.user import schedule

            @schedule("buggy")
            def buggy(func, target):
                return helper(func)

            def helper(func):
                raise KeyError("no block named conv")
        """,
    )
    model = write_onnx(tmp_path / "m.onnx", pool=None)
    with pytest.raises(EdgecompileError) as error:
        build(model, tmp_path / "out", directory)
    message = one_line(error)
    assert "user schedule 'buggy'" in message
    assert str(directory / "buggy.py") in message
    assert "KeyError at buggy.py:9" in message
    assert "no block named conv" in message
    assert not (tmp_path / "out" / "m-host").exists()  # no artifact built without the rule


def test_user_rule_returning_a_non_schedule_is_an_error(tmp_path: Path) -> None:
    directory = schedules_dir(
        tmp_path,
        wrong="""
            from edgecompile.schedules.user import schedule

            @schedule
            def wrong(func, target):
                return func
        """,
    )
    with pytest.raises(EdgecompileError) as error:
        build(write_onnx(tmp_path / "m.onnx", pool=None), tmp_path / "out", directory)
    assert "returned PrimFunc, not a tvm.s_tir.Schedule" in one_line(error)


def test_failure_after_user_rules_ran_is_not_hidden_by_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our pipeline failing falls back to TVM's default -- except when user schedules ran: the
    build must not silently drop them."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="Broken")
    def broken(module: Any, _context: Any) -> Any:
        raise RuntimeError("codegen refused the loop nest")

    monkeypatch.setattr(cpu_generic, "dataflow_lower_passes", lambda target: [broken])
    model = write_onnx(tmp_path / "m.onnx", pool=None)
    with pytest.raises(EdgecompileError) as error:
        build(model, tmp_path / "out", schedules_dir(tmp_path, override=OVERRIDE))
    message = one_line(error)
    assert "after user schedule(s) user:my_pointwise ran" in message
    assert "override.py" in message and "codegen refused the loop nest" in message


def test_schedules_dir_needs_our_pipeline(tmp_path: Path) -> None:
    with pytest.raises(EdgecompileError) as error:
        edgecompile.build(
            str(write_onnx(tmp_path / "m.onnx")),
            "host",
            output_dir=tmp_path,
            custom_schedules=False,
            schedules_dir=EXAMPLES,
        )
    assert "--no-custom-schedules" in one_line(error)
