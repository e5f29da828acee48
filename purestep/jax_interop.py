"""purestep's params in JAX and back, the tutorial's MLP in flax, and its steps in optax.

Tensors cross through DLPack: zero-copy where JAX can address the tensor's memory
(same device, compact strides, aligned), a copy otherwise. Either way the values
are bitwise the same, for every float and integer dtype: 64-bit leaves stay 64-bit
even when `jax_enable_x64` is off (computing on them in JAX then needs it on).

Zero-copy means shared memory: a tensor from `from_jax` aliases a JAX buffer, and
an array from `to_jax` aliases the tensor. purestep never writes in place; code
that does should `.clone()` first.

Needs the `jax` extra (jax, optax, flax); `purestep` itself never imports this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import torch
from torch import Tensor

from purestep.check import Carry, Row, Side, Tree, Twin, describe, lockstep, lockstep_row, one_at_a_time, side
from purestep.core.model import Model, Params
from purestep.core.optim import OptimizerConfig
from purestep.core.step import make_train_step

FlaxParams = dict[str, dict[str, jax.Array]]
FlaxVariables = dict[str, FlaxParams]
JaxTrainStep = Callable[
    [FlaxParams, optax.OptState, jax.Array, jax.Array], tuple[FlaxParams, optax.OptState, jax.Array]
]

_LINEAR = re.compile(r"linear_relu_stack\.(\d+)\.(weight|bias)")
_DENSE = re.compile(r"Dense_(\d+)")
_DLPACK_ERRORS = (BufferError, RuntimeError, TypeError, ValueError)


def _x64() -> AbstractContextManager[Any]:
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64

    return enable_x64()


_NO_JAX_DTYPE = frozenset(
    getattr(torch, name)
    for name in ("complex32", "float4_e2m1fn_x2", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16")
    if hasattr(torch, name)
)
"""Torch dtypes JAX has no counterpart for (packed several to a byte, half-complex, raw bits): its
DLPack import fails on them with a runtime error."""


def tensor_to_jax(tensor: Tensor) -> jax.Array:
    """One tensor as a JAX array with the same dtype and bits (DLPack; zero-copy when possible).

    Any other layout (transposed, gaps between elements) is made contiguous on its device first:
    jax 0.6 imports a transposed tensor's memory as if it were row-major, silently. A lazy
    conjugate or negation (`z.conj()`, `z.conj().imag`) is applied first: DLPack refuses the one
    and would drop the other's sign. A device JAX cannot address goes through the host to JAX's
    default device.
    """
    if tensor.dtype in _NO_JAX_DTYPE:
        raise TypeError(f"JAX has no dtype for torch's {tensor.dtype}: DLPack gives it no type JAX reads")
    tensor = tensor.detach().resolve_conj().resolve_neg().contiguous()
    with _x64():
        try:
            return jnp.from_dlpack(tensor)
        except _DLPACK_ERRORS:
            return jax.device_put(jnp.from_dlpack(tensor.cpu()))


def jax_to_tensor(array: jax.Array) -> Tensor:
    """One JAX array as a tensor with the same dtype and bits (DLPack; zero-copy when possible)."""
    try:
        return torch.from_dlpack(array)
    except _DLPACK_ERRORS:
        return torch.from_dlpack(jax.device_put(array, jax.devices("cpu")[0]))


def to_jax(params: Mapping[str, Tensor]) -> dict[str, jax.Array]:
    """purestep params (or any flat dict of tensors) as JAX arrays under the same keys."""
    return {k: tensor_to_jax(v) for k, v in params.items()}


def from_jax(tree: Mapping[str, jax.Array]) -> dict[str, Tensor]:
    """A flat dict of JAX arrays as tensors under the same keys: the inverse of `to_jax`."""
    return {k: jax_to_tensor(v) for k, v in tree.items()}


class FlaxMLP(nn.Module):
    """The tutorial's MLP as a flax `Dense` stack: flatten, then Dense-ReLU per hidden width, then Dense.

    `precision` defaults to full float32 matmuls, which torch uses too (JAX would
    otherwise take TF32/bf16 passes on GPU/TPU).
    """

    hidden: Sequence[int] = (512, 512)
    classes: int = 10
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, precision=self.precision)(x))
        return nn.Dense(self.classes, precision=self.precision)(x)


def flax_model(spec: Model) -> FlaxMLP:
    """The flax module of the same shape as `spec` (its input width comes from the data)."""
    return FlaxMLP(hidden=tuple(spec.kwargs["hidden"]), classes=spec.kwargs["classes"])


def _as_jax(leaf: Any) -> jax.Array:
    """A tensor, JAX or NumPy leaf as a JAX array of its dtype: under x64, so 64-bit stays 64-bit."""
    if isinstance(leaf, Tensor):
        return tensor_to_jax(leaf)
    with _x64():
        return jnp.asarray(leaf)


def _transpose(array: jax.Array) -> jax.Array:
    with _x64():
        return jnp.transpose(array)


def to_flax(params: Mapping[str, Any]) -> FlaxVariables:
    """purestep params as the variables `FlaxMLP.apply` takes: `{"params": {"Dense_i": ...}}`.

    Leaves may be tensors, JAX or NumPy arrays (e.g. from `safetensors.flax.load_file`); each
    keeps its dtype and bits.
    A torch `Linear` weight `(out, in)` becomes a flax kernel `(in, out)`; biases pass as they are.
    """
    layers: dict[int, dict[str, Any]] = {}
    for key, leaf in params.items():
        match = _LINEAR.fullmatch(key)
        if match is None:
            raise ValueError(f"{key!r} is not an MLP parameter (linear_relu_stack.<i>.weight|bias)")
        layers.setdefault(int(match[1]), {})[match[2]] = leaf
    dense: FlaxParams = {}
    for j, i in enumerate(sorted(layers)):
        if set(layers[i]) != {"weight", "bias"}:
            raise ValueError(f"linear_relu_stack.{i} needs both a weight and a bias")
        dense[f"Dense_{j}"] = {
            "kernel": _transpose(_as_jax(layers[i]["weight"])),
            "bias": _as_jax(layers[i]["bias"]),
        }
    return {"params": dense}


def from_flax(variables: Mapping[str, Any]) -> Params:
    """A `FlaxMLP`'s variables (or their `"params"` entry) as purestep params: the inverse of `to_flax`."""
    tree = variables.get("params", variables)
    layers: dict[int, Mapping[str, jax.Array]] = {}
    for name, layer in tree.items():
        match = _DENSE.fullmatch(name)
        if match is None or set(layer) != {"kernel", "bias"}:
            raise ValueError(f"{name!r} is not a flax Dense layer with a kernel and a bias")
        layers[int(match[1])] = layer
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"Dense layers must be numbered 0..{len(layers) - 1}, got {sorted(layers)}")
    params: Params = {}
    for j in range(len(layers)):
        params[f"linear_relu_stack.{2 * j}.weight"] = jax_to_tensor(_transpose(layers[j]["kernel"]))
        params[f"linear_relu_stack.{2 * j}.bias"] = jax_to_tensor(layers[j]["bias"])
    return params


