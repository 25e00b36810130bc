"""Everything the emulated boards need, built now unless cached: the arm64 rootfs with TVM, the
two rootfs without Python (arm64, armhf) and the native runtimes for aarch64 and armv7.

The tests build each of them on first use and keep it in the cache root
(``$EDGECOMPILE_CACHE``). Cold, that is 9-10 minutes on this project's 2-core CI machine
(December 2026: the rootfs with TVM 3.7 min, each rootfs without Python and each runtime
~1.5 min; a slow Debian mirror adds to the rootfs), which inside the test run would sit silent
in one test's captured output and against its time limit. So where the boards are required
(CI) the test run calls :func:`prebuild` before its first test (``tests/conftest.py``), and
``python -m edgecompile.device.prebuild`` does the same by hand: a cold cache is a visible,
timed line per step, a warm one costs seconds (every step finds its marker and builds nothing).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgecompile.errors import EdgecompileError

__all__ = ["main", "prebuild", "steps"]

#: A step: what it builds, and the function building it (or finding it cached) that takes a
#: callable for its progress lines and returns where the result is.
Step = tuple[str, Callable[[Callable[[str], None]], Path]]


def steps() -> list[Step]:
    """What the emulated boards' tests need, in the order it is built."""
    from edgecompile.device import emulator
    from edgecompile.device.native_rootfs import ensure_native_rootfs
    from edgecompile.native.runtime import ensure_runtime
    from edgecompile.progress import Progress

    def runtime(arch: str) -> Callable[[Callable[[str], None]], Path]:
        # its own numbered stage and compile counts (on stdout, in order with ours)
        return lambda _say: ensure_runtime(arch, progress=Progress(1, stream=sys.stdout))

    return [
        ("arm64 rootfs with TVM", lambda say: emulator.ensure_rootfs(progress=say)),
        ("arm64 rootfs without Python", lambda say: ensure_native_rootfs("aarch64", progress=say)),
        ("armhf rootfs without Python", lambda say: ensure_native_rootfs("arm", progress=say)),
        ("native runtime for aarch64", runtime("aarch64")),
        ("native runtime for armv7", runtime("arm")),
    ]


def prebuild(say: Callable[[str], None] = print) -> list[tuple[str, float]]:
    """Every step of :func:`steps` built unless cached, one line each (its time, and where the
    result is); returns ``(step, seconds)`` per step.

    Raises:
        EdgecompileError: a build failed (not root, no network, tools missing...).
    """
    took = []
    for label, ensure in steps():
        start = time.monotonic()
        folder = ensure(lambda line, label=label: say(f"  {label}: {line}"))
        seconds = time.monotonic() - start
        say(f"{label}: ready in {seconds:.1f} s ({folder})")
        took.append((label, seconds))
    return took


def main(argv: list[str] | None = None) -> int:
    """``python -m edgecompile.device.prebuild``: exit 0, or one ``Error:`` line and exit 2."""
    if argv if argv is not None else sys.argv[1:]:
        print(
            "Error: python -m edgecompile.device.prebuild takes no arguments "
            "(it builds every emulated board's cache that is missing)",
            file=sys.stderr,
        )
        return 2
    start = time.monotonic()
    try:
        prebuild(lambda line: print(line, flush=True))
    except EdgecompileError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print(f"emulated boards ready in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
