"""The one exception type the CLI turns into a one-line message and exit code 1, the one way
to make any error's text a single line, and the exceptions SIGINT and SIGTERM end a run with."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_held = [0]  # how deep in `holding_signals` calls the main thread is
_pending: list[int] = []  # a signal that arrived while held


class PurestepError(RuntimeError):
    """A runtime failure whose message is already fit for a user: one line, with the cause."""


class DataError(PurestepError):
    """A dataset that cannot be found, downloaded or read."""


NATIVE_TRACE = "Exception raised from "
"""Where torch's C++ errors start their stack frames: no part of a message for a user."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (white space folded, torch's C++ frames cut off), or its
    type's name if it has none."""
    text = " ".join(str(error).partition(NATIVE_TRACE)[0].split())
    if text or isinstance(error, str):
        return text
    return type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver's long report stops there), or its type's name."""
    text = str(error).partition(NATIVE_TRACE)[0].strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def signal_exception(signum: int) -> BaseException:
    """What a signal ends a run with: SIGTERM exits 143, SIGINT is a Ctrl-C (exit 130)."""
    return SystemExit(143) if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_for_signal(signum: int, frame: Any = None) -> None:
    """A signal handler: raise `signal_exception(signum)`, or, inside `holding_signals`, when it
    returns."""
    if _held[0]:
        _pending[:] = [signum]
        return
    raise signal_exception(signum)


def holding_signals(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` with SIGINT and SIGTERM held while it runs and raised as it returns: native code that
    calls back into Python (a compiled package's custom ops) cannot unwind an exception raised there;
    it prints a C++ error and wraps the exception in a `RuntimeError`, and the run would fail."""

    def held(*args: Any) -> T:
        _held[0] += 1
        try:
            return fn(*args)
        finally:
            _held[0] -= 1
            if _pending and not _held[0]:
                raise signal_exception(_pending.pop())

    return held