class ScaleByTorchAdamState(NamedTuple):
    """Step count and the first and second moments, as `torch.optim.Adam` keeps them."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _bias_correction(beta: float, count: jax.Array) -> jax.Array:
    return -jnp.expm1(count.astype(jnp.float32) * jnp.log1p(jnp.float32(-(1.0 - beta))))


def scale_by_torch_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam's rescaling with `torch.optim.Adam`'s arithmetic: `(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)`.

    Unlike `optax.scale_by_adam`, the bias corrections `1 - b**t` are computed as
    `-expm1(t * log1p(-(1 - b)))`. `optax` rounds `b2 = 0.999` to float32 before the power,
    which makes `1 - b2**t` up to 1.3e-5 too small and every early update ~6.5e-6 too small
    (relative); torch computes them in float64, and this matches that to float32 accuracy.
    """

    def init(params: optax.Params) -> ScaleByTorchAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByTorchAdamState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(
        updates: optax.Updates, state: ScaleByTorchAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByTorchAdamState]:
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v * b2 + g * (1 - b2) * g, state.nu, updates)
        bc1, bc2_sqrt = _bias_correction(b1, count), jnp.sqrt(_bias_correction(b2, count))
        scaled = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps), mu, nu)
        return scaled, ScaleByTorchAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


class ScaleByTorchRMSpropState(NamedTuple):
    """The squared-gradient average and, centered, the gradient average (else None), as
    `torch.optim.RMSprop` keeps them."""

    square_avg: optax.Updates
    grad_avg: optax.Updates | None


