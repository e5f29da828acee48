"""The equivalence pairs of `purestep check`: each runs two implementations on one init
and one batch order and measures how far apart they end.

Bounds (DESIGN "Equivalence"): functional eager vs the tutorial loop is bitwise for
SGD and within 1e-6 relative for Adam; a safetensors round trip is bitwise. Compiled vs
eager and batched vs alone: 1e-5 relative, or twice float32's own rounding on the same
steps when that is larger (`float32_bound`). Over a whole FashionMNIST-shaped epoch the
eager float32 run alone ends 7e-5 (lr 1e-3) to 2e-3 (lr 4e-3) from the same run in
float64, so no reordering of its sums, which is all compilation and `vmap` change, can
promise 1e-5 there; over the digits epoch the floor is far below 1e-5 and 1e-5 stands.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from purestep.core.data import Dataset
from purestep.core.interop import load, save
from purestep.core.loop import Callbacks, evaluate, steps_for, train_epoch
from purestep.core.model import Model, Params, mlp
from purestep.core.optim import OptimizerConfig
from purestep.core.reference import (
    loader,
    reference_model,
    test_loop,
    test_report,
    torch_optimizer,
    train_line,
    train_loop,
)
from purestep.core.step import batch_over_trials, make_train_step, stack, unstack


@dataclass(frozen=True)
class Row:
    """One pair: the largest differences seen and whether they are within the bound.

    `error` is what the bound applies to: `max_abs_param_diff` itself, or, for a
    relative bound, that difference over the largest magnitude among the reference
    params (per tensor, the worst tensor counts).
    """

    pair: str
    steps: int
    max_abs_param_diff: float
    max_abs_loss_diff: float
    error: float
    bound: float
    relative: bool

    @property
    def passed(self) -> bool:
        """Within the bound (and no NaN anywhere)."""
        return self.error <= self.bound and self.max_abs_loss_diff <= max(self.bound, 1e-5)

    def bound_text(self) -> str:
        """`0`, `1e-05 rel` or `0.000254 rel`."""
        return f"{self.bound:.3g}" + (" rel" if self.relative else "")


def max_abs_diff(a: Params, b: Params) -> float:
    """Largest absolute difference over every leaf (NaN if any leaf has one)."""
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b)


def max_rel_diff(a: Params, b: Params) -> float:
    """Per leaf, the largest absolute difference over the largest magnitude in `b`; the worst leaf."""
    return max(
        ((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-30)).item()
        for k in b
    )


def _row(pair: str, steps: int, a: Params, b: Params, loss_diff: float, bound: float, relative: bool) -> Row:
    diff = max_abs_diff(a, b)
    return Row(pair, steps, diff, loss_diff, max_rel_diff(a, b) if relative else diff, bound, relative)


def _module_params(module: nn.Module) -> Params:
    return {k: v.detach() for k, v in module.named_parameters()}


def reference_vs_eager(
    spec: Model,
    config: OptimizerConfig,
    seed: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    batch_size: int,
) -> tuple[Row, list[str], list[str]]:
    """The tutorial's loop against the eager functional step on the same batches.

    Returns the row and the lines each side printed, which must also be identical.
    """
    ref_lines: list[str] = []
    model = reference_model(spec, seed, train[0].device)
    loss_fn = nn.CrossEntropyLoss()
    train_loop(
        loader(*train, batch_size),
        model,
        loss_fn,
        torch_optimizer(config, model.parameters()),
        ref_lines.append,
    )
    _, ref_loss = test_loop(loader(*test, batch_size), model, loss_fn, ref_lines.append)

    eager_lines: list[str] = []
    optimizer = config.build()
    train_step, eval_step = steps_for(spec, optimizer, compiled=False)
    params, buffers = spec.init(seed, train[0].device)
    spec.seed_like_module(seed)
    log = Callbacks(on_log=lambda b, loss, cur, size: eager_lines.append(train_line(loss, cur, size)))
    params, buffers, _, losses = train_epoch(
        train_step, params, buffers, optimizer.init(params), *train, batch_size, callbacks=log
    )
    metrics = evaluate(eval_step, params, buffers, *test, batch_size)
    eager_lines.append(test_report(metrics.accuracy, metrics.loss))

    relative = config.name != "sgd"
    bound = 1e-6 if relative else 0.0
    label = f"eager vs reference ({_describe(config)})"
    steps = len(losses)
    row = _row(label, steps, params, _module_params(model), abs(metrics.loss - ref_loss), bound, relative)
    return row, ref_lines, eager_lines


REORDER_BOUND = 1e-5
"""Relative bound of compiled vs eager and batched vs alone, unless float32's floor is higher."""


def float32_bound(floor: float, at_least: float = REORDER_BOUND) -> float:
    """`at_least`, or twice `floor` (float32's own rounding on the run) when that is larger."""
    return max(at_least, 2 * floor)


def float32_floor(
    spec: Model, config: OptimizerConfig, seed: int, train: tuple[Tensor, Tensor], batch_size: int
) -> tuple[Params, Tensor, float]:
    """The eager float32 run from `spec.init(seed)` over `train`: its params, its per-step losses,
    and how far it is from the same run in float64, which is the rounding any float32
    computation of these steps carries: the larger of its final params' `max_rel_diff` and
    its largest per-step loss difference (the two quantities a `Row` bounds)."""
    optimizer = config.build()
    step = make_train_step(spec, optimizer)
    params, buffers = spec.init(seed, train[0].device)
    exact = {k: v.double() for k, v in params.items()}
    params, _, _, losses = train_epoch(
        step, params, buffers, optimizer.init(params), *train, batch_size, log_every=0
    )
    x64 = (train[0].double(), train[1])
    exact64 = {k: v.double() if v.is_floating_point() else v for k, v in buffers.items()}
    exact, _, _, exact_losses = train_epoch(
        step, exact, exact64, optimizer.init(exact), *x64, batch_size, log_every=0
    )
    loss_floor = (losses.double() - exact_losses).abs().max().item()
    return params, losses, max(max_rel_diff(params, exact), loss_floor)


