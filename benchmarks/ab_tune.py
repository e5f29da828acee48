"""Whole `purestep tune` studies from two or more source trees (before and after a change) and the
plain Optuna objective, in alternated rounds.

    git worktree add /tmp/before REV
    python -m benchmarks.ab_tune --trees /tmp/before . --dataset fashion-mnist --epochs 2 --n-trials 8

Each tree's `purestep tune` (no speed flags, a fresh SQLite study, random sampler seeded 0, no
pruner, `--no-final`) runs with that tree first on `PYTHONPATH`; one untimed study per tree first
fills its compile cache (a compiled step's key holds the core's source hash, so trees do not share
graphs), so the timed rounds read warm caches. Prints every run and, per variant, the median over
rounds of its wall over the plain objective's in the same round.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import rounds

HERE = Path(__file__).resolve().parent.parent
PLAIN = "plain objective"


def main() -> None:
    """Warm every tree's cache, then run the plain objective and each tree in alternated rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds.study_arguments(parser)
    parser.add_argument("--trees", nargs="+", required=True, help="source trees to compare, in order")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    base = rounds.user_env()
    trees = [Path(t).resolve() for t in args.trees]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        plain, tune = rounds.study_commands(args, scratch)
        study = plain[4:]  # dataset, data, epochs, trials, pruner, file
        threads = ["--threads", str(args.threads)] if args.threads else []
        here = [sys.executable, "-m", "benchmarks.denormals", "--plain", str(args.threads), "keep"]
        variants = {PLAIN: rounds.Variant([*here, *study], base, HERE)}
        for tree in trees:
            variants[f"purestep from {tree}"] = rounds.Variant(
                [*tune, *threads], base | {"PYTHONPATH": str(tree)}, tree, rounds.fresh_study
            )
        on = args.threads or "torch's default"
        print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, threads: {on}")
        for i, (name, v) in enumerate(variants.items()):
            if name != PLAIN:  # fill this tree's compile cache, untimed
                run = scratch / f"warm-{i}"
                run.mkdir()
                subprocess.run(
                    [*v.cmd, *v.args(run)], check=True, env=v.env, cwd=v.cwd,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
        walls = rounds.alternate(variants, args.rounds, scratch / "runs")
    rounds.print_ratios(walls, PLAIN)


if __name__ == "__main__":
    main()