def scale_by_torch_rmsprop(
    alpha: float = 0.99, eps: float = 1e-8, centered: bool = False
) -> optax.GradientTransformation:
    """RMSprop's rescaling with `torch.optim.RMSprop`'s arithmetic: `g / (sqrt(v) + eps)`, centered
    `g / (sqrt(v - m**2) + eps)`, both averages from zero.

    `optax.scale_by_rms` and `scale_by_stddev` add eps under the root; the option to add it
    outside came after optax 0.2.0, the oldest this module supports.
    """

    def init(params: optax.Params) -> ScaleByTorchRMSpropState:
        grad_avg = jax.tree.map(jnp.zeros_like, params) if centered else None
        return ScaleByTorchRMSpropState(jax.tree.map(jnp.zeros_like, params), grad_avg)

    def update(
        updates: optax.Updates, state: ScaleByTorchRMSpropState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByTorchRMSpropState]:
        square_avg = jax.tree.map(lambda v, g: v * alpha + g * (1 - alpha) * g, state.square_avg, updates)
        spread, grad_avg = square_avg, None
        if centered:
            grad_avg = jax.tree.map(lambda m, g: m + (g - m) * (1 - alpha), state.grad_avg, updates)
            spread = jax.tree.map(lambda v, m: v - m * m, square_avg, grad_avg)
        scaled = jax.tree.map(lambda g, v: g / (jnp.sqrt(v) + eps), updates, spread)
        return scaled, ScaleByTorchRMSpropState(square_avg, grad_avg)

    return optax.GradientTransformation(init, update)


