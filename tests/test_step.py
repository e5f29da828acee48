"""Step contracts: purity, no recompiles after warm-up, batched == alone (`test_check.py`: the
lockstep judgement of compiled vs eager and batched vs alone)."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from purestep import (
    batch_eval_over_trials,
    batch_over_trials,
    evaluate,
    fit,
    make_eval_step,
    make_train_step,
    mlp,
    sgd,
    stack,
    train_epoch,
    unstack,
)
from purestep.check import max_rel_diff
from purestep.core import fastpath
from purestep.core.data import batches
from purestep.core.step import compile_step, direct_step, short_batch, steady


@pytest.fixture(scope="module")
def digits():
    from purestep import load_dataset

    return load_dataset("digits")


def test_eval_step_counts_loss_sum_and_correct():
    model = mlp(6, (4,), 3)
    params, buffers = model.init(0)
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    loss_sum, n_correct = make_eval_step(model)(params, buffers, x, y)
    logits, _ = model.apply(params, buffers, x, train=False)
    assert torch.equal(loss_sum / 10, torch.nn.functional.cross_entropy(logits, y))
    assert n_correct.item() == (logits.argmax(1) == y).sum().item()


class _PartlyUsed(torch.nn.Module):
    """A model with a param the loss never reaches: its gradient is zero, as `grad_and_value` says."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = torch.nn.Linear(64, 3), torch.nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x.flatten(1))


class _PartlyFrozen(torch.nn.Module):
    """Three linear layers, the params named in `frozen` built with `requires_grad=False`, as a
    fine-tuning script freezes a pretrained trunk."""

    NAMES = tuple(f"layers.{i}.{kind}" for i in range(3) for kind in ("weight", "bias"))

    def __init__(self, frozen: tuple[str, ...] = ("layers.0.weight", "layers.0.bias")) -> None:
        super().__init__()
        widths = [(64, 8), (8, 8), (8, 3)]
        self.layers = torch.nn.ModuleList([torch.nn.Linear(*w) for w in widths])
        for name in frozen:
            self.get_parameter(name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.layers[0](x.flatten(1)))
        return self.layers[2](torch.relu(self.layers[1](x)))


@given(
    which=st.sampled_from(["mlp", "cnn", "partly used", "partly frozen"]),
    optimizer=st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]),
    seed=st.integers(0, 1000),
    batch=st.integers(2, 6),
)
def test_the_eager_step_is_the_transformable_step_bit_for_bit(which, optimizer, seed, batch):
    """`eager=True` (plain autograd, eager update) returns the default step's params, buffers
    (BatchNorm's running stats), state and loss, dropout's masks drawn alike."""
    from purestep import OptimizerConfig, cnn, functional

    models = {"mlp": mlp(64, (16,), 3), "cnn": cnn(classes=3, width=4, dense=8)}
    others = {"partly used": _PartlyUsed, "partly frozen": _PartlyFrozen}
    model = models[which] if which in models else functional(others[which])
    config = OptimizerConfig(optimizer, lr=0.01, momentum=0.9, weight_decay=0.01, centered=True)
    steps = [make_train_step(model, config.build(), eager=eager) for eager in (False, True)]
    params, buffers = model.init(seed)
    runs = [(params, buffers, config.build().init(params))] * 2
    g = torch.Generator().manual_seed(seed)
    for i in range(3):
        x, y = torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 3, (batch,), generator=g)
        outs = []
        for step, run in zip(steps, runs):
            torch.manual_seed(seed + i)
            outs.append(step(*run, x, y))
        runs = [out[:3] for out in outs]
        for a, b in zip(*outs):
            a, b = (a, b) if isinstance(a, dict) else ({"": a}, {"": b})
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert not any(v.requires_grad for v in b.values())


