"""Trials per hour: a plain Optuna objective against `purestep tune`, sequential and `--batch K`.

    python -m benchmarks.trials --dataset digits --epochs 10 --n-trials 32
    python -m benchmarks.trials --dataset fashion-mnist --epochs 2 --n-trials 16
    python -m benchmarks.trials --drop-or-ride TRIALS EPOCHS THREADS   # e.g. 4 3 1

One process per variant, all on the same data and the same search space (SGD at batch 64;
learning rate, momentum, nesterov and weight decay drawn by the seeded random sampler), no
pruning, so every variant trains the same amount. The plain objective is written the way
Optuna's own PyTorch example is: an `nn.Module`, a `DataLoader`, `torch.optim`, one trial at
a time. FashionMNIST-shaped data is generated (60000 x 28 x 28 IDX files) when the real
files are absent. Prints a Markdown table of wall seconds, trials per hour and the ratio
to purestep sequential.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = '[optimizer]\nvalue = "sgd"\n[batch_size]\nvalue = 64\n[schedule]\nvalue = "constant"\n'


def plain_optuna(dataset: str, data_dir: str, epochs: int, n_trials: int) -> None:
    """The objective of Optuna's PyTorch example, on the tutorial's model and this space."""
    import optuna
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from purestep.core.data import load_dataset, split
    from purestep.core.model import NeuralNetwork

    data = load_dataset(dataset, data_dir, download=False)
    x_fit, y_fit, x_val, y_val = split(data.x_train, data.y_train, 0.2, 0)
    train_loader = DataLoader(TensorDataset(x_fit, y_fit), batch_size=64, shuffle=False)
    valid_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=4096)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("sgd_lr", 1e-4, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        nesterov = momentum > 0 and trial.suggest_categorical("nesterov", [False, True])
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        torch.manual_seed(0)
        model = NeuralNetwork(data.in_features)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        accuracy = 0.0
        for epoch in range(epochs):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in valid_loader:
                    correct += (model(x).argmax(1) == y).sum().item()
            accuracy = correct / len(y_val)
            trial.report(accuracy, epoch)
        return accuracy

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)


def drop_or_ride(trials: int, epochs: int, threads: int) -> None:
    """Stopped trials leaving the stack (a compile for the smaller stack) against riding along.

    FashionMNIST-shaped data, `trials` SGD trials in one compiled stack (compiled first, on a
    fresh compile cache); half of them are stopped after the first epoch. Ride along, then
    drop (which compiles the smaller stack, cold), then drop again with that stack's graphs
    compiled (what the default does: it drops only then).
    """
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="purestep-drop-")
    import torch

    from benchmarks.data import synthetic
    from purestep.core.loop import fit_trials
    from purestep.core.model import mlp
    from purestep.core.optim import sgd

    torch.set_num_threads(threads)
    images, labels = synthetic(60000, 0)
    x, y = images.float().div(255).unsqueeze(1), labels
    model = mlp()
    optimizers = [sgd(0.01 * (k + 1), momentum=0.9) for k in range(trials)]
    inits = [model.init(k) for k in range(trials)]

    def run(n: int, epochs: int, drop: bool | None, stop_half: bool) -> float:
        states = [o.init(p) for o, (p, _) in zip(optimizers[:n], inits[:n])]
        start = time.perf_counter()
        fit_trials(
            model,
            optimizers[0],
            [p for p, _ in inits[:n]],
            [b for _, b in inits[:n]],
            states,
            x,
            y,
            epochs=epochs,
            eval_data=(x[:10000], y[:10000]),
            keep=lambda k, row: not (stop_half and k >= n // 2),
            drop=drop,
        )
        return time.perf_counter() - start

    print(f"{trials} trials, {epochs} epochs, half stopped after epoch 1, {threads} thread(s)")
    print(f"compile the {trials}-trial stack and one epoch: {run(trials, 1, None, False):.1f} s")
    print(f"ride along: {run(trials, epochs, False, True):.1f} s")
    print(f"drop (compiles the {trials // 2}-trial stack, cold): {run(trials, epochs, True, True):.1f} s")
    print(f"drop, {trials // 2}-trial stack compiled: {run(trials, epochs, True, True):.1f} s")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Run every variant once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=32)
    parser.add_argument("--batches", default="4,8,16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--impl", default="compiled", choices=["eager", "compiled"])
    parser.add_argument("--data-dir", default=None, help="real FashionMNIST here, else generated")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = args.data_dir or str(tmp_path / "data")
        if args.dataset == "fashion-mnist" and args.data_dir is None:
            from purestep.core.data import write_fake_mnist

            write_fake_mnist(data_dir, "fashion-mnist", 60000, 10000)
        space = tmp_path / "space.toml"
        space.write_text(SPACE)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PURESTEP_OFFLINE": "1"}
        common = ["--dataset", args.dataset, "--data-dir", data_dir, "--epochs", str(args.epochs)]
        common += ["--n-trials", str(args.n_trials), "--sampler", "random", "--pruner", "none", "--no-final"]
        common += ["--space", str(space), "--impl", args.impl, "--threads", str(args.threads)]

        rows: list[tuple[str, float]] = []
        plain = [sys.executable, "-m", "benchmarks.trials", "--plain", args.dataset, data_dir]
        plain += [str(args.epochs), str(args.n_trials)]
        rows.append(("plain Optuna objective (nn.Module + DataLoader)", _timed(plain, env)))
        for k in [1, *(int(b) for b in args.batches.split(","))]:
            run = tmp_path / f"run{k}"
            run.mkdir()
            cmd = [sys.executable, "-m", "purestep", "tune", *common, "--batch", str(k)]
            cmd += ["--storage", f"sqlite:///{run / 's.db'}", "--out", str(run)]
            label = "purestep sequential" if k == 1 else f"purestep --batch {k}"
            label += f" ({args.impl})"
            rows.append((label, _timed(cmd, env)))

    sequential = rows[1][1]
    print(f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, {args.threads} thread(s)\n")
    print("| variant | wall s | trials / hour | vs sequential |")
    print("| --- | ---: | ---: | ---: |")
    for label, seconds in rows:
        per_hour = args.n_trials * 3600 / seconds
        print(f"| {label} | {seconds:.1f} | {per_hour:.0f} | {sequential / seconds:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drop-or-ride":
        drop_or_ride(*(int(a) for a in sys.argv[2:5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--plain":
        _, _, name, directory, n_epochs, trials_ = sys.argv
        plain_optuna(name, directory, int(n_epochs), int(trials_))
    else:
        main()
