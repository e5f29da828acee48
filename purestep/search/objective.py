"""The objective: one configuration trained on the fit split, scored on the validation split.

A trial's value is its validation accuracy (classification, maximised) or MSE (regression,
minimised) at the end of training (see `score`; the number of epochs is the budget, as in the
final re-train). The metric is reported after every epoch so that a pruner can stop a poor
trial early. The test set is never touched here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from purestep.core.settings import tutorial
from purestep.search.space import (
    MODEL_PREFIX,
    Choices,
    Fixed,
    Param,
    Range,
    Sample,
    Scalar,
    Space,
    model_args,
    sample,
)

if TYPE_CHECKING:
    from pathlib import Path

    import optuna
    from torch import Tensor

    from purestep.core.data import Dataset
    from purestep.core.loop import EpochMetrics, FitResult
    from purestep.core.model import Model
    from purestep.core.optim import OptimizerConfig

Guard = Callable[[], AbstractContextManager[object]]
"""Wraps each write to the storage, so that an interrupt cannot cut one in half."""

VAL_FRACTION = 0.2
"""Share of the training set held out for validation: 287 of digits' 1437 images, 12000 of 60000."""

EVAL_BATCH_SIZE = 4096
"""Validation batch: all of digits' split in one call; one compiled graph whatever the trial's batch."""


def metric(row: EpochMetrics) -> float:
    """What a trial is scored by: validation accuracy, or MSE for a regression."""
    return row.eval_accuracy if row.eval_accuracy is not None else row.eval_mse  # type: ignore[return-value]


