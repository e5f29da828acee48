"""What ending a process costs once the compiler is loaded: `python -m benchmarks.teardown`.

Each round starts three processes that import `torch._inductor.compile_fx` (as a compiled
`purestep train` has) and then end: by a plain interpreter exit, after `gc.freeze()` (the
public path of `purestep/cli/_fast_exit.py`), and by `os._exit` (its fast path). Each is timed
from the moment it is done to the moment it is gone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CHILD = """
import gc, os, sys, time
import torch._inductor.compile_fx
sys.stderr.write(repr(time.time()))
sys.stderr.flush()
if sys.argv[1] == "freeze":
    gc.freeze()
elif sys.argv[1] == "exit":
    os._exit(0)
"""


def main(argv: list[str] | None = None) -> None:
    """Print the seconds each way of ending takes, per round."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.teardown")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print("| round | plain exit, s | gc.freeze() then exit, s | os._exit, s |\n| ---: | ---: | ---: | ---: |")
    for r in range(args.rounds):
        row = []
        for way in ("plain", "freeze", "exit"):
            done = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True)
            row.append(time.time() - float(done.stderr.strip().splitlines()[-1]))
        print(f"| {r + 1} | " + " | ".join(f"{t:.2f}" for t in row) + " |")


if __name__ == "__main__":
    main()
