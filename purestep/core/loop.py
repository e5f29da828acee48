"""Epochs over a pure step: batch order, evaluation, metrics history and callbacks.

The loop never synchronises with the device per step: losses stay tensors, and
`.item()` runs only every `log_every` batches (as the tutorial prints) and once
per epoch for the metrics.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from purestep.core.artifacts import dropouts, step_key
from purestep.core.data import batches, epoch_order
from purestep.core.errors import PurestepError
from purestep.core.losses import IGNORE_INDEX, LossName, check_output_shape, loss_for_targets, r2_score
from purestep.core.model import Buffers, Model, Params, untrainable, watched
from purestep.core.optim import Optimizer, State, check_family
from purestep.core.step import (
    EvalStep,
    Precision,
    TrainStep,
    batch_eval_over_trials,
    batch_over_trials,
    compile_step,
    direct_step,
    make_eval_step,
    make_train_step,
    short_batch,
    stack,
    steady,
    unstack,
)


class NonFiniteLoss(PurestepError):
    """The training loss (or `what` else a run watches) became NaN or infinite."""

    def __init__(self, epoch: int, value: float, what: str = "training loss") -> None:
        super().__init__(f"{what} became {value} in epoch {epoch + 1}")
        self.epoch = epoch
        self.value = value


@dataclass(frozen=True)
class EvalMetrics:
    """The tutorial's test metrics: the mean of per-batch mean losses, and accuracy in [0, 1]
    (classification) or MSE over every target value and R² (regression)."""

    loss: float
    accuracy: float | None = None
    mse: float | None = None
    r2: float | None = None


@dataclass(frozen=True)
class EpochMetrics:
    """One row of the history."""

    epoch: int
    train_loss: float
    eval_loss: float
    eval_accuracy: float | None
    seconds: float
    eval_mse: float | None = None
    eval_r2: float | None = None


@dataclass
class Callbacks:
    """Hooks into `fit`; each may raise to stop training (a pruner does)."""

    on_epoch_start: Callable[[int], None] = lambda epoch: None
    on_log: Callable[[int, float, int, int], None] = lambda batch, loss, current, size: None
    on_batch: Callable[[int], None] = lambda batch: None
    on_eval: Callable[[EvalMetrics], None] = lambda metrics: None
    on_epoch_end: Callable[[EpochMetrics], None] = lambda metrics: None
    on_epoch_state: Callable[[EpochMetrics, Params, Buffers, State], None] = (
        lambda metrics, params, buffers, state: None
    )


@dataclass
class FitResult:
    """Final params, buffers and optimizer state, one `EpochMetrics` per epoch, and why it
    stopped early."""

    params: Params
    buffers: Buffers
    state: State
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: str | None = None


_STEPS: dict[tuple[Model, object, bool, bool, Precision, str], tuple[TrainStep, EvalStep]] = {}


def steps_for(
    model: Model,
    optimizer: Optimizer,
    compiled: bool,
    batched: bool = False,
    precision: Precision = "fp32",
    loss: LossName = "cross_entropy",
) -> tuple[TrainStep, EvalStep]:
    """The (train, eval) steps of a model and optimizer family, built once per process.

    Every `sgd(...)` shares one `update`, so the key is the update function: a new
    trial or learning rate reuses the same step, and so the same compiled graphs.
    `batched` gives the steps over stacked trials (`vmap` on a leading trial axis).
    """
    key = (model, optimizer.update, compiled, batched, precision, loss)
    if key not in _STEPS:
        eager = not (compiled or batched)
        train_step = make_train_step(model, optimizer, loss, precision, eager=eager)
        eval_step = make_eval_step(model, loss, precision)
        if batched:
            train_step, eval_step = batch_over_trials(train_step), batch_eval_over_trials(eval_step)
        if compiled:
            described = step_key(model, optimizer, loss, precision, batched)
            # Unbatched, a package takes the dropout rates as an input: in eval mode too, where a
            # forward may still read them (Monte Carlo dropout, a test-time scale by 1 - p).
            train_rates, eval_rates = (
                ((), ()) if batched else (dropouts(model.train_module()), dropouts(model.eval_module()))
            )
            train_step = compile_step(train_step, key=described and f"train {described}", rates=train_rates)
            eval_step = compile_step(eval_step, key=described and f"eval {described}", rates=eval_rates)
        _STEPS[key] = train_step, eval_step
    return _STEPS[key]


class _BatchCall:
    """A step called batch by batch: through Dynamo (and `short_batch`) until `go_direct`,
    then straight into the graph of the last call for every full batch (`direct_step`)."""

    def __init__(self, step: Callable[..., Any], batch_size: int) -> None:
        self.step, self.batch_size = step, batch_size
        self.direct: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        rows = len(args[-1])
        if self.direct is not None and rows == self.batch_size:
            return self.direct(*args)
        with short_batch(rows, self.batch_size):
            return self.step(*args)

    def go_direct(self) -> None:
        """Enter the last call's graph directly from now on (callers check `steady` first)."""
        self.direct = direct_step(self.step)


