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


IGNORE_INDEX = -100
"""The label `cross_entropy` and `nll_loss` skip by default (`ignore_index`): in neither the sum
nor the mean's count."""


def _class_dim(out: Tensor) -> int:
    """Where torch's classification losses read the classes: dim 1, or dim 0 of one unbatched row."""
    return 1 if out.ndim > 1 else 0


def _picked(log_probs: Tensor, y: Tensor, reduction: str) -> Tensor:
    """Minus each position's log-probability of its label, reduced: `nll_loss`'s arithmetic with
    its default arguments, written with a comparison instead of a gather so that it keeps a batch
    dimension symbolic under vmap.

    The classes lie on dim 1 (`(N, C)` or `(N, C, d1, ...)` with labels `(N, d1, ...)`); a label
    of `IGNORE_INDEX` matches no class, so it adds 0 to the sum, and the mean divides by the number
    of other labels (nan when every label is ignored, as torch gives)."""
    dim = _class_dim(log_probs)
    classes = torch.arange(log_probs.shape[dim], device=y.device)
    classes = classes.view(-1, *(1,) * (log_probs.ndim - dim - 1))  # along the class dim
    picked = torch.where(y.unsqueeze(dim) == classes, log_probs, 0).sum(dim)
    if reduction == "sum":
        return -picked.sum()
    if reduction == "none":
        return -picked
    return -(picked.sum() / (y != IGNORE_INDEX).sum())


def _cross_entropy(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    log_probs = F.log_softmax(out, _class_dim(out))
    if y.is_floating_point():  # class probabilities, not labels: every position counts
        each = -(y * log_probs).sum(_class_dim(out))
        return each.sum() if reduction == "sum" else each if reduction == "none" else each.mean()
    return _picked(log_probs, y, reduction)


def _nll(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    return _picked(out, y, reduction)


def shape_free_loss_fn(name: str) -> Callable[..., Tensor]:
    """`loss_fn(name)` in a form whose compiled graph serves every batch size and stack size.

    Under `vmap`, `nll_loss`'s batching rule fixes the batch and trial dimensions of a compiled
    graph; this form does not (no gather, no shape that depends on the labels). Equal to
    `loss_fn(name)` up to the order of the batch's sum for every input torch's loss takes with its
    default arguments: classes on dim 1 (per-position outputs `(N, C, d1, ...)` too), labels of
    -100 ignored (`ignore_index`), `reduction` "mean", "sum" or "none"; and for `cross_entropy`,
    class probabilities in place of labels. Except a label outside `[0, C)` other than -100:
    torch raises, but a compiled graph cannot, so here it scores 0 and counts in the mean. Check
    labels before (`purestep tune` refuses a model with fewer outputs than the labels need).
    """
    loss_fn(name)
    return {"cross_entropy": _cross_entropy, "nll": _nll}.get(name, LOSSES[name])


def loss_module(name: str) -> torch.nn.Module:
    """The `torch.nn` loss module the tutorial would use for `name`."""
    loss_fn(name)
    return getattr(torch.nn, MODULES[name])()


def is_regression(name: str) -> bool:
    """Whether `name` is a regression loss (float targets, scored by MSE and R²)."""
    return name == "mse"


class OutputShapeError(ValueError):
    """A model's outputs that do not fit the targets' shape for the loss (`check_output_shape`)."""


def check_output_shape(name: str, out: Tensor, y: Tensor, top: int | None = None) -> None:
    """Refuse a model's outputs that loss `name` would score wrongly against the targets.

    `mse_loss` broadcasts: outputs `(N,)` against targets `(N, 1)` give an `(N, N)` error with
    only torch's UserWarning, and a model that trains to the wrong figure. `cross_entropy` over
    one class is 0 whatever the model (a regression's one column, scored as classes). A
    classification's outputs need a class (dim 1, as torch's losses read it) for every label up
    to `top`, the highest in the data: torch would fail mid-run, and the batched loss would score
    it 0. The steps (`make_loss`, `make_eval_step`) check every batch's shapes, `top` aside.

    Raises:
        OutputShapeError: the mismatch (a ValueError; the message begins "outputs of shape" or
            "N outputs a row", to follow the model's name).
    """
    if is_regression(name) and out.shape != y.shape:
        raise OutputShapeError(
            f"outputs of shape {tuple(out.shape)} for targets of shape {tuple(y.shape)}: "
            f"{name} needs the same shape (return one column per target)"
        )
    if name == "cross_entropy" and out.ndim > 0 and out.shape[_class_dim(out)] == 1:
        raise OutputShapeError(
            f"outputs of shape {tuple(out.shape)}: cross_entropy over one class is 0 whatever the "
            "model (float targets are a regression: use mse)"
        )
    if not is_regression(name) and top is not None and out.ndim > 1 and out.shape[1] <= top:
        raise OutputShapeError(f"{out.shape[1]} outputs a row for labels up to {top}")


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
