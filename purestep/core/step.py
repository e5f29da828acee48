"""Pure train/eval steps, their compilation, and their batching over trials."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from purestep.core import _direct
from purestep.core.errors import first_line
from purestep.core.files import cache_home
from purestep.core.losses import LossName, batch_metric, check_output_shape, loss_fn, shape_free_loss_fn
from purestep.core.model import Buffers, Model, Params
from purestep.core.optim import Optimizer, State, check_state

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


def _kinds(model: Model, optimizer: Optimizer | None = None) -> None:
    """Refuse what is not a `Model` (`ps.functional(...)`) or an `Optimizer` (`ps.sgd(...)`, ...)."""
    if not isinstance(model, Model):
        raise TypeError(f"expected a Model from ps.functional(Net, ...), got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"expected an Optimizer such as ps.sgd(lr=...), got {type(optimizer).__name__}")


def _checked(precision: Precision) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def make_loss(
    model: Model, loss: LossName = "cross_entropy", precision: Precision = "fp32", shape_free: bool = False
) -> Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Buffers]]:
    """`loss(params, buffers, x, y) -> (mean loss, new buffers)` of `model` in train mode,
    as the tutorial's `loss_fn(model(X), y)` (`shape_free_loss_fn` with `shape_free`)."""
    _kinds(model)
    _checked(precision)
    fn = shape_free_loss_fn(loss) if shape_free else loss_fn(loss)

    def train_loss(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> tuple[Tensor, Buffers]:
        with autocast(precision, x.device):
            out, buffers = model.apply(params, buffers, x, train=True)
            check_output_shape(loss, out, y)
            return fn(out, y), buffers

    return train_loss


def make_train_step(
    model: Model,
    optimizer: Optimizer,
    loss: LossName = "cross_entropy",
    precision: Precision = "fp32",
    shape_free: bool = False,
    eager: bool = False,
) -> TrainStep:
    """`train_step(params, buffers, state, x, y) -> (params, buffers, state, loss)`: one update, pure.

    `shape_free` computes the loss so that one compiled graph serves every batch and stack size.
    `eager` gives the same step for running as it is (never under `torch.compile` or `vmap`):
    gradients by `torch.autograd.grad` rather than `grad_and_value`'s wrapped tensors, and the
    optimizer's `eager_update`, which runs only each choice's own branch. The two agree bit for bit
    on most layers (Linear, convolutions, BatchNorm, LayerNorm, Embedding, attention, dropout); on
    a few, `grad_and_value` takes the backward through other kernels and they agree to float32
    rounding (GroupNorm, LSTM, `weight_norm`); and where dropout draws a mask for a non-contiguous
    tensor (a Transformer layer's attention output), its mask follows another memory order under
    `grad_and_value`. `eager` is the one equal to the module loop bit for bit.

    The model's frozen params (`Model.frozen`) are constants of the loss: no gradient is taken
    for them and the update sees only `model.trainable(params)` (`trainable_update`), so they come
    back as they went in. `state` is `optimizer.init(model.trainable(params))`, as torch.optim
    keeps no state for them; one made from every param works too, its frozen entries untouched.

    Raises:
        ModelError: every param of the model is frozen (nothing to train; torch's loop raises too).
    """
    _kinds(model, optimizer)
    if model.frozen:
        model.trainable(dict(model.train_module().named_parameters()))  # raises if nothing is left
    train_loss = make_loss(model, loss, precision, shape_free)
    if eager:
        return _eager_train_step(model, train_loss, optimizer.eager_update or optimizer.update)
    update = trainable_update(model, optimizer.update)
    if not model.frozen:
        grad_fn = grad_and_value(train_loss, has_aux=True)

        def train_step(params: Params, buffers: Buffers, state: State, x: Tensor, y: Tensor):
            check_state(state, params)
            grads, (value, buffers) = grad_fn(params, buffers, x, y)
            params, state = update(grads, state, params)
            return params, buffers, state, value

        return train_step

    def split_loss(trainable: Params, fixed: Params, buffers: Buffers, x: Tensor, y: Tensor):
        return train_loss(trainable | fixed, buffers, x, y)

    split_grad_fn = grad_and_value(split_loss, has_aux=True)

    def train_step_with_frozen(params: Params, buffers: Buffers, state: State, x: Tensor, y: Tensor):
        check_state(state, params)
        trainable, fixed = _split(model, params)
        grads, (value, buffers) = split_grad_fn(trainable, fixed, buffers, x, y)
        params, state = update(grads, state, params)
        return params, buffers, state, value

    return train_step_with_frozen


def _split(model: Model, params: Params) -> tuple[Params, Params]:
    """`params` as (trainable, frozen), each in `params`' order."""
    trainable = model.trainable(params)
    return trainable, {k: v for k, v in params.items() if k not in trainable}


Update = Callable[[Params, State, Params], tuple[Params, State]]


def trainable_update(model: Model, update: Update) -> Update:
    """`update` over `model.trainable(params)` alone, the frozen params handed back as they came,
    every param in `params`' order: the one way a step (and `purestep check`'s float64 twin)
    applies an optimizer. `update` itself when nothing is frozen."""
    if not model.frozen:
        return update

    def restricted(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        new, state = update(grads, state, model.trainable(params))
        return {k: new.get(k, v) for k, v in params.items()}, state

    return restricted


def _eager_train_step(
    model: Model,
    train_loss: Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Buffers]],
    update: Update,
) -> TrainStep:
    """The train step by plain autograd: the loss on leaves that alias `params` (nothing of the
    caller's is written), their gradients, one update; frozen params enter as constants, as the
    module's own do (no gradient, no update)."""
    update = trainable_update(model, update)
    frozen = model.frozen

    def train_step(params: Params, buffers: Buffers, state: State, x: Tensor, y: Tensor):
        check_state(state, params)
        if frozen:
            leaves = {
                k: v.detach() if k in frozen else v.detach().requires_grad_() for k, v in params.items()
            }
            trainable = model.trainable(leaves)
        else:
            trainable = leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            value, buffers = train_loss(leaves, buffers, x, y)
        if value.requires_grad:
            grads = torch.autograd.grad(value, tuple(trainable.values()), materialize_grads=True)
        else:  # a loss that no param reaches: zero gradients, as grad_and_value gives
            grads = tuple(torch.zeros_like(v) for v in trainable.values())
        params, state = update(dict(zip(trainable, grads)), state, params)
        return params, {k: v.detach() for k, v in buffers.items()}, state, value.detach()

    return train_step