@given(k=st.integers(1, 4), seed=st.integers(0, 1000), lr=st.floats(1e-3, 0.3), momentum=st.floats(0, 0.95))
def test_batched_trials_equal_each_trial_alone(k, seed, lr, momentum):
    model = mlp(12, (8,), 3)
    optimizers = [sgd(lr * (i + 1), momentum=momentum, weight_decay=1e-3 * i) for i in range(k)]
    params = [model.init(seed + i)[0] for i in range(k)]
    states = [o.init(p) for o, p in zip(optimizers, params)]
    step = make_train_step(model, optimizers[0])
    g = torch.Generator().manual_seed(seed)
    bp, bb, bs = stack(params), stack([{}] * k), stack(states)
    for _ in range(5):
        x, y = torch.rand(7, 12, generator=g), torch.randint(0, 3, (7,), generator=g)
        bp, bb, bs, losses = batch_over_trials(step)(bp, bb, bs, x, y)
        for i in range(k):
            params[i], _, states[i], loss = step(params[i], {}, states[i], x, y)
            assert torch.allclose(losses[i], loss, rtol=1e-5, atol=1e-6)
    for mine, alone in zip(unstack(bp), params):
        assert max_rel_diff(mine, alone) <= 1e-5
    sums, correct = batch_eval_over_trials(make_eval_step(model))(bp, bb, x, y)
    assert sums.shape == correct.shape == (k,)


def sgd_config():
    from purestep import OptimizerConfig

    return OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)


@pytest.mark.compile
def test_no_recompile_across_epochs_trials_and_learning_rates(digits):
    """After one warm-up fit, new trials, learning rates and epochs reuse the graph per shape.

    An epoch's short last batch runs eagerly, so each step has one graph, for full batches.
    SGD with momentum keeps buffers in its state and SGD without keeps none (as torch.optim):
    two train graphs, each warmed up once; the eval graph is shared.
    """
    model = mlp(64, (512, 512), 10)
    x, y, ex, ey = digits.x_train, digits.y_train, digits.x_test, digits.y_test
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    families = [
        [sgd(0.01), sgd(0.1), sgd(0.05, weight_decay=1e-3)],
        [sgd(0.02, momentum=0.9, nesterov=True, weight_decay=1e-3), sgd(0.1, momentum=0.5)],
    ]
    # the train and eval steps' full-batch graphs; the second family adds its train graph
    for expected, (warm_up, *others) in zip([2, 3], families):
        fit(model, warm_up, *model.init(0), x, y, epochs=1, eval_data=(ex, ey))
        assert counters["stats"]["unique_graphs"] == expected
        torch.compiler.set_stance("fail_on_recompile")
        try:
            for seed, optimizer in enumerate(others):
                result = fit(
                    model, optimizer, *model.init(seed + 1), x, y, epochs=2, eval_data=(ex, ey), shuffle=True
                )
                assert len(result.history) == 2
        finally:
            torch.compiler.set_stance("default")
        assert counters["stats"]["unique_graphs"] == expected


def test_trials_with_and_without_momentum_buffers_do_not_stack():
    params, _ = mlp(6, (3,), 2).init(0)
    states = [sgd(0.1).init(params), sgd(0.1, momentum=0.9).init(params)]
    with pytest.raises(ValueError, match="different keys"):
        stack(states)


