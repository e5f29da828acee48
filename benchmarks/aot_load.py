"""What loading a saved step costs in a new process: `python -m benchmarks.aot_load`.

A `purestep train` run keeps its compiled steps as AOTInductor packages in the compile cache
(`core/artifacts.py`). Each round starts two processes that import torch and purestep, then
load the newest package there: through the private `AOTIModelPackageLoader` (the fast path,
which needs neither Dynamo nor inductor) and through the public `aoti_load_package`
(`PURESTEP_FAST_PATHS=0`), timed from just before the load to just after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from purestep.core.step import default_compile_cache

CHILD = """
import sys, time
from pathlib import Path
import torch
from purestep.core import artifacts
start = time.perf_counter()
artifacts._runner(Path(sys.argv[1]))
print(time.perf_counter() - start)
"""


def newest_package(cache: Path) -> Path:
    """The most recently written package under `cache/steps` (run `purestep train` first)."""
    packages = sorted((cache / "steps").glob("[!.]*.pt2"), key=lambda p: p.stat().st_mtime)
    if not packages:
        raise SystemExit(f"no package under {cache / 'steps'}: run `purestep train --epochs 1` first")
    return packages[-1]


def main(argv: list[str] | None = None) -> None:
    """Print each round's load time through the private loader and through the public one."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.aot_load")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", type=Path, default=None, help="compile cache (default: purestep's)")
    args = p.parse_args(argv)
    package = newest_package(args.cache or default_compile_cache())
    print(f"package: {package.name}\n")
    print("| round | private loader, s | public loader, s | public / private |")
    print("| ---: | ---: | ---: | ---: |")
    for r in range(args.rounds):
        row = []
        for fast in ("1", "0"):
            env = {**os.environ, "PURESTEP_FAST_PATHS": fast}
            cmd = [sys.executable, "-c", CHILD, str(package)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row.append(float(done.stdout.strip().splitlines()[-1]))
        print(f"| {r + 1} | {row[0]:.4f} | {row[1]:.3f} | {row[1] / row[0]:.0f}x |")


if __name__ == "__main__":
    main()
