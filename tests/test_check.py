"""`purestep check`: lockstep rows never fail correct code, and catch a step that is wrong.

Correct code: compiled vs eager, batched vs alone and JAX/optax vs eager, for SGD with momentum
and for Adam, over whole digits epochs and 200-step FashionMNIST-shaped runs, across seeds.
Wrong code: an update scaled by 1 + 1e-4, a weight decay dropped, a ReLU branch taken the other
way where the exact input is far from zero. Right but parted code: the same branch taken the
other way where the exact input is within float32 rounding of zero passes, and is reported.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from purestep import OptimizerConfig, load_dataset, make_train_step, mlp
from purestep.check import (
    Carry,
    Twin,
    batched_vs_alone,
    compiled_vs_eager,
    lockstep,
    one_at_a_time,
    side,
)

SGD = OptimizerConfig("sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)
ADAM = OptimizerConfig("adam", lr=1e-3, weight_decay=1e-3)
OPTIMIZERS = [SGD, ADAM]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    return data.x_train, data.y_train


def fashion_like(steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FashionMNIST-shaped batches: one random prototype per class, a quarter of each image's
    pixels from its class's prototype and the rest noise (so training has something to learn)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(0, 256, (10, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (steps * 64,), generator=g)
    noise = torch.randint(0, 256, (steps * 64, 1, 28, 28), generator=g, dtype=torch.uint8)
    keep = torch.rand(noise.shape, generator=g) < 0.25
    return torch.where(keep, prototypes[y], noise).float().div(255), y


def jax_module():
    for name in ("jax", "optax", "flax"):
        pytest.importorskip(name, reason=f"{name} is not installed: pip install 'purestep[jax]'")
    import purestep.jax_interop

    return purestep.jax_interop


# ----------------------------------------------------------------------------------------------
# Correct code passes


@pytest.mark.compile
@settings(max_examples=50)
@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_compiled_step_passes_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    row = compiled_vs_eager(mlp(64, (24,), 10), optimizer, seed, digits, 64)
    assert row.steps == 23 and row.lockstep
    assert row.passed, row
    assert row.error <= row.bound


@settings(max_examples=50)
@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_batched_trials_pass_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    row = batched_vs_alone(mlp(64, (24,), 10), optimizer, seed, digits, 64, trials=2)
    assert row.steps == 23 and row.passed, row


@settings(max_examples=50)
@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_jax_optax_step_passes_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    jx = jax_module()
    row = jx.jax_vs_eager(mlp(64, (24,), 10), optimizer, seed, digits, batch_size=64)
    assert row.steps == 23 and row.passed, row


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["sgd", "adam"])
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_jax_and_batched_pass_200_fashion_shaped_steps(seed, optimizer):
    """The issue's setting (lr 1e-3, momentum 0.9, 200 steps of 28x28 inputs) at a smaller width."""
    jx = jax_module()
    config = OptimizerConfig(optimizer.name, lr=1e-3, momentum=0.9 if optimizer.name == "sgd" else 0.0)
    spec, train = mlp(784, (32, 32), 10), fashion_like(200, seed)
    row = jx.jax_vs_eager(spec, config, seed, train, batch_size=64, steps=200)
    assert row.steps == 200 and row.passed, row
    assert row.free_distance is not None


# ----------------------------------------------------------------------------------------------
# Wrong code fails


def eager_and_twin(config: OptimizerConfig, spec=None):
    spec = spec or mlp(64, (24,), 10)
    optimizer = config.build()
    return spec, optimizer, make_train_step(spec, optimizer), Twin(spec, optimizer)


def run(spec, optimizer, twin, reference, other, data, steps=3):
    params, buffers = spec.init(0)
    x, y = data[0][: steps * 64], data[1][: steps * 64]
    carry = (params, buffers, optimizer.init(params))
    return lockstep(twin, reference, one_at_a_time(other), [carry], x, y, 64)[0]


