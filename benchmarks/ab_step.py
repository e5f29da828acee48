"""The compiled train step of the tutorial's MLP as `train_epoch` runs it, for an A/B of two source
trees (before and after an API change): run it once per tree, alternating, and compare within a round.

    for r in 1 2 3 4; do for tree in OLD NEW; do PYTHONPATH=$tree python benchmarks/ab_step.py; done; done

Prints the best of three 300-step epochs, in ms per step. Works with steps that take buffers
(`init` returns `(params, buffers)`) and with the older params-only API.
"""

import time

import torch

from purestep.core.loop import steps_for, train_epoch
from purestep.core.model import mlp
from purestep.core.optim import sgd

STEPS = 300


def main() -> None:
    spec, opt = mlp(), sgd(1e-3)
    g = torch.Generator().manual_seed(0)
    n = 64 * STEPS
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    step, _ = steps_for(spec, opt, compiled=True)
    init = spec.init(0)

    def epoch() -> float:
        start = time.perf_counter()
        if isinstance(init, tuple):
            params, buffers = init
            out = train_epoch(step, params, buffers, opt.init(params), x, y, 64, log_every=0)
        else:
            out = train_epoch(step, init, opt.init(init), x, y, 64, log_every=0)
        out[-1].sum().item()
        return time.perf_counter() - start

    epoch()  # compile (warm from the cache) and settle
    print(f"{min(epoch() for _ in range(3)) / STEPS * 1e3:.4f}")


if __name__ == "__main__":
    main()
