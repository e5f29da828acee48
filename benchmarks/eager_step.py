"""The eager step against the `nn.Module` + `torch.optim` step, per optimizer, in one process.

    python -m benchmarks.eager_step --threads 1 --rounds 7
    python -m benchmarks.eager_step --threads 2 --rounds 7 --in-features 784

The tutorial's MLP (`--in-features` 64: digits' shape; 784: FashionMNIST's) at batch 64. Per
optimizer, three steps on the same batch: the module and torch.optim (zero_grad, backward, step),
`make_train_step`'s transformable step (`torch.func.grad_and_value` and `update`, what compile and
vmap take) and its eager step (`eager=True`: plain autograd and `eager_update`, what `fit` runs
uncompiled). Interleaved rounds, reversed every other round; prints the median ms per step and the
median over rounds of each step's time over the module's in the same round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from purestep.core.allocator import keep_freed_memory
from purestep.core.model import NeuralNetwork, mlp
from purestep.core.optim import OptimizerConfig
from purestep.core.reference import torch_optimizer

CONFIGS = {
    "sgd": OptimizerConfig("sgd", lr=1e-3),
    "sgd, momentum 0.9": OptimizerConfig("sgd", lr=1e-3, momentum=0.9),
    "adam": OptimizerConfig("adam", lr=1e-3),
    "rmsprop": OptimizerConfig("rmsprop", lr=1e-3),
}
KINDS = ("module + torch.optim", "transformable step", "eager step")


def _module_step(
    config: OptimizerConfig, in_features: int, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    torch.manual_seed(0)
    module = NeuralNetwork(in_features)
    optimizer = torch_optimizer(config, module.parameters())
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(module(x), y).backward()
        optimizer.step()

    return step


def _functional_step(
    config: OptimizerConfig, in_features: int, x: torch.Tensor, y: torch.Tensor, eager: bool
):
    from purestep.core.step import make_train_step

    model = mlp(in_features)
    optimizer = config.build()
    train_step = make_train_step(model, optimizer, eager=eager)
    params, buffers = model.init(0)
    carry = [params, buffers, optimizer.init(params)]

    def step() -> None:
        carry[0], carry[1], carry[2], _ = train_step(*carry, x, y)

    return step


def main(argv: list[str] | None = None) -> None:
    """Time every (optimizer, step) pair and print one table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.eager_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-features", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant and round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `tune` runs
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, args.in_features, generator=g), torch.randint(0, 10, (64,), generator=g)
    variants = {}
    for name, config in CONFIGS.items():
        variants[name, KINDS[0]] = _module_step(config, args.in_features, x, y)
        variants[name, KINDS[1]] = _functional_step(config, args.in_features, x, y, eager=False)
        variants[name, KINDS[2]] = _functional_step(config, args.in_features, x, y, eager=True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for r in range(args.rounds + 1):  # round 0 warms up, untimed
        keys = list(variants) if r % 2 else list(reversed(variants))
        for key in keys:
            start = time.perf_counter()
            for _ in range(args.steps if r else 10):
                variants[key]()
            if r:
                times[key].append((time.perf_counter() - start) / args.steps * 1e3)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), in_features {args.in_features}, batch 64, ",
        end="",
    )
    print(f"{args.rounds} rounds x {args.steps} steps\n")
    print(
        "| optimizer | "
        + " | ".join(f"{k} ms" for k in KINDS)
        + " | transformable / module | eager / module |"
    )
    print("| --- | " + " | ".join("---:" for _ in KINDS) + " | ---: | ---: |")
    for name in CONFIGS:
        ms = [f"{statistics.median(times[name, k]):.3f}" for k in KINDS]
        module = times[name, KINDS[0]]
        ratios = [statistics.median(t / m for t, m in zip(times[name, k], module)) for k in KINDS[1:]]
        print(f"| {name} | " + " | ".join(ms) + " | " + " | ".join(f"{v:.2f}" for v in ratios) + " |")


if __name__ == "__main__":
    main()
