"""Epochs over a pure step: batch order, evaluation, metrics history and callbacks.

The loop never synchronises with the device per step: losses stay tensors, and
`.item()` runs only every `log_every` batches (as the tutorial prints) and once
per epoch for the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from purestep.core.data import batches, epoch_order
from purestep.core.errors import PurestepError
from purestep.core.model import MLP, Params
from purestep.core.optim import Optimizer, State
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
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"training loss became {value} in epoch {epoch + 1}")
        self.epoch = epoch
        self.value = value


@dataclass(frozen=True)
class EvalMetrics:
    """The tutorial's test metrics: mean of per-batch mean losses, and accuracy in [0, 1]."""

    loss: float
    accuracy: float


@dataclass(frozen=True)
class EpochMetrics:
    """One row of the history."""

    epoch: int
    train_loss: float
    eval_loss: float
    eval_accuracy: float
    seconds: float


@dataclass
class Callbacks:
    """Hooks into `fit`; each may raise to stop training (a pruner does)."""

    on_epoch_start: Callable[[int], None] = lambda epoch: None
    on_log: Callable[[int, float, int, int], None] = lambda batch, loss, current, size: None
    on_batch: Callable[[int], None] = lambda batch: None
    on_eval: Callable[[EvalMetrics], None] = lambda metrics: None
    on_epoch_end: Callable[[EpochMetrics], None] = lambda metrics: None
    on_epoch_state: Callable[[EpochMetrics, Params, State], None] = lambda metrics, params, state: None


@dataclass
class FitResult:
    """Final params and optimizer state, one `EpochMetrics` per epoch, and why it stopped early."""

    params: Params
    state: State
    history: list[EpochMetrics] = field(default_factory=list)
    stopped: str | None = None


_STEPS: dict[tuple[MLP, object, bool, bool, Precision], tuple[TrainStep, EvalStep]] = {}


def steps_for(
    model: MLP,
    optimizer: Optimizer,
    compiled: bool,
    batched: bool = False,
    precision: Precision = "fp32",
) -> tuple[TrainStep, EvalStep]:
    """The (train, eval) steps of a model and optimizer family, built once per process.

    Every `sgd(...)` shares one `update`, so the key is the update function: a new
    trial or learning rate reuses the same step, and so the same compiled graphs.
    `batched` gives the steps over stacked trials (`vmap` on a leading trial axis).
    """
    key = (model, optimizer.update, compiled, batched, precision)
    if key not in _STEPS:
        train_step = make_train_step(model, optimizer, precision)
        eval_step = make_eval_step(model, precision)
        if batched:
            train_step, eval_step = batch_over_trials(train_step), batch_eval_over_trials(eval_step)
        if compiled:
            update = f"{optimizer.update.__module__}.{optimizer.update.__qualname__}"
            described = f"{model!r} {update} {precision} batched={batched}"
            train_step = compile_step(train_step, key=f"train {described}")
            eval_step = compile_step(eval_step, key=f"eval {described}")
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
    state: State,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    order: Tensor | None = None,
    log_every: int = 100,
    callbacks: Callbacks | None = None,
) -> tuple[Params, State, Tensor]:
    """One pass over `(x, y)`; returns params, state and the per-batch losses as one tensor."""
    callbacks = callbacks or Callbacks()
    losses = []
    call = _BatchCall(train_step, batch_size)
    for i, (xb, yb) in enumerate(batches(x, y, batch_size, order)):
        new_params, new_state, loss = call(params, state, xb, yb)
        if i == 0 and steady((params, state), (new_params, new_state)):
            call.go_direct()
        params, state = new_params, new_state
        losses.append(loss)
        if log_every and i % log_every == 0:
            callbacks.on_log(i, loss.item(), i * len(yb), len(y))
        callbacks.on_batch(i)
    return params, state, torch.stack(losses)


def _eval_batches(eval_step: EvalStep, params: Params, x: Tensor, y: Tensor, batch_size: int):
    """Per-batch mean losses `(B, ...)` and total correct `(...)`; `...` is the trial axis if any."""
    means, correct = [], []
    call = _BatchCall(eval_step, batch_size)
    for i, (xb, yb) in enumerate(batches(x, y, batch_size)):
        loss_sum, n_correct = call(params, xb, yb)
        if i == 0 and steady((params,), (params,)):
            call.go_direct()
        means.append(loss_sum / len(yb))
        correct.append(n_correct)
    return torch.stack(means), torch.stack(correct).sum(0)


def _tutorial_loss(batch_means: list[float]) -> float:
    """`test_loss += batch_mean` in Python floats, then `/ num_batches`, as the tutorial does."""
    total = 0.0
    for m in batch_means:
        total += m
    return total / len(batch_means)


def evaluate(eval_step: EvalStep, params: Params, x: Tensor, y: Tensor, batch_size: int) -> EvalMetrics:
    """The tutorial's `test_loop` numbers: per-batch mean losses averaged, and accuracy."""
    means, correct = _eval_batches(eval_step, params, x, y, batch_size)
    return EvalMetrics(_tutorial_loss(means.tolist()), correct.item() / len(y))


