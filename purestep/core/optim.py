"""Optimizers as `(init, update)` pairs of pure functions, in the style of optax.

The state is a flat dict of tensors. It holds the hyperparameters as 0-d float64
tensors, so a new learning rate is new data rather than a new graph, and `vmap`
can give every trial its own. `update` reads nothing but its arguments: every
`sgd(...)` shares one update function, as does every `adam(...)`/`adamw(...)`.

The arithmetic follows `torch.optim`'s single-tensor path op for op. Where
torch.optim passes a Python scalar (`add(p, g, alpha=-lr)`), the update passes
the same value as a tensor through the fused op of the same rounding
(`addcmul(p, g, lr, value=-1)`); scalar arithmetic on hyperparameters
(`1 - dampening`, `lr / bias_correction`) runs in float64 as Python's does, and
is cast to the parameter dtype once, where torch.optim's kernels cast it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, Tensor]

OptimizerName = Literal["sgd", "adam", "adamw"]


class Optimizer(NamedTuple):
    """A pair of pure functions: `init(params) -> state`, `update(grads, state, params)`."""

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]


def _hyper(params: Params, **values: float) -> State:
    device = next(iter(params.values())).device
    return {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in values.items()}


def _slots(prefix: str, params: Params) -> State:
    return {f"{prefix}.{k}": torch.zeros_like(v) for k, v in params.items()}


def _check(name: str, value: float, low: float, high: float = math.inf, *, open_low: bool = False):
    ok = (value > low if open_low else value >= low) and value <= high
    if not (ok and math.isfinite(value)):
        bound = f"> {low}" if open_low else f">= {low}"
        if high != math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _sgd_update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
    dtype = next(iter(params.values())).dtype
    lr = state["lr"].to(dtype)
    momentum = state["momentum"].to(dtype)
    keep = (1 - state["dampening"]).to(dtype)
    decay = state["weight_decay"].to(dtype)
    first = state["step"] == 0
    nesterov = state["nesterov"] != 0
    new_params: Params = {}
    new_state: State = {k: state[k] for k in ("lr", "momentum", "dampening", "weight_decay")}
    new_state["nesterov"] = state["nesterov"]
    new_state["step"] = state["step"] + 1
    for k, p in params.items():
        g = torch.addcmul(grads[k], p, decay)
        slot = f"momentum_buffer.{k}"
        if slot in state:
            buf = torch.where(first, g, torch.addcmul(state[slot] * momentum, g, keep))
            g = torch.where(nesterov, torch.addcmul(g, buf, momentum), buf)
            new_state[slot] = buf
        new_params[k] = torch.addcmul(p, g, lr, value=-1)
    return new_params, new_state


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
            momentum > 0, so trials of the two kinds are not stacked together).
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

    return Optimizer(init, _sgd_update)


def _adam_update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
    dtype = next(iter(params.values())).dtype
    step = state["step"] + 1
    lr, beta1, beta2 = state["lr"], state["beta1"], state["beta2"]
    decoupled = state["decoupled"]
    shrink = (1 - lr * state["weight_decay"] * decoupled).to(dtype)
    l2 = (state["weight_decay"] * (1 - decoupled)).to(dtype)
    keep1 = (1 - beta1).to(dtype)
    keep2 = (1 - beta2).to(dtype)
    b2 = beta2.to(dtype)
    eps = state["eps"].to(dtype)
    neg_step_size = (-lr / (1 - beta1**step)).to(dtype)
    bias_correction2_sqrt = torch.sqrt(1 - beta2**step).to(dtype)
    new_params: Params = {}
    new_state: State = {k: state[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay")}
    new_state["decoupled"] = decoupled
    new_state["step"] = step
    second: State = {}
    for k, p in params.items():
        p = p * shrink
        g = torch.addcmul(grads[k], p, l2)
        m = torch.lerp(state[f"exp_avg.{k}"], g, keep1)
        v = torch.addcmul(state[f"exp_avg_sq.{k}"] * b2, g * keep2, g)
        denom = torch.sqrt(v) / bias_correction2_sqrt + eps
        new_params[k] = torch.addcdiv(p, m * neg_step_size, denom)
        new_state[f"exp_avg.{k}"] = m
        second[f"exp_avg_sq.{k}"] = v
    return new_params, new_state | second  # the keys in `init`'s order


def _adam(lr: float, betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool):
    _check("lr", lr, 0.0, open_low=True)
    _check("beta1", betas[0], 0.0, 1.0)
    _check("beta2", betas[1], 0.0, 1.0)
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

    return Optimizer(init, _adam_update)


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


@dataclass(frozen=True)
class OptimizerConfig:
    """Plain-data description of an optimizer, for CLIs, files and search spaces."""

    name: OptimizerName = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(self) -> Optimizer:
        """The functional optimizer this config describes (validates the values)."""
        if self.name == "sgd":
            return sgd(self.lr, self.momentum, 0.0, self.nesterov, self.weight_decay)
        if self.name in ("adam", "adamw"):
            factory = adam if self.name == "adam" else adamw
            return factory(self.lr, self.betas, self.eps, self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}; choose sgd, adam or adamw")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)
