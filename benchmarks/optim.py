"""Each optimizer's own update against the union one: `python -m benchmarks.optim [--threads N] [--update]`.

The tutorial's train step (784-512-512-10 MLP, batch 64) with each family's own update and with
`tunable(config)`'s union update, eager and compiled; with `--update`, the update alone on fixed
gradients (eager: the optimizer's `eager_update`). Variants run in interleaved rounds on the
same batch; each reports its best round in ms per step and the median over rounds of the union's
ratio to its own optimizer within a round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from purestep.core.model import mlp
from purestep.core.optim import Optimizer, OptimizerConfig, tunable
from purestep.core.step import compile_step, make_train_step

CONFIGS = {
    "sgd": OptimizerConfig("sgd", lr=1e-3),
    "sgd, momentum 0.9": OptimizerConfig("sgd", lr=1e-3, momentum=0.9),
    "adam": OptimizerConfig("adam", lr=1e-3),
    "rmsprop, centered, momentum": OptimizerConfig("rmsprop", lr=1e-3, momentum=0.9, centered=True),
}


MODES = ("eager", "compiled")


def update_step(params: dict[str, torch.Tensor], update: Callable[..., Any]) -> Callable[..., Any]:
    """A step of the train step's shape that runs only `update`, on fixed gradients."""
    g = torch.Generator().manual_seed(1)
    grads = {k: torch.randn(v.shape, generator=g) * 1e-2 for k, v in params.items()}

    def step(params, buffers, state, x, y):
        params, state = update(grads, state, params)
        return params, buffers, state, None

    return step


def main(argv: list[str] | None = None) -> None:
    """Time every (optimizer, own or union, eager or compiled) variant and print one table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.optim", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant and round")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="eager, compiled or both")
    p.add_argument("--optimizers", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--update", action="store_true", help="time the update alone, not the whole step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mlp(784, (512, 512), 10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    params, buffers = model.init(0)

    def make(optimizer: Optimizer, compiled: bool = False) -> Callable[..., Any]:
        if not args.update:
            return make_train_step(model, optimizer)
        eager_update = optimizer.eager_update or optimizer.update
        return update_step(params, optimizer.update if compiled else eager_update)

    union_eager = make(tunable(CONFIGS["sgd"]))
    union_compiled = compile_step(make(tunable(CONFIGS["sgd"]), compiled=True))  # one graph, every config
    variants = {}
    for name in args.optimizers:
        config = CONFIGS[name]
        own_eager, own_compiled = make(config.build()), make(config.build(), compiled=True)
        own_state, union_state = config.build().init(params), tunable(config).init(params)
        steps = {
            "eager": (own_eager, union_eager),
            "compiled": (compile_step(own_compiled), union_compiled),
        }
        for mode in args.modes:
            variants[name, "own", mode] = steps[mode][0], own_state
            variants[name, "union", mode] = steps[mode][1], union_state
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in variants}
    for r in range(args.rounds + 1):  # round 0 compiles and warms up, untimed
        keys = list(variants) if r % 2 else list(reversed(variants))
        for key in keys:
            step, state = variants[key]
            p_, b_, s_ = params, buffers, state
            start = time.perf_counter()
            for _ in range(args.steps if r else 3):
                p_, b_, s_, _ = step(p_, b_, s_, x, y)
            if r:
                times[key].append((time.perf_counter() - start) / args.steps * 1e3)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s), {args.rounds} rounds x {args.steps} steps")
    print()
    print("| optimizer | own eager ms | union / own, eager | own compiled ms | union / own, compiled |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.optimizers:
        cells = []
        for mode in MODES:
            if mode not in args.modes:
                cells += ["-", "-"]
                continue
            own, union = times[name, "own", mode], times[name, "union", mode]
            ratio = statistics.median(u / o for u, o in zip(union, own))
            cells += [f"{min(own):.2f}", f"{ratio:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