def evaluate_trials(
    eval_step: EvalStep, params: Params, x: Tensor, y: Tensor, batch_size: int
) -> list[EvalMetrics]:
    """`evaluate` for stacked trials and a batched eval step: one `EvalMetrics` per trial."""
    means, correct = _eval_batches(eval_step, params, x, y, batch_size)
    return [
        EvalMetrics(_tutorial_loss(column), c / len(y))
        for column, c in zip(means.T.tolist(), correct.tolist())
    ]


def fit(
    model: MLP,
    optimizer: Optimizer,
    params: Params,
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
) -> FitResult:
    """Train for `epochs` and evaluate after each one, as the tutorial's main loop.

    Args:
        model, optimizer: the model and optimizer families.
        params: initial params (e.g. `model.init(seed)`); state defaults to `optimizer.init(params)`.
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
    Raises:
        NonFiniteLoss: an epoch's mean training loss is NaN or infinite.
    """
    if epochs < 1 or batch_size < 1 or not 0 <= start_epoch <= epochs:
        raise ValueError("epochs and batch_size must be >= 1, and 0 <= start_epoch <= epochs")
    callbacks = callbacks or Callbacks()
    state = optimizer.init(params) if state is None else state
    train_step, eval_step = steps_for(model, optimizer, compiled, precision=precision)
    ex, ey = eval_data if eval_data is not None else (x, y)
    result = FitResult(params, state)
    for epoch in range(start_epoch, epochs):
        callbacks.on_epoch_start(epoch)
        start = time.perf_counter()
        if lr_at is not None:
            state = {**state, "lr": torch.full_like(state["lr"], lr_at(epoch))}
        order = epoch_order(len(y), epoch, seed, y.device) if shuffle else None
        params, state, losses = train_epoch(
            train_step, params, state, x, y, batch_size, order, log_every, callbacks
        )
        train_loss = losses.mean().item()
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(epoch, train_loss)
        metrics = evaluate(eval_step, params, ex, ey, eval_batch_size or batch_size)
        callbacks.on_eval(metrics)
        row = EpochMetrics(epoch, train_loss, metrics.loss, metrics.accuracy, time.perf_counter() - start)
        result.params, result.state = params, state
        result.history.append(row)
        callbacks.on_epoch_state(row, params, state)
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
    model: MLP,
    optimizer: Optimizer,
    params: list[Params],
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
) -> list[FitResult]:
    """Train K trials of one model and optimizer family in lockstep: one `vmap`ped step per batch.

    Each trial has its own params and state (so its own init and hyperparameters); all see
    the same batches. After every epoch each trial is evaluated and `keep(k, metrics)` asked
    whether it goes on (a pruner says no); a trial whose training loss is not finite stops
    with the reason in `stopped`. With `drop`, stopped trials leave the stack, which costs a
    compile for the smaller stack but no more compute; without, they ride along unused. The
    default (`leave_stack`) drops them when that costs no compile (eager, or a stack of that
    size already trained in this process) or when riding along would cost more than a compile
    (both ways are measured in BENCHMARKS.md).
    `lr_at[k]` is trial k's schedule, as in `fit`. Trial k's history equals `fit` of that
    trial alone (within float rounding).
    """
    if not params or len(params) != len(states):
        raise ValueError("need as many states as params, and at least one trial")
    train_step, eval_step = steps_for(model, optimizer, compiled, batched=True)
    ex, ey = eval_data if eval_data is not None else (x, y)
    results = [FitResult(p, s) for p, s in zip(params, states)]
    active = list(range(len(params)))
    stacked_params, stacked_state = stack(params), stack(states)
    for epoch in range(epochs):
        start = time.perf_counter()
        if lr_at is not None:
            lrs = stacked_state["lr"].new_tensor([lr_at[k](epoch) for k in active])
            stacked_state = {**stacked_state, "lr": lrs}
        order = epoch_order(len(y), epoch, seed, y.device) if shuffle else None
        stacked_params, stacked_state, losses = train_epoch(
            train_step, stacked_params, stacked_state, x, y, batch_size, order, log_every=0
        )
        train_losses = losses.mean(0).tolist()
        metrics = evaluate_trials(eval_step, stacked_params, ex, ey, eval_batch_size or batch_size)
        seconds = time.perf_counter() - start
        for i, (k, p, s) in enumerate(zip(active, unstack(stacked_params), unstack(stacked_state))):
            result = results[k]
            if result.stopped is not None:
                continue
            if not math.isfinite(train_losses[i]):
                result.stopped = str(NonFiniteLoss(epoch, train_losses[i]))
                continue
            result.params, result.state = p, s
            row = EpochMetrics(epoch, train_losses[i], metrics[i].loss, metrics[i].accuracy, seconds)
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
            stacked_params = {k: v.index_select(0, index) for k, v in stacked_params.items()}
            stacked_state = {k: v.index_select(0, index) for k, v in stacked_state.items()}
            active = [active[i] for i in going]
    return results
