"""Shipping an artifact to a board over SSH, atomically and checked.

Why: a deploy uploads to temporary names, checks the library's sha256 *on the board* against
the manifest, then renames into place: a dropped connection or a full disk never leaves a half
library under the final name (and never breaks the copy that was there). The board is checked
first (:func:`edgecompile.device.probe.check_compatible`), so nothing is written on a board
that could not load the library.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompile._names import check_plain_name
from edgecompile.artifact import MANIFEST, Artifact, load_artifact, sha256_file
from edgecompile.device.access import BoardAccess
from edgecompile.device.probe import (
    NATIVE,
    BoardInfo,
    check_compatible,
    check_native_compatible,
    probe,
)
from edgecompile.device.ssh import BoardConnection, connect
from edgecompile.errors import EdgecompileError

__all__ = [
    "DEFAULT_REMOTE_DIR",
    "Deployment",
    "ProgressCallback",
    "artifact_for_board",
    "deploy",
    "deploy_on",
]

DEFAULT_REMOTE_DIR = "~/edgecompile"
#: Room kept free beside the upload (sftp and the rename need a little).
_SPACE_MARGIN = 256 * 1024
#: In the temporary names of an upload, so the next deploy can clear what a dropped one left.
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class Deployment:
    """Where an artifact now lives on the board, and what the board is."""

    device: str
    directory: str
    library: str
    manifest: str
    uploaded: bool
    seconds: float
    board: BoardInfo = field(repr=False)
    #: ``edgecompile-runner`` on the board when a bundle was shipped, else None.
    runner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "board": self.board.to_dict()}


ProgressCallback = Callable[[int, int], None]


def deploy(
    artifact: str | Path | Artifact,
    access: BoardAccess,
    *,
    progress: ProgressCallback | None = None,
    native: bool | None = None,
) -> Deployment:
    """Copy an artifact over SSH to ``access.device`` (``user@host[:port]``), under
    ``access.remote_dir`` (default ``~/edgecompile``), atomically.

    A bundle ships with its native runtime and runner; so does a plain artifact when the board
    has no TVM Python, or ``native`` is True (see :func:`artifact_for_board`).

    The board gets ``<remote_dir>/<artifact folder name>/<model>.so`` and ``manifest.json``.
    An identical library already there is not uploaded again. ``access.remote_python`` is
    the board's Python with TVM (default: the first of
    :data:`edgecompile.device.probe.PYTHON_CANDIDATES` there).

    Args:
        progress: Called with (bytes sent, total) during the library upload.

    Raises:
        EdgecompileError: connection problems (see :func:`edgecompile.device.ssh.connect`),
            an incompatible board (see :func:`edgecompile.device.probe.check_compatible`), not
            enough disk space, a checksum mismatch, or a dropped connection (the final name is
            untouched in every case).
    """
    device = access.require_device("deploy")
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    with connect(device, **access.ssh_login()) as board:
        info = probe(board, remote_python=access.remote_python)
        return deploy_on(
            board,
            artifact_for_board(artifact, info, native, access.remote_python),
            remote_dir=access.remote_dir or DEFAULT_REMOTE_DIR,
            remote_python=access.remote_python,
            progress=progress,
            info=info,
        )


def artifact_for_board(
    artifact: Artifact, info: BoardInfo, native: bool | None, remote_python: str | None = None
) -> Artifact:
    """What to ship: the artifact itself, or its bundle when the native runner is to run it --
    asked for (``native``), or the board has no TVM Python (the bundle is then written beside
    the artifact, ``<folder>-bundle/``, once). A bundle stays a bundle. A ``remote_python`` the
    user named is the one to use: without TVM in it the deploy is refused (as the tunnel does),
    never silently switched to the native runner."""
    from edgecompile.native.bundle import bundle, is_bundle

    if is_bundle(artifact):
        if native is False:
            raise EdgecompileError(
                f"{artifact.directory} is a bundle: its native runner runs it",
                "pass the artifact folder (without -bundle) to run it through the board's Python",
            )
        return artifact
    if native is None:
        native = remote_python is None and info.kind == NATIVE
    if not native:
        return artifact
    return load_artifact(bundle(artifact))


def deploy_on(
    board: BoardConnection,
    artifact: Artifact,
    *,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    remote_python: str | None = None,
    progress: ProgressCallback | None = None,
    info: BoardInfo | None = None,
) -> Deployment:
    """:func:`deploy` on an open connection (``run``/``bench`` reuse theirs).

    A bundle (``build --bundle``) also ships its native runtime and ``edgecompile-runner``, and
    is checked against the board's arch and glibc instead of its Python; every file is
    sha256-checked on the board before any final name changes."""
    from edgecompile.native.bundle import bundled_files, is_bundle

    started = time.perf_counter()
    manifest = artifact.manifest
    # Both become paths on the board. The library's name comes from the manifest (an Artifact
    # made in Python skipped load_artifact's check); ``deploy .`` would name the folder "" and
    # upload into remote_dir itself, hence the absolute folder's name.
    check_plain_name(manifest.library, "library", str(artifact.directory / MANIFEST))
    folder = Path(os.path.abspath(artifact.directory)).name  # "." → its name; links kept
    if not folder:
        raise EdgecompileError(
            f"cannot deploy {artifact.directory} (the root folder)",
            "pass the folder `edgecompile build` wrote",
        )
    local_sha = sha256_file(artifact.library)
    if local_sha != manifest.library_sha256:
        raise EdgecompileError(
            f"{artifact.library} does not match its manifest (sha256 {local_sha[:12]}... vs "
            f"{manifest.library_sha256[:12]}...)",
            "rebuild the artifact; never edit the .so by hand",
        )
    native = is_bundle(artifact)
    runtime = bundled_files(artifact) if native else {}
    for name in runtime:
        check_plain_name(name, "bundled file", str(artifact.directory / MANIFEST))
    where = board.settings.label
    info = info or probe(board, remote_python=remote_python)
    if native:
        from edgecompile.native.glibc import check_glibc, required_glibc

        check_native_compatible(manifest, info, where)
        needed = required_glibc([artifact.library, *(artifact.directory / n for n in runtime)])
        check_glibc(needed, info.glibc, where)
    else:
        check_compatible(manifest, info, where)

    directory = posixpath.join(_expand_home(remote_dir, info.home), folder)
    local_manifest = artifact.directory / MANIFEST
    # (local file, name on the board, sha256): the runtime first, the manifest last.
    shipped = [(artifact.directory / name, name, digest) for name, digest in runtime.items()]
    shipped += [
        (artifact.library, manifest.library, manifest.library_sha256),
        (local_manifest, MANIFEST, sha256_file(local_manifest)),
    ]
    finals = [posixpath.join(directory, name) for _, name, _ in shipped]
    runner = posixpath.join(directory, next(reversed(runtime))) if native else None
    size = sum(local.stat().st_size for local, _, _ in shipped)
    q_dir = shlex.quote(directory)

    def deployment(uploaded: bool) -> Deployment:
        seconds = time.perf_counter() - started
        return Deployment(where, directory, finals[-2], finals[-1], uploaded, seconds, info, runner)

    # Create the folder, clear partial uploads a dropped connection left (our names only),
    # report free space and what is installed now.
    partials = " ".join(shlex.quote(f".{name}{_PARTIAL}") + "*" for _, name, _ in shipped)
    state = board.check(
        f"mkdir -p -- {q_dir} && cd -- {q_dir} && rm -f -- {partials} && "
        f"df -Pk . | tail -n 1 && "
        f"(sha256sum -- {' '.join(map(shlex.quote, finals))} 2>/dev/null || true)",
        f"preparing {directory}",
        "check that the user may write there, or pass --remote-dir",
    )
    lines = state.strip().splitlines()
    free = _free_bytes(lines[0] if lines else "")
    installed = _sha256_lines("\n".join(lines[1:]))
    wanted = [digest for _, _, digest in shipped]
    if [installed.get(path) for path in finals] == wanted and _executable(board, runner):
        return deployment(uploaded=False)
    if free is not None and free < size + _SPACE_MARGIN:
        raise _disk_full(where, directory, free, size)

    token = secrets.token_hex(4)
    temporary = [posixpath.join(directory, f".{name}{_PARTIAL}{token}") for _, name, _ in shipped]
    quoted = " ".join(map(shlex.quote, temporary))
    try:
        for (local, name, _), remote in zip(shipped, temporary, strict=True):
            _upload(board, local, remote, progress if name == manifest.library else None)
        sums = _sha256_lines(
            board.check(
                f"sha256sum -- {quoted}",
                "checking the upload's sha256",
                "install coreutils on the board (sha256sum)",
            )
        )
        for (_, name, digest), remote in zip(shipped, temporary, strict=True):
            received = sums.get(remote, "missing")
            if received != digest:
                raise EdgecompileError(
                    f"the upload arrived corrupted on {where} ({name} sha256 {received[:12]}... "
                    f"instead of {digest[:12]}...)",
                    "run again; if it repeats, check the board's storage (SD card) for errors",
                )
        moves = " && ".join(
            f"mv -f -- {shlex.quote(temp)} {shlex.quote(final)}"
            for temp, final in zip(temporary, finals, strict=True)
        )
        executable = (
            f"chmod 755 -- {shlex.quote(temporary[len(runtime) - 1])} && " if native else ""
        )
        board.check(
            executable + moves,
            "moving the upload into place",
            f"check permissions in {directory}",
        )
    except EdgecompileError:
        if not board.alive:
            raise  # the partial files are cleared by the next deploy to this folder
        # Remove our temporary files (the final names were never touched), then say "disk
        # full" if that is why: sftp-server reports ENOSPC only as a generic "Failure".
        free_now: int | None = None
        with contextlib.suppress(EdgecompileError):
            board.run(f"rm -f -- {quoted}")
            free_now = _free_bytes(board.run(f"df -Pk -- {q_dir} | tail -n 1").stdout)
        if free_now is not None and free_now < size + _SPACE_MARGIN:
            raise _disk_full(where, directory, free_now, size) from None
        raise
    return deployment(uploaded=True)


def _executable(board: BoardConnection, path: str | None) -> bool:
    """Whether the bundle's runner on the board may be run (True when there is none)."""
    return path is None or board.run(f"test -x {shlex.quote(path)}").exit_status == 0


