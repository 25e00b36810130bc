"""Atomic writes: a crash, Ctrl-C or SIGKILL never leaves a half-written file or folder in place,
and the final path never goes missing while an old version is replaced.

A writer works in a sibling named ``.<name>.<pid>-<random>.partial`` that it holds an ``flock``
on, and publishes it in one step: on Linux ``renameat2(RENAME_EXCHANGE)`` swaps the new folder
with the old one (so ``<name>`` always exists, and writers racing on it all succeed: the last
swap wins), then the old one, now under the sibling's name, is removed. Elsewhere, or on a file
system without the exchange, the old one is renamed aside first.

A writer killed outright (SIGKILL, power loss) leaves its sibling behind. The next writer of the
same name removes every sibling whose writer is gone: its pid is dead *and* its lock is free (a
pid alone could be another namespace's; a lock alone could be a sibling not yet locked). The
same holds for the scratch folders :func:`scratch_directory` makes under ``$TMPDIR``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgecompile.errors import EdgecompileError

#: ``.<name>.<pid>-<random>.partial``: a writer's sibling (``<random>`` from mkstemp/mkdtemp).
_PARTIAL = r"\.{name}\.(?P<pid>\d+)-[a-z0-9_]+\.partial"
#: ``.<name>.old-<pid>``: the aside name of earlier versions, cleaned up the same way.
_OLD = r"\.{name}\.old-(?P<pid>\d+)"

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _ensure_parent(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgecompileError(
            f"cannot create output directory {str(final.parent)!r}: {exc.strerror}",
            "choose a writable location with -o",
        ) from None
    if not os.access(final.parent, os.W_OK):
        raise EdgecompileError(
            f"output directory {str(final.parent)!r} is not writable",
            "choose a writable location with -o",
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- who owns a sibling -------------------------------------------------------------------------


def _lock(path: Path, *, wait: bool) -> int | None:
    """An fd holding an exclusive flock on ``path`` (file or folder), or None: the lock is held
    by a live writer (``wait=False``), the path is gone, or the file system cannot lock."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _remove(path: Path) -> None:
    """Remove ``path`` whether it is a folder, a file or nothing; never raises."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_abandoned(folder: Path, patterns: list[re.Pattern[str]]) -> None:
    """Remove the entries of ``folder`` matching one of ``patterns`` (with a ``pid`` group)
    whose writer is gone: pid dead and lock free."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = next((m for p in patterns if (m := p.fullmatch(name))), None)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        path = folder / name
        fd = _lock(path, wait=False)
        if fd is None:
            continue
        try:
            _remove(path)
        finally:
            os.close(fd)


def _sibling_patterns(final: Path) -> list[re.Pattern[str]]:
    name = re.escape(final.name)
    return [re.compile(_PARTIAL.format(name=name)), re.compile(_OLD.format(name=name))]


def remove_abandoned_siblings(final: Path) -> None:
    """Remove the ``.partial`` / ``.old-`` siblings of ``final`` that killed writers left."""
    _remove_abandoned(Path(final).parent, _sibling_patterns(Path(final)))


# --- publishing ---------------------------------------------------------------------------------


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """``renameat2(source, target, flags)``; False where the call or the flag is unsupported
    (not Linux, old libc, a file system without it); raises OSError for any other failure."""
    libc = _libc()
    function = getattr(libc, "renameat2", None) if libc is not None else None
    if function is None:
        return False
    result = function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    # EXDEV: overlayfs refuses to exchange folders of its lower layer; renaming aside may work.
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(target))


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _publish(staged: Path, final: Path) -> None:
    """Put ``staged`` at ``final``; a previous ``final`` ends up at ``staged`` (for the caller to
    remove). With the exchange ``final`` never goes missing; racing writers all succeed."""
    for _attempt in range(1000):
        try:
            if _renameat2(staged, final, _RENAME_EXCHANGE):
                return
        except FileNotFoundError:  # no final yet: publish without replacing anyone's
            try:
                if _renameat2(staged, final, _RENAME_NOREPLACE):
                    return
            except FileExistsError:  # another writer published meanwhile: swap with theirs
                continue
        if _publish_aside(staged, final):
            return
    raise OSError(errno.EBUSY, "other writers kept replacing it", str(final))


def _publish_aside(staged: Path, final: Path) -> bool:
    """Without the exchange: rename the old ``final`` aside (to ``staged``'s name once it has
    moved, so a kill in between leaves a sibling the next writer cleans), then move in."""
    # Still a writer's sibling name (same pid), so a kill before the end leaves nothing uncleaned.
    aside = staged.parent / re.sub(r"\.partial$", "o.partial", staged.name)
    try:
        os.rename(staged, final)  # onto nothing (or an empty folder): done
        return True
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
    try:
        os.rename(final, aside)
    except FileNotFoundError:  # another writer moved it aside first: try again
        return False
    try:
        os.rename(staged, final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _remove(aside)
        return False  # another writer moved in meanwhile
    os.rename(aside, staged)  # the old one, where the caller removes it
    return True


# --- the context managers -----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; moved to ``final`` only if the block succeeds."""
    final = Path(final)
    _ensure_parent(final)
    remove_abandoned_siblings(final)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.{os.getpid()}-", suffix=".partial", dir=final.parent
    )
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # fresh, ours: never waits
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        yield tmp
        os.replace(tmp, final)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; swap it in for ``final`` on success.

    A previous ``final`` is replaced only once the new one is complete, in one step where the
    system allows (``final`` never missing); concurrent writers all succeed, the last one wins.
    Siblings abandoned by killed writers are removed first.
    """
    final = Path(final)
    _ensure_parent(final)
    remove_abandoned_siblings(final)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{final.name}.{os.getpid()}-", suffix=".partial", dir=final.parent
        )
    )
    lock = _lock(tmp, wait=True)
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: others could not read the artifact
        yield tmp
        _publish(tmp, final)
    finally:
        _remove(tmp)  # after _publish: the previous final, if there was one
        if lock is not None:
            os.close(lock)


#: ``<prefix><pid>-<random>`` under ``$TMPDIR``.
_SCRATCH = r"{prefix}(?P<pid>\d+)-[a-z0-9_]+"


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A scratch folder in ``$TMPDIR`` (``<prefix><pid>-<random>``), removed on every way out
    of the block; those of killed processes with the same ``prefix`` are removed first.

    ``prefix`` must be one only this context manager uses (e.g. ``edgecompile-build-``).
    """
    root = Path(tempfile.gettempdir())
    _remove_abandoned(root, [re.compile(_SCRATCH.format(prefix=re.escape(prefix)))])
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    lock = _lock(path, wait=True)
    try:
        yield path
    finally:
        _remove(path)
        if lock is not None:
            os.close(lock)
