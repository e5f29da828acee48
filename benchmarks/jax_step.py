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


def main(argv: list[str] | None = None) -> None:
    """Head to head: `python -m benchmarks.jax_step [--rounds N]`.

    The compiled step (as `fit` runs it) and the JAX epoch alternate in one process, on the
    same FashionMNIST-shaped data and initial params, with no other variant in between; each
    round prints both, and the last half of the rounds gives the settled ratio.
    """
    import argparse
    import statistics

    from benchmarks.data import synthetic
    from benchmarks.variants import functional
    from purestep.core.model import mlp

    p = argparse.ArgumentParser(prog="python -m benchmarks.jax_step", description=main.__doc__)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    images, y = synthetic(60_000, 1)
    x = images.float().div(255).unsqueeze(1)
    spec = mlp()
    torch_step, jax_epoch = (
        functional(spec, x, y, 1e-3, 64, 0, True),
        jax_jit(spec.init(0)[0], x, y, 1e-3, 64),
    )
    ratios = []
    print("| round | compiled s / epoch | JAX s / epoch | compiled / JAX |\n| ---: | ---: | ---: | ---: |")
    for r in range(args.rounds):
        ours, theirs = torch_step.once(), jax_epoch.once()
        ratios.append(ours / theirs)
        print(f"| {r + 1} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.3f} |")
    settled = ratios[len(ratios) // 2 :]
    print(
        f"\nsettled (rounds {args.rounds - len(settled) + 1}-{args.rounds}): median compiled / JAX "
        f"{statistics.median(settled):.3f}"
    )


if __name__ == "__main__":
    main()
