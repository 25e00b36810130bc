"""The native TVM runtime for a board, cross-built with zig from the sources the installed
wheels ship, and our runner linked against it: what a board needs to run a library without
Python.

``apache-tvm`` ships its runtime's C++ sources (``tvm/src/runtime``) and headers, and
``apache-tvm-ffi`` ships its own (``tvm_ffi/src``); only what a CPU Relax VM and TVM's RPC
server need is compiled (no LLVM, CUDA or compiler). The few headers the wheel leaves out are
ours, in ``shim/``. libc++ is linked statically and hidden, so a board needs only glibc (no
newer than :data:`GLIBC_VERSION`).

A build is cached per (arch, TVM version, tvm-ffi version, hash of our sources) under the cache
root and published atomically: a killed build never leaves a half runtime behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgecompile._atomic import atomic_directory, scratch_directory
from edgecompile._cache import cache_root
from edgecompile.errors import EdgecompileError
from edgecompile.progress import SILENT, Progress

#: The oldest glibc the runtime may need: Raspberry Pi OS bullseye's.
GLIBC_VERSION = "2.31"
#: Compile jobs at once: CI machines and this one have 2 cores.
JOBS = 2
#: Inside a built runtime folder: the shared runtime, our runner, what was built.
RUNTIME_LIBRARY = "lib/libtvm_runtime.so"
RUNNER = "bin/edgecompile-runner"
RPC_SERVER = "bin/edgecompile-rpc-server"
RECORD = "runtime.json"

_HERE = Path(__file__).resolve().parent
_SHIM = _HERE / "shim"
_RUNNER_SOURCE = _HERE / "runner.cpp"
_RPC_SERVER_SOURCE = _HERE / "rpc_server.cpp"
#: The programs linked against the runtime: what they are in a build, and their source.
_PROGRAMS = ((RUNNER, _RUNNER_SOURCE), (RPC_SERVER, _RPC_SERVER_SOURCE))
#: Headers of ours beside the programs, which they include: their shared main().
_PROGRAM_HEADERS = ("program_main.h",)


@dataclass(frozen=True)
class Arch:
    """How zig compiles for one CPU family (named as ELF headers and ``uname -m`` name it)."""

    name: str
    zig_target: str
    cpu_flags: tuple[str, ...]


#: armv7: Cortex-A7 is the baseline of every armv7 Raspberry Pi (hard float, VFPv4, NEON).
ARCHES = {
    "aarch64": Arch("aarch64", f"aarch64-linux-gnu.{GLIBC_VERSION}", ()),
    "arm": Arch("arm", f"arm-linux-gnueabihf.{GLIBC_VERSION}", ("-mcpu=cortex_a7",)),
}
_ALIASES = {"armv7": "arm", "armv7l": "arm", "armhf": "arm", "arm64": "aarch64"}
#: How a progress line names each (a user knows their board as armv7, not as ELF's "arm").
_BOARD_NAMES = {"aarch64": "aarch64", "arm": "armv7"}

#: tvm-ffi: its core and the extras a runtime loading modules needs (module, library loading,
#: environment), as its CMakeLists.txt lists them, plus the JSON parser; no reflection,
#: structural equality or serialization extras.
FFI_SOURCES = (
    "object.cc",
    "error.cc",
    "function.cc",
    "tensor.cc",
    "dtype.cc",
    "container.cc",
    "init_once.cc",
    "custom_allocator.cc",
    "backtrace.cc",
    "extra/module.cc",
    "extra/library_module.cc",
    "extra/library_module_system_lib.cc",
    "extra/library_module_dynamic_lib.cc",
    "extra/env_context.cc",
    "extra/env_c_api.cc",
    "extra/json_parser.cc",  # the runner reads manifest.json with it (ffi.json.Parse)
    "extra/json_writer.cc",  # TVM's file_utils.cc writes metadata with it
)
#: TVM's runtime: the CPU device, thread pool, memory manager and the Relax VM. Not
#: builtin_fp16.cc (its header is not in the wheel): zig links compiler-rt, fp16 helpers
#: included, into every model library it links.
TVM_SOURCES = (
    "cpu_device_api.cc",
    "device_api.cc",
    "file_utils.cc",
    "logging.cc",
    "module.cc",
    "tensor.cc",
    "thread_pool.cc",
    "threading_backend.cc",
    "timer.cc",
    "workspace_pool.cc",
    "memory/memory_manager.cc",
    "vm/builtin.cc",
    "vm/bytecode.cc",
    "vm/executable.cc",
    "vm/vm.cc",
)
#: TVM's RPC server side (the endpoint, the local session serving it, the remote module and
#: time evaluator, upload/download/remove) for edgecompile-rpc-server, which tunes on a board
#: without Python. Not rpc_pipe_impl.cc (a popen child) nor testing.cc.
RPC_SOURCES = (
    "rpc/rpc_channel.cc",
    "rpc/rpc_device_api.cc",
    "rpc/rpc_endpoint.cc",
    "rpc/rpc_event_impl.cc",
    "rpc/rpc_local_session.cc",
    "rpc/rpc_module.cc",
    "rpc/rpc_server_env.cc",
    "rpc/rpc_session.cc",
    "rpc/rpc_socket_impl.cc",
)
#: Ours: what a model library expects from the process beyond TVM (empty on aarch64).
SHIM_SOURCES = ("arm_builtins.cc",)
_DEFINES = (
    "-DNDEBUG",
    "-DTVM_FFI_USE_LIBBACKTRACE=0",
    "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=0",
    "-DTVM_USE_LIBBACKTRACE=0",
    "-DTVM_FFI_CMAKE_LITTLE_ENDIAN=1",
)
#: -Os: the runtime is glue around the model's kernels, so size matters more than speed here.
_CXXFLAGS = ("-std=c++17", "-Os", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden")
#: zig links libc++ statically with hidden symbols: a board needs only glibc, and an
#: application with its own C++ library never meets ours (TVM's symbols only are exported).
#: -Bsymbolic: the few C++ runtime symbols that stay visible (ARM's __cxa_end_cleanup) bind to
#: the runtime's own copy, not to the runner's -- else an exception thrown in the runtime on
#: armv7 unwinds with the other copy and aborts. -z defs: a missing symbol fails here, not on
#: the board. -s: stripped.
_LIBRARY_LINK = (
    "-shared", "-Wl,-soname,libtvm_runtime.so", "-Wl,-Bsymbolic", "-Wl,-z,defs", "-s",
    "-lpthread", "-ldl", "-lm",
)  # fmt: skip
#: The runtime beside the runner (a bundle) or in ../lib (the cache's layout).
_RUNNER_LINK = ("-Wl,-rpath,$ORIGIN:$ORIGIN/../lib", "-s", "-lpthread")


def canonical_arch(arch: str) -> Arch:
    """``aarch64``/``arm64`` or ``arm``/``armv7``/``armhf`` (as a manifest's ``arch``)."""
    name = _ALIASES.get(arch, arch)
    if name not in ARCHES:
        raise EdgecompileError(
            f"no native runtime for {arch!r}",
            f"use one of {', '.join(sorted(ARCHES))} (32-bit ARM is 'arm' or 'armv7')",
        )
    return ARCHES[name]


@dataclass(frozen=True)
class Sources:
    """Where the installed wheels keep the sources and headers."""

    tvm: Path  # site-packages/tvm
    ffi: Path  # site-packages/tvm_ffi
    tvm_version: str
    ffi_version: str

    def include_flags(self) -> list[str]:
        return [
            f"-I{_SHIM / 'include'}",
            f"-I{self.tvm / 'include'}",
            f"-I{self.ffi / 'include'}",
            f"-I{self.ffi / '3rdparty' / 'dlpack' / 'include'}",
        ]


def installed_sources() -> Sources:
    """The sources of the installed apache-tvm and apache-tvm-ffi (found without importing
    them: importing TVM takes seconds and loads its 240 MB compiler)."""
    from importlib.util import find_spec

    found = {}
    for module, package in (("tvm", "apache-tvm"), ("tvm_ffi", "apache-tvm-ffi")):
        spec = find_spec(module)
        try:
            package_version = version(package)
        except PackageNotFoundError:
            package_version = None
        if spec is None or spec.origin is None or package_version is None:
            raise EdgecompileError(
                f"{package} is not installed, so there are no runtime sources to build",
                f"pip install {package}",
            )
        found[module] = (Path(spec.origin).parent, package_version)
    tvm, tvm_version = found["tvm"]
    ffi, ffi_version = found["tvm_ffi"]
    for needed in (tvm / "src" / "runtime" / "vm", ffi / "src" / "ffi", tvm / "include"):
        if not needed.is_dir():
            raise EdgecompileError(
                f"the installed wheel has no {str(needed)!r}",
                "reinstall apache-tvm / apache-tvm-ffi from PyPI (their wheels ship the sources)",
            )
    return Sources(tvm, ffi, tvm_version, ffi_version)


def source_hash() -> str:
    """Our part of the build: the recipe (sources, flags, targets), the shim headers, the
    programs and the header they share. Not this file's text: a comment edited here rebuilds
    nothing."""
    recipe = [
        FFI_SOURCES, TVM_SOURCES, RPC_SOURCES, SHIM_SOURCES, _DEFINES, _CXXFLAGS, _LIBRARY_LINK,
        _RUNNER_LINK,
        [(a.name, a.zig_target, a.cpu_flags) for a in ARCHES.values()],
    ]  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe).encode())
    shim = sorted(p for p in _SHIM.rglob("*") if p.is_file())
    headers = [_HERE / name for name in _PROGRAM_HEADERS]
    for path in [*(source for _, source in _PROGRAMS), *headers, *shim]:
        digest.update(str(path.relative_to(_HERE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def runtime_path(arch: str, sources: Sources | None = None) -> Path:
    """Where :func:`ensure_runtime` keeps the build for ``arch`` (built or not)."""
    spec = canonical_arch(arch)
    sources = sources or installed_sources()
    name = f"{spec.name}-tvm{sources.tvm_version}-ffi{sources.ffi_version}-{source_hash()}"
    return cache_root() / "native" / name


def is_built(folder: Path) -> bool:
    return (folder / RECORD).is_file()


def ensure_runtime(arch: str, *, progress: Progress = SILENT) -> Path:
    """The folder holding ``lib/libtvm_runtime.so``, ``bin/edgecompile-runner`` and
    ``bin/edgecompile-rpc-server`` for ``arch``, built now unless cached (a few minutes on 2
    cores, once per TVM version)."""
    spec = canonical_arch(arch)
    sources = installed_sources()
    final = runtime_path(spec.name, sources)
    if is_built(final):
        return final
    with progress.stage(
        f"cross-build the native TVM runtime for {_BOARD_NAMES[spec.name]} "
        f"(once per TVM version, ~4-10 min on 2 cores)"
    ):
        start = time.perf_counter()
        with atomic_directory(final) as staged, scratch_directory("edgecompile-native-") as work:
            _build(spec, sources, staged, work, progress.update)
            record = {
                "arch": spec.name,
                "zig_target": spec.zig_target,
                "tvm_version": sources.tvm_version,
                "tvm_ffi_version": sources.ffi_version,
                "source_hash": source_hash(),
                "build_seconds": round(time.perf_counter() - start, 1),
                "files": {
                    name: _describe(staged / name)
                    for name in (RUNTIME_LIBRARY, *(program for program, _ in _PROGRAMS))
                },
            }
            (staged / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return final


def read_record(folder: Path) -> dict:
    """What :func:`ensure_runtime` wrote about a build: versions, sizes, sha256."""
    return json.loads((folder / RECORD).read_text())


# --- the build ----------------------------------------------------------------------------------


def _build(spec: Arch, sources: Sources, out: Path, work: Path, say: Callable[[str], None]) -> None:
    tree = _stage_tree(sources, work)
    units = [(f"tvm_ffi/{name}", sources.ffi / "src" / "ffi" / name) for name in FFI_SOURCES]
    units += [
        (f"runtime/{name}", tree / "src" / "runtime" / name)
        for name in (*TVM_SOURCES, *RPC_SOURCES)
    ]
    units += [(f"shim/{name}", _SHIM / "src" / name) for name in SHIM_SOURCES]
    objects = _compile_all(spec, sources, units, work / "obj", say)
    (out / "lib").mkdir()
    (out / "bin").mkdir()
    library = out / RUNTIME_LIBRARY
    say(f"linking {RUNTIME_LIBRARY}")
    _zig(spec, ["-o", str(library), *map(str, objects), *_LIBRARY_LINK], what=RUNTIME_LIBRARY)
    flags = [*_CXXFLAGS, *spec.cpu_flags, *sources.include_flags()]
    for program, source in _PROGRAMS:
        say(f"compiling and linking {program}")
        program_object = work / "obj" / f"{source.stem}.o"
        _zig(spec, [*flags, "-c", str(source), "-o", str(program_object)], what=source.name)
        _zig(
            spec,
            ["-o", str(out / program), str(program_object), str(library), *_RUNNER_LINK],
            what=program,
        )


def _stage_tree(sources: Sources, work: Path) -> Path:
    """TVM's runtime sources with our ``src/support`` beside them: the sources include
    ``"../support/bytes_io.h"`` relative to themselves, a header the wheel leaves out."""
    tree = work / "tvm"
    shutil.copytree(sources.tvm / "src" / "runtime", tree / "src" / "runtime")
    shutil.copytree(_SHIM / "src" / "support", tree / "src" / "support")
    return tree


def _compile_all(
    spec: Arch,
    sources: Sources,
    units: Sequence[tuple[str, Path]],
    folder: Path,
    say: Callable[[str], None],
) -> list[Path]:
    folder.mkdir(parents=True)
    objects = [folder / (label.replace("/", "__") + ".o") for label, _ in units]
    flags = [*_CXXFLAGS, *spec.cpu_flags, *_DEFINES, *sources.include_flags()]
    done: list[str] = []
    lock = threading.Lock()

    def compile_one(index: int) -> None:
        label, path = units[index]
        _zig(spec, [*flags, "-c", str(path), "-o", str(objects[index])], what=label)
        with lock:
            done.append(label)
            say(f"compiled {len(done)}/{len(units)} ({label})")

    with ThreadPoolExecutor(JOBS) as pool:
        futures = [pool.submit(compile_one, index) for index in range(len(units))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first failure ends the build
            raise
    return objects


def _zig(spec: Arch, arguments: Sequence[str], *, what: str) -> None:
    argv = [sys.executable, "-m", "ziglang", "c++", "-target", spec.zig_target, *arguments]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EdgecompileError(
            f"zig failed on {what} for {spec.name}: {_first_error(result.stderr or result.stdout)}",
            "report it with the TVM version (`pip show apache-tvm`); "
            "the cached runtimes of other versions still work",
        )


def _first_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def _describe(path: Path) -> dict[str, object]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
