"""Optimizer contract: eager functional == torch.optim bit for bit (SGD, RMSprop), 1e-6 relative
(Adam), by the step any transform takes and by the eager step alike; the union update == each
optimizer alone, and every eager update == its update, bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from purestep import (
    OptimizerConfig,
    adam,
    adamw,
    compile_step,
    functional,
    make_train_step,
    mlp,
    rmsprop,
    sgd,
    stack,
    tunable,
    unstack,
)
from purestep.check import max_rel_diff
from purestep.core.optim import family_of, needs_third_buffer
from purestep.core.reference import torch_optimizer
from purestep.core.step import steady

STEPS = 24


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (zeros' signs aside, as `torch.equal`), and NaN exactly where the other has NaN:
    a run that diverges (centered RMSprop's root of a variance rounded below 0, as in torch.optim)
    must diverge alike."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.masked_fill(nan, 0), b.masked_fill(nan, 0))


def _all_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _run_both(config: OptimizerConfig, seed: int, hidden, batch: int, steps: int = STEPS):
    """`steps` steps of the tutorial's loop and of the functional step (`make_train_step`'s
    default, and `eager=True`) on one batch stream; the eager step's params must be the default's."""
    model = mlp(20, hidden, 4)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(steps * batch, 1, 4, 5, generator=g)
    y = torch.randint(0, 4, (steps * batch,), generator=g)
    torch.manual_seed(seed)
    module = model.module()
    opt = torch_optimizer(config, module.parameters())
    loss_fn = nn.CrossEntropyLoss()
    optimizer = config.build()
    steps_ = make_train_step(model, optimizer), make_train_step(model, optimizer, eager=True)
    params, buffers = model.init(seed)
    runs = [(params, buffers, optimizer.init(params))] * 2
    for i in range(steps):
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        ref_loss = loss_fn(module(xb), yb)
        ref_loss.backward()
        opt.step()
        opt.zero_grad()
        out = [step(*run, xb, yb) for step, run in zip(steps_, runs)]
        runs = [o[:3] for o in out]
        for *_, loss in out:
            assert _same(loss, ref_loss.detach()) or config.name in ("adam", "adamw")
    assert _all_same(runs[0][0], runs[1][0])
    return runs[0][0], {k: v.detach() for k, v in module.named_parameters()}


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
    assert _all_same(params, expected)


@given(
    seed=st.integers(0, 10_000),
    momentum=st.floats(0.1, 0.99),
    dampening=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    weight_decay=st.sampled_from([0.0, 1e-3]),
)
def test_sgd_with_dampening_is_bitwise_torch_optim(seed, momentum, dampening, weight_decay):
    """`sgd(dampening=...)`, which no config sets: both steps against `torch.optim.SGD`."""
    model = mlp(20, (8,), 4)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.rand(6 * 4, 20, generator=g), torch.randint(0, 4, (6 * 4,), generator=g)
    torch.manual_seed(seed)
    module = model.module()
    opt = torch.optim.SGD(
        module.parameters(), lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay
    )
    optimizer = sgd(0.1, momentum, dampening, weight_decay=weight_decay)
    params, buffers = model.init(seed)
    runs = [(params, buffers, optimizer.init(params))] * 2
    steps = make_train_step(model, optimizer), make_train_step(model, optimizer, eager=True)
    for i in range(6):
        xb, yb = x[i * 4 : (i + 1) * 4], y[i * 4 : (i + 1) * 4]
        nn.functional.cross_entropy(module(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        runs = [step(*run, xb, yb)[:3] for step, run in zip(steps, runs)]
    expected = {k: v.detach() for k, v in module.named_parameters()}
    assert all(_all_same(params, expected) for params, *_ in runs)


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


@given(
    seed=st.integers(0, 10_000),
    hidden=st.lists(st.integers(1, 32), min_size=1, max_size=2).map(tuple),
    batch=st.integers(1, 16),
    lr=st.floats(1e-4, 1e-2),
    alpha=st.sampled_from([0.99, 0.9]) | st.floats(0.5, 0.999),
    eps=st.sampled_from([1e-8, 1e-6]) | st.floats(1e-8, 1e-3),
    momentum=st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.95),
    centered=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-4]) | st.floats(0.0, 0.1),
)
@example(  # a dead hidden unit: its weights' variance rounds below 0 and both runs reach NaN alike
    seed=0, hidden=(1,), batch=1, lr=1e-4, alpha=0.5, eps=4.756555620082508e-4, momentum=0.0, centered=True,
    weight_decay=1e-4,
)
def test_rmsprop_eager_is_bitwise_the_reference(
    seed, hidden, batch, lr, alpha, eps, momentum, centered, weight_decay
):
    config = OptimizerConfig(
        "rmsprop",
        lr=lr,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        centered=centered,
        weight_decay=weight_decay,
    )
    params, expected = _run_both(config, seed, hidden, batch)
    assert _all_same(params, expected)


def test_rmsprop_keeps_the_buffers_torch_optim_keeps():
    params, _ = mlp(6, (3,), 2).init(0)
    for momentum, centered in [(0.0, False), (0.9, False), (0.0, True), (0.5, True)]:
        state = rmsprop(0.01, momentum=momentum, centered=centered).init(params)
        module = mlp(6, (3,), 2).module()
        opt = torch.optim.RMSprop(module.parameters(), lr=0.01, momentum=momentum, centered=centered)
        module(torch.rand(2, 6)).sum().backward()
        opt.step()
        expected = {
            f"{name}.{k}" for k, p in module.named_parameters() for name in opt.state[p] if name != "step"
        }
        assert {k for k in state if "." in k} == expected


# --- the union update -----------------------------------------------------------------------

SHAPES = st.dictionaries(
    st.sampled_from(["w", "b", "layer.0.weight"]),
    st.lists(st.integers(1, 9), min_size=1, max_size=2).map(tuple),
    min_size=1,
    max_size=3,
)


def configs():
    """Every family the union serves, with random hyperparameters."""
    lr = st.floats(1e-4, 0.2)
    decay = st.sampled_from([0.0, 1e-4]) | st.floats(0.0, 0.1)
    sgd_configs = st.builds(
        lambda lr, momentum, nesterov, wd: OptimizerConfig(
            "sgd", lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=wd
        ),
        lr,
        st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.99),
        st.booleans(),
        decay,
    )
    adam_configs = st.builds(
        lambda name, lr, b1, b2, wd: OptimizerConfig(name, lr=lr, betas=(b1, b2), weight_decay=wd),
        st.sampled_from(["adam", "adamw"]),
        lr,
        st.floats(0.0, 0.99),
        st.floats(0.5, 0.9999),
        decay,
    )
    rmsprop_configs = st.builds(
        lambda lr, alpha, momentum, centered, wd: OptimizerConfig(
            "rmsprop", lr=lr, alpha=alpha, momentum=momentum, centered=centered, weight_decay=wd
        ),
        lr,
        st.floats(0.5, 0.999),
        st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.95),
        st.booleans(),
        decay,
    )
    return sgd_configs | adam_configs | rmsprop_configs


def _random_params(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a
    )


def _walk(optimizer, states, params, shapes, seed, steps=STEPS):
    """`steps` updates of each trial with the same seeded gradients."""
    for i in range(steps):
        grads = _random_params(shapes, seed * 1000 + i + 1)
        params, states = optimizer(grads, states, params)
    return params, states


UNION_SLOT = {
    ("sgd", "momentum_buffer"): "exp_avg",
    ("rmsprop", "square_avg"): "exp_avg_sq",
    ("rmsprop", "grad_avg"): "exp_avg",
}
"""Where the union state keeps each family's buffer (by torch.optim's name); others keep their names."""


@given(config=configs(), shapes=SHAPES, seed=st.integers(0, 10_000))
def test_union_steps_equal_each_optimizer_bitwise(config, shapes, seed):
    own, union = config.build(), tunable(config)
    params = _random_params(shapes, seed)
    own_params, own_state = _walk(own.update, own.init(params), params, shapes, seed)
    union_params, union_state = _walk(union.update, union.init(params), params, shapes, seed)
    assert _bitwise_equal(union_params, own_params)
    for key, value in own_state.items():  # every buffer and hyperparameter of its own, too
        name, _, leaf = key.partition(".")
        union_name = UNION_SLOT.get((family_of(config), name), name)
        assert torch.equal(union_state[f"{union_name}.{leaf}" if leaf else key], value)


@given(config=configs(), shapes=SHAPES, seed=st.integers(0, 10_000), union=st.booleans())
def test_every_eager_update_is_its_update_bit_for_bit(config, shapes, seed, union):
    """The eager update runs only each choice's own branch; its params and state are the bits
    of the update that runs them all, step after step (signed zeros aside, as `torch.equal`)."""
    optimizer = tunable(config) if union else config.build()
    assert optimizer.eager_update is not None and optimizer.eager_update is not optimizer.update
    params = _random_params(shapes, seed)
    state = optimizer.init(params)
    got = _walk(optimizer.eager_update, state, params, shapes, seed)
    expected = _walk(optimizer.update, state, params, shapes, seed)
    for mine, theirs in zip(got, expected):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@given(
    trials=st.lists(configs(), min_size=2, max_size=6),
    shapes=SHAPES,
    seed=st.integers(0, 10_000),
)
def test_union_trials_of_every_family_stack_under_vmap_each_as_alone(trials, shapes, seed):
    trials = [c for c in trials if needs_third_buffer(c) == needs_third_buffer(trials[0])]  # one layout
    params = _random_params(shapes, seed)
    optimizers = [tunable(c) for c in trials]
    states = [o.init(params) for o in optimizers]
    batched = torch.func.vmap(optimizers[0].update)

    def one(grads, state, params):  # the same gradients for every trial
        return batched({k: g.expand(len(trials), *g.shape) for k, g in grads.items()}, state, params)

    stacked_params, _ = _walk(one, stack(states), stack([params] * len(trials)), shapes, seed)
    for config, got in zip(trials, unstack(stacked_params)):
        own = config.build()
        alone, _ = _walk(own.update, own.init(params), params, shapes, seed)
        assert _bitwise_equal({k: v.contiguous() for k, v in got.items()}, alone), config


def test_every_tunable_shares_one_update_and_one_state_layout():
    params, _ = mlp(6, (3,), 2).init(0)
    every = [
        OptimizerConfig("sgd", lr=0.1),
        OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True),
        OptimizerConfig("adam", lr=1e-3),
        OptimizerConfig("adamw", lr=1e-3, weight_decay=0.1),
        OptimizerConfig("rmsprop", lr=1e-3, momentum=0.5, centered=True),
    ]
    optimizers = [tunable(c) for c in every]
    assert len({o.update for o in optimizers}) == 1
    layouts = [{k: (v.shape, v.dtype) for k, v in o.init(params).items()} for o in optimizers]
    assert all(layout == layouts[0] for layout in layouts[:-1])
    # RMSprop with momentum alone keeps a third buffer: every other config writes two a step
    two = {f"{buffer}.{k}" for buffer in ("exp_avg", "exp_avg_sq") for k in params}
    assert {k for k in layouts[0] if "." in k} == two
    assert layouts[-1].keys() - layouts[0].keys() == {f"momentum_buffer.{k}" for k in params}
    assert [needs_third_buffer(c) for c in every] == [False] * 4 + [True]


@pytest.mark.compile
def test_one_compiled_union_step_serves_every_optimizer_without_recompiling():
    model = mlp(6, (5,), 3)
    every = [
        OptimizerConfig("sgd", lr=0.1),
        OptimizerConfig("sgd", lr=0.05, momentum=0.9),
        OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        OptimizerConfig("adam", lr=1e-2),
        OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1),
        OptimizerConfig("rmsprop", lr=1e-2),
        OptimizerConfig("rmsprop", lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
    ]
    eager = make_train_step(model, tunable(every[0]))
    compiled = compile_step(eager)
    x, y = torch.rand(8, 6), torch.arange(8) % 3
    torch._dynamo.reset()
    params, buffers = model.init(0)
    for config in (every[0], every[-1]):  # the one compile per state layout (RMSprop with momentum's)
        compiled(params, buffers, tunable(config).init(params), x, y)
    torch.compiler.set_stance("fail_on_recompile")
    try:
        for seed, config in enumerate(every):
            params, buffers = model.init(seed)
            state = tunable(config).init(params)
            for _ in range(3):  # the first step and later ones (SGD's buffer starts as the gradient)
                want, _, _, want_loss = eager(params, buffers, state, x, y)
                params, buffers, state, loss = compiled(params, buffers, state, x, y)
                assert torch.allclose(loss, want_loss, rtol=1e-5)
                assert max_rel_diff(params, want) <= 1e-5, config
    finally:
        torch.compiler.set_stance("default")


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


@pytest.mark.parametrize("eager", [False, True])
def test_update_writes_nothing_in_place(eager):
    model = mlp(6, (5,), 3)
    params, buffers = model.init(0)
    optimizer = sgd(0.1, momentum=0.9, weight_decay=0.01)
    state = optimizer.init(params)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    step = make_train_step(model, optimizer, eager=eager)
    params, buffers, state, _ = step(params, buffers, state, x, y)  # momentum buffers of values, not 0
    before_p = {k: v.clone() for k, v in params.items()}
    before_s = {k: v.clone() for k, v in state.items()}
    for _ in range(2):
        step(params, buffers, state, x, y)
    assert all(torch.equal(before_p[k], params[k]) for k in params)
    assert all(torch.equal(before_s[k], state[k]) for k in state)


@pytest.mark.parametrize(
    "optimizer",
    [
        sgd(0.1),
        sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        adam(0.01),
        adamw(0.01),
        rmsprop(0.01, momentum=0.9, centered=True),
        tunable(OptimizerConfig("rmsprop", lr=0.01)),
    ],
    ids=["sgd", "sgd momentum", "adam", "adamw", "rmsprop", "union"],
)
@pytest.mark.parametrize("eager", [False, True])
def test_update_returns_state_and_params_in_their_own_layout(optimizer, eager):
    """Keys in `init`'s order, shapes, strides and dtypes: what a loop needs to skip guards."""
    model = mlp(6, (5,), 3)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    new_params, _, new_state, _ = make_train_step(model, optimizer, eager=eager)(
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
        lambda: adam(0.1, betas=(0.9, 1.0)),  # torch.optim refuses 1 too: the first step divides by 0
        lambda: adam(0.1, betas=(1.0, 0.9)),
        lambda: adam(0.1, eps=-1),
        lambda: rmsprop(0.0),
        lambda: rmsprop(0.1, alpha=1.5),
        lambda: rmsprop(0.1, alpha=float("nan")),
        lambda: rmsprop(0.1, eps=-1e-8),
        lambda: rmsprop(0.1, momentum=-0.5),
        lambda: rmsprop(0.1, weight_decay=-1),
        lambda: tunable(OptimizerConfig("rmsprop", lr=0.1, alpha=2.0)),
        lambda: OptimizerConfig("lion").build(),  # type: ignore[arg-type]
    ],
)
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError, match=r"must be|needs|unknown optimizer"):
        make()


