"""`purestep check`: lockstep rows never fail correct code, and catch a step that is wrong.

Correct code: compiled vs eager, batched vs alone and JAX/optax vs eager, for SGD with momentum
and for Adam, over whole digits and FashionMNIST-shaped epochs across seeds, 200 steps on both
across seeds, a model confident enough that its gradient is far smaller than the rounding of
the loss's parts, and a collapsed one whose first layer's live units are tiny differences of
large terms.
Wrong code: an update scaled by 1 + 1e-4 (also in that collapsed model), a weight decay dropped,
a ReLU branch taken the other way where the exact input is far from zero. Right but parted code:
the same branch taken the other way where the exact input is within float32 rounding of zero
passes, and is reported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.data import write_fashion_mnist
from purestep import OptimizerConfig, functional, load_dataset, make_train_step, mlp
from purestep.check import (
    HEADROOM,
    Carry,
    Twin,
    U,
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


def fashion(root: Path, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_train` FashionMNIST-shaped training images (`benchmarks.data`: class prototypes plus
    noise), written as IDX files and read back through the dataset loader."""
    root = write_fashion_mnist(root, n_train=n_train, n_test=64)
    data = load_dataset("fashion-mnist", root, download=False)
    return data.x_train, data.y_train


@pytest.fixture(scope="module")
def fashion_epoch(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """An epoch of four full batches and a short one of 40."""
    return fashion(tmp_path_factory.mktemp("fashion-epoch"), 4 * 64 + 40)


@pytest.fixture(scope="module")
def fashion_200(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion(tmp_path_factory.mktemp("fashion-200"), 200 * 64)


def jax_module():
    for name in ("jax", "optax", "flax"):
        pytest.importorskip(name, reason=f"{name} is not installed: pip install 'purestep[jax]'")
    import purestep.jax_interop

    return purestep.jax_interop


# ----------------------------------------------------------------------------------------------
# Correct code passes (the properties draw the profile's count of seeds: 15 in CI, 50 in `long`)


@pytest.mark.compile
@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_compiled_step_passes_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    row = compiled_vs_eager(mlp(64, (24,), 10), optimizer, seed, digits, 64)
    assert row.steps == 23 and row.lockstep
    assert row.passed, row
    assert row.error <= row.bound


@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_batched_trials_pass_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    row = batched_vs_alone(mlp(64, (24,), 10), optimizer, seed, digits, 64, trials=2)
    assert row.steps == 23 and row.passed, row


@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_jax_optax_step_passes_a_whole_digits_epoch_for_any_seed(digits, seed, optimizer):
    jx = jax_module()
    row = jx.jax_vs_eager(mlp(64, (24,), 10), optimizer, seed, digits, batch_size=64)
    assert row.steps == 23 and row.passed, row


def fashion_row(pair: str, optimizer: OptimizerConfig, seed: int, train: tuple[torch.Tensor, torch.Tensor]):
    """One lockstep pair over every batch of `train`, on the tutorial's MLP at width 32."""
    spec = mlp(784, (32, 32), 10)
    if pair == "compiled":
        return compiled_vs_eager(spec, optimizer, seed, train, 64)
    if pair == "batched":
        return batched_vs_alone(spec, optimizer, seed, train, 64, trials=2)
    return jax_module().jax_vs_eager(spec, optimizer, seed, train, batch_size=64, steps=len(train[1]))


@pytest.mark.parametrize("pair", [pytest.param("compiled", marks=pytest.mark.compile), "batched", "jax"])
@given(seed=st.integers(0, 2**31 - 1), optimizer=st.sampled_from(OPTIMIZERS))
def test_every_pair_passes_a_whole_fashion_shaped_epoch_for_any_seed(fashion_epoch, pair, seed, optimizer):
    """28x28 inputs and 10 classes through the IDX loader; hidden width 32 and an epoch of 5
    batches keep the seeds cheap (the full-width runs are BENCHMARKS.md's table)."""
    row = fashion_row(pair, optimizer, seed, fashion_epoch)
    assert row.steps == 5 and row.passed, row


LONG = settings.default.max_examples == settings.get_profile("long").max_examples
"""Whether the long profile's count is loaded (`--hypothesis-profile long`, tests/conftest.py;
with `--hypothesis-verbosity` too, which loads a profile derived from it)."""


def examples(ci: int) -> int:
    """`ci` examples per property by default, the long profile's count (50) when it is loaded:
    the same property, more seeds."""
    return settings.default.max_examples if LONG else ci


@pytest.fixture(scope="module")
def digits_200(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """200 full batches of digits: its training set repeated in file order (about 9 epochs)."""
    x, y = digits
    copies = -(-200 * 64 // len(y))
    return torch.cat([x] * copies)[: 200 * 64], torch.cat([y] * copies)[: 200 * 64]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: these steps are too small to share, and on a loaded 2-core machine two
    threads made a 200-step row about 7 times slower (BENCHMARKS.md, issue 18)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("pair", [pytest.param("compiled", marks=pytest.mark.compile), "batched", "jax"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["sgd", "adam"])
@pytest.mark.parametrize("dataset", ["digits", "fashion"])
@settings(max_examples=examples(1))
@given(seed=st.integers(0, 2**31 - 1))
def test_every_pair_passes_200_steps_for_any_seed(request, dataset, optimizer, pair, seed):
    """200 steps per seed, for every (dataset, optimizer, pair): one seed each in CI (a
    derandomized run's first draw), 50 with `--hypothesis-profile long` (BENCHMARKS.md, issue 18:
    the command and its last run). Digits on the 64-24-10 MLP, FashionMNIST-shaped data through the
    IDX loader at width 32."""
    if dataset == "digits":
        spec, train = mlp(64, (24,), 10), request.getfixturevalue("digits_200")
    else:
        spec, train = mlp(784, (32, 32), 10), request.getfixturevalue("fashion_200")
    with one_thread():
        if pair == "compiled":
            row = compiled_vs_eager(spec, optimizer, seed, train, 64)
        elif pair == "batched":
            row = batched_vs_alone(spec, optimizer, seed, train, 64, trials=2)
        else:
            row = jax_module().jax_vs_eager(spec, optimizer, seed, train, batch_size=64, steps=200)
    assert row.steps == 200 and row.passed, row


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["sgd", "adam"])
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_jax_passes_200_fashion_shaped_steps(fashion_200, seed, optimizer):
    """The issue's setting (lr 1e-3, momentum 0.9, 200 steps of 28x28 inputs) at width 32."""
    config = OptimizerConfig(optimizer.name, lr=1e-3, momentum=0.9 if optimizer.name == "sgd" else 0.0)
    row = fashion_row("jax", config, seed, fashion_200)
    assert row.steps == 200 and row.passed, row
    assert row.free_distance is not None


def test_a_confident_models_step_passes_though_its_gradient_is_below_its_parts_rounding(digits):
    """After 60 Adam steps at lr 0.05 on one batch the model is sure of every label: softmax
    minus one-hot, the gradient at the output, is far below float32's rounding of either part,
    so the float32 gradient is off by more than `HEADROOM * U` of its own largest entry. On the
    scale of the parts (`Twin.gradient_scale`) it is within, and the step passes."""
    spec, optimizer, eager, twin = eager_and_twin(OptimizerConfig("adam", lr=5e-2))
    x, y = digits[0][:64], digits[1][:64]
    params, buffers = spec.init(0)
    carry = (params, buffers, optimizer.init(params))
    for _ in range(60):
        *carry, _ = eager(*carry, x, y)
    params, buffers, state = carry
    wide = {k: v.double() for k, v in params.items()}
    exact, rounded = twin.grads(wide, {}, x.double(), y)[0], twin.grads(params, {}, x, y)[0]
    scale = twin.gradient_scale(wide, {}, x.double(), y)
    error = {k: (rounded[k].double() - g).abs().max() for k, g in exact.items()}
    assert any(error[k] > HEADROOM * U * g.abs().max() for k, g in exact.items())
    assert all(error[k] <= HEADROOM * U * scale[k] for k in exact)
    result = lockstep(twin, side(eager), one_at_a_time(side(eager)), [(params, buffers, state)], x, y, 64)[0]
    assert result.passed, result.failure


@pytest.fixture(scope="module")
def collapsed(fashion_200):
    """FashionMNIST-shaped data, width 32, SGD lr 0.05 momentum 0.9 wd 1e-3, seed 242, after 145
    steps: the output is near uniform, a few first-layer units are alive, and their outputs are
    tiny differences of 784 large terms. Returns the step, its carry and the next batch."""
    spec = mlp(784, (32, 32), 10)
    optimizer = SGD.build()
    eager = make_train_step(spec, optimizer)
    params, buffers = spec.init(242)
    carry = (params, buffers, optimizer.init(params))
    x, y = fashion_200
    with one_thread():
        for start in range(0, 145 * 64, 64):
            *carry, _ = eager(*carry, x[start : start + 64], y[start : start + 64])
    batch = slice(145 * 64, 146 * 64)
    return spec, optimizer, eager, tuple(carry), x[batch], y[batch]


def test_eager_step_passes_where_the_first_layers_sums_cancel(collapsed):
    """The 50-seed 200-step run found this step: float32 rounds those cancelling sums to 200-300
    U of the second layer's weight gradient's largest entry, with no ReLU input near zero. Each
    element's spread under perturbations of its operands (`Twin.spread`) covers it; the largest
    entry alone does not."""
    spec, optimizer, eager, carry, x, y = collapsed
    twin = Twin(spec, optimizer)
    wide = [{k: v.double() for k, v in tree.items()} for tree in carry[:2]]
    exact = twin.grads(*wide, x.double(), y)[0]
    rounded = twin.grads(*carry[:2], x, y)[0]
    scale = twin.rounding_scale(*wide, x.double(), y, exact)
    key = "linear_relu_stack.2.weight"
    error = (rounded[key].double() - exact[key]).abs()
    parts = twin.gradient_scale(*wide, x.double(), y)[key]
    assert error.max() > HEADROOM * U * torch.maximum(exact[key].abs().max(), parts)
    assert bool((error <= HEADROOM * U * scale[key]).all())
    with one_thread():
        same = one_at_a_time(side(eager))
        result = lockstep(twin, side(eager), same, [carry], x, y, 64)[0]
    assert result.passed, result.failure


@pytest.mark.parametrize("only", [None, "linear_relu_stack.2.weight"], ids=["every-param", "second-weight"])
def test_an_update_off_by_1e4_is_caught_where_the_first_layers_sums_cancel(collapsed, only):
    """At the step above the second layer's weight gradient is trusted to far more than its
    largest entry's rounding; an update scaled by 1 + 1e-4 is still caught there (`only`: that
    tensor's update alone)."""
    spec, optimizer, eager, carry, x, y = collapsed

    def scaled(carry: Carry, x, y):
        params, buffers, state, loss = eager(*carry, x, y)
        old = carry[0]
        off = {k: old[k] + (v - old[k]) * (1 + 1e-4) for k, v in params.items() if only in (None, k)}
        return ({**params, **off}, buffers, state), loss

    with one_thread():
        result = lockstep(Twin(spec, optimizer), side(eager), one_at_a_time(scaled), [carry], x, y, 64)[0]
    where = f"other side is off the float64 step at params/{only or ''}"
    assert not result.passed and where in result.failure


class SharedReLU(nn.Module):
    """Two hidden layers of different widths through one `nn.ReLU` module."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.relu = nn.Linear(64, 24), nn.Linear(24, 16), nn.Linear(16, 10), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.relu(self.b(self.relu(self.a(x.flatten(1))))))


def test_the_spread_holds_each_call_of_a_shared_relu_to_its_own_branches(digits):
    """`Twin.spread` holds branches per call, so a ReLU module used twice gets each call's own
    mask; the eager step passes against itself, and the spread is finite and nonzero."""
    spec = functional(SharedReLU)
    optimizer = SGD.build()
    eager, twin = make_train_step(spec, optimizer), Twin(spec, optimizer)
    params, _ = spec.init(0)
    wide = {k: v.double() for k, v in params.items()}
    x, y = digits[0][:64], digits[1][:64]
    exact = twin.grads(wide, {}, x.double(), y)[0]
    spread = twin.spread(wide, {}, x.double(), y, exact)
    assert all(bool(s.isfinite().all()) and s.max() > 0 for s in spread.values())
    result = run(spec, optimizer, twin, side(eager), side(eager), digits)
    assert result.passed, result.failure


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


@pytest.mark.compile
def test_check_json_is_strict_json_when_a_run_diverges():
    """A learning rate of 1e30 makes the free-running figures NaN: they print as null."""
    import json

    from typer.testing import CliRunner

    from purestep.cli import app

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    args = ["check", "--dataset", "digits", "--steps", "6", "--hidden", "16", "--lr", "1e30", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout, parse_constant=refuse)
    assert not report["passed"] and report["rows"][0]["error"] is None
    assert "the run diverged" in report["rows"][0]["failure"]  # a reason, not null


@pytest.mark.compile
def test_check_fails_when_reference_and_eager_print_other_lines(monkeypatch):
    """Every row within its bound is not enough: the tutorial's lines, printed by the reference and
    the eager run, must be the same text."""
    import json

    from typer.testing import CliRunner

    import purestep.check as check_module
    from purestep.cli import app

    real = check_module.reference_vs_eager

    def one_line_apart(*args, **kwargs):
        row, reference_lines, eager_lines = real(*args, **kwargs)
        return row, reference_lines, [*eager_lines[:-1], eager_lines[-1] + " "]

    monkeypatch.setattr(check_module, "reference_vs_eager", one_line_apart)
    args = ["check", "--dataset", "digits", "--steps", "6", "--hidden", "16", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["printed_lines_identical"] and not report["passed"]
    assert all(r["passed"] for r in report["rows"])