def score(history: list[EpochMetrics]) -> float:
    """Mean validation metric over the last third of the epochs (at most 3, at least 1).

    The last epoch's accuracy alone swings by a point or two from one epoch to the next on a
    small split; the mean of the final epochs estimates what the last model scores with less
    noise, so the search does not chase a lucky epoch.
    """
    tail = history[-max(1, min(3, len(history) // 3)) :]
    return sum(metric(m) for m in tail) / len(tail)


class ConfigError(ValueError):
    """A sampled combination the optimizer rejects: the space allows something it should not."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything a trial trains with, as plain data (JSON-ready through `to_dict`)."""

    optimizer: str = tutorial("optimizer")
    lr: float = tutorial("lr")
    momentum: float = tutorial("momentum")
    nesterov: bool = tutorial("nesterov")
    weight_decay: float = tutorial("weight_decay")
    beta1: float = tutorial("beta1")
    beta2: float = tutorial("beta2")
    eps: float = tutorial("eps")
    alpha: float = tutorial("alpha")
    centered: bool = tutorial("centered")
    batch_size: int = 64
    hidden: int = 512
    layers: int = 2
    shuffle: bool = False
    schedule: str = "constant"
    model_args: tuple[tuple[str, Scalar], ...] = ()
    """The model arguments the space sets (`model.NAME` keys), by name."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> TrialConfig:
        """The config of a space's settings (unknown keys are an error, missing ones the tutorial's)."""
        plain = {k: v for k, v in settings.items() if not k.startswith(MODEL_PREFIX)}
        return cls(**plain, model_args=tuple(sorted(model_args(settings).items())))  # type: ignore[arg-type]

    def optimizer_config(self) -> OptimizerConfig:
        """The core optimizer description, validated (raises `ConfigError`)."""
        from purestep.core.optim import OptimizerConfig

        config = OptimizerConfig(
            self.optimizer,  # type: ignore[arg-type]
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            alpha=self.alpha,
            centered=self.centered,
        )
        try:
            config.build()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return config

    def hidden_layers(self) -> tuple[int, ...]:
        """Hidden widths of the MLP: `layers` layers of `hidden` units (the tutorial: 512, 512)."""
        return (self.hidden,) * self.layers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (`model_args` as a table)."""
        return {**asdict(self), "model_args": dict(self.model_args)}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> TrialConfig:
        """The config `to_dict` wrote (as a trial's `config` user attribute keeps it)."""
        return cls(**{**fields, "model_args": tuple(sorted(dict(fields.get("model_args", {})).items()))})


@dataclass(frozen=True)
class Splits:
    """The fit and validation tensors of a study, and the model and loss its trials train:
    `model` as `--model` names it, `model_args` its fixed arguments, shapes from the data."""

    x_fit: Tensor
    y_fit: Tensor
    x_val: Tensor
    y_val: Tensor
    in_shape: tuple[int, ...]
    out_features: int
    model: str = "mlp"
    model_args: tuple[tuple[str, Any], ...] = ()
    loss: str = "cross_entropy"

    def model_for(self, config: TrialConfig) -> Model:
        """The model a trial trains: the fixed arguments, then the sampled ones (and the MLP's
        widths from `hidden` and `layers` unless an argument sets them)."""
        from purestep.core.model import ModelError, build_model

        args = {**dict(self.model_args), **dict(config.model_args)}
        if self.model == "mlp":
            args.setdefault("hidden", config.hidden_layers())
        try:
            return build_model(self.model, self.in_shape, self.out_features, args, self.loss)
        except ModelError as e:
            raise ConfigError(str(e)) from None


def make_splits(
    data: Dataset,
    val_fraction: float,
    seed: int,
    model: str = "mlp",
    model_args: Mapping[str, Any] | None = None,
    loss: str = "cross_entropy",
) -> Splits:
    """Hold out `val_fraction` of the training set (seeded: every worker and re-run gets the same)."""
    from purestep.core.data import split

    x_fit, y_fit, x_val, y_val = split(data.x_train, data.y_train, val_fraction, seed)
    args = tuple(sorted((model_args or {}).items()))
    return Splits(x_fit, y_fit, x_val, y_val, data.in_shape, data.out_features, model, args, loss)


def lr_at(config: TrialConfig, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (0-based): constant, or cosine-decayed once per epoch towards 0.

    Without decay the last epochs of a high learning rate bounce by a point or more of
    accuracy, so what a re-train ends at is luck; the decay makes the final model settle.
    """
    if config.schedule == "cosine":
        return config.lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    return config.lr


def train(
    config: TrialConfig,
    x: Tensor,
    y: Tensor,
    eval_data: tuple[Tensor, Tensor],
    *,
    splits: Splits,
    epochs: int,
    seed: int,
    compiled: bool,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
) -> FitResult:
    """Train `config` from `model.init(seed)` for `epochs`, evaluating on `eval_data` each epoch;
    the model and loss are `splits`'s.

    Raises:
        ConfigError: the optimizer rejects the combination.
        NonFiniteLoss: the training loss became NaN or infinite.
    """
    from purestep.core.loop import Callbacks, fit

    optimizer = config.optimizer_config().build_for(compiled)
    model = splits.model_for(config)
    params, buffers = model.init(seed, x.device)
    model.seed_like_module(seed)
    return fit(
        model,
        optimizer,
        params,
        buffers,
        x,
        y,
        epochs=epochs,
        batch_size=config.batch_size,
        eval_data=eval_data,
        eval_batch_size=EVAL_BATCH_SIZE,
        shuffle=config.shuffle,
        seed=seed,
        compiled=compiled,
        log_every=0,
        callbacks=Callbacks(on_epoch_end=on_epoch_end or (lambda row: None)),
        lr_at=lambda epoch: lr_at(config, epoch, epochs),
        loss=splits.loss,
    )


_SHAPING = ("batch_size", "hidden", "layers")
"""Settings that shape a compiled trial's graphs (with the `model.NAME` arguments); the rest are data."""


def _first(name: str, domain: Choices | Range) -> Scalar:
    return domain.values[0] if isinstance(domain, Choices) else domain.low


def graph_configs(space: Space, splits: Splits | None = None) -> set[TrialConfig] | None:
    """A config for each combination of the values that shape a compiled trial's graphs (batch
    size, the model's widths and arguments), the rest at their first value; None when one of
    those comes from a range, so which graphs a study needs is open. With `splits`, a model
    argument whose range shapes no graph (`only_rates`) is not one of those."""
    import itertools

    varied: list[list[tuple[str, Scalar]]] = []
    for p in space.params:
        if p.key in _SHAPING or p.key.startswith(MODEL_PREFIX):
            if isinstance(p.domain, Range):
                if splits is not None and p.key.startswith(MODEL_PREFIX) and only_rates(splits, space, p):
                    continue
                return None
            if isinstance(p.domain, Choices):
                varied.append([(p.key, v) for v in p.domain.values])
    base = sample(space, _first).settings
    layouts = [{}, {"optimizer": "rmsprop", "momentum": 0.9}] if _rmsprop_momentum_possible(space) else [{}]
    return {
        TrialConfig.from_settings(base | dict(combo) | layout)
        for combo in itertools.product(*varied)
        for layout in layouts
    }


def only_rates(splits: Splits, space: Space, param: Param) -> bool:
    """Whether the model argument `param`, drawn from a range, shapes no compiled graph: the step's
    key (`artifacts.step_key`) is one at the range's ends, middle and zero, the other settings at
    their first value. So for a dropout rate, which a saved step takes as an input."""
    from purestep.core.artifacts import step_key

    domain = param.domain
    assert isinstance(domain, Range)
    middle = (domain.low + domain.high) // 2 if domain.integer else (domain.low + domain.high) / 2
    base = sample(space, _first).settings
    keys = set()
    for value in {domain.low, middle, domain.high} | ({0} if domain.zero else set()):
        config = TrialConfig.from_settings(base | {param.key: value})
        try:
            model = splits.model_for(config)
        except ConfigError:
            return False
        optimizer = config.optimizer_config().build_for(compiled=True)
        keys.add(step_key(model, optimizer, splits.loss, "fp32", False))
    return len(keys) == 1 and None not in keys


def _rmsprop_momentum_possible(space: Space) -> bool:
    """Whether `space` may draw RMSprop with momentum, whose union state holds a third buffer (a graph
    of its own, `needs_third_buffer`); True unless a condition or domain rules it out."""

    def may(p_key: str, test: Callable[[Scalar], bool]) -> list[Param] | bool:
        params = [p for p in space.params if p.key == p_key]
        if not params:
            return test(tutorial(p_key))
        return [p for p in params if any(test(v) for v in _values(p.domain))]

    optimizers = may("optimizer", lambda v: v == "rmsprop")
    momenta = may("momentum", lambda v: v != 0)
    if not optimizers or not momenta:
        return False
    names = {p.name: p.key for p in space.params}
    return momenta is True or any(
        all(names.get(c.parent) != "optimizer" or c.values is None or "rmsprop" in c.values for c in p.when)
        for p in momenta
    )


def _values(domain: Fixed | Choices | Range) -> tuple[Scalar, ...]:
    """The values `domain` may draw, a range by its ends (enough to tell zero from nonzero)."""
    if isinstance(domain, Fixed):
        return (domain.value,)
    if isinstance(domain, Choices):
        return domain.values
    return (domain.low, domain.high)


def steps_saved(
    splits: Splits,
    configs: set[TrialConfig] | None,
    train_on: list[tuple[Tensor, Tensor]],
    eval_on: list[tuple[Tensor, Tensor]],
    folder: Path,
    threads: int | None = None,
) -> bool:
    """Whether `folder` (`packages_folder()`) holds a saved graph for every step compiled training
    of `configs` calls (None: configs not known, False): the train step on the full and the last
    batch of each `train_on` set and the eval step on each `eval_on` set, on `threads` torch threads
    (default: now's). Then compiling costs nothing; nothing is built, loaded or set here."""
    from purestep.core.loop import steps_for
    from purestep.core.step import CompiledStep

    if configs is None:
        return False
    for config in configs:
        model = splits.model_for(config)
        optimizer = config.optimizer_config().build_for(compiled=True)
        train_step, eval_step = steps_for(model, optimizer, True, loss=splits.loss)
        if not (isinstance(train_step, CompiledStep) and isinstance(eval_step, CompiledStep)):
            return False
        params, buffers = model.init(0, splits.x_fit.device)
        state = optimizer.init(model.trainable(params))
        calls = [(train_step, (params, buffers, state), x, y, config.batch_size) for x, y in train_on] + [
            (eval_step, (params, buffers), x, y, EVAL_BATCH_SIZE) for x, y in eval_on
        ]
        for step, trees, x, y, batch in calls:
            for rows in {min(batch, len(y)), len(y) % batch} - {0}:
                if not step.saved(*trees, x[:rows], y[:rows], folder=folder, threads=threads):
                    return False
    return True


TIMED_STEPS = 20
"""Most eager steps `eager_step_seconds` times (after two untimed ones)..."""
TIMED_SECONDS = 0.3
"""...and it stops sooner once its timed steps have taken this long (at least three are timed)."""


def eager_step_seconds(splits: Splits, threads: int, config: TrialConfig | None = None) -> float:
    """Seconds one eager train step of `config` takes at batch 64 on `threads` torch threads, on the
    fit split's first rows and its device: the median of a few, after a warm-up. What `--impl auto`
    weighs a compile against. Default: trial 0's model with Adam (the default space draws SGD, Adam,
    AdamW and RMSprop). The global random state is left as it was (a model with dropout draws);
    0.0 when the step cannot run here: its trials fail then, each with its own error."""
    import statistics

    import torch

    from purestep.core.loop import steps_for

    config = config or TrialConfig(optimizer="adam")
    model = splits.model_for(config)
    optimizer = config.optimizer_config().build_for(compiled=False)
    train_step, _ = steps_for(model, optimizer, False, loss=splits.loss)
    x, y = splits.x_fit[:64], splits.y_fit[:64]
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[float] = []
    try:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            params, buffers = model.init(0, x.device)
            trees = params, buffers, optimizer.init(model.trainable(params))
            for i in range(TIMED_STEPS + 2):
                start = time.perf_counter()
                *trees, loss = train_step(*trees, x, y)
                loss.item()  # the step has run (a GPU's kernels are queued until read)
                if i >= 2:
                    times.append(time.perf_counter() - start)
                    if len(times) >= 3 and sum(times) >= TIMED_SECONDS:
                        break
    except Exception:  # the user's model, on rows a trial may never see alone: not this choice's error
        return 0.0
    finally:
        torch.set_num_threads(was)
    return statistics.median(times)


def optuna_suggest(trial: optuna.Trial) -> Callable[[str, Choices | Range], Scalar]:
    """`suggest(name, domain)` for `space.sample`, through an Optuna trial."""

    def suggest(name: str, domain: Choices | Range) -> Scalar:
        if isinstance(domain, Choices):
            return trial.suggest_categorical(name, list(domain.values))
        if domain.integer:
            return trial.suggest_int(
                name, int(domain.low), int(domain.high), step=int(domain.step or 1), log=domain.log
            )
        return trial.suggest_float(name, domain.low, domain.high, step=domain.step, log=domain.log)

    return suggest


def suggest_config(space: Space, trial: optuna.Trial) -> tuple[Sample, TrialConfig]:
    """Draw a trial's parameters from `space`; its config is stored as the user attribute `config`."""
    drawn = sample(space, optuna_suggest(trial))
    config = TrialConfig.from_settings(drawn.settings)
    trial.set_user_attr("config", config.to_dict())
    return drawn, config


def make_objective(
    space: Space,
    splits: Splits,
    *,
    epochs: int,
    seed: int,
    compiled: bool,
    guard: Guard = nullcontext,
) -> Callable[[optuna.Trial], float]:
    """An Optuna objective: validation accuracy after `epochs`, reported after each one.

    Every trial starts from the same init (`seed`) and batch order, so trials differ by their
    hyperparameters alone. `guard()` wraps each write to the storage (so an interrupt
    cannot cut one in half). A pruned or diverged trial raises `optuna.TrialPruned` with the
    reason as its message.
    """

    def objective(trial: optuna.Trial) -> float:
        with guard():
            _, config = suggest_config(space, trial)
        return run_config(trial, config, splits, epochs=epochs, seed=seed, compiled=compiled, guard=guard)

    return objective


def pruned_reason(
    trial: optuna.Trial, metrics: EpochMetrics, epochs: int, guard: Guard = nullcontext
) -> str | None:
    """Report the epoch's validation metric to Optuna; the reason to stop if the pruner says so,
    or if the validation loss is not finite (the last update diverged after the epoch's training
    loss was taken: a regression's value was stored as inf). After the last of `epochs` the pruner
    is not asked: a trial trained to its end was stored as pruned, out of the ranking."""
    if not math.isfinite(metrics.eval_loss):
        return f"diverged: validation loss became {metrics.eval_loss} in epoch {metrics.epoch + 1}"
    value = metric(metrics)
    with guard():
        trial.report(value, metrics.epoch + 1)
    if metrics.epoch + 1 < epochs and trial.should_prune():
        name = "accuracy" if metrics.eval_accuracy is not None else "MSE"
        return f"pruned after epoch {metrics.epoch + 1} at validation {name} {value:.4f}"
    return None


def record_result(trial: optuna.Trial, history: list[EpochMetrics], guard: Guard = nullcontext) -> float:
    """Store the last epoch's metrics on the trial; its value is `score(history)`."""
    last = history[-1]
    with guard():
        if last.eval_accuracy is not None:
            trial.set_user_attr("val_accuracy_last", last.eval_accuracy)
        else:
            trial.set_user_attr("val_mse_last", last.eval_mse)
            trial.set_user_attr("val_r2_last", last.eval_r2)
        trial.set_user_attr("val_loss", last.eval_loss)
        trial.set_user_attr("train_loss", last.train_loss)
    return score(history)


def run_config(
    trial: optuna.Trial,
    config: TrialConfig,
    splits: Splits,
    *,
    epochs: int,
    seed: int,
    compiled: bool,
    guard: Guard = nullcontext,
) -> float:
    """Train one trial's `config`, reporting every epoch; raises `optuna.TrialPruned` with the reason."""
    import optuna

    from purestep.core.loop import NonFiniteLoss

    def on_epoch_end(metrics: EpochMetrics) -> None:
        reason = pruned_reason(trial, metrics, epochs, guard)
        if reason is not None:
            raise optuna.TrialPruned(reason)

    try:
        result = train(
            config,
            splits.x_fit,
            splits.y_fit,
            (splits.x_val, splits.y_val),
            splits=splits,
            epochs=epochs,
            seed=seed,
            compiled=compiled,
            on_epoch_end=on_epoch_end,
        )
    except NonFiniteLoss as e:
        raise optuna.TrialPruned(f"diverged: {e}") from None
    return record_result(trial, result.history, guard)
