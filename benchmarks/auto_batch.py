"""Is `--batch auto`'s pick the fastest? `purestep tune` with no speed flags against `--batch K`,
alternated round by round, each run its own process and fresh SQLite study.

    python -m benchmarks.auto_batch --dataset digits --epochs 5 --n-trials 32 --batches 8,16 --rounds 3

The sampler and pruner are tune's defaults (TPE, median), as a user without flags gets them;
any other argument is passed to every run (e.g. `--sampler random --pruner none`).
Prints each run's wall and CPU seconds (the process's user + system time, which a loaded
machine inflates far less than wall time) and, per variant, the median over rounds of its
ratio to the no-flag run of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], out: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and the K the run trained with (from its best.json)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "purestep", *args, "--storage", f"sqlite:///{out / 's.db'}"]
    cmd += ["--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PURESTEP_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads((out / "best.json").read_text())["batch"]["value"]


def main() -> None:
    """Run the rounds and print every run, then the median ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-trials", type=int, default=32)
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--rounds", type=int, default=3)
    args, extra = parser.parse_known_args()
    common = ["tune", "--dataset", args.dataset, "--epochs", str(args.epochs)]
    common += ["--n-trials", str(args.n_trials), "--no-final", *extra]
    variants = ["auto", *args.batches.split(",")]
    ratios: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    print("| round | variant | K | wall s | CPU s | load |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            base: tuple[float, float] | None = None
            for v in variants:
                out = Path(tmp) / f"{r}-{v}"
                out.mkdir()
                flags = [] if v == "auto" else ["--batch", v]
                wall, cpu, k = _run([*common, *flags], out)
                base = base or (wall, cpu)
                ratios[v].append((wall / base[0], cpu / base[1]))
                label = "no speed flags" if v == "auto" else f"--batch {v}"
                load = os.getloadavg()[0]
                print(f"| {r + 1} | {label} | {k} | {wall:.1f} | {cpu:.1f} | {load:.1f} |", flush=True)
    print("\n| variant | wall / no flags (median) | CPU / no flags (median) |")
    print("| --- | ---: | ---: |")
    for v in variants[1:]:
        wall = statistics.median(w for w, _ in ratios[v])
        cpu = statistics.median(c for _, c in ratios[v])
        print(f"| --batch {v} | {wall:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
