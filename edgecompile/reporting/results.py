"""What a zoo report holds: its engines, each model's result, and a stage's failure.

Shared by both phases (:mod:`~edgecompile.reporting.builds`, :mod:`~edgecompile.reporting.measure`)
and by everything that writes the report out; imports none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecompile.benchmarking.timing import EngineTiming
from edgecompile.errors import EdgecompileError, last_line

TARGET = "host"
# "tvm" is TVM untuned with edgecompile's schedules; "tvm-tuned" the same model built with the
# target's MetaSchedule tuning records applied (measured only when there are records);
# "tvm-int8" the model quantized and built as `build --int8` does, "ort-int8" ONNX Runtime on
# the same int8 model (only when asked: each model is quantized and built once more).
ENGINES = ("tvm", "tvm-tuned", "tvm-int8", "ort", "ort-int8", "torch")
DEFAULT_ENGINES = ("tvm", "tvm-tuned", "ort", "torch")
TUNED = "tvm-tuned"
INT8_ENGINES = ("tvm-int8", "ort-int8")
#: Each int8 engine's fp32 counterpart: the same engine on the float model.
FP32_OF = {"tvm-int8": "tvm", "ort-int8": "ort"}
BUILDS_DIR = "builds"
#: Why a board report (``report --device``) has no time-by-op-class table or plot.
NO_PROFILE = (
    "time by op class not measured: the native runner times whole inferences and has no "
    "per-kernel profiler, so a board report has no op-class split (a report of this machine "
    "has it)."
)


@dataclass(frozen=True)
class TuningRecords:
    """The records "tvm-tuned" is built with: one target's store, its digest and size."""

    store: str
    digest: str
    records: int


@dataclass(frozen=True)
class StageFailure:
    """A stage (cost, build, bench, profile) that failed for one model, and why."""

    stage: str
    problem: str


@dataclass(frozen=True)
class ModelResult:
    model: str
    family: str
    input_size: tuple[int, int]
    params: int | None = None
    multiply_adds: int | None = None
    memory_access: int | None = None
    findings: dict[str, str] = field(default_factory=dict)
    artifact: str | None = None
    build_reused: bool = False
    build_seconds: float | None = None
    tuned_artifact: str | None = None
    tuned_build_reused: bool = False
    tuned_build_seconds: float | None = None
    #: Kernels of the tuned build whose schedule came from the records (0: the records had
    #: nothing for this model, so its tuned build is the untuned one and is not timed).
    tuned_kernels: int | None = None
    #: Engine ("tvm", "tvm-tuned") → what its build lost to a failure, not a decision: our
    #: pipeline failed as a whole, or a rule raised on some kernels (its times are then partly
    #: TVM's default lowering's; see :func:`edgecompile.schedules.coverage.build_fallback`).
    schedule_fallbacks: dict[str, str] = field(default_factory=dict)
    timings: list[EngineTiming] = field(default_factory=list)
    op_class_ms: dict[str, float] = field(default_factory=dict)
    profile_threads: int | None = None
    profile_end_to_end_ms: float | None = None
    failures: list[StageFailure] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def status(self) -> str:
        return f"{self.failures[0].stage} failed" if self.failures else "ok"

    def timing(self, engine: str, threads: int) -> EngineTiming | None:
        return next((t for t in self.timings if (t.engine, t.threads) == (engine, threads)), None)


@dataclass(frozen=True)
class Correlation:
    """Spearman rank correlation of a cost with one engine's median latency over the zoo."""

    engine: str
    threads: int
    models: int
    multiply_adds_rho: float | None
    mac_rho: float | None


@dataclass(frozen=True)
class ZooReport:
    output_dir: str
    index: str
    results_csv: str
    plots: list[str]
    target: str
    threads: list[int]
    engines: list[str]
    repeat: int
    warmup: int
    seed: int
    machine: dict[str, Any]
    models: list[ModelResult]
    correlations: list[Correlation]
    notes: list[str]
    wall_seconds: float
    records: TuningRecords | None = None
    #: The board the models were timed on (``report --device``), as it described itself
    #: (:meth:`edgecompile.reporting.board.Board.describe`); None for a report of this machine.
    board: dict[str, Any] | None = None

    @property
    def failed(self) -> list[ModelResult]:
        return [result for result in self.models if result.failures]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for model, result in zip(data["models"], self.models, strict=True):
            model["status"] = result.status
        return data


# --------------------------------------------------------------------------------------------
# running a model's stages


def _describe(exc: Exception) -> str:
    if isinstance(exc, EdgecompileError):
        return str(exc)
    # Not a user error: a bug or a TVM crash. Kept in the report so the run goes on.
    return f"{type(exc).__name__}: {last_line(str(exc))} (unexpected: report it)"


class Stages:
    """Runs one model's stages: a failing stage is recorded (and the caller told), not raised."""

    def __init__(self) -> None:
        self.failures: list[StageFailure] = []
        self.seconds: dict[str, float] = {}

    def run(self, label: str, work: Callable[[], None]) -> bool:
        started = time.perf_counter()
        try:
            work()
        except Exception as exc:  # one model must not end a zoo-wide run; see _describe
            self.failures.append(StageFailure(label, _describe(exc)))
            return False
        finally:
            self.seconds[label] = round(time.perf_counter() - started, 2)
        return True