@pytest.mark.parametrize("config", OPTIMIZERS, ids=["sgd", "adam"])
def test_an_update_off_by_1e4_is_caught(digits, config):
    spec, optimizer, eager, twin = eager_and_twin(config)

    def scaled(carry: Carry, x, y):
        params, buffers, state, loss = eager(*carry, x, y)
        scaled = {k: carry[0][k] + (v - carry[0][k]) * (1 + 1e-4) for k, v in params.items()}
        return (scaled, buffers, state), loss

    assert run(spec, optimizer, twin, side(eager), side(eager), digits).passed
    result = run(spec, optimizer, twin, side(eager), scaled, digits)
    assert not result.passed and "other side is off the float64 step at params/" in result.failure


@pytest.mark.parametrize("config", OPTIMIZERS, ids=["sgd", "adam"])
def test_a_dropped_weight_decay_is_caught(digits, config):
    spec, optimizer, eager, twin = eager_and_twin(config)
    no_decay = torch.zeros((), dtype=torch.float64)

    def forgetful(carry: Carry, x, y):
        params, buffers, state = carry
        params, buffers, new_state, loss = eager(params, buffers, {**state, "weight_decay": no_decay}, x, y)
        return (params, buffers, {**new_state, "weight_decay": state["weight_decay"]}), loss

    result = run(spec, optimizer, twin, side(eager), forgetful, digits)
    assert not result.passed and "other side" in result.failure


def flipped_side(spec, optimizer, unit):
    """The eager step in float32 with one ReLU unit's branch taken the other way."""
    twin32 = Twin(spec, optimizer)

    def step(carry: Carry, x, y):
        params, buffers, state = carry
        grads, loss, buffers = twin32.grads(params, buffers, x, y, [unit])
        params, state = optimizer.update(grads, state, params)
        return (params, buffers, state), loss

    return step


def test_a_branch_taken_the_other_way_far_from_zero_is_caught(digits):
    spec, optimizer, eager, twin = eager_and_twin(SGD)
    z = twin.inputs({k: v.double() for k, v in spec.init(0)[0].items()}, {}, digits[0][:64].double())[0]
    far = int(z.abs().argmax())
    result = run(spec, optimizer, twin, side(eager), flipped_side(spec, optimizer, (0, far)), digits, 1)
    assert not result.passed


def test_a_branch_taken_the_other_way_within_rounding_of_zero_passes_and_is_reported(digits):
    """Unit 0 of the first sample is put within float32 rounding of zero by its bias; a side
    that takes its other branch is a correct float32 step, which the row names as a flip."""
    spec, optimizer, eager, twin = eager_and_twin(SGD)
    params, _ = spec.init(0)
    x = digits[0][:64]
    exact = twin.inputs({k: v.double() for k, v in params.items()}, {}, x.double())[0]
    bias = params["linear_relu_stack.0.bias"].clone()
    bias[0] -= exact[0].float()
    params = {**params, "linear_relu_stack.0.bias": bias}
    z = twin.inputs({k: v.double() for k, v in params.items()}, {}, x.double())[0]
    assert abs(z[0].item()) < 1e-6
    result = lockstep(
        twin,
        side(eager),
        one_at_a_time(flipped_side(spec, optimizer, (0, 0))),
        [(params, {}, optimizer.init(params))],
        x,
        digits[1][:64],
        64,
    )[0]
    assert result.passed, result.failure
    assert result.first_flip is not None and result.first_flip.step == 0 and result.first_flip.units == 1
    assert abs(result.first_flip.closest) <= result.first_flip.rounding


@pytest.mark.compile
def test_check_passes_every_row_for_the_cnn_on_digits():
    """BatchNorm buffers compared too; dropout off where the two sides cannot share masks."""
    import json

    from typer.testing import CliRunner

    from purestep.cli import app

    result = CliRunner().invoke(app, ["check", "--model", "cnn", "--dataset", "digits", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["printed_lines_identical"]
    assert any("compiled" in r["pair"] for r in report["rows"])
