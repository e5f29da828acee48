"""Any `nn.Module` as a pure `init`/`apply` pair over flat dicts of params and buffers.

`init(seed)` builds the module as `torch.manual_seed(seed); factory(**kwargs)` does and
hands back its `named_parameters()` and `named_buffers()`. `apply` runs them through one
weightless (meta-device) copy of the module with `torch.func.functional_call`, so the
model itself holds no state: params and buffers travel as values, in and out.

Parameters the module freezes (`requires_grad=False` when it is built) stay in `params`, keyed as
the others, and are named in `Model.frozen`: the train step takes no gradient for them and the
optimizer never sees them (`Model.trainable`), so they keep their values and hold no optimizer
state, as `torch.optim` leaves a parameter without a gradient.

Where purity ends: dropout and other random layers draw from torch's global generator,
exactly as the module does, because that is what keeps an eager functional step bitwise
equal to the module loop. `seed_like_module(seed)` puts that generator where the module
loop's would be; under `vmap` each trial draws its own numbers from it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from purestep.core.errors import PurestepError

Params = dict[str, Tensor]
Buffers = dict[str, Tensor]
Factory = Callable[..., nn.Module]


class ModelError(PurestepError):
    """A model that cannot be found or built from what was given."""


class ModelArgError(ModelError):
    """A model argument of a kind or value the factory cannot take (`check_model_args`)."""


# --- the zoo ------------------------------------------------------------------------------


class NeuralNetwork(nn.Module):
    """The tutorial's model; the defaults build exactly its 784-512-512-10 stack.

    `log_softmax=True` ends it in log-probabilities, the input `nn.NLLLoss` expects.
    """

    def __init__(
        self,
        in_features: int = 28 * 28,
        hidden: Sequence[int] = (512, 512),
        classes: int = 10,
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.log_softmax = log_softmax
        self.flatten = nn.Flatten()
        if any(w < 1 for w in hidden):
            raise ValueError(f"hidden widths must be positive; got {tuple(hidden)}")
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], classes))
        self.linear_relu_stack = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits.log_softmax(1) if self.log_softmax else logits


class ConvNet(nn.Module):
    """A small CNN for 1-channel images, shaped like flax's `examples/mnist` CNN, with BatchNorm
    and dropout: conv-BN-ReLU-average pool twice, then a dense layer and dropout before the
    classifier.

    Pooling averages (as flax's example does), so ReLUs are the only kinks `purestep check` has to
    recognise; the second pool is adaptive to a 4x4 grid, so 28x28 and 8x8 images both fit.
    """

    def __init__(
        self,
        channels: int = 1,
        classes: int = 10,
        width: int = 32,
        dense: int = 256,
        dropout: float = 0.5,
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.log_softmax = log_softmax
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),  # BatchNorm's shift is the bias
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AvgPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, dense),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dense, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.features(x))
        return logits.log_softmax(1) if self.log_softmax else logits


# --- a module as init/apply ---------------------------------------------------------------


def _frozen(value: Any) -> Any:
    """`value` as something hashable that is equal where it is: lists (nested too) as tuples, sets
    as frozensets, mappings as their items in key order."""
    if isinstance(value, Mapping):
        return tuple(sorted(((_frozen(k), _frozen(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_frozen(v) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class Model:
    """A module factory and its keyword arguments, as pure `init`/`apply` functions.

    Two models are equal when they build the same module (same factory, same arguments),
    so steps built for one serve the other. `frozen` names the parameters the module builds
    with `requires_grad=False` (keyed as `named_parameters()`), read once from a weightless copy.
    """

    factory: Factory
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    _train: nn.Module = field(init=False, repr=False)
    _eval: nn.Module = field(init=False, repr=False)
    _tied: bool = field(init=False, repr=False)
    _names: tuple[frozenset[str], frozenset[str]] = field(init=False, repr=False)
    frozen: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if not self.name:
            object.__setattr__(self, "name", getattr(self.factory, "__name__", type(self.factory).__name__))
        skeleton = self._weightless()
        # Two weightless copies, one per mode, so that neither step flips the other's flag.
        object.__setattr__(self, "_train", skeleton.train())
        object.__setattr__(self, "_eval", self._weightless().eval())
        every = dict(skeleton.named_parameters(remove_duplicate=False))
        object.__setattr__(self, "_tied", len(every) != len(dict(skeleton.named_parameters())))
        names = frozenset(dict(skeleton.named_parameters())), frozenset(dict(skeleton.named_buffers()))
        object.__setattr__(self, "_names", names)
        frozen = frozenset(k for k, p in skeleton.named_parameters() if not p.requires_grad)
        object.__setattr__(self, "frozen", frozen)
        sparse = [n for n, m in skeleton.named_modules() if getattr(m, "sparse", False) is True]
        if sparse:
            raise ModelError(
                f"model {self.name!r}: {sparse[0] or type(skeleton).__name__} takes sparse gradients "
                "(sparse=True), which the functional steps do not: build it with sparse=False"
            )

    def _weightless(self) -> nn.Module:
        """A module whose params and buffers are on the meta device (no memory, no values).

        Built there; a module that computes with values while it is built (`.item()`) or keeps a
        plain tensor attribute (not a buffer) for its forward is built on the CPU instead, the
        global generator left as it was, and its params and buffers moved to meta: its plain
        tensors stay on the CPU, where `module.to(device)` would leave them too.
        """
        try:
            with torch.device("meta"):
                module = self.module()
            if not _plain_tensors(module):
                return module
        except Exception:  # built again below, where a module's own error is raised as it is
            pass
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            return self.module().to("meta")

    def _key(self) -> tuple[object, ...]:
        return (type(self), self.factory, _frozen(self.kwargs), self.frozen)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def module(self) -> nn.Module:
        """A fresh module (weights drawn from the global generator, as its constructor does)."""
        module = self.factory(**self.kwargs)
        if not isinstance(module, nn.Module):
            kind = type(module).__name__
            raise ModelError(f"model {self.name!r}: its factory returned {kind!r}, not an nn.Module")
        return module

    def train_module(self) -> nn.Module:
        """The weightless train-mode module `apply` calls (its layers' settings, e.g. dropout rates)."""
        return self._train

    def eval_module(self) -> nn.Module:
        """The weightless eval-mode module `apply(..., train=False)` calls."""
        return self._eval

    def init(self, seed: int, device: torch.device | str = "cpu") -> tuple[Params, Buffers]:
        """`(params, buffers)` bitwise equal to `torch.manual_seed(seed); factory(**kwargs)`'s,
        with the global generator left as it was.

        Drawn on the CPU and then moved, so a seed gives the same model on every device.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device("cpu"):
                module = self.module()
        return state_of(module, device)

    def trainable(self, params: Params) -> Params:
        """`params` without the frozen ones: what an optimizer trains, so its state is
        `optimizer.init(model.trainable(params))` (`params` itself when nothing is frozen).

        Raises:
            ModelError: every one of `params` is frozen: there is nothing to train.
        """
        if not self.frozen:
            return params
        trainable = {k: v for k, v in params.items() if k not in self.frozen}
        if not trainable and params:
            raise ModelError(f"every parameter of model {self.name!r} is frozen (requires_grad=False)")
        return trainable

    def seed_like_module(self, seed: int) -> None:
        """Leave the global generator where `torch.manual_seed(seed); factory(**kwargs)` leaves it,
        so random layers (dropout) draw what the module loop draws from there."""
        torch.manual_seed(seed)
        with torch.device("cpu"):
            self.module()

    def saved(self, params: Params, buffers: Buffers) -> dict[str, Tensor]:
        """`params | buffers` without the non-persistent buffers `state_dict()` leaves out: what a
        saved model file holds (tied weights once, as `named_parameters()`), which
        `load_state_dict` takes (with `strict=False` for the tied weights' other names)."""
        kept = self._train.state_dict(keep_vars=True)
        return params | {k: v for k, v in buffers.items() if k in kept}

    def apply(
        self, params: Params, buffers: Buffers, x: Tensor, train: bool = True
    ) -> tuple[Tensor, Buffers]:
        """The module's output on `x` and its buffers after the call; inputs are never written.

        In train mode buffers come back updated (BatchNorm's running statistics); in eval
        mode they come back as given.
        """
        if not torch.compiler.is_compiling():  # a trace checks once, at its first call
            self._check_names(params, buffers)
        # The module may update buffers in place (BatchNorm in train mode): it gets copies. It may
        # also reassign one (`self.ema = 0.9 * self.ema + ...`): `functional_call` writes that back
        # into the one dict it is given, where the new buffers are read from.
        values = params | {k: v.clone() for k, v in buffers.items()}
        if not train:
            return functional_call(self._eval, values, (x,), tie_weights=self._tied), buffers
        out = functional_call(self._train, values, (x,), tie_weights=self._tied)
        return out, {k: values[k] for k in buffers}

    def _check_names(self, params: Params, buffers: Buffers) -> None:
        """Refuse params or buffers that lack one of the module's (`functional_call` would run the
        weightless module's own, and fail on the meta device)."""
        param_names, buffer_names = self._names
        if param_names <= params.keys() and buffer_names <= buffers.keys():
            return
        missing = sorted((param_names - params.keys()) | (buffer_names - buffers.keys()))
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"model {self.name!r}: params and buffers lack {shown} (use model.init)")


def _plain_tensors(module: nn.Module) -> bool:
    """Whether any submodule keeps a tensor as a plain attribute (not a param or a buffer)."""
    return any(isinstance(v, Tensor) for m in module.modules() for v in vars(m).values())


def state_of(module: nn.Module, device: torch.device | str = "cpu") -> tuple[Params, Buffers]:
    """A module's `named_parameters()` and `named_buffers()` as detached copies on `device`."""
    params = {k: v.detach().to(device, copy=True) for k, v in module.named_parameters()}
    buffers = {k: v.detach().to(device, copy=True) for k, v in module.named_buffers()}
    return params, buffers


def functional(factory: Factory | nn.Module, **kwargs: Any) -> Model:
    """Any module class, factory or instance as a `Model`.

    A factory is called with `kwargs` each time a module is needed; an instance stands for
    its own architecture (its current weights are not kept: `state_of(module)` gives them), drawn
    afresh by each layer's public `reset_parameters`. A layer that has parameters of its own and no
    such reset (MultiheadAttention, whose reset is private; a custom `nn.Parameter`), or whose
    weights are parametrized (`weight_norm`, `register_parametrization`: a reset draws a computed
    tensor), keeps the instance's weights for every seed, with a warning naming it: give the class or
    a factory to draw them from each seed.
    """
    if isinstance(factory, nn.Module):
        if kwargs:
            raise TypeError("an nn.Module instance takes no keyword arguments")
        instance = factory
        kept = _kept_weights(instance)
        if kept:
            shown = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
            warnings.warn(
                f"functional({type(instance).__name__} instance): the weights of {shown} stay the "
                "instance's for every seed (no public reset_parameters, or parametrized); give the "
                "class or a factory to draw them from each seed",
                stacklevel=2,
            )
        return Model(lambda: _copy_structure(instance), {}, type(instance).__name__)
    if not callable(factory):
        raise TypeError(f"expected an nn.Module class, factory or instance, got {type(factory).__name__}")
    return Model(factory, kwargs)


def _kept_weights(module: nn.Module) -> list[str]:
    """The layers of `module` whose weights `_copy_structure` cannot draw afresh: parametrized ones,
    and those with parameters of their own but no public `reset_parameters`."""
    from torch.nn.utils import parametrize

    kept = []
    for name, m in module.named_modules():
        if isinstance(m, parametrize.ParametrizationList):  # a parametrized layer's: named by it
            continue
        own = next(m.parameters(recurse=False), None) is not None
        if parametrize.is_parametrized(m) or (own and not hasattr(m, "reset_parameters")):
            kept.append(name or type(m).__name__)
    return kept


def _copy_structure(module: nn.Module) -> nn.Module:
    """A module of the same structure: a deep copy whose weights are drawn afresh where it can."""
    import copy

    clone = copy.deepcopy(module).to(torch.get_default_device())
    for m in clone.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return clone


def mlp(in_features: int = 28 * 28, hidden: Sequence[int] = (512, 512), classes: int = 10) -> Model:
    """The tutorial's model family: `mlp()` is its 784-512-512-10 network."""
    return Model(
        NeuralNetwork, {"in_features": in_features, "hidden": tuple(hidden), "classes": classes}, "mlp"
    )


def cnn(channels: int = 1, classes: int = 10, **kwargs: Any) -> Model:
    """The zoo's small CNN (`ConvNet`: BatchNorm and dropout) for `channels`-channel images."""
    return Model(ConvNet, {"channels": channels, "classes": classes, **kwargs}, "cnn")


# --- models by name -----------------------------------------------------------------------

ZOO: dict[str, Factory] = {"mlp": NeuralNetwork, "cnn": ConvNet}
"""Built-in models by name; `--model NAME`."""


def resolve_factory(ref: str) -> Factory:
    """`mlp`, `cnn`, or `path/to/file.py:factory` (a module class or a function returning one)."""
    if ref in ZOO:
        return ZOO[ref]
    path, sep, attr = ref.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ModelError(f"unknown model {ref!r}; use one of {', '.join(ZOO)} or path/to/file.py:factory")
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model file {file} {'is not a file' if file.exists() else 'does not exist'}")
    # Named by its path, the same in every process: saved steps of its models are found again.
    name = f"purestep_user_model_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {file}")
    module = sys.modules.get(name)
    if module is None:
        folder = str(file.resolve().parent)
        if folder not in sys.path:  # its own modules import as a script's do; installed ones win
            sys.path.append(folder)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # a user's file: any error or exit is theirs, in one line
            del sys.modules[name]
            raise ModelError(f"cannot import {file}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{file} has no callable {attr!r}")
    return factory


def accepted(factory: Factory) -> set[str] | None:
    """The keyword arguments `factory` takes, or None if it takes any (`**kwargs`)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def defaults(factory: Factory) -> dict[str, Any]:
    """The default values of `factory`'s keyword arguments (what it builds when not told)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


INT64_MAX = 2**63 - 1
"""The largest integer a tensor's size or a torch argument holds."""


def check_model_args(ref: str, model_args: Mapping[str, Any]) -> None:
    """Refuse a typed model argument of the wrong kind: words where the factory's default is a
    number or a flag, a fraction where it is an integer, a flag where it is a number and a number
    where it is a flag (`dropout=true` trained at 1.0), anything but integers separated by commas
    where it is a tuple (`width=abc`, `hidden=64` failed inside the factory, with its own message);
    and whatever the default, a number that is not finite or an integer beyond 64 bits (torch
    refused it with its C++ frames). For what a user types only: a space's range of floats may serve
    a factory that rounds them.

    Raises:
        ModelArgError: naming the argument, the kind its default has, and the value given.
        ModelError: the model itself cannot be found (`resolve_factory`).
    """
    if not model_args:
        return
    known = defaults(resolve_factory(ref))
    for name, given in model_args.items():
        values = given if isinstance(given, (tuple, list)) else (given,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ModelArgError(f"model {ref!r} takes finite numbers only for {name!r}; got {given!r}")
        if any(isinstance(v, int) and abs(v) > INT64_MAX for v in values):
            raise ModelArgError(f"model {ref!r} takes integers up to {INT64_MAX} for {name!r}; got {given!r}")
        default = known.get(name)
        if isinstance(default, tuple):
            kind = "integers separated by commas, e.g. 512,512 (one: 512,)"
            wrong = not isinstance(given, (tuple, list))
        elif isinstance(default, (bool, int, float)):
            kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
            wrong = isinstance(given, str) or (type(default) is int and isinstance(given, float))
            wrong = wrong or isinstance(default, bool) != isinstance(given, bool)
        else:
            continue
        if wrong:
            said = f"model {ref!r} takes {kind} for {name!r} (default {default!r}); got {given!r}"
            raise ModelArgError(said)


def watched(model: Model, params: Params) -> Params:
    """`params` as fresh leaves, the trainable ones requiring grad (the caller's untouched): outputs
    computed on them show whether training can reach any (`untrainable`)."""
    return {k: v.detach().requires_grad_(k not in model.frozen) for k, v in params.items()}


def untrainable(model: Model, params: Params, out: Tensor) -> str | None:
    """Why training cannot change `model`, given outputs computed on `watched(model, params)`: it
    has no trainable parameter, or none reaches its outputs (a detached forward). The module loop
    refuses both (torch.optim's empty parameter list; backward of a loss with no graph), where the
    functional steps take zero gradients, as `grad` of a constant, and train nothing."""
    if not isinstance(out, Tensor):
        return f"returns {type(out).__name__}, not one tensor: the losses score one output tensor"
    if not params or len(model.frozen) == len(params):
        return "has no trainable parameter: training would change nothing"
    if not out.requires_grad:
        return (
            "gives outputs no trainable parameter reaches (a detached forward): "
            "training would change nothing"
        )
    return None


def check_runs(model: Model, x: Tensor, y: Tensor, loss: str, top: int | None = None) -> None:
    """Run `model` on a few rows through `loss` (train mode, so dropout runs too, for two rows or
    more; the global generators left as they were): a model that cannot run on the data, or whose
    outputs the loss would score wrongly (`check_output_shape`, with `top` the highest label), fails
    here in one line, before anything trains.

    Raises:
        ModelError: "gives outputs of shape ...", or "cannot run on the data: TypeError: ...".
    """
    from purestep.core.errors import one_line
    from purestep.core.losses import OutputShapeError, check_output_shape, loss_fn

    try:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.enable_grad():
            params, buffers = model.init(0, x.device)
            out, _ = model.apply(watched(model, params), buffers, x, train=len(x) > 1)
        if isinstance(out, Tensor):  # else `untrainable` says what it returns
            check_output_shape(loss, out, y, top)  # before the loss: mse would broadcast, warning only
            loss_fn(loss)(out, y)
    except OutputShapeError as e:
        raise ModelError(f"gives {e}") from None
    except (Exception, SystemExit) as e:  # the user's model: any error or exit is theirs, in one line
        raise ModelError(f"cannot run on the data: {type(e).__name__}: {one_line(e)}") from None
    problem = untrainable(model, params, out)
    if problem is not None:
        raise ModelError(problem)


def build_model(
    ref: str,
    in_shape: Sequence[int],
    out_features: int,
    model_args: Mapping[str, Any] | None = None,
    loss: str = "cross_entropy",
) -> Model:
    """The model `ref` names, fitted to the data: the shape arguments it takes are filled in
    (`in_features`, `channels`, `classes`, `out_features`) unless `model_args` sets them, and a
    zoo model trained with `nll` ends in `log_softmax`.

    Raises:
        ModelError: unknown model, an argument it does not take, or a module that fails to build.
    """
    factory = resolve_factory(ref)
    takes = accepted(factory)
    args = dict(model_args or {})
    unknown = sorted(set(args) - takes) if takes is not None else []
    if unknown:
        raise ModelError(
            f"model {ref!r} takes no argument {unknown[0]!r}; it takes {', '.join(sorted(takes))}"
        )
    fitted = {
        "in_features": int(torch.Size(in_shape).numel()),
        "channels": int(in_shape[0]) if len(in_shape) == 3 else 1,
        "classes": out_features,
        "out_features": out_features,
    }
    if ref in ZOO and loss == "nll":
        fitted["log_softmax"] = True
    for k, v in fitted.items():
        if takes is not None and k in takes and k not in args:
            args[k] = v
    try:
        model = Model(factory, args, ref if ref in ZOO else Path(ref.rpartition(":")[0]).stem)
    except (Exception, SystemExit) as e:  # a user's module: one line naming what failed
        raise ModelError(f"cannot build model {ref!r} with {args}: {type(e).__name__}: {e}") from None
    return model
