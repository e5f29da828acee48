"""The table of `purestep check --against jax` on FashionMNIST-shaped data, one row at a time.

    python -m benchmarks.check_table --seeds 0 1 5 --steps 200 --momentum 0.9

Writes synthetic FashionMNIST IDX files (class prototypes plus noise, `benchmarks.data`) unless
`--data-dir` already holds them, then runs the rows `purestep check` runs, flushing each as it
finishes: the same pairs as the command, on the tutorial's MLP.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.data import has_fashion_mnist, write_fashion_mnist
from purestep.check import batched_vs_alone, compiled_vs_eager, reference_vs_eager
from purestep.core.data import load_dataset
from purestep.core.model import mlp
from purestep.core.optim import OptimizerConfig


def run_row(name, spec, sgd, adam, seed, train, test, steps):
    """One row of the table by name."""
    from purestep.jax_interop import jax_vs_eager

    if name == "compiled":
        return compiled_vs_eager(spec, sgd, seed, train, 64)
    if name.startswith("jax"):
        return jax_vs_eager(spec, sgd if name.endswith("sgd") else adam, seed, train, steps=steps)
    if name == "batched":
        return batched_vs_alone(spec, sgd, seed, train, 64)
    return reference_vs_eager(spec, sgd if name.endswith("sgd") else adam, seed, train, test, 64)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--batched", action="store_true", help="also the batched row (3 trials)")
    args = parser.parse_args()
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="purestep-fashion-"))
    if not has_fashion_mnist(root):
        write_fashion_mnist(root)
    data = load_dataset("fashion-mnist", root, download=False)
    n = args.steps * 64
    train, test = (data.x_train[:n], data.y_train[:n]), (data.x_test, data.y_test)
    spec = mlp(data.in_features, (512, 512), data.classes)
    sgd = OptimizerConfig("sgd", lr=args.lr, momentum=args.momentum)
    adam = OptimizerConfig("adam", lr=args.lr)
    header = ["seed", "pair", "how", "error", "bound", "result", "free-running end distance", "first flip"]
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|", flush=True)
    for seed in args.seeds:
        rows = ["jax sgd", "compiled", "jax adam", "reference sgd", "reference adam"]
        for name in rows + (["batched"] if args.batched else []):
            start = time.perf_counter()
            r = run_row(name, spec, sgd, adam, seed, train, test, args.steps)
            flip = r.first_flip.text() if r.first_flip else ("none" if r.lockstep else "")
            distance = f"{r.free_distance:.2g} rel" if r.free_distance is not None else ""
            result = "pass" if r.passed else f"FAIL {r.failure}"
            print(
                f"| {seed} | {r.pair} | {'lockstep' if r.lockstep else 'free-running'} | {r.error:.3g}"
                f" | {r.bound_text()} | {result} | {distance} | {flip} |"
                f" <!-- {time.perf_counter() - start:.0f} s -->",
                flush=True,
            )


if __name__ == "__main__":
    main()