@given(seed=st.integers(0, 1000), lr=st.floats(1e-3, 0.3))
def test_bf16_step_keeps_params_and_state_fp32_and_tracks_fp32(seed, lr):
    """bf16 autocast runs the products in bfloat16, not the update: params stay float32."""
    model, optimizer = mlp(12, (16,), 3), sgd(lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(32, 12, generator=g), torch.randint(0, 3, (32,), generator=g)
    runs, (init, buffers) = {}, model.init(seed)
    for precision in ("fp32", "bf16"):
        params = init
        state = optimizer.init(params)
        step = make_train_step(model, optimizer, precision=precision)
        for _ in range(3):
            params, buffers, state, loss = step(params, buffers, state, x, y)
        assert all(v.dtype == torch.float32 for v in params.values()) and loss.dtype == torch.float32
        sums, _ = make_eval_step(model, precision=precision)(params, buffers, x, y)
        runs[precision] = (params, loss, sums)

    def norm(a, b):
        return sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()

    # bf16 products round gradients to 2-3 significant digits: the update stays the same move, to
    # 20% (the worst of 300 seeds at each of lr 0.03-0.3 is 13%)
    assert norm(runs["bf16"][0], runs["fp32"][0]) <= 0.2 * norm(runs["fp32"][0], init)
    assert torch.allclose(runs["bf16"][1], runs["fp32"][1], rtol=2e-2)
    assert torch.allclose(runs["bf16"][2], runs["fp32"][2], rtol=2e-2)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        make_train_step(mlp(4, (3,), 2), sgd(0.1), precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        make_eval_step(mlp(4, (3,), 2), precision="fp16")


def _transposed(params):
    """The same values with every matrix stored column-major: equal params, another layout."""
    return {k: v.t().contiguous().t() if v.ndim == 2 else v for k, v in params.items()}


def test_steady_needs_the_inputs_layout_back_and_no_other_thread():
    model, optimizer = mlp(6, (5,), 3), sgd(0.1, momentum=0.9)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    out = make_train_step(model, optimizer)(
        params, buffers, state, torch.rand(4, 6), torch.randint(0, 3, (4,))
    )
    out = out[0], out[2]
    assert steady((params, state), out[:2])
    assert not steady((_transposed(params), state), out[:2])
    assert not steady((params, state), (params, {**state, "lr": state["lr"].float()}))
    assert not steady((params,), (dict(reversed(params.items())),))
    for daemon, expected in ((True, True), (False, False)):
        release = threading.Event()
        other = threading.Thread(target=release.wait, daemon=daemon)
        other.start()
        try:
            assert steady((params, state), out[:2]) is expected
        finally:
            release.set()
            other.join()
    from torch._inductor.async_compile import AsyncCompile

    AsyncCompile.pool().submit(int).result()  # inductor's compile workers, left running after a compile
    assert steady((params, state), out[:2])


def test_direct_is_none_until_a_graph_has_run():
    """A compiled step that ran eagerly (as the short last batch does) offers no graph to enter."""
    model, optimizer = mlp(6, (5,), 3), sgd(0.1)
    params, buffers = model.init(0)
    step = compile_step(make_train_step(model, optimizer))
    assert direct_step(step) is None
    with short_batch(4, 8):
        step(params, buffers, optimizer.init(params), torch.rand(4, 6), torch.randint(0, 3, (4,)))
    assert direct_step(step) is None
    assert direct_step(make_train_step(model, optimizer)) is None


def _stepped(step, params, state, x, y, batch_size):
    """`train_epoch` spelled out, every call checked by Dynamo's guards."""
    losses = []
    for xb, yb in batches(x, y, batch_size):
        with short_batch(len(yb), batch_size):
            params, buffers, state, loss = step(params, {}, state, xb, yb)
        losses.append(loss)
    return params, buffers, state, torch.stack(losses)


def _counting(step):
    """Count the calls that go through Dynamo (not straight into a graph), by batch rows."""
    calls, through = [], step._dynamo()

    def counted(*args):
        calls.append(len(args[-1]))
        return through(*args)

    step._compiled = counted
    return calls


@pytest.mark.compile
@pytest.mark.skipif(not fastpath.enabled(), reason="the direct entry is a fast path (PURESTEP_FAST_PATHS=0)")
def test_epochs_enter_the_graph_directly_and_equal_stepping_through_dynamo(digits, monkeypatch):
    """Epochs from column-major, row-major, then column-major params: two graphs. After each
    epoch's first step, full batches enter the graph their inputs need directly, the short last
    batch goes through Dynamo (and runs eagerly), and each epoch equals stepping through Dynamo
    on every call, bitwise; without a steady first step every call goes through Dynamo. The
    same for an evaluation pass."""
    model, optimizer = mlp(64, (32,), 10), sgd(0.05, momentum=0.9)
    step = compile_step(make_train_step(model, optimizer))
    x, y = digits.x_train[:650], digits.y_train[:650]
    init, _ = model.init(0)
    calls = _counting(step)
    for params in (_transposed(init), init, _transposed(init)):
        state = optimizer.init(params)
        calls.clear()
        got = train_epoch(step, params, {}, state, x, y, 64, log_every=0)
        assert calls == [64, 10]
        want = _stepped(step, params, state, x, y, 64)
        for mine, theirs in zip(got, want):
            mine, theirs = (mine, theirs) if isinstance(mine, dict) else ({"": mine}, {"": theirs})
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    eval_step = compile_step(make_eval_step(model))
    eval_calls = _counting(eval_step)
    direct_metrics = evaluate(eval_step, init, {}, x, y, 64)
    assert eval_calls == [64, 10]
    monkeypatch.setattr("purestep.core.loop.steady", lambda inputs, outputs: False)
    calls.clear()
    train_epoch(step, init, {}, optimizer.init(init), x, y, 64, log_every=0)
    assert len(calls) == 11
    eval_calls.clear()
    assert evaluate(eval_step, init, {}, x, y, 64) == direct_metrics
    assert len(eval_calls) == 11


class _Untraceable(torch.nn.Module):
    """What Dynamo does not trace: an LSTM, or a BatchNorm's cumulative average (momentum=None)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.lstm = torch.nn.LSTM(6, 4, batch_first=True)
        self.norm = torch.nn.BatchNorm1d(6, momentum=None)
        self.head = torch.nn.Linear(4 if kind == "lstm" else 6, 3)

    def forward(self, x):
        if self.kind == "lstm":
            return self.head(self.lstm(x.unsqueeze(1))[0][:, -1])
        return self.head(self.norm(x))


@pytest.mark.compile
@pytest.mark.parametrize("kind", ["lstm", "cumulative batchnorm"])
def test_a_step_dynamo_cannot_trace_runs_uncompiled_with_a_warning(kind):
    """It gives the uncompiled step's bits, call after call, and the model's own errors still raise."""
    from purestep import functional

    model, optimizer = functional(_Untraceable, kind=kind), sgd(0.1, momentum=0.9)
    step = make_train_step(model, optimizer)
    compiled = compile_step(step)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    x, y = torch.rand(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ours = theirs = (params, buffers, state)
    with pytest.warns(UserWarning, match="step not compiled .*; it runs eagerly"):
        ours = compiled(*ours, x, y)[:3]
    for _ in range(2):
        theirs = step(*theirs, x, y)[:3]
    ours = compiled(*ours, x, y)[:3]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(ours, theirs) for k in a)
    with pytest.raises(RuntimeError):
        compiled(*ours, torch.rand(8, 5), y)  # a width the model does not take


# --- frozen params (requires_grad=False): neither differentiated nor updated, as torch.optim -----


def _module_loop_against_eager_step(frozen, config, seed, steps=6):
    """`steps` of `module.train()` + torch.optim and of the eager functional step from one seed,
    every param compared bit for bit after each step; the final params, states and torch's optimizer."""
    from torch.nn.functional import cross_entropy

    from purestep import functional
    from purestep.core.reference import torch_optimizer

    model = functional(_PartlyFrozen, frozen=frozen)
    assert model.frozen == set(frozen)
    torch.manual_seed(seed)
    module = model.module()
    theirs = torch_optimizer(config, module.parameters())
    optimizer = config.build()
    step = make_train_step(model, optimizer, eager=True)
    init, buffers = model.init(seed)
    params, state = init, optimizer.init(model.trainable(init))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.rand(8, 64, generator=g), torch.randint(0, 3, (8,), generator=g)
        expected = cross_entropy(module(x), y)
        expected.backward()
        theirs.step()
        theirs.zero_grad()
        params, buffers, state, loss = step(params, buffers, state, x, y)
        assert torch.equal(loss, expected.detach())
        for k, v in module.named_parameters():
            assert torch.equal(params[k], v.detach()), k
    return model, module, theirs, init, params, state


@pytest.mark.parametrize(
    "config",
    [
        ("sgd", {"lr": 0.1, "weight_decay": 0.01}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("adam", {"lr": 0.01, "weight_decay": 0.01}),
        ("adamw", {"lr": 0.01, "weight_decay": 0.01}),
        ("rmsprop", {"lr": 0.01, "weight_decay": 0.01}),
        ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.01}),
    ],
    ids=lambda c: "-".join([c[0], *c[1]]),
)
def test_a_frozen_layer_is_left_as_torch_optim_leaves_it(config):
    """The first layer frozen: every step's params and loss are the module loop's bit for bit, the
    frozen ones never move (not even by weight decay), and neither optimizer keeps state for them."""
    from purestep import OptimizerConfig

    name, values = config
    frozen = ("layers.0.weight", "layers.0.bias")
    model, module, theirs, init, params, state = _module_loop_against_eager_step(
        frozen, OptimizerConfig(name, **values), seed=3
    )
    assert list(params) == list(init) == [k for k, _ in module.named_parameters()]
    for k in frozen:
        assert torch.equal(params[k], init[k]) and not params[k].requires_grad
        assert not any(key.endswith(f".{k}") for key in state), k
    assert all(not torch.equal(params[k], init[k]) for k in init if k not in frozen)
    kept = {id(p) for p in theirs.state}
    with_state = [k for k in init if any(key.endswith(f".{k}") for key in state)]
    assert [k for k, p in module.named_parameters() if id(p) in kept] == with_state


@given(
    frozen=st.sets(st.sampled_from(_PartlyFrozen.NAMES), max_size=len(_PartlyFrozen.NAMES) - 1),
    name=st.sampled_from(["sgd", "adam", "rmsprop"]),
    seed=st.integers(0, 1000),
)
def test_whichever_params_are_frozen_the_eager_step_is_the_module_loop(frozen, name, seed):
    from purestep import OptimizerConfig

    config = OptimizerConfig(name, lr=0.05, momentum=0.9, weight_decay=0.01, centered=True)
    frozen = tuple(sorted(frozen))
    model, _, _, init, params, state = _module_loop_against_eager_step(frozen, config, seed, steps=3)
    assert all(torch.equal(params[k], init[k]) for k in frozen)
    assert not [k for k in state if "." in k and k.split(".", 1)[1] in frozen]
    # the transformable step (grad_and_value, the update of every branch) takes the same steps
    params, buffers, state = init, {}, config.build().init(model.trainable(init))
    step = make_train_step(model, config.build())
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x, y = torch.rand(8, 64, generator=g), torch.randint(0, 3, (8,), generator=g)
        params, buffers, state, _ = step(params, buffers, state, x, y)
    assert all(torch.equal(params[k], init[k]) for k in frozen)


def test_a_state_made_from_every_param_still_leaves_the_frozen_ones_alone():
    """`optimizer.init(params)`, frozen params and all, as code written before them does: the
    step reads and writes only the trainable params' entries, so it takes the same steps."""
    from purestep import OptimizerConfig, functional

    model = functional(_PartlyFrozen)
    config = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    init, _ = model.init(0)
    x, y = torch.rand(8, 64), torch.randint(0, 3, (8,))
    step = make_train_step(model, config.build(), eager=True)
    lean = step(init, {}, config.build().init(model.trainable(init)), x, y)
    full = step(init, {}, config.build().init(init), x, y)
    assert all(torch.equal(lean[0][k], full[0][k]) for k in init)
    assert all(torch.equal(full[2][k], v) for k, v in lean[2].items())
    assert torch.equal(full[2]["momentum_buffer.layers.0.weight"], torch.zeros(8, 64))


def test_a_model_with_every_param_frozen_is_refused():
    from purestep import functional
    from purestep.core.model import ModelError

    model = functional(_PartlyFrozen, frozen=_PartlyFrozen.NAMES)
    with pytest.raises(ModelError, match="every parameter of model '_PartlyFrozen' is frozen"):
        make_train_step(model, sgd(0.1))
    with pytest.raises(ModelError, match="frozen"):
        model.trainable(model.init(0)[0])


@pytest.mark.compile
def test_the_compiled_step_leaves_frozen_params_as_they_are():
    """Compiled, alone and vmapped over trials: the frozen params come back bit for bit, the others
    as the eager step's to float32 rounding, and the state holds none of the frozen ones."""
    from purestep import OptimizerConfig, functional

    model = functional(_PartlyFrozen, frozen=("layers.1.weight", "layers.2.bias"))
    optimizer = OptimizerConfig("adam", lr=0.01, weight_decay=0.01).build_for(compiled=True)
    init, _ = model.init(0)
    state = optimizer.init(model.trainable(init))
    eager = make_train_step(model, optimizer, eager=True)
    compiled = compile_step(make_train_step(model, optimizer))
    batched = batch_over_trials(make_train_step(model, optimizer))
    g = torch.Generator().manual_seed(0)
    ours = theirs = (init, {}, state)
    stacked = (stack([init, init]), {}, stack([state, state]))
    for _ in range(3):
        x, y = torch.rand(8, 64, generator=g), torch.randint(0, 3, (8,), generator=g)
        ours, theirs = compiled(*ours, x, y)[:3], eager(*theirs, x, y)[:3]
        stacked = batched(*stacked, x, y)[:3]
        assert max_rel_diff(ours[0], theirs[0]) <= 1e-5
    for k in model.frozen:
        assert torch.equal(ours[0][k], init[k]) and torch.equal(stacked[0][k], torch.stack([init[k]] * 2))
    assert list(ours[2]) == list(state)
    assert not any(k.endswith(("layers.1.weight", "layers.2.bias")) for k in state)


# --- what a step, `fit` and the trees refuse ------------------------------------------------


@pytest.mark.parametrize("eager", [True, False])
def test_outputs_a_loss_would_score_wrongly_are_refused_by_both_steps(eager):
    from purestep import functional
    from purestep.core.losses import OutputShapeError

    x, y = torch.randn(6, 4), torch.randn(6, 1)
    flat = functional(lambda: torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(0)))
    one_column = mlp(4, (3,), 1)
    opt = sgd(0.1)
    cases = [(flat, "mse", "outputs of shape \\(6,\\) for targets of shape \\(6, 1\\)"),
             (one_column, "cross_entropy", "cross_entropy over one class")]
    for model, loss, said in cases:
        params, buffers = model.init(0)
        step = make_train_step(model, opt, loss, eager=eager)
        with pytest.raises(OutputShapeError, match=said):
            step(params, buffers, opt.init(params), x, y)
        with pytest.raises(OutputShapeError, match=said):
            make_eval_step(model, loss)(params, buffers, x, y)


