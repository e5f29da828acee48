"""What one slot-step of an eager pool costs against one trial's own step, on digits' MLP.

    python -m benchmarks.pool_step [--threads 1] [--rounds 3]

Adam at batch 64. First table: per slot-step, the trial's own eager step alone (what `fit`, a
sequential study and a CPU pool's slots run), the transformable own step, and the vmapped step
over K stacked slots with the trial's own update and with one family's rule over the union
state (`family_update`, what a stacked eager pool runs). Second table: the MLP's three products
at batch 64 for K trials, as K `F.linear` calls, one `baddbmm`, and a vmapped `F.linear`: ms per
trial. Each figure is the best of `--rounds` rounds, the variants alternated within a round.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

STACKS = (2, 4, 8, 16)


def _ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def _best(variants: dict[str, tuple[Callable[[], Any], int, int]], rounds: int) -> dict[str, float]:
    """ms per trial of each `name: (fn, repeats, trials)`, best of `rounds` alternated rounds."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, (fn, repeats, trials) in variants.items():
            best[name] = min(best[name], _ms(fn, repeats) / trials)
    return best


def _steps(rounds: int) -> None:
    from purestep import load_dataset
    from purestep.core.optim import family_update, tunable
    from purestep.core.step import batch_over_slots, make_train_step, stack
    from purestep.search.objective import TrialConfig, make_splits

    splits = make_splits(load_dataset("digits"), 0.2, 0)
    config = TrialConfig(optimizer="adam", lr=1e-3, batch_size=64).optimizer_config()
    model = splits.model_for(TrialConfig())
    params, buffers = model.init(0)
    x, y = splits.x_fit[:64], splits.y_fit[:64]
    own, union = config.build(), tunable(config)
    family = union._replace(update=family_update("adam"))
    own_state = own.init(params)
    eager, transformable = make_train_step(model, own, eager=True), make_train_step(model, own)
    variants = {
        "own step alone, eager (1)": (lambda: eager(params, buffers, own_state, x, y), 40, 1),
        "own step alone, transformable (1)": (lambda: transformable(params, buffers, own_state, x, y), 40, 1),
    }
    for k in STACKS:
        for name, optimizer in (("own update", own), ("one family's rule over the union state", family)):
            step = batch_over_slots(make_train_step(model, optimizer))
            trees = stack([params] * k), stack([buffers] * k), stack([optimizer.init(params)] * k)
            xs, ys = torch.stack([x] * k), torch.stack([y] * k)
            call = lambda s=step, t=trees, a=xs, b=ys: s(*t, a, b)  # noqa: E731
            variants[f"vmapped, {name} ({k})"] = (call, max(40 // k, 4), k)
    best = _best(variants, rounds)
    base = best["own step alone, eager (1)"]
    print("| variant (K) | ms / slot-step | vs own eager step alone |")
    print("| --- | ---: | ---: |")
    for name, ms in best.items():
        print(f"| {name} | {ms:.3f} | {ms / base:.2f} |")


def _products(rounds: int) -> None:
    linear = torch.nn.functional.linear
    batched = torch.vmap(linear)
    print("\n| K | products (64 x in -> out) | K linear calls, ms / trial | one baddbmm | vmapped linear |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for k in (1, *STACKS):
        for i, o in ((64, 512), (512, 512), (512, 10)):
            x, w, b = torch.randn(k, 64, i), torch.randn(k, o, i), torch.randn(k, o)
            variants = {
                "loop": (lambda x=x, w=w, b=b: [linear(x[t], w[t], b[t]) for t in range(len(x))], 50, k),
                "bmm": (lambda x=x, w=w, b=b: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), 50, k),
                "vmap": (lambda x=x, w=w, b=b: batched(x, w, b), 50, k),
            }
            best = _best(variants, rounds)
            print(f"| {k} | {i} -> {o} | {best['loop']:.3f} | {best['bmm']:.3f} | {best['vmap']:.3f} |")


def main() -> None:
    """Time both tables and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _steps(args.rounds)
    _products(args.rounds)


if __name__ == "__main__":
    main()