def test_a_refusal_names_the_value_and_its_bounds():
    with pytest.raises(ValueError, match=r"^alpha must be >= 0.0 and <= 1.0, got 1.5$"):
        rmsprop(0.1, alpha=1.5)
    with pytest.raises(ValueError, match=r"^beta2 must be >= 0.0 and < 1.0, got 1.0$"):
        adam(0.1, betas=(0.9, 1.0))


@pytest.mark.parametrize(
    "make, error, said",
    [
        (lambda: sgd("0.1"), TypeError, r"^lr must be a number, got '0.1'$"),
        (lambda: rmsprop(0.1, alpha=None), TypeError, r"^alpha must be a number, got None$"),
        (lambda: adam(0.1, betas=(0.9,)), ValueError, r"^betas must be a pair \(beta1, beta2\), got \(0\.9,"),
        (lambda: adamw(0.1, betas=0.9), ValueError, r"^betas must be a pair"),
        (lambda: adam(0.1, betas="ab"), ValueError, r"^betas must be a pair"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_in_one_line(make, error, said):
    with pytest.raises(error, match=said):
        make()


_COMPILE_UPDATES = """
import sys, torch
from purestep.core.optim import OptimizerConfig, adam, rmsprop, sgd, tunable
params = {"w": torch.rand(64, 48), "b": torch.rand(64)}
grads = {k: torch.rand_like(v) for k, v in params.items()}
for optimizer in (adam(1e-3, weight_decay=0.1), rmsprop(centered=True), sgd(0.1, momentum=0.9),
                  tunable(OptimizerConfig("adam"))):
    torch.compile(optimizer.update, fullgraph=True)(grads, optimizer.init(params), params)
"""


def _loop_bodies(source: str):
    """The body of every `for` loop in generated C++ source, by brace matching."""
    for loop in re.finditer(r"for\(", source):
        start, depth = source.index("{", loop.end()), 0
        for end in range(start, len(source)):
            depth += {"{": 1, "}": -1}.get(source[end], 0)
            if depth == 0:
                break
        yield source[start:end]


@pytest.mark.compile
def test_compiled_updates_compute_their_step_factors_outside_every_element_loop(tmp_path):
    """Inductor's kernels for Adam, RMSprop, SGD and the union: the `pow`s of Adam's bias
    corrections run once a step, outside the loops over the elements (a libm call in a loop
    runs once per vector of every parameter), and the union takes one root per element."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-c", _COMPILE_UPDATES], check=True, env=env, cwd=tmp_path, capture_output=True
    )
    sources = [
        body.split("'''")[1]
        for path in tmp_path.rglob("*.py")
        for body in re.split(r"async_compile\.cpp_pybinding\(", path.read_text())[1:]
    ]
    assert any("std::pow" in s for s in sources)  # the kernels were found, with Adam's factors
    assert not [b for s in sources for b in _loop_bodies(s) if "std::pow(" in b]
    # and the union shares Adam's and RMSprop's root: no element loop takes two
    innermost = [b for s in sources for b in _loop_bodies(s) if "for(" not in b]
    assert max(len(re.findall(r"\.sqrt\(\)|std::sqrt\(", b)) for b in innermost) == 1


# --- params of several dtypes, and of bfloat16 and float16 ------------------------------------

DTYPE_CONFIGS = [
    OptimizerConfig("sgd", lr=0.1),
    OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    OptimizerConfig("adam", lr=1e-2, weight_decay=1e-2),
    OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1),
    OptimizerConfig("rmsprop", lr=1e-2),
    OptimizerConfig("rmsprop", lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
]
UPDATES = ("update", "eager", "union", "union eager")
"""Each update of `config` a test runs: its own optimizer's or the union's, every branch or eager."""


def _against_torch_optim(config, module, update: str, grads, steps):
    """`steps` steps of torch.optim on `module` and of `config`'s `update` (one of `UPDATES`) from
    its params, with the gradients `grads(i)`."""
    reference = torch_optimizer(config, module.parameters())
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    optimizer = tunable(config) if update.startswith("union") else config.build()
    state = optimizer.init(params)
    update = optimizer.eager_update if update.endswith("eager") else optimizer.update
    for i in range(steps):
        g = grads(i)
        for k, p in module.named_parameters():
            p.grad = g[k].clone()
        reference.step()
        params, state = update(g, state, params)
    return params, state, reference, {k: v.detach() for k, v in module.named_parameters()}


def _random_grads(module: nn.Module):
    def grads(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {
            k: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            for k, p in module.named_parameters()
        }

    return grads


@pytest.mark.parametrize("config", DTYPE_CONFIGS, ids=lambda c: f"{c.name} {c.momentum}")
@pytest.mark.parametrize("update", UPDATES, ids=str)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32)], ids=str)
def test_params_of_two_dtypes_each_step_as_torch_optim_bitwise(config, update, dtypes):
    """Each parameter takes its factors in its own dtype, as torch.optim's kernels take them,
    whichever dtype comes first."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 4).to(dtypes[0]), nn.Linear(4, 3).to(dtypes[1]))
    params, _, _, expected = _against_torch_optim(
        config, module, update, _random_grads(module), 3
    )
    assert all(params[k].dtype == v.dtype for k, v in expected.items())
    assert _all_same(params, expected)


@pytest.mark.parametrize("config", DTYPE_CONFIGS, ids=lambda c: f"{c.name} {c.momentum}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bfloat16_and_float16_params_eager_step_as_torch_optim_bitwise(config, dtype):
    """torch.optim's kernels take each factor in float32 for these params (beta2 0.999 is not
    rounded to 1, nor momentum 0.9 to 0.8984375), `add`'s alpha in the params' dtype; the eager
    update on the CPU makes the very same calls, so short tensors (a kernel's scalar tail) too."""
    for update in ("eager", "union eager"):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3)).to(dtype)
        params, *_, expected = _against_torch_optim(
            config, module, update, _random_grads(module), 8
        )
        assert _all_same(params, expected), update


@pytest.mark.parametrize("update", UPDATES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bfloat16_and_float16_momentum_buffers_as_torch_optim(update, dtype):
    """200 steps of one gradient: the buffer settles at torch.optim's value (bf16: 9.75; the
    momentum rounded to bf16 would give 9.5625), every update alike, on tensors of whole vectors."""
    config = OptimizerConfig("sgd", lr=0.01, momentum=0.9)
    module = nn.Linear(32, 64, bias=False).to(dtype)
    ones = {"weight": torch.ones(64, 32, dtype=dtype)}
    params, state, reference, expected = _against_torch_optim(
        config, module, update, lambda i: ones, 200
    )
    buffer = state["exp_avg.weight" if update.startswith("union") else "momentum_buffer.weight"]
    assert torch.equal(buffer, reference.state[module.weight]["momentum_buffer"])
    assert dtype != torch.bfloat16 or buffer.unique().tolist() == [9.75]
    assert _all_same(params, expected)


@pytest.mark.parametrize("config", DTYPE_CONFIGS, ids=lambda c: f"{c.name} {c.momentum}")
def test_bfloat16_params_every_update_as_torch_optim_on_whole_vectors(config):
    """The update for compile and vmap takes its 0-d factors in float32 where they meet bfloat16
    params: equal to torch.optim on tensors of whole vectors (a kernel's scalar tail, on shorter
    ones, rounds `add` in bf16 twice, as only the eager update's same call does)."""
    for update in ("update", "union"):
        torch.manual_seed(0)
        module = nn.Linear(32, 64, bias=False).to(torch.bfloat16)
        params, *_, expected = _against_torch_optim(
            config, module, update, _random_grads(module), 8
        )
        assert _all_same(params, expected), update


@pytest.mark.parametrize("make", [lambda: sgd(0.1), adam, rmsprop, lambda: tunable(OptimizerConfig())])
def test_init_of_no_params_is_refused_as_torch_optim(make):
    with pytest.raises(ValueError, match="^optimizer got an empty parameter list$"):
        make().init({})
    with pytest.raises(ValueError, match="empty parameter list"):
        torch.optim.SGD([], lr=0.1)


def _bad_fit_case(case: str):
    """`fit` (or `fit_trials`) arguments with one thing wrong, and the words it must be refused with."""
    model = functional(nn.Linear, in_features=10, out_features=4)
    params, buffers = model.init(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 10, generator=g), torch.randint(0, 4, (100,), generator=g)
    optimizer, state, eval_data = sgd(0.1, momentum=0.9), None, (x, y)
    said = ""
    if case == "rows":
        y, said = y[:96], "training data: 100 input rows but 96 targets"
    elif case == "eval rows":
        eval_data, said = (x, y[:90]), "evaluation data: 100 input rows but 90 targets"
    elif case == "no rows":
        x, y, said = x[:0], y[:0], "training data has no rows"
    elif case == "family":
        optimizer, state = adam(), sgd(0.1).init(params)
        said = "optimizer state holds dampening, lr, momentum, nesterov, step, weight_decay; this optimizer's"
    elif case == "subset":
        state = optimizer.init({"weight": params["weight"]})
        said = "optimizer state holds 'momentum_buffer' for some params but not 'bias'"
    state = optimizer.init(params) if state is None else state
    return model, optimizer, params, buffers, state, x, y, eval_data, said


@pytest.mark.parametrize("trials", [False, True])
@pytest.mark.parametrize("case", ["rows", "eval rows", "no rows", "family", "subset"])
def test_fit_refuses_data_and_states_that_do_not_fit_before_it_trains(case, trials):
    """Inputs and targets of different row counts trained on the shorter (or failed at the last
    batch blaming the model); no rows, torch's `stack` error; another family's state, `KeyError:
    'beta1'`; a state made for some params, SGD trained the others without momentum."""
    from purestep import fit, fit_trials

    model, optimizer, params, buffers, state, x, y, eval_data, said = _bad_fit_case(case)
    with pytest.raises(ValueError, match=re.escape(said)):
        if trials:
            fit_trials(model, optimizer, [params], [buffers], [state], x, y, epochs=1, eval_data=eval_data)
        else:
            fit(model, optimizer, params, buffers, x, y, epochs=1, eval_data=eval_data, state=state)


@pytest.mark.parametrize(
    "step_of, state_of, lacking",
    [(adam, lambda: sgd(0.1), "beta1"), (lambda: sgd(0.1), adam, "momentum"), (rmsprop, adam, "alpha")],
    ids=["adam step, sgd state", "sgd step, adam state", "rmsprop step, adam state"],
)
def test_a_step_called_with_another_familys_state_names_what_it_lacks(step_of, state_of, lacking):
    """A step called directly (no `fit` to check the state first) failed with `KeyError: 'beta1'`;
    both updates (the eager step's and the one compile and vmap trace) name the key and the fix."""
    model = functional(nn.Linear, in_features=6, out_features=3)
    params, buffers = model.init(0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    optimizer, state = step_of(), state_of().init(params)
    said = f"optimizer state has no {lacking!r}, which "
    with pytest.raises(ValueError, match=re.escape(said)):
        make_train_step(model, optimizer)(params, buffers, state, x, y)
    with pytest.raises(ValueError, match=re.escape(said)):
        optimizer.update(params, state, params)
