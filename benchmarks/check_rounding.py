"""How far float32's gradient is from float64's at one step, on the two scales `purestep check` knows.

    python -m benchmarks.check_rounding --seed 0 --step 154 --optimizer adam

Trains the tutorial's MLP eagerly on FashionMNIST-shaped IDX files (`benchmarks.data`) up to
`--step`, then prints per parameter tensor the float32 gradient's largest error in units of
`2**-24` times the gradient's own largest entry, and times `Twin.gradient_scale` (the loss's parts
before they cancel), beside the model's mean probability on the batch's labels.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.data import has_fashion_mnist, write_fashion_mnist
from purestep.check import Twin, U
from purestep.core.data import batches, load_dataset
from purestep.core.model import mlp
from purestep.core.optim import OptimizerConfig
from purestep.core.step import make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=154)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="purestep-fashion-"))
    if not has_fashion_mnist(root):
        write_fashion_mnist(root)
    data = load_dataset("fashion-mnist", root, download=False)
    momentum = args.momentum if args.optimizer == "sgd" else 0.0
    optimizer = OptimizerConfig(args.optimizer, lr=args.lr, momentum=momentum).build()
    spec = mlp(data.in_features, (512, 512), data.classes)
    step = make_train_step(spec, optimizer)
    params, buffers = spec.init(args.seed)
    carry = (params, buffers, optimizer.init(params))
    n = (args.step + 1) * 64
    for i, (x, y) in enumerate(batches(data.x_train[:n], data.y_train[:n], 64)):
        if i == args.step:
            break
        *carry, _ = step(*carry, x, y)
    params = carry[0]
    twin = Twin(spec, optimizer)
    wide, x64 = {k: v.double() for k, v in params.items()}, x.double()
    exact, rounded = twin.grads(wide, {}, x64, y)[0], twin.grads(params, {}, x, y)[0]
    scale = twin.gradient_scale(wide, {}, x64, y)
    with torch.no_grad():
        sure = spec.apply(wide, {}, x64)[0].softmax(-1).gather(1, y[:, None]).mean().item()
    print(f"seed {args.seed}, {args.optimizer}, step {args.step}: mean probability on the labels {sure:.4f}")
    print("| tensor | error / (U max abs gradient) | error / (U scale) | scale / max abs gradient |")
    print("| --- | --- | --- | --- |")
    for k, g in exact.items():
        error = (rounded[k].double() - g).abs().max().item()
        largest, s = g.abs().max().item(), scale[k].item()
        print(f"| {k} | {error / U / largest:.1f} | {error / U / s:.2f} | {s / largest:.0f} |")


if __name__ == "__main__":
    main()