def make_eval_step(
    model: Model, loss: LossName = "cross_entropy", precision: Precision = "fp32", shape_free: bool = False
) -> EvalStep:
    """`eval_step(params, buffers, x, y) -> (loss_sum, metric_sum)` over one batch in eval mode,
    both 0-d: the metric is the number correct (integer labels) or the squared error (floats)."""
    _kinds(model)
    _checked(precision)
    fn = shape_free_loss_fn(loss) if shape_free else loss_fn(loss)

    def eval_step(params: Params, buffers: Buffers, x: Tensor, y: Tensor):
        # no_grad, as the tutorial's test_loop: some CPU kernels (LSTM) differ with autograd on
        with torch.no_grad(), autocast(precision, x.device):
            out, _ = model.apply(params, buffers, x, train=False)
            check_output_shape(loss, out, y)
            loss_sum = fn(out, y, reduction="sum")
        return loss_sum, batch_metric(out.float(), y)

    return eval_step


def default_compile_cache() -> Path:
    """`$PURESTEP_COMPILE_CACHE`, else `$XDG_CACHE_HOME/purestep/inductor` (`~/.cache/...`)."""
    if os.environ.get("PURESTEP_COMPILE_CACHE"):
        return Path(os.environ["PURESTEP_COMPILE_CACHE"])
    return cache_home() / "inductor"


def set_compile_cache(path: str | os.PathLike[str] | None = None) -> Path:
    """Point inductor's on-disk cache at `path` (default `default_compile_cache()`), and keep
    compiled steps that have a `key` there as packages (`core/artifacts.py`).

    Every process that uses the same directory after the first starts warm.
    """
    global _ARTIFACTS
    path = Path(path if path is not None else default_compile_cache()).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    _ARTIFACTS = packages_folder(path)
    return path


