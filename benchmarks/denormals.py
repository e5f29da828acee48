"""Denormals flushed or kept: `purestep tune` with no flags against `--denormals keep`, and the plain
Optuna objective as written against the same objective with denormals flushed; alternated rounds.

    python -m benchmarks.denormals --dataset fashion-mnist --epochs 2 --n-trials 8 --rounds 3 [--threads 1]
    python -m benchmarks.denormals --updates [--data-dir DIR]

Each run is a new process on a fresh SQLite study (random sampler seeded 0, no pruner,
`--no-final`); purestep uses the user's compile cache as it is (state whether it is warm). Torch's
default threads unless `--threads N` (purestep's `--threads N`, the plain objective's
`torch.set_num_threads(N)`). Prints every run and, per variant, the median over rounds of its wall
over the plain objective's in the same round.

`--updates` times one Adam update, three ways, over a state with denormals in it (the tutorial's
MLP trained one epoch at lr 0.09 on FashionMNIST-shaped data, batch 64, 1 thread; the dead
units' first moments decay by beta1 a step): `torch.optim.Adam.step`, purestep's eager update
and its compiled one, each with denormals kept and flushed, alternated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks import rounds

HERE = Path(__file__).resolve().parent.parent
PLAIN = "plain objective"


def plain(threads: int, flush: bool, argv: list[str]) -> None:
    """The plain objective of `benchmarks.trials` on `threads` torch threads (0: torch's default),
    denormals flushed on every thread or kept."""
    import torch

    from benchmarks.trials import plain_optuna
    from purestep.core.denormals import set_flushing

    if threads:
        torch.set_num_threads(threads)
    if flush and not set_flushing(True):
        raise SystemExit("this CPU or OpenMP runtime cannot flush denormals")
    name, directory, epochs, n_trials, pruner, trained = argv
    plain_optuna(name, directory, int(epochs), int(n_trials), pruner, trained)


def updates(data_dir: str | None, repeats: int = 3) -> None:
    """Print ms per Adam update over a state with denormals: torch.optim, purestep eager, compiled."""
    import time

    import torch
    import torch.nn.functional as F

    from purestep.core import denormals, loop, optim
    from purestep.core.data import load_dataset, split, write_fake_mnist
    from purestep.core.model import mlp
    from purestep.core.reference import reference_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            data_dir = tmp
            write_fake_mnist(tmp, "fashion-mnist", 60000, 10000)
        data = load_dataset("fashion-mnist", data_dir, download=False)
    x, y, _, _ = split(data.x_train, data.y_train, 0.2, 0)
    model = mlp(784)
    adam = optim.OptimizerConfig(name="adam", lr=0.09).build()
    params, buffers = model.init(0)
    trained = loop.fit(
        model, adam, params, buffers, x, y, epochs=1, compiled=False, shuffle=True, log_every=0
    )
    params, state = trained.params, trained.state
    tiny = torch.finfo(torch.float32).tiny
    count = sum(int(((v != 0) & (v.abs() < tiny)).sum()) for v in state.values())
    print(f"{count} of the optimizer state's {sum(v.numel() for v in state.values())} values are denormal")
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = F.cross_entropy(model.apply(leaves, buffers, x[:64])[0], y[:64])
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    module = reference_model(model, 0)
    module.load_state_dict(params)
    torch_adam = torch.optim.Adam(module.parameters(), lr=0.09)
    for p, name in zip(module.parameters(), params):
        p.grad = grads[name].clone()
        torch_adam.state[p] = {
            "step": state["step"].clone(),
            "exp_avg": state[f"exp_avg.{name}"].clone(),
            "exp_avg_sq": state[f"exp_avg_sq.{name}"].clone(),
        }
    originals = {p: {k: v.clone() for k, v in torch_adam.state[p].items()} for p in module.parameters()}
    weights = {p: p.detach().clone() for p in module.parameters()}

    def torch_step() -> None:  # from the same state every call
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(weights[p])
                for k, v in originals[p].items():
                    torch_adam.state[p][k].copy_(v)
        torch_adam.step()

    compiled = torch.compile(adam.update, fullgraph=True)
    variants = {
        "torch.optim.Adam.step": torch_step,
        "purestep eager update": lambda: adam.eager_update(grads, state, params),
        "purestep compiled update": lambda: compiled(grads, state, params),
    }

    def ms(fn, n: int = 100) -> float:
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1e3

    print("| round | update | kept ms | flushed ms | kept / flushed |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in range(repeats):
        for name, fn in variants.items():
            kept = ms(fn)
            with denormals.flushed():
                flushed = ms(fn)
            print(f"| {r + 1} | {name} | {kept:.3f} | {flushed:.3f} | {kept / flushed:.2f} |", flush=True)


def main() -> None:
    """Run the four variants in alternated rounds; print every run, then the median ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds.study_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    base = rounds.user_env()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        plain, tune = rounds.study_commands(args, scratch)
        study = plain[4:]  # dataset, data, epochs, trials, pruner, file
        threads = ["--threads", str(args.threads)] if args.threads else []
        here = [sys.executable, "-m", "benchmarks.denormals", "--plain", str(args.threads)]
        variants = {
            PLAIN: rounds.Variant([*here, "keep", *study], base, HERE),
            "plain objective, denormals flushed": rounds.Variant([*here, "flush", *study], base, HERE),
            "purestep, no flags (denormals flushed)": rounds.Variant(
                [*tune, *threads], base, HERE, rounds.fresh_study
            ),
            "purestep --denormals keep": rounds.Variant(
                [*tune, *threads, "--denormals", "keep"], base, HERE, rounds.fresh_study
            ),
        }
        on = args.threads or "torch's default"
        print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, threads: {on}")
        walls = rounds.alternate(variants, args.rounds, scratch / "runs")
    rounds.print_ratios(walls, PLAIN)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        plain(int(sys.argv[2]), sys.argv[3] == "flush", sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--updates":
        updates(sys.argv[sys.argv.index("--data-dir") + 1] if "--data-dir" in sys.argv else None)
    else:
        main()
