"""Optimizers as `(init, update)` pairs of pure functions, in the style of optax.

The state is a flat dict of tensors. It holds the hyperparameters as 0-d float64
tensors, so a new learning rate is new data rather than a new graph, and `vmap`
can give every trial its own. `update` reads nothing but its arguments: every
`sgd(...)` shares one update function, as does every `adam(...)`/`adamw(...)` and
every `rmsprop(...)`; every `tunable(config)` shares one update for all of them.

The arithmetic follows `torch.optim`'s single-tensor path op for op. Where
torch.optim passes a Python scalar (`add(p, g, alpha=-lr)`), the update passes
the same value as a tensor through the fused op of the same rounding
(`addcmul(p, g, lr, value=-1)`); scalar arithmetic on hyperparameters
(`1 - dampening`, `lr / bias_correction`) runs in float64 as Python's does, and
is cast once per step to each dtype the params hold, the one torch.optim's kernels cast it to for
them: a model of float32 and float64 params steps each as torch.optim does, and bfloat16 and float16
params take their factors in float32 (their eager update on the CPU makes torch.optim's calls).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from purestep.core.settings import tutorial

Params = dict[str, Tensor]
State = dict[str, Tensor]

OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]


class Optimizer(NamedTuple):
    """A pair of pure functions: `init(params) -> state`, `update(grads, state, params)`.

    `eager_update`, when given, is `update` for steps that run as they are (no `torch.compile`,
    no `vmap`): on the CPU it reads each per-trial choice (weight decay off, Nesterov, the
    optimizer of a union state) from the state in Python and runs only the chosen arithmetic,
    where `update` runs every branch and keeps one with `torch.where`, and passes scalar factors
    to the kernels as torch.optim does. Same state in, same bits out for float32 and float64
    params (zeros' signs aside); bfloat16 and float16 ones may differ in a kernel's scalar tail.
    """

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]
    eager_update: Callable[[Params, State, Params], tuple[Params, State]] | None = None


def _hyper(params: Params, **values: float) -> State:
    if not params:  # as torch.optim: nothing to train, and no device to keep the state on
        raise ValueError("optimizer got an empty parameter list")
    device = next(iter(params.values())).device
    return {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in values.items()}


def _slots(prefix: str, params: Params) -> State:
    return {f"{prefix}.{k}": torch.zeros_like(v) for k, v in params.items()}


def _check(
    name: str,
    value: float,
    low: float,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
):
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not (ok and math.isfinite(value)):
        bound = f"> {low}" if open_low else f">= {low}"
        if high != math.inf:
            bound += f" and < {high}" if open_high else f" and <= {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")


# --- Each family's arithmetic, once -------------------------------------------------------
#
# A family's rule reads its hyperparameters from the state (cast once per update) and returns
# the step of one parameter: `(p, g, slots) -> (new p, new slots)`, where `slots` holds that
# parameter's buffers by their torch.optim names. A feature whose buffer is absent is off, as
# in torch.optim's state. The union holds every buffer and passes `flags`: per-trial 0-d bools
# that `torch.where` turns into each trial's own arithmetic, the same ops either way.

Slots = dict[str, Tensor]
Rule = Callable[[Tensor, Tensor, Slots], tuple[Tensor, Slots]]
Flag = bool | Tensor

_BUFFERS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
}
"""Each family's per-parameter buffers, by their torch.optim names."""


Choose = Callable[[Tensor], Any]
"""How an update takes a per-trial choice or value: as the 0-d tensor (`_kept`) or read (`_read`)."""


def _where(flag: Flag, if_on: Callable[[], Tensor], if_off: Callable[[], Tensor]) -> Tensor:
    """`if_on()` where `flag` holds, else `if_off()`: chosen in Python, or per trial by `torch.where`."""
    if isinstance(flag, bool):
        return if_on() if flag else if_off()
    return torch.where(flag, if_on(), if_off())


def _addcmul(x: Tensor, t1: Tensor, t2: Tensor, value: float | Tensor) -> Tensor:
    """`x + value * t1 * t2`: a number goes to the kernel as torch.optim passes it; a 0-d tensor
    (per trial) multiplies `t1` first, which rounds the same (the kernel's `value * t1` first)."""
    if isinstance(value, Tensor):
        if x.dtype in _REDUCED:  # the kernel's `value * t1` in float32, as torch.optim's number
            return torch.addcmul(x.float(), t1.float() * value, t2.float()).to(x.dtype)
        return torch.addcmul(x, t1 * value, t2)
    return torch.addcmul(x, t1, t2, value=value)


def _addcdiv(x: Tensor, t1: Tensor, t2: Tensor, value: float | Tensor) -> Tensor:
    """`x + value * t1 / t2`, as `_addcmul` takes `value`."""
    if isinstance(value, Tensor):
        if x.dtype in _REDUCED:
            return torch.addcdiv(x.float(), t1.float() * value, t2.float()).to(x.dtype)
        return torch.addcdiv(x, t1 * value, t2)
    return torch.addcdiv(x, t1, t2, value=value)


def _lerp(x: Tensor, y: Tensor, weight: float | Tensor) -> Tensor:
    """`x + weight * (y - x)`, as `_addcmul` takes `weight`: bfloat16 and float16 params' kernels
    take a number in float32, a tensor weight in their own dtype, so a 0-d one runs in float32."""
    if isinstance(weight, Tensor) and x.dtype in _REDUCED:
        return torch.lerp(x.float(), y.float(), weight.float()).to(x.dtype)
    return torch.lerp(x, y, weight)


def _once(choose: Choose, *factors: Tensor) -> tuple[Tensor, ...]:
    """An update's per-step 0-d factors, as every branch takes them (`_kept`) stacked in one tensor.

    Inductor inlines 0-d arithmetic into each element loop that reads it, so Adam's `pow`s and
    divisions would run once per vector of every parameter (libm calls C++ cannot hoist); a
    stack read by several selects is computed once per step into a buffer. Same values either way.
    """
    if choose is not _kept:
        return factors
    stacked = torch.stack(factors)
    return tuple(stacked[i] for i in range(len(factors)))


def _kept(flag: Tensor) -> Tensor:
    """A choice or value as compiled and vmapped updates take it: a tensor, every branch computed."""
    return flag


def _read(flag: Tensor | float) -> Any:
    """A choice or value as eager updates take it: read in Python on the CPU, so only the chosen
    branch runs and a value goes to the kernel as torch.optim passes it (a 0-d read costs far less
    than a pass over the params); on an accelerator, where a read would wait for the device, kept.
    A number, read already, stays."""
    return flag.item() if isinstance(flag, Tensor) and flag.device.type == "cpu" else flag


_REDUCED = (torch.bfloat16, torch.float16)


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter of `dtype` takes its factors in: the one torch's CPU kernels cast a
    Python scalar to for it. Its own for float32 and float64; float32 for bfloat16 and float16, whose
    kernels compute in float32 and round each result (`add`'s alpha and added number excepted: those
    they round to the parameter's dtype, as a 0-d factor is rounded where it meets such params)."""
    return torch.float32 if dtype in _REDUCED else dtype


def _values(dtype: torch.dtype, choose: Choose) -> Choose:
    """How a rule for params of `dtype` takes its factors: as `choose` for bfloat16 and float16,
    whose kernels round a 0-d factor other than a Python number would be (an eager update on the
    CPU then makes torch.optim's very calls); kept as 0-d tensors otherwise (the same bits)."""
    return choose if dtype in _REDUCED else _kept


def _add(x: Tensor, y: Tensor, alpha: float | Tensor) -> Tensor:
    """`x + alpha * y`: a number goes to `add` as torch.optim passes it; a 0-d tensor to `addcmul`,
    which rounds the same."""
    if isinstance(alpha, Tensor):
        return torch.addcmul(x, y, alpha)
    return torch.add(x, y, alpha=alpha)


def _sub(x: Tensor, y: Tensor, alpha: float | Tensor) -> Tensor:
    """`x - alpha * y`, as `_add` takes `alpha`."""
    if isinstance(alpha, Tensor):
        return torch.addcmul(x, y, alpha, value=-1)
    return torch.add(x, y, alpha=-alpha)


def _sgd_rule(state: State, dtype: torch.dtype, choose: Choose, with_momentum: Flag = True) -> Rule:
    to = _scalar_dtype(dtype)
    momentum = state["momentum"].to(to)
    decay_on = choose(state["weight_decay"] != 0)
    nesterov = choose(state["nesterov"] != 0)
    # torch.optim's first buffer is the gradient itself: 0 * (zero buffer) + 1 * g, so the
    # choice is made on two 0-d coefficients rather than on every element.
    first = state["step"] == 0
    value = _values(dtype, choose)
    lr, momentum, decay, carry, keep = map(
        value,
        _once(
            choose,
            state["lr"].to(to),
            momentum,
            state["weight_decay"].to(to),
            torch.where(first, 0.0, momentum),
            torch.where(first, 1.0, (1 - state["dampening"]).to(to)),
        ),
    )

    def rule(p: Tensor, g: Tensor, slots: Slots) -> tuple[Tensor, Slots]:
        if decay_on is not False:
            g = _add(g, p, decay)
        if "momentum_buffer" in slots:
            buf = _add(slots["momentum_buffer"] * carry, g, keep)
            slots = {"momentum_buffer": buf}
            direction = _where(nesterov, lambda: _add(g, buf, momentum), lambda: buf)
            g = _where(with_momentum, lambda: direction, lambda: g)
        return _sub(p, g, lr), slots

    return rule


def _unless_adam(flag: Flag, adam: Flag) -> Flag:
    """`flag` for RMSprop's trials, off for Adam's (a flag Adam's state may hold at any value)."""
    if adam is True or flag is False:
        return False
    if adam is False:
        return flag
    return ~adam if flag is True else flag & ~adam


def _adaptive_rule(
    state: State,
    dtype: torch.dtype,
    choose: Choose,
    adam: Flag,
    with_momentum: Flag = True,
    centered: Flag = True,
) -> Rule:
    """Adam's and RMSprop's rule, one arithmetic: decayed averages of the squared gradient (and of
    the gradient: Adam's first moment, centered RMSprop's mean), a root plus eps as denominator, and
    the step over it. `adam` a bool: that family's ops, torch.optim's. A per-trial tensor (the union):
    the two families' trials share one root and two divisions per element, their factors chosen per
    trial, where running both rules would take two roots and three (a compiled update's costliest ops).
    """
    step = state["step"] + 1
    lr, wd = state["lr"], state["weight_decay"]
    centered = _unless_adam(centered, adam)
    with_momentum = _unless_adam(with_momentum, adam)

    def pick(for_adam: Callable[[], Tensor], for_rmsprop: Callable[[], Tensor]) -> Tensor:
        return _where(adam, for_adam, for_rmsprop)

    plain = pick(lambda: -lr / (1 - state["beta1"] ** step), lambda: -lr)  # the step's factor, no momentum
    factors = {  # only those this update reads: an eager step pays for each
        "keep_first": pick(lambda: 1 - state["beta1"], lambda: 1 - state["alpha"]),
        "smoothing": pick(lambda: state["beta2"], lambda: state["alpha"]),
        "keep": pick(lambda: 1 - state["beta2"], lambda: 1 - state["alpha"]),
        "eps": state["eps"],
        "plain": plain,
    }
    if "decoupled" in state:  # Adam's (AdamW's decay), and the union's; RMSprop's alone couples
        factors |= {"shrink": 1 - lr * wd * state["decoupled"], "l2": wd * (1 - state["decoupled"])}
    else:
        factors["l2"] = wd
    if adam is not False:
        factors["scale"] = pick(lambda: torch.sqrt(1 - state["beta2"] ** step), lambda: torch.ones_like(lr))
    if with_momentum is not False:
        factors |= {"momentum": state["momentum"], "lr": lr}
        if with_momentum is not True:  # per trial: the step's factor where momentum is off
            factors["factor"] = torch.where(with_momentum, torch.ones_like(lr), plain)
    to, value = _scalar_dtype(dtype), _values(dtype, choose)
    f = {k: value(v) for k, v in zip(factors, _once(choose, *(v.to(to) for v in factors.values())))}
    keep, plain, factor = choose(f["keep"]), choose(f["plain"]), choose(f["factor"]) if "factor" in f else 1.0
    decay_on = choose(wd != 0)
    decoupled_on = choose(state["decoupled"] != 0) if "decoupled" in state else False
    first_name, second_name = ("exp_avg", "exp_avg_sq") if adam is True else ("grad_avg", "square_avg")

    def rule(p: Tensor, g: Tensor, slots: Slots) -> tuple[Tensor, Slots]:
        if decay_on is not False and decoupled_on is not False:
            p = p * f["shrink"]
        if decay_on is not False and decoupled_on is not True:
            g = _add(g, p, f["l2"])
        second = _addcmul(slots[second_name] * f["smoothing"], g, g, keep)
        new: Slots = {second_name: second}
        spread = second
        if first_name in slots:
            first = new[first_name] = _lerp(slots[first_name], g, f["keep_first"])
            spread = _where(centered, lambda: torch.addcmul(second, first, first, value=-1), lambda: second)
        root = spread.sqrt()  # one root of the chosen spread: the same bits as a root of each
        denom = (root if adam is False else root / f["scale"]) + f["eps"]
        numerator = _where(adam, lambda: first, lambda: g)
        if "momentum_buffer" not in slots or with_momentum is False:
            return _addcdiv(p, numerator, denom, plain), new
        buf = _addcdiv(slots["momentum_buffer"] * f["momentum"], numerator, denom, factor)
        moved = _sub(p, buf, f["lr"])
        if with_momentum is True:
            return moved, new | {"momentum_buffer": buf}
        # the union: one division serves both steps (`factor` is `plain` where momentum is off)
        new["momentum_buffer"] = _where(adam, lambda: slots["momentum_buffer"], lambda: buf)
        return torch.where(with_momentum, moved, _addcdiv(p, numerator, denom, factor)), new

    return rule


def _dtypes(params: Params) -> list[torch.dtype]:
    """The params' dtypes, each once: an update builds a rule, and casts its factors, per dtype."""
    return list(dict.fromkeys(p.dtype for p in params.values()))


def check_state(state: State, params: Params) -> None:
    """Refuse a state whose per-parameter buffers (`<buffer>.<param>`) name a param not in `params`:
    one made for another model, whose buffers no update would read (SGD would drop its momentum).
    The steps check it on each call they run as Python (a compiled graph, once as it is traced)."""
    if torch.compiler.is_compiling():
        return
    for key in state:
        _, dot, name = key.partition(".")
        if dot and name not in params:
            raise ValueError(
                f"optimizer state key {key!r} names no param of the model: make the state with "
                "optimizer.init(params) (model.trainable(params) when some are frozen)"
            )


def _check_cover(state: State, params: Params, family: str) -> None:
    """Refuse a state that holds one of `family`'s buffers for some params and not others (made
    for a subset of them): SGD trained the rest without momentum, Adam and RMSprop failed on a key."""
    for buffer in _BUFFERS[family]:
        lacking = [k for k in params if f"{buffer}.{k}" not in state]
        if lacking and len(lacking) < len(params):
            raise ValueError(
                f"optimizer state holds {buffer!r} for some params but not {lacking[0]!r}: make it "
                "with optimizer.init(params) (model.trainable(params) when some are frozen)"
            )


def check_family(optimizer: Optimizer, state: State, params: Params) -> None:
    """Refuse a state another optimizer family made (its hyperparameters are another set: the update
    failed on a missing key, `KeyError: 'beta1'`)."""
    wanted = sorted(k for k in optimizer.init(params) if "." not in k)
    held = sorted(k for k in state if "." not in k)
    if held != wanted:
        raise ValueError(
            f"optimizer state holds {', '.join(held)}; this optimizer's holds {', '.join(wanted)}: "
            "make it with this optimizer's init(params)"
        )


def _apply(
    rules: dict[torch.dtype, Rule], grads: Params, state: State, params: Params, family: str
) -> tuple[Params, State]:
    """One family's update of every parameter, by the rule of its dtype; the state comes back in its
    own key order."""
    _check_cover(state, params, family)
    new_params: Params = {}
    new: State = {"step": state["step"] + 1}
    for k, p in params.items():
        slots = {s: state[f"{s}.{k}"] for s in _BUFFERS[family] if f"{s}.{k}" in state}
        new_params[k], slots = rules[p.dtype](p, grads[k], slots)
        new |= {f"{s}.{k}": v for s, v in slots.items()}
    return new_params, {key: new.get(key, state[key]) for key in state}


Update = Callable[[Params, State, Params], tuple[Params, State]]


def _updates(family: str, make_rule: Callable[[State, torch.dtype, Choose], Rule]) -> tuple[Update, Update]:
    """`family`'s update (every branch, for compile and vmap) and its eager update (`Optimizer`),
    named `_<family>_update` and `_<family>_eager_update` (a compiled step's cache key names it)."""

    def made(choose: Choose, name: str) -> Update:
        def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
            try:
                rules = {dtype: make_rule(state, dtype, choose) for dtype in _dtypes(params)}
            except KeyError as e:  # another family's state (`fit` refuses it sooner: `check_family`)
                raise ValueError(
                    f"optimizer state has no {e.args[0]!r}, which {family}'s update reads: "
                    "make it with this optimizer's init(params)"
                ) from None
            return _apply(rules, grads, state, params, family)

        update.__name__ = update.__qualname__ = name
        return update

    return made(_kept, f"_{family}_update"), made(_read, f"_{family}_eager_update")


# --- The optimizers ----------------------------------------------------------------------

_sgd_update, _sgd_eager_update = _updates("sgd", _sgd_rule)


def sgd(
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Stochastic gradient descent, equal bit for bit to `torch.optim.SGD` on the CPU.

    Args:
        lr: learning rate (> 0).
        momentum: momentum factor. At 0 the state holds no momentum buffers, as torch.optim
            keeps none: the step reads and writes only params (a different graph than
            momentum > 0, so trials of the two kinds are not stacked together; `tunable`
            stacks them).
        dampening: dampening of the momentum (ignored without momentum, as in torch).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        weight_decay: L2 penalty added to the gradient.
    Returns:
        An `Optimizer` whose state holds these values as 0-d tensors.
    """
    _check("lr", lr, 0.0, open_low=True)
    _check("momentum", momentum, 0.0)
    _check("dampening", dampening, 0.0, 1.0)
    _check("weight_decay", weight_decay, 0.0)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening 0")
    effective_dampening = dampening if momentum != 0 else 0.0

    def init(params: Params) -> State:
        state = _hyper(
            params,
            lr=lr,
            momentum=momentum,
            dampening=effective_dampening,
            weight_decay=weight_decay,
            nesterov=float(nesterov),
            step=0.0,
        )
        if momentum != 0:
            state |= _slots("momentum_buffer", params)
        return state

    return Optimizer(init, _sgd_update, _sgd_eager_update)


_adam_update, _adam_eager_update = _updates("adam", partial(_adaptive_rule, adam=True))


def _adam(lr: float, betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool):
    _check("lr", lr, 0.0, open_low=True)
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    _check("beta1", betas[0], 0.0, 1.0, open_high=True)  # as torch.optim: 1 divides by zero
    _check("beta2", betas[1], 0.0, 1.0, open_high=True)
    _check("eps", eps, 0.0)
    _check("weight_decay", weight_decay, 0.0)

    def init(params: Params) -> State:
        state = _hyper(
            params,
            lr=lr,
            beta1=betas[0],
            beta2=betas[1],
            eps=eps,
            weight_decay=weight_decay,
            decoupled=float(decoupled),
            step=0.0,
        )
        return state | _slots("exp_avg", params) | _slots("exp_avg_sq", params)

    return Optimizer(init, _adam_update, _adam_eager_update)


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam with L2 weight decay, as `torch.optim.Adam` (within 1e-6 relative)."""
    return _adam(lr, betas, eps, weight_decay, decoupled=False)


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """Adam with decoupled weight decay, as `torch.optim.AdamW`."""
    return _adam(lr, betas, eps, weight_decay, decoupled=True)


_rmsprop_update, _rmsprop_eager_update = _updates("rmsprop", partial(_adaptive_rule, adam=False))


def rmsprop(
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> Optimizer:
    """RMSprop, equal bit for bit to `torch.optim.RMSprop` on the CPU.

    Args:
        lr: learning rate (> 0).
        alpha: smoothing constant of the squared-gradient average, in [0, 1].
        eps: added to the denominator (>= 0).
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum factor; at 0 the state holds no momentum buffers, as torch.optim.
        centered: divide by the gradient's estimated variance rather than its second moment
            (the state holds a gradient average only then, as torch.optim).
    Returns:
        An `Optimizer` whose state holds these values as 0-d tensors.
    """
    _check("lr", lr, 0.0, open_low=True)
    _check("alpha", alpha, 0.0, 1.0)
    _check("eps", eps, 0.0)
    _check("weight_decay", weight_decay, 0.0)
    _check("momentum", momentum, 0.0)

    def init(params: Params) -> State:
        state = _hyper(
            params,
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=float(centered),
            step=0.0,
        )
        state |= _slots("square_avg", params)
        if momentum != 0:
            state |= _slots("momentum_buffer", params)
        if centered:
            state |= _slots("grad_avg", params)
        return state

    return Optimizer(init, _rmsprop_update, _rmsprop_eager_update)


# --- One update for every optimizer, for tuning -------------------------------------------
#
# The union state holds every hyperparameter any family reads, a `family` selector, and two
# buffers per parameter, Adam's moments: SGD keeps its momentum in the first, RMSprop its square
# and gradient averages in the second and first. Only RMSprop with momentum needs a third buffer,
# `momentum_buffer`, so its trials' state holds one (a layout, and graph, of their own; the default
# space samples none): every step of a compiled update reads and writes each buffer it holds.
# Every family's rule runs on every step and `torch.where` keeps the chosen family's results, so a
# trial's params follow its own arithmetic bit for bit. A buffer that a trial's optimizer does not
# use holds values the trial never reads.

FAMILIES = ("sgd", "adam", "rmsprop")
"""The union's families, in the order of the `family` selector's values (AdamW is Adam's)."""

_UNION_SLOT = {
    ("sgd", "momentum_buffer"): "exp_avg",
    ("rmsprop", "square_avg"): "exp_avg_sq",
    ("rmsprop", "grad_avg"): "exp_avg",
}
"""Where the union keeps a family's buffer, by (family, torch.optim's name); others keep their names."""
_UNION_HYPER = {
    **{k: float(tutorial(k)) for k in ("lr", "momentum", "nesterov", "weight_decay", "beta1", "beta2")},
    **{k: float(tutorial(k)) for k in ("eps", "alpha", "centered")},
    "dampening": 0.0,
    "decoupled": 0.0,
}
"""Every hyperparameter a family reads; a trial's own optimizer sets its own, the tutorial's fill the rest."""


def _union_over(families: tuple[str, ...], choose: Choose = _kept) -> Update:
    """The union update computing only `families`' rules: for stacks whose trials all use them
    (a vmapped caller that knows; a compiled graph runs them all, `_union_update`). With `_read`,
    each trial's own family is read from its state and only its rule runs (`_union_eager_update`)."""

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        with_momentum = choose(state["momentum"] != 0)
        centered = choose(state["centered"] != 0)
        chosen = {f: choose(state["family"] == FAMILIES.index(f)) for f in families}
        running = [f for f in families if chosen[f] is not False]
        adam: Flag = False
        if "adam" in running and "rmsprop" in running:  # both computed: one adaptive pass serves both
            adam = chosen["adam"]
            chosen["rmsprop"] = chosen["rmsprop"] | adam
            running.remove("adam")
        rules = {
            "sgd": lambda dtype: _sgd_rule(state, dtype, choose, with_momentum),
            "adam": lambda dtype: _adaptive_rule(state, dtype, choose, True),
            "rmsprop": lambda dtype: _adaptive_rule(state, dtype, choose, adam, with_momentum, centered),
        }
        built = {dtype: {f: rules[f](dtype) for f in running} for dtype in _dtypes(params)}
        only = len(running) == 1
        new_params: Params = {}
        new: State = {"step": state["step"] + 1}
        for k, p in params.items():
            for i, family in enumerate(running):
                keys = {s: f"{_UNION_SLOT.get((family, s), s)}.{k}" for s in _BUFFERS[family]}
                keys = {s: key for s, key in keys.items() if key in state}  # absent: the feature is off
                slots = {s: state[key] for s, key in keys.items()}
                p_family, slots = built[p.dtype][family](p, grads[k], slots)
                new_params[k] = torch.where(chosen[family], p_family, new_params[k]) if i else p_family
                for s, v in slots.items():
                    previous = new.get(keys[s], state[keys[s]])
                    new[keys[s]] = v if only else torch.where(chosen[family], v, previous)
        return new_params, {key: new.get(key, state[key]) for key in state}

    return update


_union_update = _union_over(FAMILIES)
_union_eager_update = _union_over(FAMILIES, _read)
_FAMILY_UPDATES = {family: _union_over((family,)) for family in FAMILIES}


def family_update(family: str) -> Callable[[Params, State, Params], tuple[Params, State]]:
    """The union update for trials all of one family (`FAMILIES`): only that family's rule runs,
    on the same state, so the result equals `tunable`'s for those trials bit for bit."""
    return _FAMILY_UPDATES[family]


def family_of(config: OptimizerConfig) -> str:
    """The union family of `config`'s optimizer (AdamW is Adam's)."""
    return "adam" if config.name == "adamw" else config.name


def needs_third_buffer(config: OptimizerConfig) -> bool:
    """Whether `config`'s union state holds a `momentum_buffer` (RMSprop with momentum): a state
    layout, so a compiled graph and a stack, apart from every other config's."""
    return config.name == "rmsprop" and config.momentum != 0


def tunable(config: OptimizerConfig) -> Optimizer:
    """`config`'s optimizer over the union state: trials of any optimizer stack and share one graph.

    Each trial's params and loss equal `config.build()`'s bit for bit, step after step. RMSprop
    with momentum alone keeps a third buffer (`needs_third_buffer`): a layout, and graph, of its own.
    """
    own = config.build()
    family = FAMILIES.index(family_of(config))

    def init(params: Params) -> State:
        own_state = own.init(params)
        state = _hyper(params, **_UNION_HYPER, family=family, step=0.0)
        state = {k: own_state.get(k, v) for k, v in state.items()}
        buffers = ("exp_avg", "exp_avg_sq") + (("momentum_buffer",) * needs_third_buffer(config))
        for buffer in buffers:
            state |= _slots(buffer, params)
        return state

    return Optimizer(init, _union_update, _union_eager_update)


@dataclass(frozen=True)
class OptimizerConfig:
    """Plain-data description of an optimizer, for CLIs, files and search spaces.

    Defaults are the tutorial's, from `OPTIMIZER_SETTINGS` (fields an optimizer does not read
    are ignored by `build`): its SGD's weight decay, 0, for every optimizer, AdamW's included, where
    `adamw()` and `torch.optim.AdamW` default to 0.01.
    """

    name: OptimizerName = tutorial("optimizer")
    lr: float = tutorial("lr")
    momentum: float = tutorial("momentum")
    nesterov: bool = tutorial("nesterov")
    weight_decay: float = tutorial("weight_decay")
    betas: tuple[float, float] = (tutorial("beta1"), tutorial("beta2"))
    eps: float = tutorial("eps")
    alpha: float = tutorial("alpha")
    centered: bool = tutorial("centered")

    def build(self) -> Optimizer:
        """The functional optimizer this config describes (validates the values)."""
        if self.name == "sgd":
            return sgd(self.lr, self.momentum, 0.0, self.nesterov, self.weight_decay)
        if self.name in ("adam", "adamw"):
            factory = adam if self.name == "adam" else adamw
            return factory(self.lr, self.betas, self.eps, self.weight_decay)
        if self.name == "rmsprop":
            return rmsprop(self.lr, self.alpha, self.eps, self.weight_decay, self.momentum, self.centered)
        raise ValueError(f"unknown optimizer {self.name!r}; choose sgd, adam, adamw or rmsprop")

    def build_for(self, compiled: bool) -> Optimizer:
        """The optimizer a trial of this config trains with: its own eager, the union one compiled
        (`tunable`), so that every family of a compiled study shares one update and its graphs."""
        return tunable(self) if compiled else self.build()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)
