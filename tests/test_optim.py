"""Optimizer contract: eager functional == torch.optim bit for bit (SGD), 1e-6 relative (Adam)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from purestep import OptimizerConfig, adam, adamw, make_train_step, mlp, sgd
from purestep.check import max_abs_diff, max_rel_diff
from purestep.core.reference import torch_optimizer
from purestep.core.step import steady

STEPS = 24


def _run_both(config: OptimizerConfig, seed: int, hidden, batch: int, steps: int = STEPS):
    """`steps` steps of the tutorial's loop and of the eager functional step on one batch stream."""
    model = mlp(20, hidden, 4)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(steps * batch, 1, 4, 5, generator=g)
    y = torch.randint(0, 4, (steps * batch,), generator=g)
    torch.manual_seed(seed)
    module = model.module()
    opt = torch_optimizer(config, module.parameters())
    loss_fn = nn.CrossEntropyLoss()
    optimizer = config.build()
    step = make_train_step(model, optimizer)
    params, buffers = model.init(seed)
    state = optimizer.init(params)
    for i in range(steps):
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        ref_loss = loss_fn(module(xb), yb)
        ref_loss.backward()
        opt.step()
        opt.zero_grad()
        params, buffers, state, loss = step(params, buffers, state, xb, yb)
        assert torch.equal(loss, ref_loss.detach()) or config.name != "sgd"
    return params, {k: v.detach() for k, v in module.named_parameters()}


@given(
    seed=st.integers(0, 10_000),
    hidden=st.lists(st.integers(1, 32), min_size=1, max_size=2).map(tuple),
    batch=st.integers(1, 16),
    lr=st.floats(1e-4, 0.5),
    momentum=st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0.0, 0.99),
    nesterov=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-4]) | st.floats(0.0, 0.1),
)
def test_sgd_eager_is_bitwise_the_reference(seed, hidden, batch, lr, momentum, nesterov, weight_decay):
    nesterov = nesterov and momentum > 0
    config = OptimizerConfig("sgd", lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    params, expected = _run_both(config, seed, hidden, batch)
    assert max_abs_diff(params, expected) == 0.0


@given(
    name=st.sampled_from(["adam", "adamw"]),
    seed=st.integers(0, 10_000),
    lr=st.floats(1e-4, 1e-2),
    weight_decay=st.sampled_from([0.0, 1e-2]),
)
def test_adam_eager_is_within_1e6_of_the_reference(name, seed, lr, weight_decay):
    config = OptimizerConfig(name, lr=lr, weight_decay=weight_decay)
    params, expected = _run_both(config, seed, (16,), 8)
    assert max_rel_diff(params, expected) <= 1e-6


def test_hyperparameters_are_0d_tensors_in_state():
    params, _ = mlp(6, (3,), 2).init(0)
    state = sgd(0.1, momentum=0.9, weight_decay=1e-3).init(params)
    for name in ("lr", "momentum", "dampening", "weight_decay"):
        assert state[name].ndim == 0
    assert state["lr"].item() == 0.1
    assert adam(3e-4).init(params)["lr"].item() == 3e-4


def test_sgd_keeps_momentum_buffers_only_with_momentum_as_torch_optim():
    params, _ = mlp(6, (3,), 2).init(0)
    assert not any(k.startswith("momentum_buffer.") for k in sgd(0.1, weight_decay=0.1).init(params))
    state = sgd(0.1, momentum=0.5).init(params)
    assert {k for k in state if k.startswith("momentum_buffer.")} == {f"momentum_buffer.{k}" for k in params}


def test_every_sgd_shares_one_update_so_a_new_lr_is_new_data():
    assert sgd(0.1).update is sgd(0.5, momentum=0.9, nesterov=True).update
    assert adam(1e-3).update is adam(1e-2, weight_decay=0.1).update


def test_update_writes_nothing_in_place():
    model = mlp(6, (5,), 3)
    params, buffers = model.init(0)
    optimizer = sgd(0.1, momentum=0.9, weight_decay=0.01)
    state = optimizer.init(params)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    before_p = {k: v.clone() for k, v in params.items()}
    before_s = {k: v.clone() for k, v in state.items()}
    step = make_train_step(model, optimizer)
    for _ in range(2):
        step(params, buffers, state, x, y)
    assert all(torch.equal(before_p[k], params[k]) for k in params)
    assert all(torch.equal(before_s[k], state[k]) for k in state)


@pytest.mark.parametrize(
    "optimizer",
    [sgd(0.1), sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), adam(0.01), adamw(0.01)],
    ids=["sgd", "sgd momentum", "adam", "adamw"],
)
def test_update_returns_state_and_params_in_their_own_layout(optimizer):
    """Keys in `init`'s order, shapes, strides and dtypes: what a loop needs to skip guards."""
    model = mlp(6, (5,), 3)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    new_params, _, new_state, _ = make_train_step(model, optimizer)(
        params, buffers, state, torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    )
    assert steady((params, state), (new_params, new_state))


@pytest.mark.parametrize(
    "make",
    [
        lambda: sgd(0.0),
        lambda: sgd(-1.0),
        lambda: sgd(float("nan")),
        lambda: sgd(0.1, momentum=-0.1),
        lambda: sgd(0.1, nesterov=True),
        lambda: sgd(0.1, weight_decay=-1),
        lambda: adam(0.1, betas=(1.5, 0.9)),
        lambda: adam(0.1, eps=-1),
        lambda: OptimizerConfig("rmsprop").build(),
    ],
)
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make()
