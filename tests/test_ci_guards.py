"""What keeps CI honest: time limits stop hung tests, a missing emulator fails in CI instead of
skipping, emulator tests share one worker, and no test sees the user's records or history."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_a_hung_test_is_stopped_by_its_timeout(tmp_path: Path) -> None:
    # A wait no signal handler interrupts (a lock held by nobody who will release it), run
    # with this project's pytest configuration and a 3 s limit.
    hung = tmp_path / "test_hung.py"
    hung.write_text(
        "import threading\n\n\ndef test_hangs():\n"
        "    lock = threading.Lock()\n    lock.acquire()\n    lock.acquire()\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir",
         str(tmp_path), "-p", "no:cacheprovider", "-n", "0", "-o", "timeout=3", str(hung)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Timeout" in output, output
    assert elapsed < 60, f"the hung test ran {elapsed:.0f} s"


def test_a_missing_emulator_fails_in_ci(
    no_emulator: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no qemu here"):
        no_emulator("no qemu here")


def test_a_missing_emulator_skips_elsewhere(
    no_emulator: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("EDGECOMPILE_REQUIRE_EMULATOR", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no qemu here"):
        no_emulator("no qemu here")


def _collected(marker_expression: str) -> int:
    """How many tests of the suite a marker expression selects (collection only)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p",
         "no:cacheprovider", "-m", marker_expression, "tests"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )  # fmt: skip
    if result.returncode == 5:  # pytest: no test selected
        return 0
    assert result.returncode == 0, result.stdout + result.stderr
    return sum("::" in line for line in result.stdout.splitlines())


def test_emulator_tests_share_one_worker_with_a_longer_limit() -> None:
    assert _collected("emulator") > 0
    assert _collected("emulator and (not xdist_group or not timeout)") == 0


def test_tests_never_see_the_users_records_or_history(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from edgecompile.records import default_records_root

    private = tmp_path_factory.getbasetemp()
    assert default_records_root().is_relative_to(private)
    assert Path(os.environ["EDGECOMPILE_BENCH_HISTORY"]).is_relative_to(private)


@pytest.mark.emulator  # needs no board: only the mark the emulated boards' tests carry
def test_the_emulated_boards_tests_share_one_worker(request: pytest.FixtureRequest) -> None:
    """Under `--dist loadgroup` pytest-xdist sends tests to workers by a group suffix on their
    node id; without it two workers start two boards on the one rootfs and their deploys into
    its home collide (as they did with pytest 9.2, which xdist 3.8 cannot suffix)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("only under pytest-xdist's loadgroup (the default run)")
    assert request.node.nodeid.endswith("@emulator"), request.node.nodeid