def test_fit_picks_its_loss_from_the_targets_and_refuses_one_that_does_not_fit():
    from purestep import load_dataset

    data = load_dataset("diabetes")
    model = mlp(10, (8,), 1)
    params, buffers = model.init(0)
    kwargs = dict(epochs=2, compiled=False, log_every=0, eval_data=(data.x_test, data.y_test))
    picked = fit(model, sgd(0.05), params, buffers, data.x_train, data.y_train, **kwargs)
    given = fit(model, sgd(0.05), params, buffers, data.x_train, data.y_train, loss="mse", **kwargs)
    assert [r.train_loss for r in picked.history] == [r.train_loss for r in given.history]
    assert picked.history[-1].train_loss < picked.history[0].train_loss
    with pytest.raises(ValueError, match="cross_entropy does not fit float targets"):
        fit(model, sgd(0.05), params, buffers, data.x_train, data.y_train, loss="cross_entropy", **kwargs)


def test_accuracy_counts_every_labelled_position():
    from purestep import functional

    model = functional(torch.nn.Conv1d, in_channels=4, out_channels=5, kernel_size=1)
    params, buffers = model.init(0)
    x, y = torch.randn(8, 4, 3), torch.randint(0, 5, (8, 3))  # outputs (N, C, L), labels (N, L)
    out, _ = model.apply(params, buffers, x, train=False)
    accuracy = evaluate(make_eval_step(model), params, buffers, x, y, 4).accuracy
    assert accuracy == pytest.approx((out.argmax(1) == y).double().mean().item())


