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
import tempfile
from pathlib import Path

from benchmarks.rounds import (
    Variant,
    alternate,
    fresh_study,
    print_ratios,
    study_arguments,
    study_commands,
    user_env,
)


def main() -> None:
    """Run the rounds; print every run, then the median ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(parser)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = user_env()
    one = base | {"OMP_NUM_THREADS": "1"}

    with tempfile.TemporaryDirectory() as tmp:
        plain, tune = study_commands(args, Path(tmp))
        workers = ["--workers", str(cores), "--threads", "1"]
        variants = {
            "purestep, no flags": Variant(tune, base, args=fresh_study),
            "purestep --threads 1": Variant([*tune, "--threads", "1"], base, args=fresh_study),
            f"purestep {' '.join(workers)}": Variant([*tune, *workers], base, args=fresh_study),
            "plain objective, 1 thread": Variant(plain, one),
            "plain objective, torch's default threads": Variant(plain, base),
        }
        print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, {cores} cores\n")
        walls = alternate(variants, args.rounds, Path(tmp) / "runs")
    print_ratios(walls, "purestep, no flags")


if __name__ == "__main__":
    main()
