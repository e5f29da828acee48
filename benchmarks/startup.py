"""Start-up: compile cold and warm, and whole `purestep train` runs against the tutorial script.

`python -m benchmarks.startup --epochs 3 --rounds 3 [--tree DIR ...]`

On FashionMNIST-shaped IDX files (`benchmarks.data`, in a temporary folder unless
`--data-dir` has them), for each source tree (default: this one) on a fresh compile cache:
`benchmarks.probe` twice (cold, then warm: from `compile_step` to the graphs ready), one
untimed `purestep train` run (the cache then holds its graphs), then `--rounds` rounds of the
warm `purestep train --epochs N` and the tutorial's script (`benchmarks.tutorial`) alternated,
each a whole process timed from outside. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import has_fashion_mnist, write_fashion_mnist

HERE = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], tree: Path, cache: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PURESTEP_COMPILE_CACHE": str(cache)}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stdout


def main(argv: list[str] | None = None) -> None:
    """Measure and print the tables."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--tree", type=Path, action="append", default=[], help="a source tree to time")
    p.add_argument("--no-probe", action="store_true", help="skip the cold and warm probes")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every process (0: default)")
    p.add_argument("--scratch", type=Path, default=None, help="reuse this folder's data and caches")
    args = p.parse_args(argv)
    trees = args.tree or [HERE]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="purestep-startup-"))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    data = args.data_dir or scratch / "data"
    if not has_fashion_mnist(data):
        write_fashion_mnist(data)
    py = sys.executable
    train = [py, "-m", "purestep", "train", "--dataset", "fashion-mnist", "--data-dir", str(data)]
    train += ["--epochs", str(args.epochs)]
    tutorial = [py, "-m", "benchmarks.tutorial", "--root", str(data), "--epochs", str(args.epochs)]
    print(f"load average at start: {os.getloadavg()[0]:.1f}\n")
    walls: dict[str, list[float]] = {}
    for i, tree in enumerate(trees):
        cache = scratch / f"cache{i}"
        if not args.no_probe:
            for label in ("cold", "warm"):
                _, out = _run([py, "-m", "benchmarks.probe", "--cache-dir", str(cache)], tree, cache)
                figures = json.loads(out.strip().splitlines()[-1])
                graphs = ", ".join(f"{k} {v:.2f}" for k, v in figures["graphs"].items())
                print(
                    f"- {tree} probe {label}: compile {figures['compile_s']:.2f} s ({graphs}); "
                    f"import {figures['import_s']:.2f} s"
                )
        _run(train, tree, cache)
        walls[str(tree)] = []
    walls["tutorial"] = []
    for r in range(args.rounds):
        order = list(enumerate(trees)) + [(-1, None)]
        for i, tree in order[:: -1 if r % 2 else 1]:
            if tree is None:
                walls["tutorial"].append(_run(tutorial, HERE, scratch / "unused")[0])
            else:
                walls[str(tree)].append(_run(train, tree, scratch / f"cache{i}")[0])
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}\n")
    print(
        f"| process ({args.epochs} epochs) | wall s, per round | median | tutorial / this, median of rounds |"
    )
    print("| --- | --- | ---: | ---: |")
    for name, times in walls.items():
        ratio = statistics.median(t / s for t, s in zip(walls["tutorial"], times))
        label = "tutorial script" if name == "tutorial" else f"`purestep train` warm ({name})"
        rounds = " ".join(f"{t:.1f}" for t in times)
        print(f"| {label} | {rounds} | {statistics.median(times):.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
