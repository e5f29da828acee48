"""Trials per hour: a plain Optuna objective against `purestep tune`, sequential and `--batch K`.

    python -m benchmarks.trials --dataset digits --epochs 10 --n-trials 128
    python -m benchmarks.trials --dataset fashion-mnist --epochs 2 --n-trials 32
    python -m benchmarks.trials --dataset digits --epochs 10 --n-trials 128 --pruner median
    python -m benchmarks.trials --drop-or-ride TRIALS EPOCHS THREADS   # e.g. 4 3 1

One process per variant, all on the same data, purestep's default search space (optimizer,
learning rate, momentum, nesterov, centered, weight decay, batch size, schedule), the same
seeded random sampler and the same pruner. The plain objective is written the way Optuna's
own PyTorch example is: an `nn.Module`, a `DataLoader`, `torch.optim`, one trial at a time.
purestep runs sequential (`--batch 1`) and with `--batch K` (`auto`: tune's own pick), each in one
process (`--workers 1`). `--defaults` adds both as a user runs them, on every core: purestep with no
flags (its own pick of eager or compiled, K and threads) and the plain objective at torch's
default thread count.
FashionMNIST-shaped data is generated (60000 x 28 x 28 IDX files) when the real files are absent.
Prints a Markdown table of wall seconds, trials per hour and ratios, the share of the pool's
slot-steps spent on live trials, the epochs the study's trials trained (with a pruner, the work
each variant did), and the study's FLOP floor: its total FLOPs at this machine's measured matmul
throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plain_optuna(dataset: str, data_dir: str, epochs: int, n_trials: int, pruner: str, trained: str) -> None:
    """The objective of Optuna's PyTorch example, on the tutorial's model and the default space;
    the epochs its trials trained (`epochs_trained`) into the file `trained`."""
    import optuna
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from purestep.core.data import load_dataset, split
    from purestep.core.model import NeuralNetwork
    from purestep.search.study import make_pruner

    data = load_dataset(dataset, data_dir, download=False)
    x_fit, y_fit, x_val, y_val = split(data.x_train, data.y_train, 0.2, 0)
    valid_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=4096)

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop"])
        low, high = (1e-4, 1.0) if name == "sgd" else (1e-5, 1e-1)
        lr = trial.suggest_float(f"{name}_lr", low, high, log=True)
        decay = trial.suggest_categorical("weight_decay_zero", [False, True])
        weight_decay = 0.0 if decay else trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        if name == "sgd":
            momentum = trial.suggest_float("momentum", 0.0, 0.99)
            nesterov = momentum > 0 and trial.suggest_categorical("nesterov", [False, True])
            kind, kwargs = torch.optim.SGD, {"momentum": momentum, "nesterov": nesterov}
        elif name == "adam":
            kind, kwargs = torch.optim.Adam, {}
        else:
            kind, kwargs = (
                torch.optim.RMSprop,
                {"centered": trial.suggest_categorical("centered", [False, True])},
            )
        batch_size = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
        cosine = trial.suggest_categorical("schedule", ["constant", "cosine"]) == "cosine"
        train_loader = DataLoader(TensorDataset(x_fit, y_fit), batch_size=batch_size, shuffle=False)
        torch.manual_seed(0)
        model = NeuralNetwork(data.in_features)
        optimizer = kind(model.parameters(), lr=lr, weight_decay=weight_decay, **kwargs)
        loss_fn = nn.CrossEntropyLoss()
        accuracy = 0.0
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2 if cosine else lr
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
            trial.report(accuracy, epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=make_pruner(pruner, epochs),
    )
    study.optimize(objective, n_trials=n_trials)
    Path(trained).write_text(str(epochs_trained(study)))


def epochs_trained(study) -> int:
    """The epochs a study's trials trained: each reports once an epoch, so a pruned trial counts
    the epochs it ran. With a pruner, variants differ in this work as well as in speed."""
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def run_cli(usage_file: str, args: list[str]) -> None:
    """`purestep` with `args`; then the pool's slot-steps (core/pool.py `USAGE`) into `usage_file`."""
    from purestep.cli import app
    from purestep.core import pool

    try:
        app(args, standalone_mode=False)
    finally:
        Path(usage_file).write_text(json.dumps(dict(pool.USAGE)))


