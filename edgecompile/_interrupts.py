"""Ctrl-C and termination signals, recognised however they reach us.

TVM's FFI turns an exception raised in one of our Python callbacks (a pass, a schedule rule)
into an error of the kind it has registered for that type, else a ``RuntimeError`` with the
message only: a ``KeyboardInterrupt`` came back as ``RuntimeError('')``, which a fallback's
``except Exception`` took for a compile failure and carried on. So:

- :func:`keep_interrupts_through_ffi` registers the interrupt types with the FFI, so they come
  back as themselves;
- :func:`signal_handlers` (around the CLI's ``main``) makes SIGTERM and SIGHUP raise
  :class:`Terminated` (a ``KeyboardInterrupt``: every cleanup that runs on Ctrl-C runs on them)
  and remembers which signal arrived;
- :func:`is_interrupt` answers for any exception, wrapped or not; :func:`raise_if_interrupt` is
  what a broad ``except Exception`` calls first;
- :func:`interrupt_exit_code` is the shell's 128 + signal number.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The signal the process received last (SIGINT, SIGTERM, SIGHUP), if one did.
_received: int | None = None
_ffi_registered = False


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so the same cleanup runs."""

    def __init__(self, signum: int | str = signal.SIGTERM) -> None:
        # A name too: TVM's FFI (and pickle) rebuild the exception from its message.
        name = signum if isinstance(signum, str) else signal.Signals(signum).name
        self.signum = int(signal.Signals.__members__.get(name, signal.SIGTERM))
        super().__init__(name)


#: The FFI kind :class:`Terminated` is registered under (the kind names the type across the FFI).
_TERMINATED_KIND = f"{__name__}.Terminated"
_INTERRUPT_KINDS = {"KeyboardInterrupt", _TERMINATED_KIND}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _received
    _received = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise in the main thread and are remembered
    for :func:`is_interrupt` (a signal's exception may come back wrapped by a library); the
    previous handlers are restored after it (``main`` may be called from Python, as in tests)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal works in the main thread only; the CLI always runs there
        return
    global _received
    _received = None  # a signal an earlier main() in this process saw is not this one's
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN or handler is None:
            continue  # e.g. SIGHUP under nohup, SIGINT in a background job: keep ignoring
        previous[signum] = handler
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def received_signal() -> int | None:
    """The interrupting signal this process received, if any."""
    return _received


def keep_interrupts_through_ffi() -> None:
    """Register the interrupt types with TVM's FFI: raised in a Python callback, they come
    back as themselves instead of ``RuntimeError``. Idempotent; imports TVM's FFI."""
    global _ffi_registered
    if _ffi_registered:
        return
    import tvm_ffi

    tvm_ffi.register_error("KeyboardInterrupt", KeyboardInterrupt)
    tvm_ffi.register_error(_TERMINATED_KIND, Terminated)
    _ffi_registered = True


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or stands for, Ctrl-C / a termination signal: a
    ``KeyboardInterrupt``; an FFI error of that kind (or whose message names one, as errors
    forwarded from another process do); or any exception raised after this process received
    an interrupting signal (a linker killed by the same Ctrl-C fails with its own error)."""
    if isinstance(exc, KeyboardInterrupt) or _received is not None:
        return True
    ffi_error = getattr(exc, "__tvm_ffi_error__", None)
    if ffi_error is not None and str(getattr(ffi_error, "kind", "")) in _INTERRUPT_KINDS:
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause chain, once each
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt) or _names_interrupt(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _names_interrupt(message: str) -> bool:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith(("KeyboardInterrupt", "Terminated"))


def raise_if_interrupt(exc: BaseException) -> None:
    """Re-raise ``exc`` as the interrupt it stands for (``KeyboardInterrupt`` or
    :class:`Terminated`), chained to it; return if it is not one."""
    if not is_interrupt(exc):
        return
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if _received not in (None, signal.SIGINT):
        raise Terminated(_received) from exc
    raise KeyboardInterrupt from exc


def interrupt_exit_code(exc: BaseException | None = None) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP (the signal
    received, else a :class:`Terminated` in ``exc``'s chain, else Ctrl-C)."""
    if _received is not None:
        return 128 + int(_received)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Terminated):
            return 128 + int(exc.signum)
        exc = exc.__cause__ or exc.__context__
    return 128 + int(signal.SIGINT)


def interrupt_message(code: int) -> str:
    """What the CLI prints for :func:`interrupt_exit_code` ``code``."""
    return "Interrupted." if code == 128 + signal.SIGINT else "Terminated."
