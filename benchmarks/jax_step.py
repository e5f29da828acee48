"""The same step in JAX: the MLP, mean cross-entropy and optax SGD, one jitted epoch.

The epoch is one `jax.jit` of a `lax.scan` over the full batches followed by the
tail batch, so XLA sees the whole epoch at once and Python runs once per epoch.
Params start from the same values as the torch variants (copied in).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import Tensor

from benchmarks.variants import Variant
from purestep.core.model import Params


def available() -> bool:
    """True when jax and optax import."""
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


def _layers(params: Params) -> list[tuple[np.ndarray, np.ndarray]]:
    weights = sorted((k for k in params if k.endswith(".weight")), key=lambda k: int(k.split(".")[-2]))
    return [
        (params[w].detach().cpu().numpy(), params[w.replace(".weight", ".bias")].detach().cpu().numpy())
        for w in weights
    ]


def epoch_fn(lr: float, batch_size: int, n: int) -> Any:
    """A jitted `epoch(layers, opt_state, x, y) -> (layers, opt_state, losses)` for `n` rows."""
    import jax
    import jax.numpy as jnp
    import optax

    full = n // batch_size * batch_size
    tx = optax.sgd(lr)

    def loss_fn(layers, x, y):
        h = x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if i < len(layers) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    def step(carry, batch):
        layers, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(layers, *batch)
        updates, opt_state = tx.update(grads, opt_state, layers)
        return (optax.apply_updates(layers, updates), opt_state), loss

    @jax.jit
    def epoch(layers, opt_state, x, y):
        xs = x[:full].reshape(full // batch_size, batch_size, -1)
        ys = y[:full].reshape(full // batch_size, batch_size)
        carry, losses = jax.lax.scan(step, (layers, opt_state), (xs, ys))
        if full < n:
            carry, tail = step(carry, (x[full:].reshape(n - full, -1), y[full:]))
            losses = jnp.concatenate([losses, tail[None]])
        return carry[0], carry[1], losses

    return epoch, tx


def jax_jit(params: Params, x: Tensor, y: Tensor, lr: float, batch_size: int) -> Variant:
    """The jitted JAX epoch, compiled here; `once()` runs one epoch from the same params."""
    import jax
    import jax.numpy as jnp

    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in _layers(params)]
    xj = jnp.asarray(x.reshape(len(x), -1).numpy())
    yj = jnp.asarray(y.numpy().astype(np.int32))
    epoch, tx = epoch_fn(lr, batch_size, len(y))
    opt_state = tx.init(layers)
    start = time.perf_counter()
    compiled = epoch.lower(layers, opt_state, xj, yj).compile()
    variant = Variant(f"JAX {jax.__version__} jit, lax.scan over the epoch", "whole epoch", lambda: 0.0)
    variant.info["compile_s"] = time.perf_counter() - start

    def once() -> float:
        begin = time.perf_counter()
        out = jax.block_until_ready(compiled(layers, opt_state, xj, yj))
        seconds = time.perf_counter() - begin
        variant.info["layers"] = {str(i): (np.asarray(w), np.asarray(b)) for i, (w, b) in enumerate(out[0])}
        return seconds

    variant.once = once
    return variant