def packages_folder(path: str | os.PathLike[str] | None = None) -> Path:
    """Where `set_compile_cache(path)` keeps compiled steps' packages (nothing is set or made)."""
    return Path(path if path is not None else default_compile_cache()).expanduser().resolve() / "steps"


_ARTIFACTS: Path | None = None
"""Where compiled steps with a `key` are saved and loaded (`set_compile_cache`); None: nowhere."""
_SHORT: contextvars.ContextVar[bool] = contextvars.ContextVar("purestep_short_batch", default=False)


def compile_step(
    fn: Fn,
    cache_dir: str | os.PathLike[str] | None = None,
    key: str | None = None,
    rates: Sequence[nn.Module] = (),
) -> Fn:
    """`torch.compile(fn, fullgraph=True, dynamic=False, options=_inductor_options())`, as a
    `CompiledStep`.

    Static shapes give one specialised graph for full batches (the loops run an epoch's
    short last batch eagerly, see `short_batch`); hyperparameters and step counts are
    tensors, so nothing else recompiles. The recompile limit is raised so that a search
    over several batch sizes and widths keeps every graph compiled. With `key`, the text
    that says what the arguments do not (model, optimizer family, loss, precision,
    batching), and a compile cache set, each layout's graph is saved once, one for every batch
    size, and later processes load it without tracing (`core/artifacts.py`). With `rates`, the
    dropout layers `fn` runs in training (`artifacts.dropouts`), a package takes their rates as an
    input, so steps of models that differ only in those rates share it (`artifacts.step_key`).
    """
    if cache_dir is not None:
        set_compile_cache(cache_dir)
    return cast(Fn, CompiledStep(fn, None, key, rates))


