"""The equivalence pairs of `purestep check`: each runs two implementations on one init
and one batch order and measures how far apart they end.

Bounds (DESIGN "Equivalence"): functional eager vs the tutorial loop is bitwise for
SGD and within 1e-6 relative for Adam; compiled vs eager and batched vs alone within
1e-5 relative; a safetensors round trip is bitwise.
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
from purestep.core.model import MLP, Params
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
    spec: MLP,
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
    params = spec.init(seed, train[0].device)
    log = Callbacks(on_log=lambda b, loss, cur, size: eager_lines.append(train_line(loss, cur, size)))
    params, _, losses = train_epoch(
        train_step, params, optimizer.init(params), *train, batch_size, callbacks=log
    )
    metrics = evaluate(eval_step, params, *test, batch_size)
    eager_lines.append(test_report(metrics.accuracy, metrics.loss))

    relative = config.name != "sgd"
    bound = 1e-6 if relative else 0.0
    label = f"eager vs reference ({_describe(config)})"
    steps = len(losses)
    row = _row(label, steps, params, _module_params(model), abs(metrics.loss - ref_loss), bound, relative)
    return row, ref_lines, eager_lines


def compiled_vs_eager(
    spec: MLP, config: OptimizerConfig, seed: int, train: tuple[Tensor, Tensor], batch_size: int
) -> Row:
    """The compiled step against the eager one: params and every step's loss."""
    optimizer = config.build()
    results = []
    for compiled in (False, True):
        train_step, _ = steps_for(spec, optimizer, compiled)
        params = spec.init(seed, train[0].device)
        results.append(
            train_epoch(train_step, params, optimizer.init(params), *train, batch_size, log_every=0)
        )
    (eager, _, eager_losses), (comp, _, comp_losses) = results
    loss_diff = (eager_losses.double() - comp_losses.double()).abs().max().item()
    return _row("compiled vs eager", len(eager_losses), comp, eager, loss_diff, 1e-5, True)


def batched_vs_alone(
    spec: MLP,
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
    states = [o.init(p) for o, p in zip(optimizers, inits)]
    step = make_train_step(spec, optimizers[0])
    batched = batch_over_trials(step)
    params, state, losses = stack(inits), stack(states), []
    alone = [(p, s) for p, s in zip(inits, states)]
    alone_losses: list[list[Tensor]] = [[] for _ in range(trials)]
    n = 0
    for start in range(0, len(train[1]), batch_size):
        xb, yb = train[0][start : start + batch_size], train[1][start : start + batch_size]
        params, state, loss = batched(params, state, xb, yb)
        losses.append(loss)
        for k in range(trials):
            p, s, lk = step(*alone[k], xb, yb)
            alone[k] = (p, s)
            alone_losses[k].append(lk)
        n += 1
    stacked_alone = torch.stack([torch.stack(ls) for ls in alone_losses], 1)
    loss_diff = (torch.stack(losses).double() - stacked_alone.double()).abs().max().item()
    rows = [
        _row("", n, mine, theirs[0], loss_diff, 1e-5, True) for mine, theirs in zip(unstack(params), alone)
    ]
    worst = max(rows, key=lambda r: r.error)
    return Row(
        f"batched ({trials} trials) vs alone",
        n,
        max(r.max_abs_param_diff for r in rows),
        loss_diff,
        worst.error,
        1e-5,
        True,
    )


def safetensors_round_trip(spec: MLP, seed: int) -> Row:
    """Params through a safetensors file and back: bitwise."""
    params = spec.init(seed)
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
    extra: Callable[[MLP, tuple[Tensor, Tensor], int], list[Row]] | None = None,
) -> tuple[list[Row], bool]:
    """Every pair on the first `steps` batches of the training set (`None`: a whole epoch).

    `config` sets the SGD row; Adam runs with the same learning rate and weight decay.
    Returns the rows and whether the printed tutorial lines of reference and eager agree.
    """
    spec = MLP(data.in_features, hidden, data.classes)
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