def train_epoch(
    train_step: TrainStep,
    params: Params,
    buffers: Buffers,
    state: State,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    order: Tensor | None = None,
    log_every: int = 100,
    callbacks: Callbacks | None = None,
) -> tuple[Params, Buffers, State, Tensor]:
    """One pass over `(x, y)`; returns params, buffers, state and the per-batch losses as one tensor."""
    callbacks = callbacks or Callbacks()
    losses = []
    call = _BatchCall(train_step, batch_size)
    for i, (xb, yb) in enumerate(batches(x, y, batch_size, order)):
        new_params, new_buffers, new_state, loss = call(params, buffers, state, xb, yb)
        if i == 0 and steady((params, buffers, state), (new_params, new_buffers, new_state)):
            call.go_direct()
        params, buffers, state = new_params, new_buffers, new_state
        losses.append(loss)
        if log_every and i % log_every == 0:
            callbacks.on_log(i, loss.item(), i * len(yb), len(y))
        callbacks.on_batch(i)
    return params, buffers, state, torch.stack(losses)


def _eval_batches(
    eval_step: EvalStep, params: Params, buffers: Buffers, x: Tensor, y: Tensor, batch_size: int
):
    """Per-batch mean losses `(B, ...)` and the metric's total `(...)`; `...` is the trial axis if any."""
    means, metric = [], []
    call = _BatchCall(eval_step, batch_size)
    for i, (xb, yb) in enumerate(batches(x, y, batch_size)):
        loss_sum, metric_sum = call(params, buffers, xb, yb)
        if i == 0 and steady((params, buffers), (params, buffers)):
            call.go_direct()
        means.append(loss_sum / _counted(yb))
        metric.append(metric_sum)
    return torch.stack(means), torch.stack(metric).sum(0)


def _counted(y: Tensor) -> int | Tensor:
    """What a batch's mean loss divides by, as the loss's own: every target, but class labels of
    `IGNORE_INDEX`, which count in neither the sum nor the mean (nan when all are)."""
    return y.numel() if y.is_floating_point() else (y != IGNORE_INDEX).sum()


def _tutorial_loss(batch_means: list[float]) -> float:
    """`test_loss += batch_mean` in Python floats, then `/ num_batches`, as the tutorial does."""
    total = 0.0
    for m in batch_means:
        total += m
    return total / len(batch_means)


def _metrics(batch_means: list[float], metric: float, y: Tensor) -> EvalMetrics:
    loss = _tutorial_loss(batch_means)
    if y.is_floating_point():
        return EvalMetrics(loss, mse=metric / y.numel(), r2=r2_score(metric, y))
    return EvalMetrics(loss, accuracy=metric / y.numel())  # per position for labels (N, d1, ...)


def evaluate(
    eval_step: EvalStep, params: Params, buffers: Buffers, x: Tensor, y: Tensor, batch_size: int
) -> EvalMetrics:
    """The tutorial's `test_loop` numbers: per-batch mean losses averaged, and accuracy (or MSE, R²)."""
    means, metric = _eval_batches(eval_step, params, buffers, x, y, batch_size)
    return _metrics(means.tolist(), metric.item(), y)


def evaluate_trials(
    eval_step: EvalStep, params: Params, buffers: Buffers, x: Tensor, y: Tensor, batch_size: int
) -> list[EvalMetrics]:
    """`evaluate` for stacked trials and a batched eval step: one `EvalMetrics` per trial."""
    means, metric = _eval_batches(eval_step, params, buffers, x, y, batch_size)
    return [_metrics(column, m, y) for column, m in zip(means.T.tolist(), metric.tolist())]


