"""Pure train/eval steps, their compilation, and their batching over trials."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from purestep.core import _direct
from purestep.core.losses import LossName, batch_metric, loss_fn
from purestep.core.model import Buffers, Model, Params
from purestep.core.optim import Optimizer, State

TrainStep = Callable[[Params, Buffers, State, Tensor, Tensor], tuple[Params, Buffers, State, Tensor]]
EvalStep = Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Tensor]]
Fn = TypeVar("Fn", bound=Callable[..., Any])
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The matmul precision of a step's forward and backward: fp32 as is, or bf16 autocast.

    Under bf16 the products run in bfloat16 while params, gradients, the optimizer and the
    loss's softmax stay in float32 (`torch.autocast`'s policy); not bitwise the fp32 step.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _checked(precision: Precision) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def make_loss(
    model: Model, loss: LossName = "cross_entropy", precision: Precision = "fp32"
) -> Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Buffers]]:
    """`loss(params, buffers, x, y) -> (mean loss, new buffers)` of `model` in train mode,
    as the tutorial's `loss_fn(model(X), y)`."""
    _checked(precision)
    fn = loss_fn(loss)

    def train_loss(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> tuple[Tensor, Buffers]:
        with autocast(precision, x.device):
            out, buffers = model.apply(params, buffers, x, train=True)
            return fn(out, y), buffers

    return train_loss


def make_train_step(
    model: Model, optimizer: Optimizer, loss: LossName = "cross_entropy", precision: Precision = "fp32"
) -> TrainStep:
    """`train_step(params, buffers, state, x, y) -> (params, buffers, state, loss)`: one update, pure."""
    grad_fn = grad_and_value(make_loss(model, loss, precision), has_aux=True)

    def train_step(params: Params, buffers: Buffers, state: State, x: Tensor, y: Tensor):
        grads, (value, buffers) = grad_fn(params, buffers, x, y)
        params, state = optimizer.update(grads, state, params)
        return params, buffers, state, value

    return train_step


def make_eval_step(model: Model, loss: LossName = "cross_entropy", precision: Precision = "fp32") -> EvalStep:
    """`eval_step(params, buffers, x, y) -> (loss_sum, metric_sum)` over one batch in eval mode,
    both 0-d: the metric is the number correct (integer labels) or the squared error (floats)."""
    _checked(precision)
    fn = loss_fn(loss)

    def eval_step(params: Params, buffers: Buffers, x: Tensor, y: Tensor):
        with autocast(precision, x.device):
            out, _ = model.apply(params, buffers, x, train=False)
            loss_sum = fn(out, y, reduction="sum")
        return loss_sum, batch_metric(out.float(), y)

    return eval_step


def default_compile_cache() -> Path:
    """`$PURESTEP_COMPILE_CACHE`, else `$XDG_CACHE_HOME/purestep/inductor` (`~/.cache/...`)."""
    if os.environ.get("PURESTEP_COMPILE_CACHE"):
        return Path(os.environ["PURESTEP_COMPILE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "purestep" / "inductor"


def set_compile_cache(path: str | os.PathLike[str] | None = None) -> Path:
    """Point inductor's on-disk cache at `path` (default `default_compile_cache()`).

    Every process that uses the same directory after the first compiles warm.
    """
    path = Path(path if path is not None else default_compile_cache()).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def compile_step(fn: Fn, cache_dir: str | os.PathLike[str] | None = None) -> Fn:
    """`torch.compile(fn, fullgraph=True, dynamic=False, options=_inductor_options())`, as a
    `CompiledStep`.

    Static shapes give one specialised graph for full batches (the loops run an epoch's
    short last batch eagerly, see `short_batch`); hyperparameters and step counts are
    tensors, so nothing else recompiles. The recompile limit is raised so that a search
    over several batch sizes and widths keeps every graph compiled.
    """
    if cache_dir is not None:
        set_compile_cache(cache_dir)
    return cast(Fn, CompiledStep(fn, _inductor_options()))


class CompiledStep:
    """A step compiled by `torch.compile`, whose graphs a loop can also enter directly.

    A call runs through Dynamo as any compiled function does: guards, recompiles, stances
    (`short_batch`, `fail_on_recompile`). With the direct-entry fast path (`core/_direct.py`)
    `direct()` then gives the graph that call ran as a plain function of the step's
    arguments, skipping Dynamo's entry and guard checks. It is valid only for arguments laid
    out exactly as that call's (see `steady`), which is what an epoch's later steps are, and
    only because steps are pure: Dynamo has no side effects to replay around the graph.
    """

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        torch.compiler.config.recompile_limit = max(torch.compiler.config.recompile_limit, 64)
        functools.update_wrapper(self, fn)
        self._options = options
        self._ran: _direct.Ran | None = None
        self._last: tuple[tuple[Any, ...], Any, _direct.Ran] | None = None
        backend = _direct.backend(options, self._note)
        if backend is None:
            self._compiled = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
        else:
            self._compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)

    def _note(self, ran: _direct.Ran) -> None:
        self._ran = ran

    def __call__(self, *args: Any) -> Any:
        self._ran = None
        result = self._compiled(*args)
        self._last = (args, result, self._ran) if self._ran is not None else None
        self._ran = None
        return result

    def direct(self) -> Callable[..., Any] | None:
        """The graph the last call ran, callable as the step itself; None if no graph ran (an
        eager stance, or the fast path off) or its inputs and results are not all the step's
        own tensors."""
        return None if self._last is None else _direct.entry(*self._last)


def direct_step(step: Callable[..., Any]) -> Callable[..., Any] | None:
    """`step.direct()` for a `CompiledStep`, else None."""
    return step.direct() if isinstance(step, CompiledStep) else None


def short_batch(rows: int, batch_size: int) -> contextlib.AbstractContextManager[Any]:
    """Where a step runs on a batch of `rows` < `batch_size` (an epoch's last), compiled steps
    run eagerly: one such step per epoch is not worth a graph of its own (BENCHMARKS.md)."""
    if rows < batch_size:
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def _layout(trees: Sequence[dict[str, Tensor]]) -> list[tuple[Any, ...]]:
    return [
        (key, type(v), v.shape, v.stride(), v.dtype, v.device, v.requires_grad)
        for tree in trees
        for key, v in tree.items()
    ]


def steady(inputs: Sequence[dict[str, Tensor]], outputs: Sequence[dict[str, Tensor]]) -> bool:
    """Whether a loop may run its later steps straight into the graph its first step ran
    (`CompiledStep.direct`), judged after that first step.

    The first step must have returned params and state with the inputs' keys, shapes,
    strides, dtypes and devices (so every later call's inputs are ones the first call's
    guards accepted, given batches that are views of one tensor), and no other non-daemon
    thread may be running (inductor's compile workers aside): a call from another thread
    in between could change which graph ran last.
    """
    return not _other_threads() and _layout(inputs) == _layout(outputs)


def _other_threads() -> bool:
    """Whether a non-daemon thread other than this one and inductor's compile workers is alive."""
    return _direct.other_threads()


def _inductor_options() -> dict[str, Any]:
    """Inductor settings of every compiled step: no size asserts, and the matmul pass unless off.

    Inductor's runtime size asserts re-check, on every call, layouts that Dynamo's guards
    (inputs) and the ops' tested fake kernels (outputs) determine. On the CPU, large fp32
    products run through oneDNN and small ones fuse into inductor's kernels (`core/_onednn.py`,
    a fast path); `PURESTEP_ONEDNN=0` turns that pass off alone.
    """
    options: dict[str, Any] = {"size_asserts": False}
    if os.environ.get("PURESTEP_ONEDNN", "1") == "0":
        return options
    from purestep.core import _onednn

    if _onednn.available():
        options["post_grad_custom_post_pass"] = _onednn.ONEDNN_MATMULS
    return options


def stack(trees: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack same-structured trees leaf by leaf along a new leading trial axis.

    Raises ValueError when the trees' keys differ (SGD states with and without momentum
    buffers, say): such trials run different step graphs and cannot share one.
    """
    for tree in trees[1:]:
        differ = sorted(set(trees[0]) ^ set(tree))
        if differ:
            example = f"{differ[0]!r} and {len(differ) - 1} more"
            raise ValueError(f"cannot stack trees with different keys ({example})")
    return {k: torch.stack([tree[k] for tree in trees]) for k in trees[0]}


def unstack(tree: dict[str, Tensor], n: int | None = None) -> list[dict[str, Tensor]]:
    """Split a stacked tree back into one tree per trial (views, no copies); `n` trials of an
    empty tree (a model without buffers) are `n` empty dicts."""
    if n is None:
        n = len(next(iter(tree.values())))
    return [{k: v[i] for k, v in tree.items()} for i in range(n)]


def batch_over_trials(train_step: TrainStep) -> TrainStep:
    """K trials in one call: params, buffers and state stacked on axis 0, one batch of data shared.

    Random layers draw their own numbers for every trial (`randomness="different"`).
    """
    return vmap(train_step, in_dims=(0, 0, 0, None, None), randomness="different")


def batch_eval_over_trials(eval_step: EvalStep) -> EvalStep:
    """The eval step for stacked params and buffers: returns per-trial `(loss_sum, metric_sum)`."""
    return vmap(eval_step, in_dims=(0, 0, None, None))