def optax_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation that does what `config.build()` does in purestep (same validation).

    SGD: `add_decayed_weights` (torch's L2 term), then `optax.sgd`, whose trace is torch's
    momentum buffer (dampening 0). Adam: `add_decayed_weights`, `scale_by_torch_adam`, the
    learning rate. AdamW: decay after the rescaling, as `optax.adamw`, which equals torch's
    `p * (1 - lr * wd)`. RMSprop: `add_decayed_weights`, `scale_by_torch_rmsprop`, with momentum
    `optax.trace` (torch's buffer, from zero), the learning rate.
    """
    config.build()
    decay = optax.add_decayed_weights(config.weight_decay)
    lr = optax.scale_by_learning_rate(config.lr)
    if config.name == "sgd":
        return optax.chain(decay, optax.sgd(config.lr, config.momentum or None, nesterov=config.nesterov))
    if config.name == "adam":
        return optax.chain(decay, scale_by_torch_adam(*config.betas, config.eps), lr)
    if config.name == "adamw":
        return optax.chain(scale_by_torch_adam(*config.betas, config.eps), decay, lr)
    if config.name == "rmsprop":
        rms = scale_by_torch_rmsprop(config.alpha, config.eps, config.centered)
        momentum = [optax.trace(config.momentum)] if config.momentum != 0 else []
        return optax.chain(decay, rms, *momentum, lr)
    raise ValueError(f"optax_optimizer has no transformation for optimizer {config.name!r}")


def make_jax_train_step(model: FlaxMLP, tx: optax.GradientTransformation) -> JaxTrainStep:
    """`train_step(params, opt_state, x, y) -> (params, opt_state, loss)`, jitted: purestep's step in JAX.

    The loss is the mean softmax cross-entropy over integer labels, as `F.cross_entropy`.
    """

    def loss_fn(params: FlaxParams, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params: FlaxParams, opt_state: optax.OptState, x: jax.Array, y: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def _is_state(leaf: Any) -> bool:
    """Whether `leaf` is one of the optax states that hold purestep's buffers."""
    return isinstance(leaf, (optax.TraceState, ScaleByTorchAdamState, ScaleByTorchRMSpropState))


def _moments(state: Tree, prefix: str) -> FlaxParams:
    return to_flax({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})["params"]


def to_optax_state(
    tx: optax.GradientTransformation, state: Tree, params: FlaxParams, init: optax.OptState | None = None
) -> optax.OptState:
    """purestep's optimizer state as the state of `tx = optax_optimizer(config)`: momentum
    buffers as optax's trace, Adam's moments and step count as `ScaleByTorchAdamState`, RMSprop's
    averages as `ScaleByTorchRMSpropState`. `init`
    is `tx.init(params)` when the caller keeps one (only its structure and the states of the
    other transforms are used), so a step need not build it again."""

    def fill(leaf: Any) -> Any:
        if isinstance(leaf, optax.TraceState):
            return optax.TraceState(trace=_moments(state, "momentum_buffer."))
        if isinstance(leaf, ScaleByTorchAdamState):
            count = jnp.asarray(int(state["step"].item()), jnp.int32)
            return ScaleByTorchAdamState(count, _moments(state, "exp_avg."), _moments(state, "exp_avg_sq."))
        if isinstance(leaf, ScaleByTorchRMSpropState):
            grad_avg = None if leaf.grad_avg is None else _moments(state, "grad_avg.")
            return ScaleByTorchRMSpropState(_moments(state, "square_avg."), grad_avg)
        return leaf

    return jax.tree.map(fill, tx.init(params) if init is None else init, is_leaf=_is_state)


def from_optax_state(opt_state: optax.OptState, state: Tree) -> Tree:
    """The inverse of `to_optax_state`, given the purestep state the step started from (for
    its hyperparameters): moments back under purestep's keys, and the step count advanced."""
    new = {k: v for k, v in state.items() if "." not in k}
    new["step"] = state["step"] + 1
    for leaf in jax.tree.leaves(opt_state, is_leaf=_is_state):
        if isinstance(leaf, optax.TraceState):
            new |= {f"momentum_buffer.{k}": v for k, v in from_flax(leaf.trace).items()}
        if isinstance(leaf, ScaleByTorchAdamState):
            new |= {f"exp_avg.{k}": v for k, v in from_flax(leaf.mu).items()}
            new |= {f"exp_avg_sq.{k}": v for k, v in from_flax(leaf.nu).items()}
        if isinstance(leaf, ScaleByTorchRMSpropState):
            new |= {f"square_avg.{k}": v for k, v in from_flax(leaf.square_avg).items()}
            if leaf.grad_avg is not None:
                new |= {f"grad_avg.{k}": v for k, v in from_flax(leaf.grad_avg).items()}
    return {k: new[k].to(state[k].device) for k in state}


@functools.cache
def _jax_step(spec: Model, config: OptimizerConfig) -> tuple[optax.GradientTransformation, JaxTrainStep]:
    """The transformation and jitted step of one model and configuration, built once per process
    (as `steps_for` builds torch's): a new seed reuses the compiled step."""
    tx = optax_optimizer(config)
    return tx, make_jax_train_step(flax_model(spec), tx)


def jax_side(spec: Model, config: OptimizerConfig) -> Side:
    """The flax/optax step as a `Side` over purestep's `(params, buffers, state)` (the MLP has no
    buffers): each call converts the carry to JAX, takes one jitted step, and converts back."""
    tx, step = _jax_step(spec, config)
    init: list[optax.OptState] = []

    def run(carry: Carry, x: Tensor, y: Tensor) -> tuple[Carry, Tensor]:
        params, buffers, state = carry
        flax_params = to_flax(params)["params"]
        if not init:
            init.append(tx.init(flax_params))
        new_params, opt_state, loss = step(
            flax_params,
            to_optax_state(tx, state, flax_params, init[0]),
            tensor_to_jax(x),
            tensor_to_jax(y.to(torch.int32)),
        )
        back = {k: v.to(x.device) for k, v in from_flax({"params": new_params}).items()}
        return (back, buffers, from_optax_state(opt_state, state)), jax_to_tensor(loss).to(x.device)

    return run


def jax_vs_eager(
    spec: Model,
    config: OptimizerConfig,
    seed: int,
    train: tuple[Tensor, Tensor],
    *,
    batch_size: int = 64,
    steps: int = 200,
) -> Row:
    """purestep's eager step and the flax/optax step in lockstep, from `spec.init(seed)`, on the
    first `steps` batches of `train` in file order (fewer when `train` has fewer: the row says
    how many). See `purestep.check.lockstep`."""
    x, y = train
    if len(y) == 0 or steps < 1:
        raise ValueError("need at least one batch and steps >= 1")
    optimizer = config.build()
    eager = make_train_step(spec, optimizer)
    params, buffers = spec.init(seed, x.device)
    result, distance = lockstep(
        Twin(spec, optimizer),
        side(eager),
        one_at_a_time(jax_side(spec, config)),
        [(params, buffers, optimizer.init(spec.trainable(params)))],
        x[: steps * batch_size],
        y[: steps * batch_size],
        batch_size,
    )
    return lockstep_row(f"jax/optax vs eager ({describe(config)})", result, distance)


def jax_rows(
    spec: Model,
    train: tuple[Tensor, Tensor],
    seed: int,
    *,
    config: OptimizerConfig | None = None,
    batch_size: int = 64,
    steps: int = 200,
) -> list[Row]:
    """The JAX/optax rows of `purestep check`: one for SGD as `config` sets it, one for Adam.

    As in `run_checks`, Adam takes `config`'s learning rate and weight decay; `config`
    defaults to the tutorial's SGD (lr 1e-3, no momentum). Each row runs the first `steps`
    batches of `train` (all of them if fewer); see `jax_vs_eager`.
    """
    config = config or OptimizerConfig()
    sgd_config = OptimizerConfig(**{**config.to_dict(), "name": "sgd"})
    adam_config = OptimizerConfig("adam", lr=config.lr, weight_decay=config.weight_decay)
    return [
        jax_vs_eager(spec, c, seed, train, batch_size=batch_size, steps=steps)
        for c in (sgd_config, adam_config)
    ]
