"""The commands that run here or on a board, from Python, under the command line's names.

``edgecompile run``/``bench`` run here unless a board option is given; these functions do the
same with ``access`` (a :class:`~edgecompile.device.access.BoardAccess`). The stage modules
stay separate (running here needs no SSH, the board side no torch), so the choice is made here,
once, for Python; the CLI's command modules make it for the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from edgecompile.artifact import Artifact
    from edgecompile.device.access import BoardAccess


def _on_board(access: BoardAccess | None) -> bool:
    return access is not None and access.given


def run(
    artifact: str | Path | Artifact,
    inputs: Sequence[np.ndarray] | None = None,
    *,
    access: BoardAccess | None = None,
    seed: int = 0,
    threads: int | None = None,
    native: bool | None = None,
) -> Any:
    """``edgecompile run``: the artifact's outputs on ``inputs`` (seeded random ones if None),
    here, or on the board ``access`` reaches (deployed first over SSH; ``native``: through the
    bundle's runner, by default when the board has no TVM Python or the artifact is a bundle)."""
    if _on_board(access):
        from edgecompile.device.remote import run_on_device

        return run_on_device(artifact, access, inputs, threads=threads, seed=seed, native=native)
    from edgecompile.runner import run as run_here

    return run_here(artifact, inputs, seed=seed, threads=threads)


def bench(
    source: str | Path,
    *,
    access: BoardAccess | None = None,
    threads: int | Sequence[int] = 1,
    repeat: int = 20,
    warmup: int = 3,
    seed: int = 0,
    native: bool | None = None,
    **here: Any,
) -> Any:
    """``edgecompile bench``: here, TVM against ONNX Runtime and torch (``source`` a model or
    a host artifact; ``here`` takes :func:`~edgecompile.benchmarking.local.bench_local`'s options:
    ``compare``, ``target``, ``input_size``, ...); on the board ``access`` reaches, the
    artifact ``source`` timed there, one thread count (``native`` as for :func:`run`)."""
    counts = [threads] if isinstance(threads, int) else list(threads)
    if _on_board(access):
        from edgecompile.device.remote import bench_on_device
        from edgecompile.errors import EdgecompileError

        if here:
            raise EdgecompileError(
                f"{', '.join(sorted(here))}: options for benchmarking here",
                "drop them to bench on the board",
            )
        if len(counts) != 1:
            raise EdgecompileError("on a board, threads is one count", "e.g. threads=4")
        return bench_on_device(
            source,
            access,
            threads=counts[0],
            repeat=repeat,
            warmup=warmup,
            seed=seed,
            native=native,
        )
    from edgecompile.benchmarking.local import bench_local

    return bench_local(str(source), threads=counts, repeat=repeat, warmup=warmup, seed=seed, **here)


def profile(source: str | Path, **options: Any) -> Any:
    """``edgecompile profile``: per-kernel time of the host library of ``source`` (a model or
    a host artifact); ``options`` as :func:`~edgecompile.benchmarking.profile.profile_local`."""
    from edgecompile.benchmarking.profile import profile_local

    return profile_local(str(source), **options)