def _row(epoch: int, train_loss: float, metrics: EvalMetrics, seconds: float) -> EpochMetrics:
    return EpochMetrics(epoch, train_loss, metrics.loss, metrics.accuracy, seconds, metrics.mse, metrics.r2)


def run_epoch(
    steps: tuple[TrainStep, EvalStep],
    trees: tuple[Params, Buffers, State],
    x: Tensor,
    y: Tensor,
    eval_data: tuple[Tensor, Tensor],
    *,
    epoch: int,
    batch_size: int,
    eval_batch_size: int,
    lr: float | None = None,
    shuffle: bool = False,
    seed: int = 0,
    log_every: int = 0,
    callbacks: Callbacks | None = None,
) -> tuple[Params, Buffers, State, EpochMetrics]:
    """Epoch `epoch` of `fit`: train on `(x, y)` at learning rate `lr` (None keeps the state's),
    then evaluate on `eval_data`; the new params, buffers, state and the epoch's metrics row.

    Raises:
        NonFiniteLoss: the epoch's mean training loss is NaN or infinite.
    """
    callbacks = callbacks or Callbacks()
    train_step, eval_step = steps
    params, buffers, state = trees
    start = time.perf_counter()
    if lr is not None:
        state = {**state, "lr": torch.full_like(state["lr"], lr)}
    order = epoch_order(len(y), epoch, seed, y.device) if shuffle else None
    params, buffers, state, losses = train_epoch(
        train_step, params, buffers, state, x, y, batch_size, order, log_every, callbacks
    )
    train_loss = losses.mean().item()
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(epoch, train_loss)
    metrics = evaluate(eval_step, params, buffers, *eval_data, eval_batch_size)
    callbacks.on_eval(metrics)
    return params, buffers, state, _row(epoch, train_loss, metrics, time.perf_counter() - start)


def check_trains(
    model: Model,
    params: Params,
    buffers: Buffers,
    data: tuple[Tensor, Tensor],
    eval_data: tuple[Tensor, Tensor],
    loss: str,
) -> None:
    """Refuse, before anything trains: data of no rows or not as many inputs as targets (batches
    would pair them wrongly, or stop short); a model that gives no one tensor, or that training
    cannot change (`model.untrainable`: the steps would take zero gradients); class labels it has
    no output for (torch's loss would fail mid-run, a compiled one with its kernel's index check,
    and the batched loss score them 0). The global generators are left as they were: a model that
    draws (dropout) trains as the module loop.

    Raises:
        ValueError: "training data: 100 input rows but 96 targets" / "... returns tuple, not one
            tensor" / "has no trainable parameter ..." / "gives outputs no trainable parameter
            reaches ..."; `OutputShapeError`: "N outputs a row for labels up to K".
    """
    for what, (inputs, targets) in (("training", data), ("evaluation", eval_data)):
        if len(inputs) != len(targets):
            raise ValueError(f"{what} data: {len(inputs)} input rows but {len(targets)} targets")
        if not len(inputs):
            raise ValueError(f"{what} data has no rows")
    x, labels = data[0], (data[1], eval_data[1])
    rows = x[:2]  # in train mode, as training runs (a model may detach only in eval), for two rows
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.enable_grad():
        out, _ = model.apply(watched(model, params), buffers, rows, train=len(rows) > 1)
    problem = untrainable(model, params, out)
    if problem is not None:
        raise ValueError(f"model {model.name!r} {problem}")
    if not labels[0].is_floating_point():
        top = max(int(y.max()) for y in labels)
        check_output_shape(loss, out.detach(), labels[0][:2], top=top)


def scheduled_lr(lr_at: Callable[[int], float], epoch: int) -> float:
    """`lr_at(epoch)`, refused unless a finite rate > 0, as every optimizer refuses its `lr`."""
    given = lr_at(epoch)
    try:
        lr = float(given) if isinstance(given, (numbers.Real, Tensor)) else math.nan
    except (TypeError, ValueError, RuntimeError):  # a tensor of several values
        lr = math.nan
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr_at({epoch}) gave {given!r}; a learning rate must be finite and > 0")
    return lr


