"""Settings described once: type, the tutorial's value, domain, help, and who reads them.

`OPTIMIZER_SETTINGS` is the one description of the optimizer's settings: `OptimizerConfig`'s
defaults, the search space's settings and the command line's options, checks and help all
derive from it. Nothing here imports torch, so the CLI's `--help` can read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

Scalar = bool | int | float | str

MAX_BATCH = 256
"""The most trials `tune --batch` trains at once in a pool."""

KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Setting:
    """A training setting: its type, the tutorial's value, its domain and what it does.

    `optimizers` names the optimizers that read it (empty: not an optimizer setting).
    """

    kind: type
    tutorial: Scalar
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    options: tuple[str, ...] = ()
    help: str = ""
    optimizers: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` cannot be this setting's value, or None if it can."""
        if not is_kind(value, self.kind):
            return f"must be {KIND_NAMES[self.kind]}, got {show(value)}"
        if self.options and value not in self.options:
            return f"must be one of {', '.join(self.options)}; got {show(value)}"
        if self.kind in (int, float):
            if not math.isfinite(value):
                return f"must be finite, got {show(value)}"
            too_low = value <= self.low if self.low_open else value < self.low
            too_high = value >= self.high if self.high_open else value > self.high
            if too_low or too_high:
                return f"must be in {self.describe_bounds()}, got {show(value)}"
        return None

    def describe_bounds(self) -> str:
        """Interval notation, e.g. `[0, 1)` or `(0, inf)`."""
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{number(self.low)}, {number(self.high)}{right}"


OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
_ADAM = ("adam", "adamw")

OPTIMIZER_SETTINGS: dict[str, Setting] = {
    "optimizer": Setting(str, "sgd", options=OPTIMIZERS, help="Optimizer.", optimizers=OPTIMIZERS),
    "lr": Setting(float, 1e-3, low=0.0, low_open=True, help="Learning rate.", optimizers=OPTIMIZERS),
    "momentum": Setting(
        float, 0.0, low=0.0, high=1.0, high_open=True, help="Momentum factor.", optimizers=("sgd", "rmsprop")
    ),
    "nesterov": Setting(bool, False, help="Nesterov momentum.", optimizers=("sgd",)),
    "weight_decay": Setting(
        float,
        0.0,
        low=0.0,
        help="Weight decay (L2; AdamW: decoupled), 0 unless given for every optimizer, AdamW included "
        "(torch.optim.AdamW and ps.adamw() default to 0.01: pass it)",
        optimizers=OPTIMIZERS,
    ),
    "beta1": Setting(
        float, 0.9, low=0.0, high=1.0, high_open=True, help="Decay of the gradient average.", optimizers=_ADAM
    ),
    "beta2": Setting(
        float,
        0.999,
        low=0.0,
        high=1.0,
        high_open=True,
        help="Decay of the squared-gradient average.",
        optimizers=_ADAM,
    ),
    "eps": Setting(
        float,
        1e-8,
        low=0.0,
        low_open=True,
        help="Term added to the denominator.",
        optimizers=(*_ADAM, "rmsprop"),
    ),
    "alpha": Setting(
        float,
        0.99,
        low=0.0,
        high=1.0,
        help="Smoothing constant of the squared-gradient average.",
        optimizers=("rmsprop",),
    ),
    "centered": Setting(
        bool, False, help="Divide by the gradient's estimated variance.", optimizers=("rmsprop",)
    ),
}
"""The optimizer's settings. The tutorial's values are its SGD's; each applies to `optimizers`."""


def tutorial(name: str) -> Any:
    """The tutorial's value of a setting (a dataclass default reads it from here)."""
    return OPTIMIZER_SETTINGS[name].tutorial


def is_kind(value: Any, kind: type) -> bool:
    """Whether `value` is of `kind`, with `bool` not an `int` and `int` not a `float`."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, float)
    return isinstance(value, kind)


def number(x: float) -> str:
    """A bound as text: `inf`, `-inf` or `%g`."""
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def show(value: Any) -> str:
    """A value as TOML writes it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + " }"
    return repr(value)
