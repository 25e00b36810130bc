"""#17's done-when: a bundle deployed to an emulated board WITHOUT Python (armhf rpi3-armv7
under qemu-arm, and an arm64 rpi4 rootfs with no python3) computes what torch computes, and
`bench --device` times it there, both through the bundle's native runner.

Default run: the three models at a small input (the same kernels and numerics, a fraction of
the emulated time) on both boards, one of them at 224×224 too, each built and bundled once per
board. `-m slow`: every model at 224×224. The rootfs and runtimes come from the cache (CI's
`python -m edgecompile.device.prebuild` stage; cold: a rootfs ~13 min, a runtime ~9 min at load).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecompile.device.access import BoardAccess

pytestmark = [pytest.mark.emulator]

#: The emulated boards without Python and their architecture.
BOARDS = {"rpi3-armv7": "arm", "rpi4": "aarch64"}
MODELS = ("shufflenet_v1", "mobilenet_v2", "squeezenet1_1")
#: The default run's input: every model's stages still downsample to a 2×2 map before the
#: classifier, so every kernel kind runs; 224×224 costs ~12× the emulated time.
SMALL = 64
FULL = 224
#: The one model checked at FULL in the default run too (the cheapest to run emulated).
FULL_BY_DEFAULT = "squeezenet1_1"


def _cases() -> list[Any]:
    cases = [pytest.param(model, SMALL, id=f"{model}-{SMALL}") for model in MODELS]
    for model in MODELS:
        marks = () if model == FULL_BY_DEFAULT else (pytest.mark.slow,)
        cases.append(pytest.param(model, FULL, id=f"{model}-{FULL}", marks=marks))
    return cases


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
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, int], Any]:
    """``bundles(model, preset, size)``: ``build --bundle`` once per triple (library + runtime)."""
    from edgecompile.artifact import load_artifact
    from edgecompile.builder import build
    from edgecompile.native.bundle import bundle

    cache: dict[tuple[str, str, int], Any] = {}

    def get(model: str, preset: str, size: int) -> Any:
        if (model, preset, size) not in cache:
            built = build(
                model, preset, output_dir=tmp_path_factory.mktemp(model), input_size=str(size)
            ).artifact
            cache[(model, preset, size)] = load_artifact(bundle(built))
        return cache[(model, preset, size)]

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


@pytest.mark.parametrize(("model", "size"), _cases())
def test_a_bundle_on_the_board_matches_torch(
    model: str,
    size: int,
    native_board: Any,
    bundles: Callable[[str, str, int], Any],
    torch_reference: Callable[[str, Any], Any],
) -> None:
    from edgecompile.device.remote import run_on_device
    from edgecompile.export import example_input, relative_error

    state, access = native_board
    shipped = bundles(model, state.name, size)
    assert shipped.manifest.inputs[0]["shape"] == [1, 3, size, size]
    x = example_input(shipped.manifest.inputs[0]["shape"], seed=7)
    result = run_on_device(shipped, access, [x])
    assert result.runner == "native" and result.board["runner"] == "native"
    (output,) = result.outputs
    expected = torch_reference(model, x)
    assert output.shape == expected.shape
    assert relative_error(output, expected) <= 1e-4


def test_bench_and_run_device_go_through_the_native_runner_and_say_so(
    native_board: Any,
    bundles: Callable[[str, str, int], Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`bench --device` and `run --device` with the artifact folder (not the bundle): the board
    has no Python, so the bundle beside it is shipped and its runner runs; the JSON and the
    text say which runner ran, and the bench has every timed run."""
    from edgecompile._cache import cache_root
    from edgecompile.cli.app import main

    state, access = native_board
    shipped = bundles("squeezenet1_1", state.name, SMALL)
    plain = shipped.directory.with_name(shipped.directory.name.removesuffix("-bundle"))
    login = ["--device", access.device, "--identity", str(access.identity)]
    login += ["--accept-new-host-key", "--remote-dir", "~/edgecompile-tests"]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        # A known_hosts of this test's own; the cached runtime stays where it is (a new HOME
        # would move the cache root, and the bundle would cross-build a runtime for minutes).
        patch.setenv("EDGECOMPILE_CACHE", str(cache_root()))
        patch.setenv("HOME", str(home))
        bench_args = ["bench", str(plain), *login, "--repeat", "3", "--warmup", "1", "--json"]
        assert main(bench_args) in (0, None)
        bench = json.loads(capsys.readouterr().out)
        assert main(["run", str(plain), *login]) in (0, None)
        said = capsys.readouterr().out
    assert bench["runner"] == "native" and bench["board"]["kind"] == "native"
    assert len(bench["times_ms"]) == 3 and all(t > 0 for t in bench["times_ms"])
    assert bench["min_ms"] <= bench["median_ms"] <= bench["max_ms"]
    assert bench["notes"] and "emulated" in bench["notes"][0]
    assert "native runner (no Python)" in said
