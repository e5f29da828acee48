"""Every core, threads or processes? `purestep tune` with no flags (`--threads auto`) against one
thread, and against one single-thread worker process per core, beside the plain Optuna objective
at one thread and at torch's default; alternated round by round.

    python -m benchmarks.threads --dataset digits --epochs 10 --n-trials 64 --rounds 3

Each run is a new process on a fresh SQLite study, random sampler seeded 0, no pruner, one trial
at a time (`--batch auto` on a CPU), `--no-final`. Prints each run's wall seconds and, per
variant, the median over rounds of its wall time over the no-flag run's in the same round
(above 1: no flags is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Run the rounds; print every run, then the median ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="FashionMNIST files here, else generated")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PURESTEP_OFFLINE": "1"}
    one = base | {"OMP_NUM_THREADS": "1"}

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or str(Path(tmp) / "data")
        if args.dataset == "fashion-mnist" and args.data_dir is None:
            from purestep.core.data import write_fake_mnist

            write_fake_mnist(data_dir, "fashion-mnist", 60000, 10000)
        plain = [sys.executable, "-m", "benchmarks.trials", "--plain", args.dataset, data_dir]
        plain += [str(args.epochs), str(args.n_trials), "none"]
        tune = [sys.executable, "-m", "purestep", "tune", "--dataset", args.dataset, "--data-dir", data_dir]
        tune += ["--epochs", str(args.epochs), "--n-trials", str(args.n_trials), "--sampler", "random"]
        tune += ["--pruner", "none", "--no-final"]
        workers = ["--workers", str(cores), "--threads", "1"]
        variants = {
            "purestep, no flags": (tune, base),
            "purestep --threads 1": ([*tune, "--threads", "1"], base),
            f"purestep {' '.join(workers)}": ([*tune, *workers], base),
            "plain objective, 1 thread": (plain, one),
            "plain objective, torch's default threads": (plain, base),
        }
        walls: dict[str, list[float]] = {v: [] for v in variants}
        print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, {cores} cores\n")
        print("| round | variant | wall s | load |")
        print("| ---: | --- | ---: | ---: |")
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                cmd, env = variants[v]
                if cmd is not plain:  # a fresh study for every purestep run
                    out = Path(tmp) / f"run-{r}-{order.index(v)}"
                    cmd = [*cmd, "--storage", f"sqlite:///{out / 's.db'}", "--out", str(out)]
                    out.mkdir()
                start = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                walls[v].append(time.perf_counter() - start)
                print(f"| {r + 1} | {v} | {walls[v][-1]:.1f} | {os.getloadavg()[0]:.1f} |", flush=True)
        ref = walls["purestep, no flags"]
        print("\n| variant | median wall s | variant / no flags (median of rounds) |")
        print("| --- | ---: | ---: |")
        for v, w in walls.items():
            ratio = statistics.median(x / n for x, n in zip(w, ref))
            print(f"| {v} | {statistics.median(w):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
