"""`purestep bench`: the performance harness (`python -m benchmarks`), from a source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from purestep.cli._app import app

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Time every way of training the tutorial's MLP in one process and print the tables.

    Every argument goes to the harness: `purestep bench --help` lists them (e.g.
    `--markdown FILE`, `--cli`, `--precision bf16`, `--n-train N`). The harness lives
    in the repository's `benchmarks/`, so this needs a source checkout.
    """
    from purestep.core.errors import PurestepError

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "harness.py").is_file():
        raise PurestepError(f"purestep bench needs a source checkout: no benchmarks/ in {root}")
    # Run from here, so the paths given mean what they mean here; the harness imports from `root`.
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    code = subprocess.call([sys.executable, "-m", "benchmarks", *ctx.args], env=env)
    if code:
        raise typer.Exit(code)
