"""Whole commands timed in alternated rounds, and their ratios within a round.

A shared machine drifts over minutes, so variants run one after the other in each round, in
reversed order every other round, and a variant is read by the median over rounds of its wall
time over a reference variant's in the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One command to time: `cmd` with `env`, started in `cwd`; `args(run_dir)` adds per-run arguments
    (a fresh study and output folder, say) and `run_env(run_dir)` per-run variables."""

    cmd: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    args: Callable[[Path], list[str]] = lambda run: []
    run_env: Callable[[Path], dict[str, str]] = lambda run: {}


def study_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a whole-study comparison: which study, how many rounds, where the data is."""
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pruner", default="none", choices=["none", "median"], help="both sides' pruner")
    parser.add_argument("--data-dir", default=None, help="FashionMNIST files here, else generated")


def user_env() -> dict[str, str]:
    """The environment both sides run in as a user runs them: torch's default threads, offline."""
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PURESTEP_OFFLINE": "1"}


def study_commands(args: argparse.Namespace, scratch: Path) -> tuple[list[str], list[str]]:
    """The plain Optuna objective's command and `purestep tune`'s (random sampler seeded 0, the
    same pruner, `--no-final`) for `args`' study; FashionMNIST-shaped files are generated in `scratch`
    when no `--data-dir` holds them, and the plain objective writes its trials' epochs there."""
    data_dir = args.data_dir or str(scratch / "data")
    if args.dataset == "fashion-mnist" and args.data_dir is None:
        from purestep.core.data import write_fake_mnist

        write_fake_mnist(data_dir, "fashion-mnist", 60000, 10000)
    plain = [sys.executable, "-m", "benchmarks.trials", "--plain", args.dataset, data_dir]
    plain += [str(args.epochs), str(args.n_trials), args.pruner, str(scratch / "plain-epochs")]
    tune = [sys.executable, "-m", "purestep", "tune", "--dataset", args.dataset, "--data-dir", data_dir]
    tune += ["--epochs", str(args.epochs), "--n-trials", str(args.n_trials), "--sampler", "random"]
    tune += ["--pruner", args.pruner, "--no-final"]
    return plain, tune


def fresh_study(run: Path) -> list[str]:
    """`purestep tune`'s arguments for a new SQLite study and output folder in the run's directory."""
    return ["--storage", f"sqlite:///{run / 's.db'}", "--out", str(run)]


def alternate(variants: dict[str, Variant], rounds: int, scratch: Path) -> dict[str, list[float]]:
    """Run every variant once a round for `rounds` rounds; print each run (wall, load); return the walls."""
    walls: dict[str, list[float]] = {name: [] for name in variants}
    print("| round | variant | wall s | load |")
    print("| ---: | --- | ---: | ---: |")
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            v = variants[name]
            run = scratch / f"run-{r}-{order.index(name)}"
            run.mkdir(parents=True)
            start = time.perf_counter()
            subprocess.run(
                [*v.cmd, *v.args(run)], check=True, env=v.env | v.run_env(run), cwd=v.cwd,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            walls[name].append(time.perf_counter() - start)
            print(f"| {r + 1} | {name} | {walls[name][-1]:.1f} | {os.getloadavg()[0]:.1f} |", flush=True)
    return walls


def print_ratios(walls: dict[str, list[float]], reference: str) -> None:
    """Per variant: the median wall, and the median over rounds of its wall over `reference`'s."""
    ref = walls[reference]
    print(f"\n| variant | median wall s | variant / {reference} (median of rounds) |")
    print("| --- | ---: | ---: |")
    for name, w in walls.items():
        ratio = statistics.median(x / n for x, n in zip(w, ref))
        print(f"| {name} | {statistics.median(w):.1f} | {ratio:.2f} |")
