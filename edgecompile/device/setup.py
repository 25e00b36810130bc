"""``edgecompile device setup``: prepare a real board's Python venv for deploy/run/bench.

What it does, each step reported as "already fine", "done" (or "planned" with ``dry_run``):

* connect with the same host-key rules as :func:`edgecompile.device.deploy.deploy`;
* python3 is there and new enough for the host's apache-tvm (its ``Requires-Python``);
* the architecture is one TVM publishes wheels for: ``aarch64`` with a 64-bit userland.
  ``armv7l`` (or a 32-bit userland on a 64-bit kernel) has no apache-tvm wheel: we say so and
  point at building TVM's runtime from source, without attempting it;
* the venv holds *exactly* the host's apache-tvm and apache-tvm-ffi versions plus numpy
  (a library only loads in the runtime that built it); if not, the venv is created
  (``python3 -m venv``) and ``pip install apache-tvm==X apache-tvm-ffi==Y numpy`` runs in it;
* ``import tvm`` in the venv proves the result.

A venv this run created is removed again when the install or the check fails, so a board
never holds a half venv that looks ready. Every remote command is built with
:func:`shlex.quote` (through :func:`edgecompile.device.ssh.remote_path`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecompile.device.access import BoardAccess
from edgecompile.device.ssh import BoardConnection, connect, remote_path, split_sections
from edgecompile.errors import EdgecompileError

__all__ = [
    "DEFAULT_VENV",
    "SetupReport",
    "SetupStep",
    "check_arch",
    "check_python",
    "host_versions",
    "setup_device",
    "setup_on",
]

#: The venv ``deploy``/``run``/``bench`` look in first (see ``probe.PYTHON_CANDIDATES``).
DEFAULT_VENV = "~/edgecompile-venv"
#: pip on a Raspberry Pi: downloading and unpacking TVM's ~100 MB wheel takes minutes.
PIP_TIMEOUT = 1800.0
#: python -m venv (ensurepip) and importing TVM on a small or emulated board.
VENV_TIMEOUT = 600.0

ALREADY, DONE, PLANNED, FAILED = "already fine", "done", "planned", "failed"

# Prints one JSON line: the venv's package versions, without importing TVM (slow on a board).
_VERSIONS = """\
import importlib.metadata as md, json, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps({"python": sys.executable, "apache-tvm": version("apache-tvm"),
                  "apache-tvm-ffi": version("apache-tvm-ffi"), "numpy": version("numpy")}))
"""

_VERIFY = "import tvm, tvm_ffi, numpy; print(tvm.__version__)"


@dataclass(frozen=True)
class SetupStep:
    """One step of the setup: ``name``, its ``status`` and what was seen or done."""

    name: str
    status: str
    detail: str


@dataclass
class SetupReport:
    """What :func:`setup_device` found and did; ``ready`` is True once TVM imports."""

    device: str
    venv: str
    python: str
    tvm_version: str
    tvm_ffi_version: str
    dry_run: bool
    steps: list[SetupStep] = field(default_factory=list)
    ready: bool = False

    @property
    def changed(self) -> bool:
        return any(step.status == DONE for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


StepCallback = Callable[[SetupStep], None]


# --------------------------------------------------------------------------------------------
# checks (pure: unit-tested with fake probe results)


def host_versions() -> tuple[str, str, tuple[int, int] | None]:
    """(apache-tvm, apache-tvm-ffi, minimum Python) of this machine's TVM."""
    import importlib.metadata as md

    try:
        tvm = md.version("apache-tvm")
        ffi = md.version("apache-tvm-ffi")
    except md.PackageNotFoundError as error:
        raise EdgecompileError(
            f"{error.name} is not installed on this machine, so there is no version to match",
            "pip install edgecompile's dependencies here first",
        ) from None
    requires = md.metadata("apache-tvm").get("Requires-Python") or ""
    found = re.search(r">=\s*(\d+)\.(\d+)", requires)
    return tvm, ffi, (int(found[1]), int(found[2])) if found else None