class CompiledStep:
    """A step compiled by `torch.compile` or loaded from a saved package, whose graphs a loop
    can also enter directly.

    Without a saved package, a call runs through Dynamo as any compiled function does:
    guards, recompiles, stances (`short_batch`, `fail_on_recompile`), and `torch.compile`
    is built on the first such call. With the direct-entry fast path (`core/_direct.py`)
    `direct()` then gives the graph that call ran as a plain function of the step's
    arguments, skipping Dynamo's entry and guard checks. It is valid only for arguments laid
    out exactly as that call's (see `steady`), which is what an epoch's later steps are, and
    only because steps are pure: Dynamo has no side effects to replay around the graph.
    With a `key` and a compile cache, every call runs the package saved for its arguments'
    layout (built on first use), never through Dynamo, and `direct()` is the package of the
    last full batch. One package serves every batch size of 2 rows or more, an epoch's short
    last batch included (a 1-row batch has its own), so a warm process never runs a step
    eagerly (whose `grad_and_value` would import Dynamo). A step Dynamo cannot trace (an LSTM, a
    BatchNorm with a cumulative average) runs uncompiled, with a warning.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        options: dict[str, Any] | None,
        key: str | None = None,
        rates: Sequence[nn.Module] = (),
    ):
        """`options` for inductor, None for `_inductor_options()` (made when first needed); `rates`
        as `compile_step`'s."""
        functools.update_wrapper(self, fn)
        self._fn, self._given, self._key, self._rates = fn, options, key, list(rates)
        self._default = options is None
        self._compiled: Callable[..., Any] | None = None
        self._ran: _direct.Ran | None = None
        self._last: tuple[tuple[Any, ...], Any, _direct.Ran] | Callable[..., Any] | None = None
        self._packages: dict[str, Callable[..., Any] | None] = {}
        self._every_batch = True
        """Whether packages serve every batch size (`artifacts.batch_rows`); off once an export fails so."""
        self._eager = False
        """Whether the step runs uncompiled: on once Dynamo failed on a call the step itself runs."""

    @property
    def options(self) -> dict[str, Any]:
        """The inductor options this step compiles with."""
        if self._given is None:
            self._given = _inductor_options()
        return self._given

    def _options_text(self) -> dict[str, str]:
        """The options as a cache key's part, without making the default ones (that loads inductor);
        the same text before and after they are made, so every layout's key is found warm."""
        from purestep.core.artifacts import option_text

        if self._default:
            return {"size_asserts": "False", "onednn matmul pass": str(_matmul_pass_wanted())}
        return {name: option_text(value) for name, value in sorted(self._given.items())}

    def _dynamo(self) -> Callable[..., Any]:
        if self._compiled is None:
            torch.compiler.config.recompile_limit = max(torch.compiler.config.recompile_limit, 64)
            backend = _direct.backend(self.options, self._note)
            if backend is None:
                self._compiled = torch.compile(self._fn, fullgraph=True, dynamic=False, options=self.options)
            else:
                self._compiled = torch.compile(self._fn, fullgraph=True, dynamic=False, backend=backend)
        return self._compiled

    def _note(self, ran: _direct.Ran) -> None:
        self._ran = ran

    def __call__(self, *args: Any) -> Any:
        if self._key is not None and _ARTIFACTS is not None:
            package = self._package(args, _ARTIFACTS)
            short = _SHORT.get()
            self._last = None if short else package
            if package is not None:
                return package(*args)
            if short:
                return self._fn(*args)
        if self._eager:
            return self._fn(*args)
        self._ran = None
        try:
            result = self._dynamo()(*args)
        except RuntimeError as e:
            if type(e) is RuntimeError:  # not the compiler's (its errors subclass it): a stance's, a kernel's
                raise
            result = self._fn(*args)  # the step's own error, if it has one, is raised here
            self._eager, self._last = True, None
            cause = f"{type(e).__name__}: {first_line(e)}"
            warnings.warn(f"step not compiled ({cause}); it runs eagerly", stacklevel=2)
            return result
        self._last = (args, result, self._ran) if self._ran is not None else None
        self._ran = None
        return result

    def _package(self, args: tuple[Any, ...], folder: Path) -> Callable[..., Any] | None:
        """The saved package for `args`' layout as the step itself: loaded, or built and saved
        first; None (and a warning, once per layout) when the step cannot be saved."""
        from purestep.core import artifacts

        if artifacts.structure(args) is None:
            return None
        layout = repr(artifacts.layout(args, self._every_batch))
        if layout not in self._packages:
            self._packages[layout] = None
            parts = artifacts.key(
                self._key or "", args, self._options_text(), None, self._every_batch, len(self._rates)
            )
            try:
                path = folder / f"{artifacts.name(parts)}.pt2"
                found = artifacts.load(path, parts)
                if found is None:
                    try:
                        every = self._every_batch
                        artifacts.build(self._fn, args, parts, folder, self.options, every, self._rates)
                    except Exception:
                        if not (self._every_batch and artifacts.batch_rows(args) is not None):
                            raise
                        self._every_batch = False  # its export fixes the batch: a package per batch size
                        return self._package(args, folder)
                    found = artifacts.load(path, parts)
            except Exception as e:  # export and AOTInductor raise many kinds: compile in-process instead
                cause = f"{type(e).__name__}: {e}"
                warnings.warn(f"compiled step not saved ({cause}); compiled in this process", stacklevel=3)
                return None
            if found is not None:
                device = artifacts.leaves(args)[0].device
                extra = [artifacts.rates_of(self._rates, device)] if self._rates else []
                self._packages[layout] = _package_step(*found, extra)
        return self._packages[layout]

    def saved(self, *args: Any, folder: Path | None = None, threads: int | None = None) -> bool:
        """Whether a call with `args`' layout on `threads` torch threads (default: now's) would run
        a package already saved in `folder` (default: the one `set_compile_cache` set), and so
        compile nothing; nothing is built, loaded or set."""
        from purestep.core import artifacts

        folder = folder or _ARTIFACTS
        if self._key is None or folder is None or artifacts.structure(args) is None:
            return False
        for every_batch in (True, False):
            rates = len(self._rates)
            parts = artifacts.key(self._key, args, self._options_text(), threads, every_batch, rates)
            if artifacts.saved(folder / f"{artifacts.name(parts)}.pt2", parts):
                return True
        return False

    def direct(self) -> Callable[..., Any] | None:
        """The graph the last call ran, callable as the step itself; None if no graph ran (an
        eager stance, or the fast path off) or its inputs and results are not all the step's
        own tensors."""
        if self._last is None or callable(self._last):
            return self._last
        return _direct.entry(*self._last)