@given(bad=st.sampled_from([0.0, -0.1, float("nan"), float("inf"), "0.1", None]))
def test_a_schedule_that_gives_no_learning_rate_is_refused(bad):
    model = mlp(4, (3,), 2)
    params, buffers = model.init(0)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match=r"lr_at\(0\) gave .*finite and > 0"):
        fit(model, sgd(0.1), params, buffers, x, y, epochs=1, compiled=False, lr_at=lambda e: bad)


@pytest.mark.parametrize("eager", [True, False])
def test_a_state_made_for_other_params_is_refused(eager):
    model = mlp(4, (3,), 2)
    params, buffers = model.init(0)
    opt = sgd(0.1, momentum=0.9)
    other = opt.init({f"layer.{k}": v for k, v in params.items()})
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="'momentum_buffer.layer.linear_relu_stack.0.weight' names no param"):
        make_train_step(model, opt, eager=eager)(params, buffers, other, x, y)


def test_what_is_not_a_model_or_an_optimizer_is_refused_by_name():
    model, opt = mlp(4, (3,), 2), sgd(0.1)
    with pytest.raises(TypeError, match="expected a Model from ps.functional.*got NeuralNetwork"):
        make_train_step(model.module(), opt)
    with pytest.raises(TypeError, match="expected a Model.*got Optimizer"):
        make_train_step(opt, model)
    with pytest.raises(TypeError, match="expected an Optimizer"):
        make_train_step(model, "sgd")
    with pytest.raises(TypeError, match="expected a Model"):
        make_eval_step(torch.nn.Linear(4, 2))