def flop_floor(dataset: str, data_dir: str, epochs: int, n_trials: int, threads: int) -> tuple[float, float]:
    """The study's FLOPs without pruning (every trial trains every epoch on the fit split and is
    evaluated on the validation split; 2 FLOPs a multiply-add forward, 4 backward) and the
    seconds they take at this machine's best fp32 matmul throughput (`benchmarks/floor.py`)."""
    import torch

    from benchmarks.floor import record_matmuls, time_matmuls
    from purestep.core.data import load_dataset
    from purestep.core.model import mlp
    from purestep.core.optim import sgd
    from purestep.core.step import make_train_step

    torch.set_num_threads(threads)
    data = load_dataset(dataset, data_dir, download=False)
    n_val = round(len(data.y_train) * 0.2)
    n_fit = len(data.y_train) - n_val
    model = mlp(data.in_features)
    params, buffers = model.init(0)
    optimizer = sgd(0.01)
    x, y = data.x_train[:64].reshape(64, -1), data.y_train[:64]
    matmuls = record_matmuls(make_train_step(model, optimizer), params, buffers, optimizer.init(params), x, y)
    times = time_matmuls(matmuls)
    step_flops = sum(t.matmul.flops for t in times)
    per_second = step_flops / sum(t.best_s for t in times)
    forward_per_row = step_flops / 64 / 3
    flops = n_trials * epochs * (n_fit * 3 * forward_per_row + n_val * forward_per_row)
    return flops, flops / per_second


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
    parser.add_argument("--n-trials", type=int, default=128)
    parser.add_argument("--batches", default="4,8,16,32", help="K for --batch K, or auto: tune's own pick")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pruner", default="none", choices=["none", "median"])
    parser.add_argument(
        "--impl", default=None, choices=["eager", "compiled"], help="default: tune's own choice"
    )
    parser.add_argument("--data-dir", default=None, help="real FashionMNIST here, else generated")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="also run both as a user would, on every core: purestep with no flags, the plain "
        "objective with torch's default threads",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = args.data_dir or str(tmp_path / "data")
        if args.dataset == "fashion-mnist" and args.data_dir is None:
            from purestep.core.data import write_fake_mnist

            write_fake_mnist(data_dir, "fashion-mnist", 60000, 10000)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PURESTEP_OFFLINE": "1"}
        defaults_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
        common = ["tune", "--dataset", args.dataset, "--data-dir", data_dir, "--epochs", str(args.epochs)]
        common += ["--n-trials", str(args.n_trials), "--sampler", "random", "--pruner", args.pruner]
        common += ["--no-final"]
        one_process = ["--workers", "1", "--threads", str(args.threads)]
        one_process += ["--impl", args.impl] if args.impl else []

        rows: list[tuple[str, float, str, int]] = []
        trained = tmp_path / "plain-epochs"
        plain = [sys.executable, "-m", "benchmarks.trials", "--plain", args.dataset, data_dir]
        plain += [str(args.epochs), str(args.n_trials), args.pruner, str(trained)]
        seconds = _timed(plain, env)
        label = "plain Optuna objective (nn.Module + DataLoader)"
        rows.append((label, seconds, "", int(trained.read_text())))
        variants = [(b, [*one_process, "--batch", b], env) for b in ["1", *args.batches.split(",")]]
        variants += [("defaults", [], defaults_env)] if args.defaults else []
        for name, flags, run_env in variants:
            run = tmp_path / f"run{name}"
            run.mkdir()
            usage = run / "usage.json"
            cmd = [sys.executable, "-m", "benchmarks.trials", "--cli", str(usage), *common, *flags]
            cmd += ["--storage", f"sqlite:///{run / 's.db'}", "--out", str(run)]
            seconds = _timed(cmd, run_env)
            best = json.loads((run / "best.json").read_text())
            k, threads = best["batch"]["value"], best["threads"]["value"]
            names = {"1": "purestep sequential", "defaults": "purestep, no flags"}
            label = names.get(name, f"purestep --batch {name}")
            if name in ("auto", "defaults"):
                label += f" (picked: {best['impl']['value']}, --batch {k}, --threads {threads})"
            counts = json.loads(usage.read_text())
            live = f"{counts['slot_steps'] / (counts['steps'] * k):.1%}" if counts.get("steps") else ""
            import optuna

            study = optuna.load_study(study_name=best["study"], storage=f"sqlite:///{run / 's.db'}")
            rows.append((label, seconds, live, epochs_trained(study)))
        if args.defaults:
            label = "plain Optuna objective, torch's default threads"
            seconds = _timed(plain, defaults_env)
            rows.append((label, seconds, "", int(trained.read_text())))
        flops, floor = flop_floor(args.dataset, data_dir, args.epochs, args.n_trials, args.threads)

    plain_s, sequential = rows[0][1], rows[1][1]
    print(
        f"{args.dataset}, {args.epochs} epochs a trial, {args.n_trials} trials, pruner {args.pruner}, ",
        end="",
    )
    print(f"{args.threads} thread(s), impl {args.impl or 'auto'}\n")
    print(
        f"FLOP floor: {flops / 1e12:.2f} TFLOP without pruning, {floor:.1f} s at the measured matmul rate\n"
    )
    print(
        "| variant | trials / hour | vs plain | vs sequential | floor / wall | live slot-steps "
        "| epochs trained |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, seconds, live, trained_epochs in rows:
        per_hour = args.n_trials * 3600 / seconds
        print(
            f"| {label} | {per_hour:.0f} | {plain_s / seconds:.2f}x | {sequential / seconds:.2f}x "
            f"| {floor / seconds:.2f} | {live} | {trained_epochs} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drop-or-ride":
        drop_or_ride(*(int(a) for a in sys.argv[2:5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--plain":
        _, _, name, directory, n_epochs, trials_, pruner_, trained_ = sys.argv
        plain_optuna(name, directory, int(n_epochs), int(trials_), pruner_, trained_)
    elif len(sys.argv) > 1 and sys.argv[1] == "--cli":
        run_cli(sys.argv[2], sys.argv[3:])
    else:
        main()
