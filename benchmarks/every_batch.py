"""A saved step for every batch size against one per batch size: compile time and ms per step.

    python -m benchmarks.every_batch [--in-features 784] [--batches 32,64] [--threads 2] [--rounds 6]

The union train step (`tunable`, Adam's trial) of the tutorial's MLP, built as `CompiledStep`
builds its packages (`artifacts.build`): one package per batch size (static shapes), and one
package with a symbolic batch (`every_batch`), each with the shipped inductor options (the oneDNN
matmul pass) and without them (`size_asserts` only). Prints each build's seconds, each package's
largest relative difference from the eager step after one step (and whether the package for every
batch size gives the same bits as the batch's own), and per batch size the median ms per step over
interleaved rounds (reversed every other round), all in one process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from purestep.core import artifacts
from purestep.core.allocator import keep_freed_memory
from purestep.core.model import mlp
from purestep.core.optim import OptimizerConfig, tunable
from purestep.core.step import _inductor_options, make_train_step


def main(argv: list[str] | None = None) -> None:
    """Build every variant's packages, check them against eager, time them; print one table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.every_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--in-features", type=int, default=784)
    p.add_argument("--batches", default="32,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant and round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `tune` runs
    model = mlp(args.in_features)
    optimizer = tunable(OptimizerConfig("adam", lr=1e-3))
    step = make_train_step(model, optimizer)
    params, buffers = model.init(0)
    state = optimizer.init(params)

    def step_args(rows: int) -> list:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(rows, args.in_features, generator=g)
        return [params, buffers, state, x, torch.randint(0, 10, (rows,), generator=g)]

    folder = Path(tempfile.mkdtemp())
    options = {"oneDNN pass": _inductor_options(), "inductor's products": {"size_asserts": False}}

    def package(rows: int, name: str, every_batch: bool) -> artifacts.Runner:
        opts = options[name]
        parts = artifacts.key(name, step_args(rows), {k: repr(v) for k, v in opts.items()}, None, every_batch)
        start = time.perf_counter()
        path = artifacts.build(step, step_args(rows), parts, folder, opts, every_batch)
        built = "every batch size" if every_batch else f"batch {rows}"
        print(f"built {built} ({name}): {time.perf_counter() - start:.1f} s", flush=True)
        found = artifacts.load(path, parts)
        assert found is not None
        return found[0]

    batches = [int(b) for b in args.batches.split(",")]
    variants: dict[tuple[str, int], artifacts.Runner] = {}
    for name in options:
        every = package(batches[0], name, True)
        for rows in batches:
            variants[f"{name}, one per batch size", rows] = package(rows, name, False)
            variants[f"{name}, every batch size", rows] = every
    for (name, rows), run in variants.items():
        out, eager = run(artifacts.leaves(step_args(rows))), artifacts.leaves(step(*step_args(rows)))
        worst = max(((o - e).abs().max() / e.abs().max().clamp_min(1e-30)).item() for o, e in zip(out, eager))
        own = variants[name.replace("every batch size", "one per batch size"), rows]
        same = all(torch.equal(a, o) for a, o in zip(own(artifacts.leaves(step_args(rows))), out))
        print(f"{name}, batch {rows}: largest difference from eager {worst:.2e}; own bits: {same}")
    times: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
    for r in range(args.rounds + 1):  # round 0 warms up, untimed
        for key in list(variants) if r % 2 else list(reversed(variants)):
            values = artifacts.leaves(step_args(key[1]))
            start = time.perf_counter()
            for _ in range(args.steps if r else 10):
                variants[key](values)
            if r:
                times[key].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"\n{args.in_features} inputs, {args.threads} threads, {args.rounds} rounds x {args.steps} steps\n")
    print("| variant | " + " | ".join(f"batch {b} ms" for b in batches) + " |")
    print("| --- | " + " | ".join("---:" for _ in batches) + " |")
    for name in dict.fromkeys(n for n, _ in variants):
        print(f"| {name} | " + " | ".join(f"{statistics.median(times[name, b]):.3f}" for b in batches) + " |")


if __name__ == "__main__":
    main()
