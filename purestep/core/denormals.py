"""Denormal floats flushed to zero on the CPU, on every thread that computes.

An fp32 value below 2**-126 (about 1.2e-38) is denormal, and a CPU computes with one far slower
than with a normal value. Optimizer state decays into that range wherever a gradient stays zero
or tiny (Adam's and momentum's running averages over weights of always-zero inputs or dead
units), and every later step pays for it. JAX's CPU backend and TensorFlow flush denormals to
zero (the FTZ and DAZ flags) around every computation; torch leaves them on unless asked
(`torch.set_flush_denormal`). The flags belong to each thread: torch sets the calling thread's,
and `set_flushing` sets the same on every thread of torch's OpenMP team, through the OpenMP
runtime's `GOMP_parallel` (the libgomp ABI, which LLVM's and Intel's runtimes export too), which
runs one function on each thread of a team. A change is checked by a product split across the
team; where it did not reach every thread, no thread flushes, so results never depend on how
work was split. Measured in BENCHMARKS.md ("Denormals").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

SMALL, FACTOR = 1e-30, 1e-10
"""Two normal fp32 values whose product (1e-40) is denormal."""
_RUNTIME = re.compile(r"lib(g|i)?omp[^/]*\.(so[.0-9]*|dylib)$")
_GRAIN = 1 << 16
"""Elements per thread in the check: above torch's grain (32768), so every thread takes a share."""


def flushing() -> bool:
    """Whether this thread flushes denormals: a denormal product comes out zero."""
    return bool(torch.tensor(SMALL) * FACTOR == 0)


def _team_flushes(on: bool) -> bool:
    """Whether every thread of torch's team computes as `on` says: a product split across them."""
    threads = max(torch.get_num_threads(), 1)
    zeros = int((torch.full((threads * _GRAIN,), SMALL) * FACTOR == 0).sum())
    return zeros == (threads * _GRAIN if on else 0)


def _loaded_runtimes() -> list[Path]:
    """OpenMP runtimes torch may use: those in torch's own folder, then any this process mapped."""
    spec = importlib.util.find_spec("torch")
    folders = [Path(f) / "lib" for f in (spec.submodule_search_locations or [])] if spec else []
    found = sorted(p for f in folders for p in f.glob("*omp*") if _RUNTIME.search(p.name))
    with contextlib.suppress(OSError):
        for fields in map(str.split, Path("/proc/self/maps").read_text().splitlines()):
            path = Path(fields[-1]) if fields else None
            if path is not None and _RUNTIME.search(path.name) and path not in found:
                found.append(path)
    return found


@functools.cache
def _on_every_thread() -> Callable[[Callable[[], None]], None] | None:
    """A function that runs `fn` once on each thread of torch's OpenMP team; None if none is found."""
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    for path in _loaded_runtimes():
        try:
            parallel = ctypes.CDLL(str(path)).GOMP_parallel
        except (OSError, AttributeError):
            continue
        parallel.argtypes = [callback, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel.restype = None

        def run(fn: Callable[[], None], parallel=parallel) -> None:
            each = callback(lambda _: fn())
            parallel(each, None, max(torch.get_num_threads(), 1), 0)

        return run
    return None


def set_flushing(on: bool) -> bool:
    """Flush denormals (`on`) or compute with them, on this thread and torch's OpenMP team.

    Returns whether every thread now does as asked. Asked to flush where the CPU cannot or the
    team is out of reach, it turns flushing off everywhere and returns False.
    """
    if not torch.set_flush_denormal(on):
        return not on
    run = _on_every_thread()
    if run is not None and torch.get_num_threads() > 1:
        run(lambda: torch.set_flush_denormal(on))
    if _team_flushes(on):
        return True
    if on:
        set_flushing(False)
    return False


@contextlib.contextmanager
def flushed(on: bool = True) -> Iterator[bool]:
    """Within the block, flush denormals (`on`) or not, as `set_flushing`; yields whether they are
    flushed; afterwards every thread is back as this thread was."""
    before = flushing()
    try:
        took = set_flushing(on)
        yield on and took
    finally:
        set_flushing(before)