def check_python(
    python3: str | None, version: str | None, minimum: tuple[int, int] | None, where: str
) -> str:
    """Refuse a board without python3, or with one older than apache-tvm supports."""
    if not python3 or not version:
        raise EdgecompileError(
            f"{where} has no python3",
            "install it on the board: sudo apt install python3 python3-venv",
        )
    parts = version.split(".")
    current = (int(parts[0]), int(parts[1])) if len(parts) >= 2 and parts[1].isdigit() else None
    if minimum and current and current < minimum:
        need = ".".join(map(str, minimum))
        raise EdgecompileError(
            f"{where} has Python {version} ({python3}) but apache-tvm needs Python >= {need}",
            f"upgrade the board's OS or install Python {need}+ there",
        )
    return f"Python {version} at {python3}"


def check_arch(machine: str, python_bits: int | None, tvm_version: str, where: str) -> str:
    """Accept aarch64 with a 64-bit userland; explain armv7l (no wheel); refuse the rest."""
    if machine in ("aarch64", "arm64") and python_bits in (None, 64):
        return f"{machine}, 64-bit userland (apache-tvm has manylinux aarch64 wheels)"
    if machine in ("armv7l", "armv7", "armv6l", "armv8l") or (
        machine in ("aarch64", "arm64") and python_bits == 32
    ):
        seen = machine + (" with a 32-bit userland" if python_bits == 32 else "")
        raise EdgecompileError(
            f"{where} is {seen}: PyPI has no apache-tvm {tvm_version} wheel for 32-bit ARM, "
            "so setup cannot install it",
            f"build TVM {tvm_version}'s runtime from source on the board (cmake with "
            "the runtime only, then pip install its python/ folder) and pass --remote-python, "
            "or install a 64-bit OS",
        )
    raise EdgecompileError(
        f"{where} is {machine}, not an ARM board setup knows (aarch64 or armv7l)",
        "check the device address; setup prepares 64-bit ARM boards",
    )


def packages_missing(
    installed: dict[str, Any] | None, tvm_version: str, ffi_version: str
) -> list[str]:
    """What is wrong with the venv's packages, as ``name: have -> want`` strings."""
    installed = installed or {}
    wanted = {"apache-tvm": tvm_version, "apache-tvm-ffi": ffi_version, "numpy": None}
    problems = []
    for name, version in wanted.items():
        have = installed.get(name)
        if have is None:
            problems.append(f"{name} missing")
        elif version is not None and have != version:
            problems.append(f"{name} {have} (need {version})")
    return problems


# --------------------------------------------------------------------------------------------
# the board


@dataclass(frozen=True)
class _BoardState:
    home: str
    machine: str
    python3: str | None
    python_version: str | None
    python_bits: int | None
    has_venv_module: bool
    venv_exists: bool
    venv_packages: dict[str, Any] | None


def _inspect(board: BoardConnection, venv: str) -> _BoardState:
    q_venv = remote_path(venv)
    q_python = remote_path(venv.rstrip("/") + "/bin/python")
    script = f"""\
echo "@@home"; printf '%s\\n' "$HOME"
echo "@@machine"; uname -m
echo "@@python3"; command -v python3 || true
echo "@@pyver"; python3 -c 'import platform, struct; print(platform.python_version(), \
struct.calcsize("P") * 8)' 2>/dev/null || true
echo "@@venvmod"; python3 -c 'import venv, ensurepip' 2>/dev/null && echo yes || echo no
echo "@@exists"; [ -e {q_venv} ] && echo yes || echo no
echo "@@venv"; [ -x {q_python} ] && {q_python} -c {shlex.quote(_VERSIONS)} 2>/dev/null || true
"""
    output = board.check(
        script, "inspecting the board", "check that the user's login shell is a POSIX shell"
    )
    sections = split_sections(output)

    def first(name: str) -> str | None:
        return sections.get(name, [None])[0] if sections.get(name) else None

    pyver = (first("pyver") or "").split()
    packages: dict[str, Any] | None = None
    if first("venv"):
        with contextlib.suppress(ValueError):
            packages = json.loads(first("venv") or "")
    return _BoardState(
        home=first("home") or "/",
        machine=first("machine") or "unknown",
        python3=first("python3"),
        python_version=pyver[0] if pyver else None,
        python_bits=int(pyver[1]) if len(pyver) > 1 and pyver[1].isdigit() else None,
        has_venv_module=first("venvmod") == "yes",
        venv_exists=first("exists") == "yes",
        venv_packages=packages,
    )