def _sha256_lines(output: str) -> dict[str, str]:
    """``{path: sha256}`` from sha256sum's ``HASH  PATH`` lines."""
    sums: dict[str, str] = {}
    for line in output.splitlines():
        digest, _, path = line.partition("  ")
        if path:
            sums[path] = digest.lstrip("\\")
    return sums


def _free_bytes(df_line: str) -> int | None:
    """Available bytes from a POSIX ``df -Pk`` line (4th column, in KiB)."""
    parts = df_line.split()
    if len(parts) >= 4 and parts[3].isdigit():
        return int(parts[3]) * 1024
    return None


def _disk_full(where: str, directory: str, free: int, size: int) -> EdgecompileError:
    return EdgecompileError(
        f"not enough space on {where}: {free / 2**20:.1f} MiB free in {directory}, the "
        f"artifact needs {(size + _SPACE_MARGIN) / 2**20:.1f} MiB",
        "free space on the board, or pass --remote-dir on a larger filesystem",
    )


def _upload(
    board: BoardConnection, local: Path, remote: str, progress: ProgressCallback | None
) -> None:
    """SFTP put with size confirmation (paramiko stats the result); errors name the file."""
    with board.translate_errors(f"uploading {local.name}"):
        board.sftp.put(str(local), remote, callback=progress, confirm=True)


def _expand_home(path: str, home: str) -> str:
    """``~`` and ``~/x`` on the board as absolute paths, from the ``home`` it reported."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    return path
