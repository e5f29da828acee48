"""What the guards around a run cost: `python -m benchmarks.checks`.

`tune`'s model check (trial 0's model and each model value the space can draw, built and run on
two training rows before the study opens) per default space on digits, and the per-call cost of
holding signals around a compiled package's call (`errors.holding_signals`), against a direct
call, alternated in one process.
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


if __name__ == "__main__":
    main()
