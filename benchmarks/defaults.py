"""`purestep tune` as a user runs it, with no flags, against the plain Optuna objective at torch's
default threads: with an empty compile cache, with every graph of the run saved there, and at other
source trees; alternated round by round.

    python -m benchmarks.defaults --dataset digits --epochs 10 --n-trials 64 --rounds 3 [--tree DIR ...]

Each purestep run is a new process on a fresh SQLite study (random sampler seeded 0, `--pruner`,
none by default, on both sides, `--no-final`). "Empty cache" runs get a new, empty compile cache
each. "Graphs saved" runs share one that an untimed `--impl compiled` run of the same study filled
before the rounds: what a user's cache holds after one compiled run. `--each-impl` adds `--impl
eager` and `--impl compiled` on an empty cache each: a cold compile against eager steps, what
`--impl auto` weighs. `--tree DIR` adds purestep from another source tree (a `git archive` of an
older commit), empty cache. Prints every run and, per variant, the median over rounds of its wall
over the plain objective's in the same round (below 1: faster than plain).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import rounds

HERE = Path(__file__).resolve().parent.parent
PLAIN = "plain objective, torch's default threads"


def main() -> None:
    """Fill the saved-graphs cache, run the rounds; print every run, then the median ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds.study_arguments(parser)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another source tree")
    parser.add_argument(
        "--each-impl", action="store_true", help="also `--impl eager` and `--impl compiled`, empty cache each"
    )
    args = parser.parse_args()
    base = rounds.user_env()

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        plain, tune = rounds.study_commands(args, scratch)

        def empty_cache(run: Path) -> dict[str, str]:
            return {"PURESTEP_COMPILE_CACHE": str(run / "cache")}

        saved = base | {"PURESTEP_COMPILE_CACHE": str(scratch / "saved")}
        start = time.perf_counter()
        (scratch / "fill").mkdir()
        fill = [*tune, "--impl", "compiled", *rounds.fresh_study(scratch / "fill")]
        subprocess.run(
            fill, check=True, env=saved, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, {os.cpu_count()} cores")
        print(
            f"filling the saved-graphs cache (--impl compiled, cold): {time.perf_counter() - start:.1f} s\n"
        )

        variants = {PLAIN: rounds.Variant(plain, base, HERE)}
        variants["purestep, no flags, empty cache"] = rounds.Variant(
            tune, base, HERE, rounds.fresh_study, empty_cache
        )
        variants["purestep, no flags, graphs saved"] = rounds.Variant(tune, saved, HERE, rounds.fresh_study)
        if args.each_impl:  # what `--impl auto` weighs on an empty cache: a cold compile against eager steps
            for impl in ("eager", "compiled"):
                variants[f"purestep --impl {impl}, empty cache"] = rounds.Variant(
                    [*tune, "--impl", impl], base, HERE, rounds.fresh_study, empty_cache
                )
        for tree in args.tree:
            env = base | {"PYTHONPATH": str(tree.resolve())}
            variants[f"purestep, no flags, {tree.name}"] = rounds.Variant(
                tune, env, tree.resolve(), rounds.fresh_study, empty_cache
            )
        walls = rounds.alternate(variants, args.rounds, scratch / "runs")
    rounds.print_ratios(walls, PLAIN)


if __name__ == "__main__":
    main()