def _package_step(
    run: Callable[..., Any], results: list[Any], single: bool, extra: list[Tensor]
) -> Callable[..., Any]:
    """A saved package as the step itself: `run` over the arguments' tensors and `extra` (its
    dropout rates, if it takes them), results rebuilt."""
    from purestep.core.artifacts import leaves, rebuild

    def step(*args: Any) -> Any:
        out = rebuild(results, run(leaves(args) + extra))
        return out[0] if single else tuple(out)

    return step


def direct_step(step: Callable[..., Any]) -> Callable[..., Any] | None:
    """`step.direct()` for a `CompiledStep`, else None."""
    return step.direct() if isinstance(step, CompiledStep) else None


def short_batch(rows: int, batch_size: int) -> contextlib.AbstractContextManager[Any]:
    """Where a step runs on a batch of `rows` < `batch_size` (an epoch's last), steps compiled
    in this process run eagerly (one such step per epoch is not worth a Dynamo recompile);
    steps with saved packages run their package (`CompiledStep`)."""
    if rows < batch_size:
        return _eager()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _eager() -> Any:
    """Once Dynamo is loaded, every compiled function runs eagerly; steps with saved packages
    run theirs, or eagerly when none can be saved."""
    token = _SHORT.set(True)
    try:
        if "torch._dynamo" in sys.modules:
            with torch.compiler.set_stance("force_eager"):
                yield
        else:
            yield
    finally:
        _SHORT.reset(token)


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
    if _matmul_pass_wanted():
        from purestep.core import _onednn

        matmul_pass = _onednn.matmul_pass()
        if matmul_pass is not None:
            options["post_grad_custom_post_pass"] = matmul_pass
    return options


def _matmul_pass_wanted() -> bool:
    if os.environ.get("PURESTEP_ONEDNN", "1") == "0":
        return False
    from purestep.core import _onednn

    return _onednn.available()


def stack(trees: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack same-structured trees leaf by leaf along a new leading trial axis.

    Raises ValueError when the trees' keys differ (SGD states with and without momentum
    buffers, say): such trials run different step graphs and cannot share one.
    """
    if not trees:
        raise ValueError("stack needs at least one tree")
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
        if not tree:
            raise ValueError("unstack of an empty tree needs n, the number of trials")
        n = len(next(iter(tree.values())))
    return [{k: v[i] for k, v in tree.items()} for i in range(n)]


def batch_over_trials(train_step: TrainStep) -> TrainStep:
    """K trials in one call: params, buffers and state stacked on axis 0, one batch of data shared.

    Random layers draw their own numbers for every trial (`randomness="different"`).
    """
    return vmap(train_step, in_dims=(0, 0, 0, None, None), randomness="different")


def batch_over_slots(train_step: TrainStep) -> TrainStep:
    """K trials in one call, each on its own batch: params, buffers, state and data stacked on axis 0."""
    return vmap(train_step, in_dims=(0, 0, 0, 0, 0), randomness="different")


def compile_shape_free(fn: Fn) -> Fn:
    """`torch.compile(fn, fullgraph=True, dynamic=True)`: every dimension symbolic, so that one
    graph serves every stack and batch size (sizes 0 and 1 aside: Dynamo always specialises them)."""
    torch.compiler.config.recompile_limit = max(torch.compiler.config.recompile_limit, 64)
    return cast(Fn, torch.compile(fn, fullgraph=True, dynamic=True, options={"size_asserts": False}))


def batch_eval_over_trials(eval_step: EvalStep) -> EvalStep:
    """The eval step for stacked params and buffers: returns per-trial `(loss_sum, metric_sum)`."""
    return vmap(eval_step, in_dims=(0, 0, None, None))