def fit(
    model: Model,
    optimizer: Optimizer,
    params: Params,
    buffers: Buffers,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    eval_data: tuple[Tensor, Tensor] | None = None,
    eval_batch_size: int | None = None,
    state: State | None = None,
    shuffle: bool = False,
    seed: int = 0,
    compiled: bool = True,
    log_every: int = 100,
    callbacks: Callbacks | None = None,
    start_epoch: int = 0,
    lr_at: Callable[[int], float] | None = None,
    precision: Precision = "fp32",
    loss: LossName | None = None,
) -> FitResult:
    """Train for `epochs` and evaluate after each one, as the tutorial's main loop.

    Args:
        model, optimizer: the model and optimizer families.
        params, buffers: initial params and buffers (`model.init(seed)`); state defaults to
            `optimizer.init(model.trainable(params))` (no state for frozen params).
        x, y: training tensors, already on the device.
        eval_data: tensors to evaluate on after every epoch (the test set in `train`,
            a validation split in tuning); defaults to the training set.
        shuffle, seed: file order, or a permutation per epoch seeded by `(seed, epoch)`.
        compiled: use `torch.compile`d steps (eager otherwise).
        start_epoch: resume at this epoch (params and state as they were after the one before):
            batch order depends on `(seed, epoch)` alone, so a resumed run equals an unbroken one.
        lr_at: a schedule, `epoch -> learning rate`, written into the state's 0-d `lr` before
            each epoch: new data for the step, not a new graph. None keeps the state's.
        precision: "fp32", or "bf16" for the products of both steps in bfloat16 (autocast).
        loss: `cross_entropy` or `nll` for class labels, `mse` for float targets (metrics: MSE
            and R²); None picks by `y`'s dtype, as `purestep train` does (`loss_for_targets`).
    Raises:
        NonFiniteLoss: an epoch's mean training loss is NaN or infinite.
        ValueError: a loss that does not fit the targets, a schedule's rate that is not > 0, a
            `state` of another optimizer family; data of no rows or not as many inputs as targets,
            a model training cannot change (no trainable parameter reaches its outputs), or class
            labels (of `y` or `eval_data`) the model has no output for (`check_trains`).
    """
    if epochs < 1 or batch_size < 1 or not 0 <= start_epoch <= epochs:
        raise ValueError("epochs and batch_size must be >= 1, and 0 <= start_epoch <= epochs")
    loss = loss_for_targets(loss, y)
    callbacks = callbacks or Callbacks()
    eval_data = eval_data if eval_data is not None else (x, y)
    check_trains(model, params, buffers, (x, y), eval_data, loss)
    if state is None:
        state = optimizer.init(model.trainable(params))
    else:
        check_family(optimizer, state, model.trainable(params))
    train_step, eval_step = steps_for(model, optimizer, compiled, precision=precision, loss=loss)
    result = FitResult(params, buffers, state)
    for epoch in range(start_epoch, epochs):
        callbacks.on_epoch_start(epoch)
        params, buffers, state, row = run_epoch(
            (train_step, eval_step),
            (params, buffers, state),
            x,
            y,
            eval_data,
            epoch=epoch,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,
            lr=None if lr_at is None else scheduled_lr(lr_at, epoch),
            shuffle=shuffle,
            seed=seed,
            log_every=log_every,
            callbacks=callbacks,
        )
        result.params, result.buffers, result.state = params, buffers, state
        result.history.append(row)
        callbacks.on_epoch_state(row, params, buffers, state)
        callbacks.on_epoch_end(row)
    return result


_STACKED: set[tuple[object, ...]] = set()
"""Stack shapes that have trained through a compiled batched step in this process."""
COMPILE_SECONDS = 5.0
"""What compiling a new stack size costs, cold (train and eval graphs of the tutorial's MLP on a
2-core CPU: 4.7 s, BENCHMARKS.md); riding along longer than this loses to dropping."""


def leave_stack(drop: bool | None, compiled_already: bool, ride_seconds: float) -> bool:
    """Whether stopped trials leave the stack: as `drop` says, or (None) when the smaller stack
    needs no compile, or when riding along for the remaining epochs would cost more than one."""
    if drop is not None:
        return drop
    return compiled_already or ride_seconds > COMPILE_SECONDS


def _stack_shape(step: TrainStep, trials: int, x: Tensor, batch_size: int) -> tuple[object, ...]:
    return step, trials, batch_size, tuple(x.shape), x.device


