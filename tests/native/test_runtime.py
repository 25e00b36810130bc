"""The native runtime's build: architecture names, the cache key, the cache, zig's failures."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from edgecompile.errors import EdgecompileError
from edgecompile.native import runtime
from edgecompile.progress import Progress


def test_board_architecture_names_resolve_to_the_two_runtimes() -> None:
    assert runtime.canonical_arch("armv7").name == "arm"
    assert runtime.canonical_arch("armhf").zig_target == "arm-linux-gnueabihf.2.31"
    assert runtime.canonical_arch("arm64").zig_target == "aarch64-linux-gnu.2.31"
    with pytest.raises(EdgecompileError) as caught:
        runtime.canonical_arch("x86_64")
    assert "x86_64" in str(caught.value) and "\n" not in str(caught.value)


def test_the_cache_key_holds_arch_versions_and_our_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    sources = runtime.installed_sources()
    arm = runtime.runtime_path("armv7", sources)
    assert arm.parent == tmp_path / "native"
    assert sources.tvm_version in arm.name and sources.ffi_version in arm.name
    assert runtime.source_hash() in arm.name
    assert runtime.runtime_path("aarch64", sources) != arm
    newer = runtime.Sources(sources.tvm, sources.ffi, "99.0", sources.ffi_version)
    assert runtime.runtime_path("arm", newer) != arm


def test_a_cached_runtime_is_used_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    folder = runtime.runtime_path("aarch64")
    folder.mkdir(parents=True)
    (folder / runtime.RECORD).write_text(json.dumps({"arch": "aarch64"}))

    def no_build(*args: object) -> None:
        raise AssertionError("rebuilt a cached runtime")

    monkeypatch.setattr(runtime, "_build", no_build)
    assert runtime.ensure_runtime("aarch64") == folder


def test_a_zig_failure_is_one_line_naming_the_file_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    real = runtime.installed_sources()
    ffi = tmp_path / "tvm_ffi"
    (ffi / "src" / "ffi").mkdir(parents=True)
    (ffi / "src" / "ffi" / "broken.cc").write_text("int broken( {\n")
    tvm = tmp_path / "tvm"
    (tvm / "src" / "runtime").mkdir(parents=True)
    fake = runtime.Sources(tvm, ffi, real.tvm_version, real.ffi_version)
    monkeypatch.setattr(runtime, "installed_sources", lambda: fake)
    monkeypatch.setattr(runtime, "FFI_SOURCES", ("broken.cc",))
    monkeypatch.setattr(runtime, "TVM_SOURCES", ())
    monkeypatch.setattr(runtime, "RPC_SOURCES", ())
    monkeypatch.setattr(runtime, "SHIM_SOURCES", ())

    with pytest.raises(EdgecompileError) as caught:
        runtime.ensure_runtime("armv7")
    message = str(caught.value)
    assert "tvm_ffi/broken.cc" in message and "for arm" in message and "\n" not in message
    assert not runtime.is_built(runtime.runtime_path("arm", fake))
    assert [p.name for p in (tmp_path / "cache" / "native").iterdir()] == []


def _fake_build(spec: Any, sources: Any, out: Path, work: Path, say: Any) -> None:
    """Stands in for zig: the files a build leaves, and one compile line."""
    for name in (runtime.RUNTIME_LIBRARY, runtime.RUNNER, runtime.RPC_SERVER):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f'#!/bin/sh\necho {Path(name).name} "$@" > "$HOME/started"\n')
    say(f"compiled 1/1 (stand-in for {spec.name})")


def test_a_cold_build_says_what_it_builds_once_and_how_long_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Minutes of cross-compiling, announced as such (CI's log and a tune's output show it);
    the cached runtime afterwards says nothing."""
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_build", _fake_build)
    shown = io.StringIO()
    pipe = Progress(1, stream=shown, enabled=True, terminal=False, pipe_seconds=0)
    runtime.ensure_runtime("armhf", progress=pipe)
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("[1/1] cross-build the native TVM runtime for armv7 ")
    assert "once per TVM version" in lines[0] and "min" in lines[0]
    assert "compiled 1/1 (stand-in for arm)" in lines[1]
    assert lines[-1].startswith("[1/1] done in ")

    again = io.StringIO()
    runtime.ensure_runtime("arm", progress=Progress(1, stream=again, enabled=True, terminal=False))
    assert again.getvalue() == ""
