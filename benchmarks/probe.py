"""Compile time in a fresh process: `python -m benchmarks.probe --cache-dir DIR`.

Builds the graphs a `purestep train` run builds (train and eval step for full batches;
the tail batches run as the loop runs them, eagerly) with inductor's cache in DIR, and
prints one JSON line: seconds to import torch and purestep, seconds to compile (from
`compile_step`, which loads the compiler, to the last graph ready), and per graph.
Run it twice with one fresh DIR: the first run is cold, the second warm.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()


def main(argv: list[str] | None = None) -> None:
    """Parse the shape, compile, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from purestep.core.loop import steps_for
    from purestep.core.model import mlp
    from purestep.core.optim import sgd
    from purestep.core.step import set_compile_cache, short_batch

    if args.threads:
        torch.set_num_threads(args.threads)
    set_compile_cache(args.cache_dir)
    imported = time.perf_counter()
    spec, optimizer = mlp(), sgd(1e-3)
    params, buffers = spec.init(0)
    state = optimizer.init(params)
    begin = time.perf_counter()
    train_step, eval_step = steps_for(spec, optimizer, compiled=True)
    graphs: dict[str, float] = {"compile_step (loads the compiler)": time.perf_counter() - begin}
    for name, n, train in (
        ("train full", args.batch_size, True),
        ("train tail (eager)", args.n_train % args.batch_size, True),
        ("eval full", args.batch_size, False),
        ("eval tail (eager)", args.n_test % args.batch_size, False),
    ):
        if n == 0:
            continue
        x, y = torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))
        start = time.perf_counter()
        with short_batch(n, args.batch_size):
            out = train_step(params, buffers, state, x, y) if train else eval_step(params, buffers, x, y)
        out[-1].sum().item()
        graphs[name] = time.perf_counter() - start
    done = time.perf_counter()
    figures = {"import_s": imported - START, "compile_s": done - begin, "total_s": done - START}
    print(json.dumps(figures | {"graphs": graphs}))


if __name__ == "__main__":
    main()
