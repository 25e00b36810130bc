"""The Python API: the command line's names, callable however much of the package is loaded."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import edgecompile
from edgecompile.cli.app import cli

#: Commands whose name is not a function (groups and listings have their own functions).
NOT_FUNCTIONS = {"models": "list_models", "inspect": "inspect_model", "export": "export_onnx"}
GROUPS = {"records", "device", "targets"}


def test_every_command_has_a_function_of_its_name() -> None:
    for name in cli.commands:
        if name in GROUPS:
            continue
        function = getattr(edgecompile, NOT_FUNCTIONS.get(name, name))
        assert inspect.isfunction(function), (name, function)


def test_the_names_stay_functions_after_every_module_is_imported() -> None:
    # Importing a subpackage binds its name on the parent package: a subpackage named like a
    # function of the API would replace that function as soon as anything imported it.
    script = """
import importlib, inspect, pkgutil
import edgecompile
for module in pkgutil.walk_packages(edgecompile.__path__, "edgecompile."):
    if module.name.rsplit(".", 1)[-1] == "__main__":
        continue
    importlib.import_module(module.name)
names = [n for n in edgecompile.__all__ if n not in ("EdgecompileError", "__version__")]
values = {n: getattr(edgecompile, n) for n in names}
print([n for n, v in values.items() if not (inspect.isfunction(v) or inspect.isclass(v))])
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"


def test_no_subpackage_is_named_like_a_function_of_the_api() -> None:
    modules = {module.name for module in pkgutil.iter_modules(edgecompile.__path__)}
    assert modules.isdisjoint(edgecompile.__all__)


@pytest.mark.parametrize("name", ["run", "bench"])
def test_run_and_bench_take_a_board(name: str) -> None:
    function = getattr(edgecompile, name)
    assert "access" in inspect.signature(function).parameters


def test_run_here_on_a_missing_artifact_is_one_line() -> None:
    with pytest.raises(edgecompile.EdgecompileError):
        edgecompile.run("no/such/artifact")


def test_lazy_names_resolve_to_their_modules() -> None:
    for name in edgecompile.__all__:
        value = getattr(edgecompile, name)
        assert value is not None
    assert importlib.import_module("edgecompile").__version__
