"""Pure train/eval steps, their compilation, and their batching over trials."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

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
    """`torch.compile(fn, fullgraph=True)` with static shapes, as a `CompiledStep`.

    Static shapes give one specialised graph for full batches (the loops run an
    epoch's short last batch eagerly, see `short_batch`); hyperparameters and step
    counts are tensors, so nothing else recompiles. The recompile limit is raised so
    that a search over several batch sizes and widths keeps every graph compiled. On
    the CPU, large fp32 matrix products run through oneDNN rather than ATen's MKL and
    small ones are fused into inductor's kernels (`core/_onednn.py`, BENCHMARKS.md);
    `PURESTEP_ONEDNN=0` turns that off. Inductor's runtime size asserts are off: on
    every call they re-check layouts that Dynamo's guards (inputs) and the ops' tested
    fake kernels (outputs) determine, about 1% of a step at the tutorial's shapes.
    """
    if cache_dir is not None:
        set_compile_cache(cache_dir)
    return cast(Fn, CompiledStep(fn, _inductor_options()))


def _leaves(trees: Sequence[Any]) -> list[Any]:
    """The tensors of a step's arguments or results: dicts' values in order, tensors as they are."""
    return [leaf for tree in trees for leaf in (tree.values() if isinstance(tree, dict) else (tree,))]


class CompiledStep:
    """A step compiled by `torch.compile`, whose graphs a loop can also enter directly.

    A call runs through Dynamo as any compiled function does: guards, recompiles,
    stances (`short_batch`, `fail_on_recompile`). `direct()` then gives the graph that
    call ran as a plain function of the step's arguments, which skips Dynamo's entry
    and guard checks (5-8% of a step at the tutorial's shapes). It is valid only for
    arguments laid out exactly as that call's (see `steady`), which is what an epoch's
    later steps are, and only because steps are pure: Dynamo has no side effects to
    replay around the graph.
    """

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        functools.update_wrapper(self, fn)
        self._options = options
        self._compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=self._backend)
        self._ran: tuple[Callable[..., Any], tuple[Any, ...], Any] | None = None
        self._last: tuple[Any, ...] | None = None

    def __call__(self, *args: Any) -> Any:
        self._ran = None
        result = self._compiled(*args)
        self._last = (args, result, *self._ran) if self._ran is not None else None
        self._ran = None
        return result

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        """Inductor, as `torch.compile`'s default backend, with each run of the graph noted."""
        from torch._inductor.compile_fx import compile_fx

        graph = compile_fx(gm, example_inputs, config_patches=self._options)

        def run(*inputs: Any) -> Any:
            outputs = graph(*inputs)
            self._ran = (graph, inputs, outputs)
            return outputs

        return run

    def direct(self) -> Callable[..., Any] | None:
        """The graph the last call ran, callable as the step itself; None if no graph ran
        (an eager stance) or its inputs and results are not all the step's own tensors."""
        if self._last is None:
            return None
        args, result, graph, inputs, outputs = self._last
        single = not isinstance(result, tuple)
        trees = (result,) if single else result
        argument = {id(leaf): i for i, leaf in enumerate(_leaves(args))}
        produced = {id(out): j for j, out in enumerate(outputs)}
        if not all(id(x) in argument for x in inputs):
            return None
        take = [argument[id(x)] for x in inputs]
        # Each result is a graph output, or an argument handed back as it came (a hyperparameter).
        picks = [(id(r) in produced, produced.get(id(r), argument.get(id(r)))) for r in _leaves(trees)]
        if any(i is None for _, i in picks):
            return None
        keys = [list(tree) if isinstance(tree, dict) else None for tree in trees]

        def step(*args: Any) -> Any:
            leaves = _leaves(args)
            outputs = graph(*[leaves[i] for i in take])
            values = iter([outputs[i] if from_graph else leaves[i] for from_graph, i in picks])
            out = tuple(next(values) if k is None else dict(zip(k, values)) for k in keys)
            return out[0] if single else out

        return step


def direct_step(step: Callable[..., Any]) -> Callable[..., Any] | None:
    """`step.direct()` for a `CompiledStep`, else None."""
    return step.direct() if isinstance(step, CompiledStep) else None


def short_batch(rows: int, batch_size: int) -> contextlib.AbstractContextManager[Any]:
    """Where a step runs on a batch of `rows` < `batch_size` (an epoch's last), compiled steps
    run eagerly: one such step per epoch is not worth a graph of its own (2.6 s to compile
    cold, 0.25 s warm, for a step that takes a few ms eager)."""
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
    workers: set[threading.Thread] = set()
    compiler = sys.modules.get("torch._inductor.async_compile")
    if compiler is not None:
        try:
            if compiler.AsyncCompile.pool.cache_info().currsize:
                workers = set(compiler.AsyncCompile.pool()._threads)
        except AttributeError:  # another torch: count its workers as others, and keep the guards
            pass
    current = threading.current_thread()
    return any(t is not current and not t.daemon and t not in workers for t in threading.enumerate())


def _inductor_options() -> dict[str, Any]:
    """Inductor settings of every compiled step: no size asserts, and the matmul pass unless off."""
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
