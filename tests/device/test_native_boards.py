"""#17's done-when: a bundle deployed to an emulated board WITHOUT Python (armhf rpi3-armv7
under qemu-arm, and an arm64 rpi4 rootfs with no python3) computes what torch computes, and
`bench --device` times it there, both through the bundle's native runner.

Slow: each board's rootfs is built once (cold: armhf 755 s, arm64 809 s on a 2-core machine at
load 10-13), each native runtime once (cold ~9 min, warm seconds), and each model once per
board; the armhf half then took 17 min at that load (6 tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecompile.device.access import BoardAccess

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

#: The emulated boards without Python and their architecture.
BOARDS = {"rpi3-armv7": "arm", "rpi4": "aarch64"}
MODELS = ("shufflenet_v1", "mobilenet_v2", "squeezenet1_1")


@pytest.fixture(scope="module", params=list(BOARDS))
def native_board(
    request: pytest.FixtureRequest, python_less_board: Callable[..., Any]
) -> Iterator[tuple[Any, BoardAccess]]:
    """A running Python-less board, and how to reach it (a fresh known_hosts, key accepted)."""
    with python_less_board(
        request.param,
        BOARDS[request.param],
        remote_dir="~/edgecompile-tests",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Any]:
    """``bundles(model, preset)``: ``build --bundle`` once per pair (the library + runtime)."""
    from edgecompile.artifact import load_artifact
    from edgecompile.builder import build
    from edgecompile.native.bundle import bundle

    cache: dict[tuple[str, str], Any] = {}

    def get(model: str, preset: str) -> Any:
        if (model, preset) not in cache:
            built = build(model, preset, output_dir=tmp_path_factory.mktemp(model)).artifact
            cache[(model, preset)] = load_artifact(bundle(built))
        return cache[(model, preset)]

    return get


def test_the_board_has_no_python_and_probes_as_native(native_board: Any) -> None:
    from edgecompile.device import ssh
    from edgecompile.device.probe import NATIVE, probe

    state, access = native_board
    with ssh.connect(access.device, **access.ssh_login()) as connection:
        info = probe(connection)
        assert connection.run("command -v python3 python").exit_status != 0
    assert info.python3 is None and info.python is None
    assert info.kind == NATIVE and state.kind == NATIVE
    assert info.glibc is not None and info.glibc.startswith("glibc 2.")
    assert info.userland_bits == (32 if BOARDS[state.name] == "arm" else 64)


@pytest.mark.parametrize("model", MODELS)
def test_a_bundle_on_the_board_matches_torch(
    model: str,
    native_board: Any,
    bundles: Callable[[str, str], Any],
    torch_reference: Callable[[str, Any], Any],
) -> None:
    from edgecompile.device.remote import run_on_device
    from edgecompile.export import example_input, relative_error

    state, access = native_board
    shipped = bundles(model, state.name)
    x = example_input(shipped.manifest.inputs[0]["shape"], seed=7)
    result = run_on_device(shipped, access, [x])
    assert result.runner == "native" and result.board["runner"] == "native"
    (output,) = result.outputs
    expected = torch_reference(model, x)
    assert output.shape == expected.shape
    assert relative_error(output, expected) <= 1e-4


def test_bench_on_the_board_goes_through_the_native_runner(
    native_board: Any, bundles: Callable[[str, str], Any]
) -> None:
    from edgecompile.device.remote import bench_on_device

    state, access = native_board
    shipped = bundles("squeezenet1_1", state.name)
    result = bench_on_device(shipped, access, repeat=3, warmup=1, history=False)
    assert result.runner == "native"
    assert len(result.times_ms) == 3 and all(t > 0 for t in result.times_ms)
    assert result.min_ms <= result.median_ms <= result.max_ms
    assert result.notes and "emulated" in result.notes[0]


def test_the_cli_runs_a_plain_artifact_natively_and_says_so(
    native_board: Any,
    bundles: Callable[[str, str], Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`run --device` with the artifact folder (not the bundle): the board has no Python, so
    the bundle beside it is shipped and run; one line and the JSON say which runner ran."""
    from edgecompile.cli.app import main

    state, access = native_board
    plain = bundles("squeezenet1_1", state.name).directory.with_name(
        bundles("squeezenet1_1", state.name).directory.name.removesuffix("-bundle")
    )
    login = ["--device", access.device, "--identity", str(access.identity)]
    login += ["--accept-new-host-key", "--remote-dir", "~/edgecompile-tests"]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))  # a known_hosts of this test's own
        assert main(["run", str(plain), *login]) in (0, None)
        text = capsys.readouterr().out
        assert "native runner (no Python)" in text
        assert main(["run", str(plain), *login, "--json"]) in (0, None)
        report = json.loads(capsys.readouterr().out)
    assert report["runner"] == "native" and report["board"]["kind"] == "native"