def _pip_error(result_text: str) -> str:
    """One line from pip's output: why it failed."""
    lines = [line.strip() for line in result_text.splitlines() if line.strip()]
    for marker in ("Connection refused", "Failed to establish", "Name or service not known",
                   "Temporary failure in name resolution", "timed out"):  # fmt: skip
        if any(marker in line for line in lines):
            return f"cannot reach the package index ({marker.lower()})"
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def setup_device(
    access: BoardAccess,
    *,
    venv: str = DEFAULT_VENV,
    index_url: str | None = None,
    dry_run: bool = False,
    on_step: StepCallback | None = None,
) -> SetupReport:
    """Make ``venv`` on the board (``access.device``, over SSH) hold the host's exact TVM (see
    the module docstring).

    Args:
        access: The board: ``device`` and how to log in (the rest of it is not used).
        venv: The board's venv folder (``~/`` is the board user's home).
        index_url: A package index for pip (an offline mirror); pip's default otherwise.
        dry_run: Inspect only and report the plan ("planned" steps); the board is unchanged.
        on_step: Called with each step as it finishes (the CLI prints them as they come).

    Raises:
        EdgecompileError: connection problems, no python3 (or too old), an architecture
            without wheels, no venv module, pip failing, or TVM not importing afterwards.
    """
    device = access.require_device("device setup")
    with connect(device, **access.ssh_login()) as board:
        return setup_on(board, venv=venv, index_url=index_url, dry_run=dry_run, on_step=on_step)


