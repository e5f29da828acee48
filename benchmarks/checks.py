"""What the guards around a run cost: `python -m benchmarks.checks`.

`tune`'s model check (trial 0's model and each model value the space can draw, built and run on
two training rows before the study opens) per default space on digits, and the per-call cost of
holding signals around a compiled package's call (`errors.holding_signals`), against a direct
call, alternated in one process; and what the checks a step runs as Python on every call cost
(its params' and buffers' names, the optimizer state's keys, the outputs' shape against the
targets), against the whole eager step they guard, at digits' shape with Adam.
"""

from __future__ import annotations

import argparse
import time
import timeit


def main(argv: list[str] | None = None) -> None:
    """Print the model check's milliseconds per study and the signal hold's microseconds per call."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.checks")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    from purestep.core.errors import holding_signals
    from purestep.search.space import load_space
    from purestep.search.tune import TuneOptions, _check_model, load_data

    for model in ("mlp", "cnn"):
        options = TuneOptions(
            dataset="digits", data_dir="data", device="cpu", epochs=1, n_trials=1, seed=0,
            val_fraction=None, sampler="tpe", pruner="median", storage="", study="checks",
            space_json=load_space(None, model).to_json(), model=model, loss="cross_entropy",
        )
        splits = options.splits(load_data(options))
        _check_model(options, splits)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            _check_model(options, splits)
        ms = (time.perf_counter() - start) / args.repeats * 1e3
        print(f"model check, {model}'s default space: {ms:.1f} ms")

    def direct(v: int) -> int:
        return v

    held = holding_signals(direct)
    calls = 1_000_000
    for r in range(args.rounds):
        a = timeit.timeit(lambda: direct(1), number=calls) / calls * 1e6
        b = timeit.timeit(lambda: held(1), number=calls) / calls * 1e6
        print(f"round {r}: direct {a:.3f} us, signals held {b:.3f} us, +{b - a:.3f} us a call")
    step_checks(args.rounds)


def step_checks(rounds: int) -> None:
    """Print, per round, each per-call check's microseconds and the eager step's, alternated."""
    import torch

    from purestep import adam, make_train_step, mlp
    from purestep.core.allocator import keep_freed_memory
    from purestep.core.losses import check_output_shape
    from purestep.core.optim import check_state

    keep_freed_memory()  # as `train` and `tune` run their steps
    torch.set_num_threads(2)
    model, opt = mlp(64), adam(1e-3)
    params, buffers = model.init(0)
    state = opt.init(params)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    out = torch.randn(64, 10)
    step = make_train_step(model, opt, eager=True)
    timed = {
        "names": (lambda: model._check_names(params, buffers), 100_000),
        "state": (lambda: check_state(state, params), 100_000),
        "shape": (lambda: check_output_shape("cross_entropy", out, y), 100_000),
        "step": (lambda: step(params, buffers, state, x, y), 300),
    }
    for r in range(rounds):
        us = {k: timeit.timeit(fn, number=n) / n * 1e6 for k, (fn, n) in timed.items()}
        checks = us["names"] + us["state"] + us["shape"]
        print(
            f"round {r}: names {us['names']:.2f} us, state {us['state']:.2f} us, shape {us['shape']:.2f} us;"
            f" eager step {us['step']:.0f} us: the checks {checks / us['step']:.2%} of it"
        )


if __name__ == "__main__":
    main()