def compiled_vs_eager(
    spec: Model, config: OptimizerConfig, seed: int, train: tuple[Tensor, Tensor], batch_size: int
) -> Row:
    """The compiled step against the eager one: params and every step's loss."""
    optimizer = config.build()
    eager, eager_losses, floor = float32_floor(spec, config, seed, train, batch_size)
    train_step, _ = steps_for(spec, optimizer, compiled=True)
    params, buffers = spec.init(seed, train[0].device)
    comp, _, _, comp_losses = train_epoch(
        train_step, params, buffers, optimizer.init(params), *train, batch_size, log_every=0
    )
    loss_diff = (eager_losses.double() - comp_losses.double()).abs().max().item()
    return _row("compiled vs eager", len(eager_losses), comp, eager, loss_diff, float32_bound(floor), True)


def batched_vs_alone(
    spec: Model,
    config: OptimizerConfig,
    seed: int,
    train: tuple[Tensor, Tensor],
    batch_size: int,
    trials: int = 3,
) -> Row:
    """K trials (own seed, own learning rate) through `vmap` against each one run alone."""
    configs = [OptimizerConfig(**{**config.to_dict(), "lr": config.lr * 2.0**k}) for k in range(trials)]
    optimizers = [c.build() for c in configs]
    inits = [spec.init(seed + k, train[0].device) for k in range(trials)]
    states = [o.init(p) for o, (p, _) in zip(optimizers, inits)]
    batched = batch_over_trials(make_train_step(spec, optimizers[0]))
    params, _, _, losses = train_epoch(
        batched,
        stack([p for p, _ in inits]),
        stack([b for _, b in inits]),
        stack(states),
        *train,
        batch_size,
        log_every=0,
    )
    alone = [float32_floor(spec, c, seed + k, train, batch_size) for k, c in enumerate(configs)]
    loss_diff = (losses.double() - torch.stack([a[1] for a in alone], 1).double()).abs().max().item()
    rows = [
        _row("", len(losses), mine, theirs, loss_diff, float32_bound(floor), True)
        for mine, (theirs, _, floor) in zip(unstack(params), alone)
    ]
    worst = max(rows, key=lambda r: r.error / r.bound)
    return Row(
        f"batched ({trials} trials) vs alone",
        len(losses),
        max(r.max_abs_param_diff for r in rows),
        loss_diff,
        worst.error,
        worst.bound,
        True,
    )


def safetensors_round_trip(spec: Model, seed: int) -> Row:
    """Params and buffers through a safetensors file and back: bitwise."""
    params, buffers = spec.init(seed)
    params = params | buffers
    with tempfile.TemporaryDirectory() as tmp:
        back, _ = load(save(Path(tmp) / "params.safetensors", params, {"seed": seed}))
    return _row("safetensors round trip", 0, back, params, 0.0, 0.0, False)


def _describe(config: OptimizerConfig) -> str:
    if config.name == "sgd":
        extra = [f"momentum {config.momentum:g}"] if config.momentum else []
        extra += ["nesterov"] if config.nesterov else []
        extra += [f"wd {config.weight_decay:g}"] if config.weight_decay else []
        return ", ".join(["sgd", *extra])
    return config.name + (f", wd {config.weight_decay:g}" if config.weight_decay else "")


def run_checks(
    data: Dataset,
    config: OptimizerConfig,
    *,
    seed: int = 0,
    batch_size: int = 64,
    steps: int | None = None,
    hidden: tuple[int, ...] = (512, 512),
    extra: Callable[[Model, tuple[Tensor, Tensor], int], list[Row]] | None = None,
) -> tuple[list[Row], bool]:
    """Every pair on the first `steps` batches of the training set (`None`: a whole epoch).

    `config` sets the SGD row; Adam runs with the same learning rate and weight decay.
    Returns the rows and whether the printed tutorial lines of reference and eager agree.
    """
    spec = mlp(data.in_features, hidden, data.classes)
    n = len(data.y_train) if steps is None else min(len(data.y_train), steps * batch_size)
    train = data.x_train[:n], data.y_train[:n]
    test = data.x_test, data.y_test
    sgd_config = OptimizerConfig(**{**config.to_dict(), "name": "sgd"})
    adam_config = OptimizerConfig("adam", lr=config.lr, weight_decay=config.weight_decay)
    rows, same_lines = [], True
    for c in (sgd_config, adam_config):
        row, ref_lines, eager_lines = reference_vs_eager(spec, c, seed, train, test, batch_size)
        rows.append(row)
        same_lines &= ref_lines == eager_lines
    rows.append(compiled_vs_eager(spec, sgd_config, seed, train, batch_size))
    rows.append(batched_vs_alone(spec, sgd_config, seed, train, batch_size))
    rows.append(safetensors_round_trip(spec, seed))
    if extra is not None:
        rows.extend(extra(spec, train, seed))
    return rows, same_lines