def fit_trials(
    model: Model,
    optimizer: Optimizer,
    params: list[Params],
    buffers: list[Buffers],
    states: list[State],
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    eval_data: tuple[Tensor, Tensor] | None = None,
    eval_batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    compiled: bool = True,
    keep: Callable[[int, EpochMetrics], bool] = lambda trial, metrics: True,
    drop: bool | None = None,
    lr_at: Sequence[Callable[[int], float]] | None = None,
    loss: LossName | None = None,
) -> list[FitResult]:
    """Train K trials of one model and optimizer family in lockstep: one `vmap`ped step per batch.

    Each trial has its own params, buffers and state (its own init and hyperparameters); all see
    the same batches. After every epoch each trial is evaluated and `keep(k, metrics)` asked
    whether it goes on (a pruner says no); a trial whose training loss is not finite stops
    with the reason in `stopped`. With `drop`, stopped trials leave the stack, which costs a
    compile for the smaller stack but no more compute; without, they ride along unused. The
    default (`leave_stack`) drops them when that costs no compile (eager, or a stack of that
    size already trained in this process) or when riding along would cost more than a compile
    (both ways are measured in BENCHMARKS.md).
    `lr_at[k]` is trial k's schedule, as in `fit`. Trial k's history equals `fit` of that
    trial alone (within float rounding) for a model without random layers; with dropout, the
    vmapped step draws every trial's masks at once from the global generator, so each trial is a
    seeded run of its own, not its run alone (`tune --batch`'s pool gives each trial its own
    generator, and so its run alone). `loss` as `fit`'s.
    """
    if not params or not len(params) == len(buffers) == len(states):
        raise ValueError("need as many buffers and states as params, and at least one trial")
    loss = loss_for_targets(loss, y)
    train_step, eval_step = steps_for(model, optimizer, compiled, batched=True, loss=loss)
    ex, ey = eval_data if eval_data is not None else (x, y)
    check_trains(model, params[0], buffers[0], (x, y), (ex, ey), loss)
    for p, s in zip(params, states):
        check_family(optimizer, s, model.trainable(p))
    results = [FitResult(p, b, s) for p, b, s in zip(params, buffers, states)]
    active = list(range(len(params)))
    stacked_params, stacked_buffers, stacked_state = stack(params), stack(buffers), stack(states)
    for epoch in range(epochs):
        start = time.perf_counter()
        if lr_at is not None:
            lrs = stacked_state["lr"].new_tensor([scheduled_lr(lr_at[k], epoch) for k in active])
            stacked_state = {**stacked_state, "lr": lrs}
        order = epoch_order(len(y), epoch, seed, y.device) if shuffle else None
        stacked_params, stacked_buffers, stacked_state, losses = train_epoch(
            train_step, stacked_params, stacked_buffers, stacked_state, x, y, batch_size, order, log_every=0
        )
        train_losses = losses.mean(0).tolist()
        metrics = evaluate_trials(
            eval_step, stacked_params, stacked_buffers, ex, ey, eval_batch_size or batch_size
        )
        seconds = time.perf_counter() - start
        n = len(active)
        each = zip(active, unstack(stacked_params), unstack(stacked_buffers, n), unstack(stacked_state))
        for i, (k, p, b, s) in enumerate(each):
            result = results[k]
            if result.stopped is not None:
                continue
            if not math.isfinite(train_losses[i]):
                result.stopped = str(NonFiniteLoss(epoch, train_losses[i]))
                continue
            result.params, result.buffers, result.state = p, b, s
            row = _row(epoch, train_losses[i], metrics[i], seconds)
            result.history.append(row)
            if not keep(k, row):
                result.stopped = f"stopped after epoch {epoch + 1}"
        going = [i for i, k in enumerate(active) if results[k].stopped is None]
        if not going:
            break
        _STACKED.add(_stack_shape(train_step, len(active), x, batch_size))
        known = not compiled or _stack_shape(train_step, len(going), x, batch_size) in _STACKED
        ride = (len(active) - len(going)) * (epochs - epoch - 1) * seconds / len(active)
        if len(going) < len(active) and leave_stack(drop, known, ride):
            index = torch.tensor(going, device=y.device)
            stacked_params, stacked_buffers, stacked_state = (
                {k: v.index_select(0, index) for k, v in tree.items()}
                for tree in (stacked_params, stacked_buffers, stacked_state)
            )
            active = [active[i] for i in going]
    return results