def setup_on(
    board: BoardConnection,
    *,
    venv: str = DEFAULT_VENV,
    index_url: str | None = None,
    dry_run: bool = False,
    on_step: StepCallback | None = None,
) -> SetupReport:
    """:func:`setup_device` on an open connection."""
    tvm, ffi, minimum = host_versions()
    where = board.settings.label
    venv = venv.rstrip("/") or venv
    report = SetupReport(where, venv, f"{venv}/bin/python", tvm, ffi, dry_run)

    def step(name: str, status: str, detail: str) -> None:
        report.steps.append(SetupStep(name, status, detail))
        if on_step is not None:
            on_step(report.steps[-1])

    def fail(name: str, error: EdgecompileError) -> EdgecompileError:
        step(name, FAILED, error.problem)
        return error

    state = _inspect(board, venv)
    step("connect", ALREADY, f"{where} ({state.machine}, home {state.home})")
    try:
        detail = check_python(state.python3, state.python_version, minimum, where)
    except EdgecompileError as error:
        raise fail("python3", error) from None
    step("python3", ALREADY, detail)
    try:
        detail = check_arch(state.machine, state.python_bits, tvm, where)
    except EdgecompileError as error:
        raise fail("architecture", error) from None
    step("architecture", ALREADY, detail)

    q_venv = remote_path(venv, state.home)
    q_python = remote_path(f"{venv}/bin/python", state.home)
    pins = [f"apache-tvm=={tvm}", f"apache-tvm-ffi=={ffi}", "numpy"]
    problems = packages_missing(state.venv_packages, tvm, ffi)
    created = False

    # the venv itself
    if state.venv_packages is not None:
        step("venv", ALREADY, f"{venv} exists ({state.venv_packages.get('python')})")
    elif state.venv_exists:
        raise fail(
            "venv",
            EdgecompileError(
                f"{venv} exists on {where} but is not a working venv (no runnable bin/python)",
                "remove it on the board, or pick another --venv",
            ),
        )
    elif not state.has_venv_module:
        raise fail(
            "venv",
            EdgecompileError(
                f"{where}'s python3 cannot create venvs (no venv/ensurepip module)",
                "on the board: sudo apt install python3-venv, then run setup again",
            ),
        )
    elif dry_run:
        step("venv", PLANNED, f"python3 -m venv {venv}")
    else:
        result = board.run(
            f"python3 -m venv -- {q_venv}", timeout=VENV_TIMEOUT, what=f"creating {venv}"
        )
        if result.exit_status != 0:
            reason = result.last_error_line()
            fix = "check that the user may write there, or pass another --venv"
            if "ensurepip" in result.stdout + result.stderr:
                fix = "on the board: sudo apt install python3-venv, then run setup again"
            board.run(f"rm -rf -- {q_venv}", what=f"removing the half-made {venv}")
            error = EdgecompileError(f"creating {venv} on {where} failed: {reason}", fix)
            raise fail("venv", error)
        created = True
        step("venv", DONE, f"created {venv}")

    # the packages
    wanted = " ".join(pins)
    if not problems:
        have = state.venv_packages or {}
        step("packages", ALREADY, f"{wanted} (numpy {have.get('numpy')})")
    elif dry_run:
        why = ", ".join(problems) if state.venv_packages is not None else "new venv"
        index = f" --index-url {index_url}" if index_url else ""
        step("packages", PLANNED, f"pip install{index} {wanted} ({why})")
    else:
        index = f"--index-url {shlex.quote(index_url)} " if index_url else ""
        command = (
            f"{q_python} -m pip install --disable-pip-version-check --no-input "
            f"--progress-bar off {index}{' '.join(shlex.quote(p) for p in pins)} 2>&1"
        )
        result = board.run(command, timeout=PIP_TIMEOUT, what=f"pip install in {venv}")
        if result.exit_status != 0:
            reason = _pip_error(result.stdout + result.stderr)
            left = _undo(board, q_venv, venv, created)
            raise fail(
                "packages",
                EdgecompileError(
                    f"pip install {wanted} in {venv} on {where} failed: {reason}; {left}",
                    "check the board's network (or pass --index-url for a mirror) and run "
                    "setup again",
                ),
            )
        lines = result.stdout.splitlines()
        installed = [line for line in lines if line.startswith("Successfully installed")]
        step("packages", DONE, installed[-1].strip() if installed else f"installed {wanted}")

    # proof
    if dry_run:
        step("verify", PLANNED, f"{venv}/bin/python -c 'import tvm'")
        return report
    result = board.run(
        f"{q_python} -c {shlex.quote(_VERIFY)}", timeout=VENV_TIMEOUT, what="importing tvm"
    )
    if result.exit_status != 0:
        left = _undo(board, q_venv, venv, created)
        raise fail(
            "verify",
            EdgecompileError(
                f"import tvm in {venv} on {where} failed: {result.last_error_line()}; {left}",
                "run `<venv>/bin/python -c 'import tvm'` on the board to see why",
            ),
        )
    status = ALREADY if not report.changed else DONE
    step("verify", status, f"import tvm works (TVM {result.stdout.strip()})")
    report.ready = True
    return report


def _undo(board: BoardConnection, q_venv: str, venv: str, created: bool) -> str:
    """Remove a venv this run created; say what the board holds now."""
    if not created:
        return f"{venv} was there before and is left as it was (not ready)"
    with contextlib.suppress(EdgecompileError):
        if board.run(f"rm -rf -- {q_venv}", what=f"removing {venv}").exit_status == 0:
            return f"removed the half-made {venv}"
    return f"{venv} is half-made: remove it on the board"
