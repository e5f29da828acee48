"""The tutorial's losses (`nn.CrossEntropyLoss`, `nn.NLLLoss`, `nn.MSELoss`) and their metrics.

Classification (integer labels) is scored by accuracy; regression (float targets) by MSE
and R². The task follows from the targets' dtype, so one eval step serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["cross_entropy", "nll", "mse"]
LOSSES: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "mse": F.mse_loss,
}
"""Each loss as its `torch.nn.functional` form, which the `nn` loss modules call."""
MODULES = {"cross_entropy": "CrossEntropyLoss", "nll": "NLLLoss", "mse": "MSELoss"}


def loss_fn(name: str) -> Callable[..., Tensor]:
    """The functional loss `name` (mean over the batch by default, `reduction=` as torch's)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_module(name: str) -> torch.nn.Module:
    """The `torch.nn` loss module the tutorial would use for `name`."""
    loss_fn(name)
    return getattr(torch.nn, MODULES[name])()


def is_regression(name: str) -> bool:
    """Whether `name` is a regression loss (float targets, scored by MSE and R²)."""
    return name == "mse"


def batch_metric(output: Tensor, y: Tensor) -> Tensor:
    """Per batch, the metric's sum: correct predictions (integer labels) or squared errors (floats)."""
    if y.is_floating_point():
        return (output - y).square().sum()
    return (output.argmax(1) == y).sum()


def r2_score(sse: float, y: Tensor) -> float:
    """1 - SSE / SST over every target value (SST about each target column's mean)."""
    sst = (y.double() - y.double().mean(0)).square().sum().item()
    return 1.0 - sse / sst if sst > 0 else float("nan")


def loss_for_targets(name: str | None, y: Tensor) -> str:
    """`name` if it fits the targets `y`, or the task's default when None: `mse` for float
    targets (a regression), `cross_entropy` for class labels.

    Raises:
        ValueError: `mse` for class labels, or a classification loss for float targets.
    """
    regression = y.is_floating_point()
    if name is None:
        return "mse" if regression else "cross_entropy"
    loss_fn(name)
    if regression != is_regression(name):
        kind = "float targets (a regression)" if regression else "class labels"
        fits = "mse" if regression else "cross_entropy or nll"
        raise ValueError(f"loss {name} does not fit {kind}; use {fits}")
    return name
