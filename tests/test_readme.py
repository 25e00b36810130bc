"""The README's commands and Python snippets, as a new user runs them from a fresh clone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def fenced_blocks(language: str) -> list[str]:
    """The README's code blocks of ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def quick_start_commands() -> list[str]:
    """The two set-up commands of the quick start: the first two bash blocks."""
    return [block.strip() for block in fenced_blocks("bash")[:2]]


def test_quick_start_has_one_install_and_build_and_one_install_and_test_command() -> None:
    main_job, tests = quick_start_commands()
    for command in (main_job, tests):
        assert "\n" not in command, command
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
        # Without PyTorch's CPU index pip takes PyPI's torch, which pulls several GB of CUDA.
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in command
    assert main_job.endswith("edgecompile build shufflenet_v1 --target rpi4")
    assert tests.endswith("&& pytest")


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    _, tests = quick_start_commands()
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    quoted = re.findall(r"bash -c \\\n\s*('.*?')\n", script, flags=re.DOTALL)
    assert quoted, "no `bash -c '...'` stage in .ci/run"
    assert [shlex.split(command)[0] for command in quoted] == [tests]


def test_every_python_snippet_is_exercised_by_a_test() -> None:
    # A snippet added to the README must get a runner below (by its first line).
    first_lines = [block.strip().splitlines()[0] for block in fenced_blocks("python")]
    assert first_lines == ["import numpy as np, tvm", "import edgecompile"]


def _api_snippet() -> str:
    return next(
        block for block in fenced_blocks("python") if block.startswith("import edgecompile")
    )


@pytest.mark.timeout(600)
def test_python_api_snippet_runs_in_a_fresh_folder(tmp_path: Path) -> None:
    """The snippet as written, in an empty folder (no build/ from anything before it)."""
    script = tmp_path / "snippet.py"
    script.write_text(_api_snippet(), encoding="utf-8")
    environment = dict(os.environ)
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert "(1, 1000)" in completed.stdout
    engines = {line.split()[0] for line in completed.stdout.splitlines() if " ms" in line}
    assert {"tvm", "ort"} <= engines, completed.stdout
    for preset in ("host", "rpi4"):
        assert (tmp_path / "build" / f"shufflenet_v2-{preset}" / "manifest.json").is_file()


@pytest.mark.timeout(900)
def test_runtime_snippet_loads_the_quick_start_library_on_the_emulated_board(
    rootfs: Path, tmp_path: Path
) -> None:
    """The quick start's build, then its "load it with TVM's runtime" snippet on the board."""
    import shutil
    import tempfile

    from edgecompile.builder import build
    from edgecompile.device import emulator

    result = build("shufflenet_v1", "rpi4", output_dir=tmp_path / "build")
    artifact_dir = result.artifact.directory
    assert artifact_dir == tmp_path / "build" / "shufflenet_v1-rpi4"
    snippet = next(b for b in fenced_blocks("python") if b.startswith("import numpy as np, tvm"))
    # The snippet runs as written, in a folder on the board holding the copied build.
    work = Path(tempfile.mkdtemp(prefix="edgecompile-readme-", dir=rootfs / "tmp"))
    try:
        shutil.copytree(artifact_dir, work, dirs_exist_ok=True)
        (work / "snippet.py").write_text(
            snippet
            + "\nassert logits.shape == (1, 1000), logits.shape\nprint('ok', logits.shape)\n"
        )
        completed = emulator.run_in_rootfs(
            rootfs,
            ["/bin/sh", "-c", f"cd /tmp/{work.name} && {emulator.VENV}/bin/python snippet.py"],
            timeout=600,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("ok (1, 1000)")


@pytest.mark.timeout(300)
def test_pip_install_leaves_nothing_in_build(tmp_path: Path) -> None:
    """`build/` is where `edgecompile build` writes; setuptools' scratch must not land there."""
    import shutil

    tree = tmp_path / "checkout"
    shutil.copytree(
        ROOT, tree, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info")
    )
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheels"), "."],
        cwd=tree, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("edgecompile-*.whl")
    assert not (tree / "build").exists()
    # Every data file of the package is in the wheel (a non-editable install has only those):
    # the presets, the zoo's facts, the native runtime's C++ sources.
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    data = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "edgecompile").rglob("*")
        if path.is_file() and path.suffix in {".toml", ".json", ".cpp", ".cc", ".h"}
    ]
    assert data and [path for path in data if path not in packed] == []
