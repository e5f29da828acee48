"""What one eager slot-step of the pool costs against one trial's own step, on digits' MLP.

    python -m benchmarks.pool_step

Adam at batch 64, 1 thread: the trial's own step alone, the union update alone (every
family's rule), and the vmapped step over K stacked slots with the trial's own update, the
union update, and one family's rule over the union state (`family_update`, what the eager
pool runs). Prints ms per slot-step and the ratio to the own step alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    """Time each variant once, alternating, and print the table."""
    from purestep import load_dataset
    from purestep.core.optim import family_update, tunable
    from purestep.core.step import batch_over_slots, make_train_step, stack
    from purestep.search.objective import TrialConfig, make_splits

    torch.set_num_threads(1)
    splits = make_splits(load_dataset("digits"), 0.2, 0)
    config = TrialConfig(optimizer="adam", lr=1e-3, batch_size=64).optimizer_config()
    model = splits.model_for(TrialConfig())
    params, buffers = model.init(0)
    x, y = splits.x_fit[:64], splits.y_fit[:64]
    own, union = config.build(), tunable(config)
    family = union._replace(update=family_update("adam"))
    alone = make_train_step(model, own)
    own_state = own.init(params)
    base = _ms(lambda: alone(params, buffers, own_state, x, y), 20)
    union_alone = make_train_step(model, union)
    union_state = union.init(params)
    print("| variant | K | ms / slot-step | vs own step alone |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| own step alone | 1 | {base:.1f} | 1.00 |")
    ms = _ms(lambda: union_alone(params, buffers, union_state, x, y), 20)
    print(f"| union step alone | 1 | {ms:.1f} | {ms / base:.2f} |")
    for k in (2, 4, 8, 16):
        for name, optimizer in (("own", own), ("union", union), ("one family (pool, eager)", family)):
            step = batch_over_slots(make_train_step(model, optimizer))
            trees = stack([params] * k), stack([buffers] * k), stack([optimizer.init(params)] * k)
            xs, ys = torch.stack([x] * k), torch.stack([y] * k)
            ms = _ms(lambda s=step, t=trees, a=xs, b=ys: s(*t, a, b), 5) / k
            print(f"| vmapped, {name} | {k} | {ms:.1f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