def test_empty_trees_are_refused_by_stack_and_by_unstack_without_n():
    with pytest.raises(ValueError, match="at least one tree"):
        stack([])
    with pytest.raises(ValueError, match="needs n"):
        unstack({})
    assert unstack({}, 3) == [{}, {}, {}]


@pytest.mark.parametrize("where", ["train", "eval"])
def test_fit_refuses_labels_the_model_has_no_output_for_before_training(where):
    """A compiled step's loss failed mid-run with its kernel's index check; the batched one scored them 0."""
    from purestep import fit_trials

    model, opt = mlp(4, (3,), 3), sgd(0.1)
    params, buffers = model.init(0)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    beyond = y.clone()
    beyond[5] = 3
    train, held = (beyond, y) if where == "train" else (y, beyond)
    said = "^3 outputs a row for labels up to 3$"
    with pytest.raises(ValueError, match=said):
        fit(model, opt, params, buffers, x, train, epochs=1, compiled=False, eval_data=(x, held))
    with pytest.raises(ValueError, match=said):
        fit_trials(model, opt, [params], [buffers], [opt.init(params)], x, train, epochs=1, compiled=False,
                   eval_data=(x, held))


def test_fit_shuffles_each_epoch_by_its_own_seeded_order():
    """Epoch e of `fit(shuffle=True, seed=s)` takes its batches in `epoch_order(n, e, s)`: a run
    repeats from its seed, and a resumed one takes the orders the unbroken run took."""
    from purestep.core.data import epoch_order

    model = mlp(6, (5,), 3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    optimizer = sgd(0.1, momentum=0.9)
    params, buffers = model.init(0)
    result = fit(
        model, optimizer, params, buffers, x, y, epochs=3, batch_size=8, shuffle=True, seed=7, compiled=False,
        log_every=0,
    )  # fmt: skip
    step, state = make_train_step(model, optimizer, eager=True), optimizer.init(params)
    for epoch in range(3):
        for xb, yb in batches(x, y, 8, epoch_order(len(y), epoch, 7)):
            params, buffers, state, _ = step(params, buffers, state, xb, yb)
    assert all(torch.equal(result.params[k], v) for k, v in params.items())


def test_batched_trials_draw_their_own_dropout_masks():
    """Under `vmap` each trial draws its own masks (`randomness="different"`): two trials from one
    init and one batch part after a step; with shared masks they would stay equal."""
    from purestep import ConvNet, functional

    model = functional(ConvNet, width=4, dense=16, dropout=0.5)
    params, buffers = model.init(0)
    optimizer = sgd(0.1)
    step = batch_over_trials(make_train_step(model, optimizer))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    trees = stack([params] * 2), stack([buffers] * 2), stack([optimizer.init(params)] * 2)
    *_, losses = step(*trees, x, y)
    assert losses[0] != losses[1]
