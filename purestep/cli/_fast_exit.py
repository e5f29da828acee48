"""Ending a CLI process without waiting for the interpreter to tear torch down.

Tearing down torch, Dynamo and inductor's modules at the end of a compiled run takes longer
than a warm compile (BENCHMARKS.md, "Private names"). The public way, used when
`fastpath.enabled()` is False or the private name is missing: freeze the garbage collector's
view of every live object (`gc.freeze`), so the teardown's collections skip them, then
`sys.exit`. The fast path: run the atexit handlers (the private `atexit._run_exitfuncs`;
logging's flush is among them), flush stdout and stderr, and end the process with `os._exit`.
Every file a command writes is closed by then.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from typing import NoReturn

from purestep.core import fastpath


def exit_now(code: int) -> NoReturn:
    """End the process with `code`; the quick way once torch is loaded."""
    if "torch" not in sys.modules:
        sys.exit(code)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if not fastpath.enabled() or run_exitfuncs is None:
        gc.freeze()
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
