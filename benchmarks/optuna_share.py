"""What share of a `purestep tune` run is spent in Optuna's calls (asking, reporting, pruning,
reading the study, telling), the storage's reads and writes included.

    python -m benchmarks.optuna_share -- --dataset digits --epochs 10 --n-trials 64 --batch 16 \
        --sampler random --pruner median

Runs `purestep tune` with the arguments after `--` in this process (`--storage` defaults to a
new SQLite file in a temporary folder; `--no-final` is added), with Optuna's public methods
wrapped in a timer, and prints each one's calls and seconds and the whole run's wall time. Nested
calls are counted in each (the pruner's `Study.get_trials` is inside `Trial.should_prune`), so
the share counts each second once: the time spent inside any of them, outermost only.
"""

from __future__ import annotations

import collections
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMED = {"Trial": ("report", "should_prune", "set_user_attr"), "Study": ("ask", "tell", "get_trials")}


def timed_run(args: list[str]) -> tuple[float, float, dict[str, tuple[int, float]]]:
    """Run `purestep` with `args`; wall seconds, seconds inside Optuna's calls, and per method
    its (calls, seconds)."""
    import optuna

    from purestep.cli import app

    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    depth = [0]
    outer = [0.0]

    def wrap(owner: type, name: str) -> None:
        method: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(method)
        def timed(*a: Any, **k: Any) -> Any:
            began = time.perf_counter()
            depth[0] += 1
            try:
                return method(*a, **k)
            finally:
                depth[0] -= 1
                seconds = time.perf_counter() - began
                spent[f"{owner.__name__}.{name}"] += seconds
                calls[f"{owner.__name__}.{name}"] += 1
                if depth[0] == 0:
                    outer[0] += seconds

        setattr(owner, name, timed)

    owners = (optuna.Trial, optuna.Study)
    originals = {(owner, name): getattr(owner, name) for owner in owners for name in TIMED[owner.__name__]}
    for owner, name in originals:
        wrap(owner, name)
    try:
        began = time.perf_counter()
        app(args, standalone_mode=False)
        wall = time.perf_counter() - began
    finally:
        for (owner, name), method in originals.items():
            setattr(owner, name, method)
    return wall, outer[0], {k: (calls[k], spent[k]) for k in spent}


def main(argv: list[str] | None = None) -> None:
    """Print the table for the `purestep tune` arguments given after `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argv[argv.index("--") + 1 :] if "--" in argv else argv
    given = " ".join(args)
    with tempfile.TemporaryDirectory() as folder:
        if "--storage" not in args:
            args += ["--storage", f"sqlite:///{Path(folder) / 'share.db'}"]
        wall, inside, methods = timed_run(["tune", *args, "--no-final", "--out", folder])
    print(f"`purestep tune {given}`")
    print("| call | calls | seconds |")
    print("|---|---|---|")
    for name, (n, seconds) in sorted(methods.items(), key=lambda item: -item[1][1]):
        print(f"| {name} | {n} | {seconds:.2f} |")
    print(f"wall {wall:.1f} s; inside Optuna's calls {inside:.1f} s, {100 * inside / wall:.1f}%")


if __name__ == "__main__":
    main()
