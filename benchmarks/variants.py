"""Each way of training the tutorial's MLP for one epoch, prepared once and then timed.

Every function builds a `Variant`: its set-up (compilation included) is done, and
`once()` trains one timed pass and returns seconds per epoch (a whole epoch is
60000 / 64 -> 938 steps on FashionMNIST). The harness calls `once()` of every variant
in turn, for several rounds, and keeps each one's best: a burst of load on a shared
machine then hits all variants alike instead of spoiling one. The DataLoader variants
time a fixed number of steps and scale to the epoch's step count (their per-step cost
does not change along an epoch); the others time whole epochs, each from the same
initial params.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from purestep.core.data import batches, num_batches
from purestep.core.loop import evaluate, steps_for, train_epoch
from purestep.core.model import Model, Params
from purestep.core.optim import sgd
from purestep.core.reference import train_loop
from purestep.core.step import batch_over_trials, compile_step, make_train_step, short_batch, stack


@dataclass
class Variant:
    """A prepared way of training: `once()` times one pass and returns seconds per epoch."""

    name: str
    how: str
    once: Callable[[], float]
    info: dict[str, Any] = field(default_factory=dict)


def _timed(run: Callable[[], Any], scale: float = 1.0) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * scale

    return once


def _steps(steps: int, epoch_steps: int) -> tuple[int, float, str]:
    steps = min(steps, epoch_steps)
    if steps == epoch_steps:
        return steps, 1.0, "whole epoch"
    return steps, epoch_steps / steps, f"{steps} steps, x {epoch_steps}/{steps}"


def tutorial(root: Path, spec: Model, lr: float, batch_size: int, steps: int, seed: int) -> Variant:
    """The tutorial as written: torchvision `FashionMNIST` + `ToTensor()` + `DataLoader`, `nn.Module`."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    training_data = datasets.FashionMNIST(root=str(root), train=True, download=False, transform=ToTensor())
    steps, scale, how = _steps(steps, num_batches(len(training_data), batch_size))
    subset = Subset(training_data, range(min(steps * batch_size, len(training_data))))
    train_dataloader = DataLoader(subset, batch_size=batch_size)
    torch.manual_seed(seed)
    model = spec.module()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def run() -> None:
        train_loop(train_dataloader, model, loss_fn, optimizer, log=lambda line: None)

    return Variant("tutorial loop as written (FashionMNIST + ToTensor + DataLoader)", how, _timed(run, scale))


def reference_loader(
    spec: Model, x: Tensor, y: Tensor, lr: float, batch_size: int, steps: int, seed: int
) -> Variant:
    """The tutorial's `train_loop` on preloaded tensors through `DataLoader(TensorDataset)`."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    steps, scale, how = _steps(steps, num_batches(len(y), batch_size))
    subset = Subset(TensorDataset(x, y), range(min(steps * batch_size, len(y))))
    torch.manual_seed(seed)
    model = spec.module()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def run() -> None:
        train_loop(DataLoader(subset, batch_size=batch_size), model, loss_fn, optimizer, lambda line: None)

    name = "tutorial train_loop, preloaded tensors (DataLoader over TensorDataset)"
    return Variant(name, how, _timed(run, scale))


def reference_slices(spec: Model, x: Tensor, y: Tensor, lr: float, batch_size: int, seed: int) -> Variant:
    """`nn.Module` + `torch.optim.SGD` on batches that are tensor slices: the eager baseline."""
    torch.manual_seed(seed)
    model = spec.module()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def run() -> None:
        for i, (xb, yb) in enumerate(batches(x, y, batch_size)):
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i % 100 == 0:
                loss.item()

    return Variant("nn.Module + torch.optim, batches as tensor slices", "whole epoch", _timed(run))


Step = Callable[..., Any]


def _warm_up(step: Step, params: Params, state: Params, x: Tensor, y: Tensor, batch: int) -> float:
    """Compile the full-batch graph and run the tail batch, if any, as `train_epoch` runs it."""
    tail = len(y) % batch
    start = time.perf_counter()
    for n in (batch, tail) if tail else (batch,):
        with short_batch(n, batch):
            step(params, {}, state, x[:n], y[:n])[3].sum().item()
    return time.perf_counter() - start


def _epoch_variant(
    name: str, step: Step, params: Params, state: Params, x: Tensor, y: Tensor, batch: int, **kw: Any
) -> Variant:
    """A purestep step through `train_epoch`, every timed epoch from the same params and state."""
    variant = Variant(name, "whole epoch", lambda: 0.0)

    def once() -> float:
        start = time.perf_counter()
        out = train_epoch(step, params, {}, state, x, y, batch, **kw)
        out[3].sum().item()
        seconds = time.perf_counter() - start
        variant.info["params"] = out[0]
        return seconds

    variant.once = once
    return variant


def functional(
    spec: Model, x: Tensor, y: Tensor, lr: float, batch_size: int, seed: int, compiled: bool
) -> Variant:
    """purestep's step as `fit` runs it (`steps_for`, `train_epoch`), eager or compiled."""
    optimizer = sgd(lr)
    train_step, _ = steps_for(spec, optimizer, compiled)
    params, _ = spec.init(seed)
    state = optimizer.init(params)
    name = "purestep compiled step" if compiled else "purestep eager step"
    variant = _epoch_variant(name, train_step, params, state, x, y, batch_size)
    if compiled:
        variant.info["compile_s"] = _warm_up(train_step, params, state, x, y, batch_size)
    return variant


