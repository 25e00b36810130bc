"""User schedules: rules of your own, loaded from a directory of Python files, tried before ours.

A user schedule has the protocol of our rules (:mod:`edgecompile.schedules.rules`): given a fused
PrimFunc and the TVM target, return a ``tvm.s_tir.Schedule`` for it, ``None`` when the PrimFunc
is not yours, or raise :class:`ScheduleFailed` when it is yours but a primitive refused. Register
it from a file in the directory passed as ``edgecompile build MODEL --schedules DIR`` (or
``edgecompile.build(..., schedules_dir=DIR)``)::

    from edgecompile.schedules.user import ScheduleFailed, schedule

    @schedule("nchw_pool")
    def nchw_pool(func, target):
        ...  # return a Schedule, or None

or ``register(rule)`` for an object with ``schedule_name`` and ``try_schedule(func, target)``.
The manifest names such a kernel's schedule ``user:<name>``. See ``docs/custom-schedules.md``.

Failure policy: ``ScheduleFailed`` (or ``None``) hands the PrimFunc on to the next rule -- ours
included -- and the op's record keeps the reason under ``fallback``. Any other exception is a
bug in the user file: the build stops with one :class:`~edgecompile.errors.EdgecompileError`
line naming the file, the line and the rule, rather than quietly building something else.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgecompile.errors import EdgecompileError, last_line
from edgecompile.schedules.analysis import root_block
from edgecompile.schedules.rules import (
    SCHEDULED_ATTR,
    SCHEDULED_BY_ATTR,
    ScheduleFailed,
    TriesSchedule,
)

__all__ = [
    "USER_PREFIX",
    "ScheduleFailed",
    "UserRule",
    "UserSchedules",
    "as_rule",
    "load_user_schedules",
    "register",
    "schedule",
]

#: The manifest's ``schedule`` of an op a user rule scheduled: ``user:<name>``.
USER_PREFIX = "user:"
#: Package the user files are imported under, one module per file (see :func:`_module_name`).
_PACKAGE = "edgecompile_user_schedules"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: How the docs tell a user to register something; reused in the errors that point there.
_HOW = "decorate a function with @edgecompile.schedules.user.schedule or call register(rule)"

RuleFunction = Callable[[Any, Any], Any]
_T = TypeVar("_T")


@dataclass(frozen=True)
class UserRule(TriesSchedule):
    """One registered user schedule, in the protocol the pipeline tries rules with (and, as
    ours, a dlight rule: ``apply`` is ``try_schedule`` with failure as None)."""

    name: str
    #: The file that registered it ("<python>" for a rule passed in from Python).
    source: str
    function: RuleFunction = field(repr=False, compare=False)

    @property
    def schedule_name(self) -> str:
        return USER_PREFIX + self.name

    @property
    def label(self) -> str:
        return f"user schedule {self.name!r} ({self.source})"

    def try_schedule(self, func: Any, target: Any) -> Any | None:
        """The user's schedule of ``func``, marked like ours; None if the rule declined.

        Raises :class:`ScheduleFailed` as the rule did, and :class:`EdgecompileError` for any
        other exception or a return value that is not a schedule.
        """
        from tvm import s_tir

        try:
            sch = self.function(func, target)
        except ScheduleFailed as failure:
            raise ScheduleFailed(f"{self.schedule_name}: {failure}") from None
        except Exception as exc:
            raise EdgecompileError(
                f"{self.label} raised {type(exc).__name__} at {_where(exc, self.source)}: "
                f"{last_line(exc)}",
                "fix the rule; raise ScheduleFailed to hand the kernel on to our schedules",
            ) from None
        if sch is None:
            return None
        if not isinstance(sch, s_tir.Schedule):
            raise EdgecompileError(
                f"{self.label} returned {type(sch).__name__}, not a tvm.s_tir.Schedule or None",
                "return the Schedule you transformed, or None for a PrimFunc that is not yours",
            )
        _mark(sch, self.schedule_name)
        return sch


@dataclass(frozen=True)
class UserSchedules:
    """What :func:`load_user_schedules` read: the directory, each file's sha256, the rules."""

    directory: Path
    #: ``(file name, sha256 of the bytes that ran)``, in load order.
    files: list[tuple[str, str]]
    rules: list[UserRule]

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``user_schedules``: enough to tell which code scheduled the build."""
        return {
            "dir": str(self.directory),
            "files": [{"file": name, "sha256": digest} for name, digest in self.files],
            "rules": [
                {"schedule": rule.schedule_name, "file": Path(rule.source).name}
                for rule in self.rules
            ],
        }


# The registrations of the file being loaded; None outside a load, where registering is a no-op
# so a user file can also be imported on its own (to unit-test its rule, say).
_collecting: contextvars.ContextVar[tuple[str, list[UserRule]] | None] = contextvars.ContextVar(
    "edgecompile_user_schedules", default=None
)


def as_rule(rule: Any, name: str | None = None, source: str = "<python>") -> UserRule:
    """``rule`` as a :class:`UserRule`: an object with ``try_schedule(func, target)`` (named by
    its ``schedule_name``), or a function ``(func, target) -> Schedule | None``."""
    if isinstance(rule, UserRule):
        return rule
    function = getattr(rule, "try_schedule", None)
    if callable(function):
        default = str(getattr(rule, "schedule_name", "") or type(rule).__name__)
    elif callable(rule):
        function, default = rule, getattr(rule, "__name__", "")
    else:
        raise EdgecompileError(
            f"{source}: cannot register {type(rule).__name__} as a schedule",
            "register a function (func, target) -> Schedule | None, or an object with "
            "schedule_name and try_schedule(func, target)",
        )
    # Our rules' names carry an "edgecompile." prefix; a subclass of one keeps it, but the
    # manifest already says "user:" -- drop it rather than refuse the dot.
    rule_name = name or default.removeprefix("edgecompile.")
    if not _NAME.match(rule_name):
        raise EdgecompileError(
            f"{source}: bad schedule name {rule_name!r}",
            "use letters, digits, '_', '.' and '-' only",
        )
    return UserRule(rule_name, source, function)


def register(rule: _T, name: str | None = None) -> _T:
    """Register ``rule`` (see :func:`as_rule`) from a file :func:`load_user_schedules` is
    loading; returns it unchanged. Outside a load it only checks the rule."""
    current = _collecting.get()
    source = current[0] if current else "<python>"
    user_rule = as_rule(rule, name, source)
    if current is not None:
        current[1].append(user_rule)
    return rule


def schedule(name: str | RuleFunction | None = None) -> Any:
    """Decorator: ``@schedule``, ``@schedule("name")`` or ``@schedule(name="name")`` registers
    the function (named after itself by default) and returns it unchanged."""
    if callable(name):
        return register(name)

    def decorate(function: RuleFunction) -> RuleFunction:
        return register(function, name)

    return decorate


def load_user_schedules(directory: str | Path) -> UserSchedules:
    """Import every ``*.py`` in ``directory`` (sorted by name) and return what they registered.

    Each file runs as a module of its own, ``edgecompile_user_schedules.<hash>_<stem>``: two
    directories with a ``pool.py`` each do not collide, and nothing of the user's lands in our
    namespace. The file's bytes are hashed and compiled in one read, so the manifest's sha256 is
    of exactly the code that ran.
    """
    path = Path(directory)
    if not path.exists():
        raise EdgecompileError(
            f"schedules directory {str(path)!r} does not exist",
            "pass a directory of .py files that register schedules (see docs/custom-schedules.md)",
        )
    if not path.is_dir():
        raise EdgecompileError(
            f"--schedules {str(path)!r} is not a directory",
            "pass the directory that holds the .py file, not the file itself",
        )
    files = sorted(p for p in path.glob("*.py") if p.is_file())
    if not files:
        raise EdgecompileError(f"schedules directory {str(path)!r} holds no .py files", _HOW)
    hashes: list[tuple[str, str]] = []
    rules: list[UserRule] = []
    for file in files:
        source = file.read_bytes()
        hashes.append((file.name, hashlib.sha256(source).hexdigest()))
        rules.extend(_run_file(file, source))
    if not rules:
        names = ", ".join(f.name for f in files)
        raise EdgecompileError(f"no schedule registered in {str(path)!r} ({names})", _HOW)
    seen: dict[str, UserRule] = {}
    for rule in rules:
        if rule.name in seen:
            raise EdgecompileError(
                f"two user schedules named {rule.name!r}: {seen[rule.name].source} and "
                f"{rule.source}",
                'give one of them another name (@schedule("name") or register(rule, name))',
            )
        seen[rule.name] = rule
    return UserSchedules(path.resolve(), hashes, rules)


def _module_name(file: Path) -> str:
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", file.stem)
    return f"{_PACKAGE}.m{digest}_{stem}"


def _run_file(file: Path, source: bytes) -> list[UserRule]:
    """Execute one user file as a fresh module; the rules it registered."""
    name = _module_name(file)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None  # a .py path always has a spec
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it runs: dataclasses and typing look a class's module up there.
    sys.modules.setdefault(_PACKAGE, types.ModuleType(_PACKAGE))
    sys.modules[name] = module
    registered: list[UserRule] = []
    try:
        with _registering(str(file), registered):
            exec(compile(source, str(file), "exec"), module.__dict__)
    except EdgecompileError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:  # SyntaxError, ImportError, anything the file's top level raises
        sys.modules.pop(name, None)
        raise EdgecompileError(
            f"cannot load user schedules {file}: {type(exc).__name__} at "
            f"{_where(exc, str(file))}: {last_line(exc)}",
            "fix the file, or remove it from the schedules directory",
        ) from None
    return registered


@contextmanager
def _registering(source: str, into: list[UserRule]) -> Iterator[None]:
    token = _collecting.set((source, into))
    try:
        yield
    finally:
        _collecting.reset(token)


def _mark(sch: Any, schedule_name: str) -> None:
    """Mark the scheduled PrimFunc as ours are marked, so tests, benchmarks and tuning records
    (which keep block annotations) can tell who scheduled it. Best effort: a user schedule that
    removed the root block still counts."""
    root = root_block(sch)
    if root is None:
        return
    with contextlib.suppress(Exception):
        sch.annotate(root, SCHEDULED_BY_ATTR, schedule_name)
        sch.mod["main"] = sch.mod["main"].with_attr(SCHEDULED_ATTR, schedule_name)


def _where(exc: BaseException, source: str) -> str:
    """``file.py:LINE`` of the deepest frame in the user's file, else just the file name."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{Path(source).name}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == source]
    return f"{Path(source).name}:{frames[-1].lineno}" if frames else Path(source).name


def user_rules(extra: Sequence[Any]) -> list[UserRule]:
    """``extra`` rules (anything :func:`as_rule` takes) as :class:`UserRule` objects."""
    return [as_rule(rule) for rule in extra]