def proposed(x: Tensor, y: Tensor, lr: float, batch_size: int, seed: int) -> Variant:
    """The compiled step with `apply` as an `F.linear` chain instead of `functional_call`
    (`benchmarks.levers`), a change measured but not shipped; bitwise-neutral in eager."""
    from benchmarks.levers import LinearChainMLP

    spec, optimizer = LinearChainMLP(), sgd(lr)
    step = compile_step(make_train_step(spec, optimizer))
    params, _ = spec.init(seed)
    state = optimizer.init(params)
    name = "purestep compiled step + apply as an F.linear chain (not shipped)"
    variant = _epoch_variant(name, step, params, state, x, y, batch_size)
    variant.info["compile_s"] = _warm_up(step, params, state, x, y, batch_size)
    return variant


def batched(spec: Model, x: Tensor, y: Tensor, lrs: list[float], batch_size: int, seed: int) -> Variant:
    """K trials (own init and learning rate each) in one vmapped, compiled step; per trial."""
    k = len(lrs)
    optimizer = sgd(lrs[0])
    step = compile_step(batch_over_trials(make_train_step(spec, optimizer)))
    inits = [spec.init(seed + i)[0] for i in range(k)]
    params = stack(inits)
    state = stack([sgd(lr).init(p) for p, lr in zip(inits, lrs)])
    compile_s = _warm_up(step, params, state, x, y, batch_size)
    whole = _epoch_variant("", step, params, state, x, y, batch_size, log_every=0)
    name = f"purestep compiled, {k} trials batched (vmap), per trial"
    how = f"whole epoch of {k} trials / {k}"
    return Variant(name, how, lambda: whole.once() / k, {"compile_s": compile_s})


def bf16_step(spec: Model, lr: float) -> Callable[..., Any]:
    """The compiled train step with its matmuls in bfloat16 (`torch.autocast`), params in fp32."""
    return compile_step(make_train_step(spec, sgd(lr), precision="bf16"))


def bf16(spec: Model, x: Tensor, y: Tensor, lr: float, batch_size: int, seed: int) -> Variant:
    """The bf16 autocast step through `train_epoch`."""
    optimizer = sgd(lr)
    step = bf16_step(spec, lr)
    params, _ = spec.init(seed)
    state = optimizer.init(params)
    variant = _epoch_variant("purestep compiled step, bf16 autocast", step, params, state, x, y, batch_size)
    variant.info["compile_s"] = _warm_up(step, params, state, x, y, batch_size)
    variant.info["step"] = step
    return variant


def accuracy_after(
    step: Callable[..., Any],
    spec: Model,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    lr: float,
    batch_size: int,
    seed: int,
    epochs: int,
) -> tuple[float, float]:
    """Test `(accuracy, loss)` after `epochs` epochs of `step` from `spec.init(seed)` (fp32 eval)."""
    optimizer = sgd(lr)
    params, buffers = spec.init(seed)
    state = optimizer.init(params)
    for _ in range(epochs):
        params, buffers, state, _ = train_epoch(step, params, buffers, state, *train, batch_size, log_every=0)
    _, eval_step = steps_for(spec, optimizer, compiled=True)
    metrics = evaluate(eval_step, params, buffers, *test, batch_size)
    return metrics.accuracy, metrics.loss
