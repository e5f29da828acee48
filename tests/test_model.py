"""Model contract: any nn.Module as init/apply; params and buffers are the module's own; the
functional eager step equals `module.train()` + `torch.optim` (bitwise for SGD) for every model
of a zoo: MLP, CNN with BatchNorm and dropout, LayerNorm MLP, residual block, tied weights, a
registered non-trainable buffer, and a trunk frozen for fine-tuning."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from purestep import ConvNet, NeuralNetwork, OptimizerConfig, cnn, functional, mlp, sgd
from purestep.check import max_rel_diff
from purestep.core.loop import evaluate
from purestep.core.model import ModelError, build_model, check_model_args, state_of
from purestep.core.reference import torch_optimizer
from purestep.core.step import batch_over_trials, compile_step, make_eval_step, make_train_step, stack

# --- the zoo: every model takes (N, 1, 8, 8) images and gives 10 logits --------------------


class LayerNormMLP(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, 10)
        )

    def forward(self, x):
        return self.net(x)


class Residual(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = F.relu(self.inp(x.flatten(1)))
        return self.out(F.relu(h + self.block(h)))


class Tied(nn.Module):
    """Two layers that share one weight, as a decoder shares its encoder's."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 10)
        self.mix = nn.Linear(10, 10, bias=False)
        self.mix2 = nn.Linear(10, 10, bias=False)
        self.mix2.weight = self.mix.weight  # tied
        self.head = nn.Linear(10, 10)

    def forward(self, x):
        h = torch.tanh(self.encode(x.flatten(1)))
        return self.head(self.mix2(torch.relu(self.mix(h))))


class WithBuffer(nn.Module):
    """A registered non-trainable buffer, read every call and updated in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 64))
        self.register_buffer("seen", torch.zeros(()))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if self.training:
            self.seen.add_(x.shape[0])
        return self.fc(x.flatten(1) * self.scale)


class Reassigned(nn.Module):
    """Buffers updated by reassignment in train mode (a running mean, a step count), as many modules
    write them: `functional_call` writes the new tensors back into the dict it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        if self.training:
            self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
            self.steps = self.steps + 1
        return self.fc(x - self.mean)


class FineTuned(nn.Module):
    """A trunk frozen for fine-tuning (`requires_grad_(False)`: its Linear and its BatchNorm's
    affine params); the BatchNorm's running statistics still update in train mode, as the module's."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        self.trunk.requires_grad_(False)

    def forward(self, x):
        return self.head(self.trunk(x))


def small_cnn():
    return ConvNet(channels=1, classes=10, width=4, dense=16, dropout=0.3)


ZOO = {
    "mlp": lambda: NeuralNetwork(64, (16, 16), 10),
    "cnn": small_cnn,
    "layernorm": LayerNormMLP,
    "residual": Residual,
    "tied": Tied,
    "buffer": WithBuffer,
    "reassigned buffers": Reassigned,
    "frozen trunk": FineTuned,
}
RANDOM = {"cnn"}  # dropout: compared bitwise with the module loop, not across vmap or compile

OPTIMIZERS = [
    OptimizerConfig("sgd", lr=0.05),
    OptimizerConfig("sgd", lr=0.05, momentum=0.9),
    OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    OptimizerConfig("adam", lr=1e-2),
    OptimizerConfig("adamw", lr=1e-2, weight_decay=0.05),
    OptimizerConfig("rmsprop", lr=1e-3),
    OptimizerConfig("rmsprop", lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-3),
]


def data(seed: int, n: int = 8 * 21):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def assert_equal(mine, theirs, exact: bool, what: str):
    assert list(mine) == list(theirs), what
    for k in theirs:
        if exact or not theirs[k].is_floating_point():
            assert torch.equal(mine[k], theirs[k]), (what, k)
    floats = [k for k in theirs if theirs[k].is_floating_point()]
    if not exact and floats:
        assert max_rel_diff({k: mine[k] for k in floats}, {k: theirs[k] for k in floats}) <= 1e-6, what


def load_into(module: nn.Module, tensors: dict) -> None:
    """`load_state_dict` as is; the only keys it misses are tied aliases of a loaded parameter."""
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    every = dict(module.named_parameters(remove_duplicate=False))
    aliases = set(every) - set(dict(module.named_parameters()))
    assert not unexpected and set(missing) <= aliases


@settings(max_examples=40)
@given(name=st.sampled_from(sorted(ZOO)), config=st.sampled_from(OPTIMIZERS), seed=st.integers(0, 10_000))
def test_eager_step_equals_the_module_loop_for_every_model(name, config, seed):
    """21 steps of `module.train()` + torch.optim against the functional eager step: params and
    buffers bitwise (SGD and RMSprop; the Adam family within 1e-6 relative), then eval mode against
    `module.eval()`."""
    model = functional(ZOO[name])
    x, y = data(seed)
    torch.manual_seed(seed)
    module = model.module()
    opt = torch_optimizer(config, module.parameters())
    optimizer = config.build()
    step = make_train_step(model, optimizer)
    params, buffers = model.init(seed)
    state = optimizer.init(params)
    model.seed_like_module(seed)
    generator = torch.get_rng_state()
    for i in range(21):
        xb, yb = x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]
        torch.set_rng_state(generator)  # both sides draw the same dropout masks
        ref = F.cross_entropy(module(xb), yb)
        ref.backward()
        opt.step()
        opt.zero_grad()
        after_module = torch.get_rng_state()
        torch.set_rng_state(generator)
        params, buffers, state, loss = step(params, buffers, state, xb, yb)
        assert torch.equal(torch.get_rng_state(), after_module)
        generator = after_module
        assert torch.equal(loss, ref.detach()) or config.name in ("adam", "adamw")
    exact = config.name in ("sgd", "rmsprop")
    theirs_params, theirs_buffers = state_of(module)
    assert_equal(params, theirs_params, exact, "params")
    assert_equal(buffers, theirs_buffers, exact, "buffers")
    module.eval()
    with torch.no_grad():
        expected = module(x)
    out, same = model.apply(params, buffers, x, train=False)
    torch.testing.assert_close(out, expected, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6)
    assert same is buffers


@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(ZOO)))
def test_init_is_bitwise_the_modules_and_leaves_the_global_rng_alone(seed, name):
    model = functional(ZOO[name])
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    params, buffers = model.init(seed)
    assert torch.equal(before, torch.random.get_rng_state())
    torch.manual_seed(seed)
    module = ZOO[name]()
    assert list(params) == [k for k, _ in module.named_parameters()]
    assert list(buffers) == [k for k, _ in module.named_buffers()]
    for k, v in [*module.named_parameters(), *module.named_buffers()]:
        assert torch.equal((params | buffers)[k], v), k
    load_into(module, params | buffers)


def test_mlp_is_the_tutorials_784_512_512_10_stack_and_has_no_buffers():
    params, buffers = mlp().init(0)
    assert buffers == {}
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "linear_relu_stack.0.weight": (512, 784),
        "linear_relu_stack.0.bias": (512,),
        "linear_relu_stack.2.weight": (512, 512),
        "linear_relu_stack.2.bias": (512,),
        "linear_relu_stack.4.weight": (10, 512),
        "linear_relu_stack.4.bias": (10,),
    }


@given(seed=st.integers(0, 1000), batch=st.integers(2, 9))
def test_apply_is_pure_and_returns_updated_buffers_in_train_mode(seed, batch):
    model = functional(small_cnn)
    params, buffers = model.init(seed)
    before = {k: v.clone() for k, v in (params | buffers).items()}
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    out, new = model.apply(params, buffers, x, train=True)
    assert out.shape == (batch, 10)
    assert all(torch.equal(before[k], v) for k, v in (params | buffers).items())  # nothing written
    assert new["features.1.num_batches_tracked"].item() == 1
    assert not torch.equal(new["features.1.running_mean"], buffers["features.1.running_mean"])
    assert all(p.device.type == "meta" for p in model._train.parameters())


@pytest.mark.parametrize("train", [True, False])
def test_buffers_a_module_reassigns_come_back_as_the_modules(train):
    """`self.mean = 0.9 * self.mean + ...` in train mode: `apply` returned the buffers as given (the
    update was lost, and training drifted from the module loop's); in eval mode nothing changes."""
    model = functional(Reassigned)
    params, buffers = model.init(0)
    x, _ = data(0, 8)
    torch.manual_seed(0)
    module = Reassigned().train(train)
    out, new = model.apply(params, buffers, x, train=train)
    assert torch.equal(out, module(x))
    for k, v in module.named_buffers():
        assert torch.equal(new[k], v), k
    assert new["steps"].item() == int(train) and buffers["steps"].item() == 0


def test_tied_weights_stay_tied():
    model = functional(Tied)
    params, buffers = model.init(0)
    assert "mix2.weight" not in params  # one tensor for both uses, as named_parameters gives it
    x, y = data(0, 8)
    optimizer = OptimizerConfig("sgd", lr=0.1).build()
    new, _, _, _ = make_train_step(model, optimizer)(params, buffers, optimizer.init(params), x, y)
    torch.manual_seed(0)
    module = Tied()
    load_into(module, new | buffers)
    assert module.mix2.weight is module.mix.weight
    out, _ = model.apply(new, buffers, x, train=False)
    torch.testing.assert_close(out, module.eval()(x), rtol=0, atol=0)


def test_an_instance_stands_for_its_architecture():
    module = small_cnn()
    model = functional(module)
    params, buffers = model.init(3)
    assert [k for k, _ in module.named_parameters()] == list(params)
    assert list(buffers) == [k for k, _ in module.named_buffers()]
    with pytest.raises(TypeError, match="no keyword"):
        functional(module, width=3)


class _OwnParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(3))
        self.lin = nn.Linear(3, 2)


@pytest.mark.parametrize(
    ("build", "kept"),
    [
        (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(3, 2)), "ParametrizedLinear"),
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.MultiheadAttention(3, 1)), "1"),
        (_OwnParameter, "_OwnParameter"),
        (small_cnn, None),
    ],
)
def test_an_instance_says_which_layers_keep_its_weights_for_every_seed(build, kept):
    """A parametrized layer's reset draws a computed tensor, and a layer without a public reset draws
    nothing: their weights were the instance's for every seed, silently. Each is named in a warning;
    every other layer draws from the seed."""
    import warnings

    instance = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = functional(instance)
    said = [str(w.message) for w in caught]
    if kept is None:
        assert said == []
        assert not torch.equal(model.init(0)[0]["features.0.weight"], model.init(1)[0]["features.0.weight"])
        return
    assert len(said) == 1 and f"the weights of {kept} stay the instance's for every seed" in said[0], said
    first, second = model.init(0)[0], model.init(1)[0]
    assert any(torch.equal(first[k], second[k]) for k in first)


def test_frozen_params_stay_in_params_and_the_model_names_them():
    """Params keep every `named_parameters()` entry (a saved model loads as before); `frozen` names
    those built with `requires_grad=False`, and `trainable` leaves them out (nothing to leave out
    of a model that freezes none: `params` itself)."""
    model = functional(FineTuned)
    assert model.frozen == {"trunk.1.weight", "trunk.1.bias", "trunk.2.weight", "trunk.2.bias"}
    params, buffers = model.init(0)
    torch.manual_seed(0)
    module = FineTuned()
    assert list(params) == [k for k, _ in module.named_parameters()]
    assert list(model.trainable(params)) == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    load_into(module, model.saved(params, buffers))
    assert all(torch.equal(v, params[k]) for k, v in module.named_parameters())
    assert [k for k, p in module.named_parameters() if not p.requires_grad] == sorted(
        model.frozen, key=list(params).index
    )
    plain = functional(Residual)
    assert plain.frozen == frozenset() and plain.trainable(p := plain.init(0)[0]) is p
    assert functional(small_cnn().requires_grad_(False)).frozen == set(params_of(small_cnn()))


def params_of(module: nn.Module) -> list[str]:
    return [k for k, _ in module.named_parameters()]


def test_a_saved_steps_key_names_what_the_model_freezes():
    """The frozen params are constants of a compiled step's graph: another frozen set is another
    saved package; a model that freezes none keeps the key it had."""
    from purestep.core.artifacts import step_key

    optimizer = OptimizerConfig("sgd", lr=0.1).build()
    model = functional(FineTuned)
    thawed = functional(FineTuned)
    object.__setattr__(thawed, "frozen", frozenset())
    keys = [step_key(m, optimizer, "cross_entropy", "fp32", False) for m in (model, thawed)]
    assert None not in keys and keys[0] != keys[1]
    assert "frozen=" in keys[0] and "frozen=" not in keys[1]
    assert "frozen=" not in step_key(functional(Residual), optimizer, "cross_entropy", "fp32", False)


def test_models_with_the_same_factory_and_arguments_are_equal():
    assert mlp(8, [4], 3) == mlp(8, (4,), 3) and hash(mlp(8, [4], 3)) == hash(mlp(8, (4,), 3))
    assert mlp(8, (4,), 3) != mlp(8, (5,), 3)
    assert cnn(dropout=0.1) != cnn(dropout=0.2)
    nested = {"widths": [[4], [5]], "act": {"name": "relu", "of": {1, 2}}}
    same = {"act": {"of": {2, 1}, "name": "relu"}, "widths": [[4], [5]]}
    assert functional(_nested, **nested) == functional(_nested, **same)
    assert hash(functional(_nested, **nested)) == hash(functional(_nested, **same))
    assert functional(_nested, **nested) != functional(_nested, **{**same, "widths": [[4], [6]]})


def _nested(widths, act):
    """A factory taking nested arguments (lists of lists, a dict holding a set)."""
    return nn.Linear(widths[0][0], widths[1][0])


def test_build_model_fits_the_data_and_names_bad_arguments(tmp_path):
    model = build_model("cnn", (1, 8, 8), 10, {"width": 4})
    assert model.kwargs["channels"] == 1 and model.kwargs["classes"] == 10 and model.kwargs["width"] == 4
    assert build_model("mlp", (1, 8, 8), 3).kwargs["in_features"] == 64
    with pytest.raises(ModelError, match="takes no argument 'depth'"):
        build_model("mlp", (1, 8, 8), 3, {"depth": 2})
    with pytest.raises(ModelError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 8, 8), 3)
    file = tmp_path / "net.py"
    file.write_text(
        "import torch.nn as nn\n"
        "def make(in_features, classes, width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),"
        " nn.Linear(width, classes))\n"
    )
    user = build_model(f"{file}:make", (1, 8, 8), 10, {"width": 5})
    assert user.init(0)[0]["1.weight"].shape == (5, 64)
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        build_model(f"{file}:nope", (1, 8, 8), 10)
    with pytest.raises(ModelError, match="does not exist"):
        build_model(f"{tmp_path / 'missing.py'}:make", (1, 8, 8), 10)
    (tmp_path / "quits.py").write_text("raise SystemExit(0)\n")  # a script, not a model file
    with pytest.raises(ModelError, match="cannot import .*quits.py: SystemExit"):
        build_model(f"{tmp_path / 'quits.py'}:make", (1, 8, 8), 10)


def test_the_cnn_runs_on_digits_and_fashion_mnist_shapes():
    for side in (8, 28):
        model = cnn()
        params, buffers = model.init(0)
        out, _ = model.apply(params, buffers, torch.rand(3, 1, side, side), train=False)
        assert out.shape == (3, 10)


def test_eval_step_scores_regression_by_squared_error():
    model = functional(nn.Linear, in_features=3, out_features=2)
    params, buffers = model.init(0)
    x, y = torch.rand(5, 3), torch.rand(5, 2)
    loss_sum, sse = make_eval_step(model, "mse")(params, buffers, x, y)
    out = functional_call(model.module(), params, (x,))
    torch.testing.assert_close(sse, ((out - y) ** 2).sum())
    torch.testing.assert_close(loss_sum, F.mse_loss(out, y, reduction="sum"))
    # the tutorial's average of per-batch mean losses, a mean over every target (2 a row here)
    metrics = evaluate(make_eval_step(model, "mse"), params, buffers, x, y, batch_size=2)
    means = [F.mse_loss(out[i : i + 2], y[i : i + 2]).item() for i in (0, 2, 4)]
    assert metrics.loss == pytest.approx(sum(means) / 3, rel=1e-6)


@pytest.mark.parametrize("columns", [1, 3])
def test_r2_is_one_minus_the_squared_error_over_each_columns_spread(columns):
    """R² over every target value, the spread taken about each column's own mean: scikit-learn's
    `r2_score(..., multioutput="variance_weighted")`."""
    from sklearn.metrics import r2_score

    model = functional(nn.Linear, in_features=4, out_features=columns)
    params, buffers = model.init(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64).float()
    y = torch.randn(30, columns, generator=g) * torch.arange(1, columns + 1) + torch.arange(columns) * 5
    metrics = evaluate(make_eval_step(model, "mse"), params, buffers, x, y, batch_size=8)
    out = functional_call(model.module(), params, (x,)).detach()
    expected = r2_score(y.double().numpy(), out.double().numpy(), multioutput="variance_weighted")
    assert metrics.r2 == pytest.approx(expected, rel=1e-6)


def test_evaluation_runs_without_autograd_as_the_tutorials_test_loop():
    """On the CPU an LSTM takes another kernel with autograd on (a batch in 20 or so differs in its
    last bit): evaluation runs under no_grad, as `test_loop` does, and gives its numbers bit for bit."""
    model = functional(_Recurrent)
    params, buffers = model.init(0)
    module = model.module()
    module.load_state_dict({**params, **buffers})
    module.eval()
    step = make_eval_step(model)
    for seed in range(60):
        torch.manual_seed(seed)
        x, y = torch.randn(16, 5, 4), torch.randint(0, 3, (16,))
        with torch.no_grad():
            expected = F.cross_entropy(module(x), y, reduction="sum")
        assert torch.equal(step(params, buffers, x, y)[0], expected), seed


@given(
    seed=st.integers(0, 1000),
    ignored=st.sampled_from([0.0, 0.5, 1.0]),
    loss=st.sampled_from(["cross_entropy", "nll"]),
)
@settings(max_examples=12)
def test_evaluate_is_the_tutorials_test_loop_with_labels_it_ignores(seed, ignored, loss):
    """Labels of -100 count in neither a batch's loss nor its mean (torch's `ignore_index`): the
    per-batch means divided by every label, so the loss came out low (half, with half ignored).
    Accuracy counts every row, as `test_loop` divides by the dataset's size."""
    from purestep.core.reference import loader, loss_module, test_loop

    log_probs = loss == "nll"
    model = functional(lambda: nn.Sequential(nn.Linear(4, 3), *[nn.LogSoftmax(1)] * log_probs))
    params, buffers = model.init(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    y = torch.where(torch.rand(40, generator=g) < ignored, -100, y)
    got = evaluate(make_eval_step(model, loss), params, buffers, x, y, batch_size=16)
    module = model.module()
    module.load_state_dict(params | buffers)
    accuracy, expected = test_loop(loader(x, y, 16), module, loss_module(loss), log=lambda s: None)
    assert (got.accuracy, got.loss) == pytest.approx((accuracy, expected), rel=0, abs=0, nan_ok=True)


class _Recurrent(nn.Module):
    """A 2-layer LSTM read at its last step."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


DETERMINISTIC = sorted(set(ZOO) - RANDOM)


@given(name=st.sampled_from(DETERMINISTIC), seed=st.integers(0, 1000), k=st.integers(2, 3))
@settings(max_examples=12)
def test_batched_trials_equal_each_alone_for_every_deterministic_model(name, seed, k):
    model = functional(ZOO[name])
    optimizers = [OptimizerConfig("sgd", lr=0.02 * (i + 1), momentum=0.9).build() for i in range(k)]
    inits = [model.init(seed + i) for i in range(k)]
    states = [o.init(p) for o, (p, _) in zip(optimizers, inits)]
    step = make_train_step(model, optimizers[0])
    P, B, S = stack([p for p, _ in inits]), stack([b for _, b in inits]), stack(states)
    alone = [(p, b, s) for (p, b), s in zip(inits, states)]
    x, y = data(seed, 8 * 5)
    for i in range(5):
        xb, yb = x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]
        P, B, S, losses = batch_over_trials(step)(P, B, S, xb, yb)
        for j in range(k):
            p, b, s, loss = step(*alone[j], xb, yb)
            alone[j] = (p, b, s)
            torch.testing.assert_close(losses[j], loss, rtol=1e-5, atol=1e-6)
    for j in range(k):
        assert max_rel_diff({n: v[j] for n, v in P.items()}, alone[j][0]) <= 1e-5
        for n, v in alone[j][1].items():
            torch.testing.assert_close(B[n][j], v, rtol=1e-5, atol=1e-6)


@pytest.mark.compile
def test_compiled_step_equals_eager_for_models_with_buffers():
    """The CNN with dropout off (deterministic), in lockstep: each compiled step from the eager state."""
    model = functional(ConvNet, width=4, dense=16, dropout=0.0)
    optimizer = OptimizerConfig("sgd", lr=0.05, momentum=0.9).build()
    step = make_train_step(model, optimizer)
    compiled = compile_step(step)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    x, y = data(0, 8 * 4)
    for i in range(4):
        xb, yb = x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]
        want = step(params, buffers, state, xb, yb)
        got = compiled(params, buffers, state, xb, yb)
        assert max_rel_diff(got[0], want[0]) <= 1e-5
        for n, v in want[1].items():
            torch.testing.assert_close(got[1][n], v, rtol=1e-5, atol=1e-6)
        params, buffers, state = want[:3]


@pytest.mark.parametrize(
    ("ref", "args", "said"),
    [
        ("cnn", {"width": "abc"}, "model 'cnn' takes an integer for 'width' (default 32); got 'abc'"),
        ("cnn", {"width": 1.5}, "model 'cnn' takes an integer for 'width' (default 32); got 1.5"),
        ("cnn", {"dropout": "x"}, "model 'cnn' takes a number for 'dropout' (default 0.5); got 'x'"),
        ("mlp", {"hidden": "[32,32]"}, "takes integers separated by commas, e.g. 512,512 (one: 512,)"),
        ("mlp", {"hidden": 64}, "'mlp' takes integers separated by commas, e.g. 512,512 (one: 512,) for"),
    ],
)
def test_a_model_argument_of_the_wrong_kind_is_refused_naming_the_kind_it_takes(ref, args, said):
    """Words for a number, or a fraction for an integer, failed inside the factory with its own
    message (`not all arguments converted during string formatting`)."""
    with pytest.raises(ModelError, match=re.escape(said)):
        check_model_args(ref, args)
    check_model_args("cnn", {"dropout": 1, "width": 8})  # an int for a float
    check_model_args("mlp", {"hidden": (32,), "anything": "else"})  # no default to read a kind from


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("64", 64), ("0.5", 0.5), ("64,32", (64, 32)), ("64,", (64,)), (" 8 , 4 ,", (8, 4))]
    + [("abc", "abc"), (",", ","), ("1,,2", "1,,2"), ("[32,32]", "[32,32]")],
)
def test_a_command_line_value_parses_as_the_python_value_it_spells(text, value):
    from purestep.cli.options import parse_value

    assert parse_value(text) == value and type(parse_value(text)) is type(value)


@pytest.mark.parametrize("command", ["train", "tune"])
def test_the_cli_refuses_a_model_argument_of_the_wrong_kind_in_one_line(command, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from purestep.cli import app

    monkeypatch.chdir(tmp_path)  # tune's default storage, ./purestep.db, would go here

    args = [command, "--dataset", "digits", "--model", "cnn", "--model-arg", "width=abc"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # as wrapped by the terminal's width
    assert "model 'cnn' takes an integer for 'width' (default 32); got 'abc'" in said
    assert list(tmp_path.iterdir()) == []


class CountsInEval(nn.Module):
    """Writes a buffer in place on every call, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


@pytest.mark.parametrize("train", [True, False])
def test_apply_never_writes_the_callers_buffers_in_either_mode(train):
    model = functional(CountsInEval)
    params, buffers = model.init(0)
    out, new = model.apply(params, buffers, torch.ones(2, 4), train=train)
    assert buffers["calls"].item() == 0
    assert new["calls"].item() == (1 if train else 0)  # eval mode hands them back as given
    _, new = make_eval_step(model)(params, buffers, torch.ones(2, 4), torch.zeros(2, dtype=torch.long))
    assert buffers["calls"].item() == 0


@given(drop=st.sets(st.sampled_from(["linear_relu_stack.0.weight", "linear_relu_stack.2.bias"]), min_size=1))
def test_params_that_lack_a_key_are_refused_naming_it(drop):
    model = mlp(4, (3,), 2)
    params, buffers = model.init(0)
    with pytest.raises(ModelError, match=re.escape(sorted(drop)[0])):
        model.apply({k: v for k, v in params.items() if k not in drop}, buffers, torch.ones(2, 4))


class PlainTensorAttribute(nn.Module):
    """Keeps a tensor as a plain attribute, and computes a float from its weights while built."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.offset = torch.arange(3.0)
        self.scale = 1.0 / float(self.lin.weight.abs().max().item())

    def forward(self, x):
        return self.lin(x) * self.scale + self.offset


def test_a_module_with_plain_tensors_or_values_read_while_built_runs():
    model = functional(PlainTensorAttribute)
    params, buffers = model.init(0)
    assert all(p.device.type == "meta" for p in model.train_module().parameters())
    x = torch.randn(5, 4)
    out, _ = model.apply(params, buffers, x, train=False)
    skeleton = model.eval_module()
    expected = F.linear(x, params["lin.weight"], params["lin.bias"]) * skeleton.scale + skeleton.offset
    assert torch.equal(out, expected)
    opt = sgd(0.1)
    step = make_train_step(model, opt, eager=True)
    new, *_ = step(params, buffers, opt.init(params), x, torch.zeros(5, dtype=torch.long))
    assert not torch.equal(new["lin.weight"], params["lin.weight"])


def test_a_factory_that_returns_no_module_is_refused():
    with pytest.raises(ModelError, match="returned 'int', not an nn.Module"):
        functional(lambda: 3)


_UNTRAINABLE = """\
import sys
import torch.nn as nn


class Detached(nn.Module):
    def __init__(self, in_features=64, classes=10):
        super().__init__()
        self.lin = nn.Linear(in_features, classes)

    def forward(self, x):
        return self.lin(x.flatten(1)).detach()


def weightless(in_features=64, classes=10):
    return nn.Sequential(nn.Flatten(), nn.Identity())


class Pair(nn.Module):
    def __init__(self, in_features=64, classes=10):
        super().__init__()
        self.lin = nn.Linear(in_features, classes)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        return out, out.sum()


def quits(in_features=64, classes=10):
    sys.exit(3)


def tagged(in_features=64, classes=10, tag="v1"):
    from helper import WIDTH  # a module beside the model's file, as a script imports it

    assert tag == "007", tag
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, WIDTH), nn.Linear(WIDTH, classes))
"""


@pytest.mark.parametrize(
    ("factory", "said"),
    [
        ("Detached", "gives outputs no trainable parameter reaches (a detached forward)"),
        ("weightless", "has no trainable parameter"),
        ("Pair", "returns tuple, not one tensor: the losses score one output tensor"),
    ],
)
def test_a_model_training_cannot_change_is_refused_before_it_trains(tmp_path, monkeypatch, factory, said):
    """A detached forward trained nothing and reported success (the steps take zero gradients, as
    `grad` of a constant); torch.optim's loop refuses it. `fit` and every command refuse it first."""
    from typer.testing import CliRunner

    from purestep.cli import app
    from purestep.core.data import load_dataset
    from purestep.core.loop import fit

    (tmp_path / "nets.py").write_text(_UNTRAINABLE)
    (tmp_path / "helper.py").write_text("WIDTH = 7\n")
    monkeypatch.chdir(tmp_path)
    data = load_dataset("digits")
    model = build_model(f"nets.py:{factory}", data.in_shape, 10)
    with pytest.raises(ValueError, match=re.escape(said)):
        fit(model, sgd(0.1), *model.init(0), data.x_train[:8], data.y_train[:8], epochs=1, compiled=False)
    for command in (["train", "--epochs", "1"], ["check", "--steps", "1"], ["tune", "--n-trials", "1"]):
        result = CliRunner().invoke(app, [*command, "--dataset", "digits", "--model", f"nets.py:{factory}"])
        assert result.exit_code == 2, result.output
        assert said in " ".join(result.output.split())
    assert {p.name for p in tmp_path.iterdir()} <= {"nets.py", "helper.py", "__pycache__"}  # no study


def test_a_string_argument_keeps_its_text_and_a_factory_imports_its_neighbours(tmp_path, monkeypatch):
    """`tag=007` reached the factory as the integer 7 (and `tag=true` as True)."""
    from typer.testing import CliRunner

    from purestep.cli import app

    (tmp_path / "nets.py").write_text(_UNTRAINABLE)
    (tmp_path / "helper.py").write_text("WIDTH = 7\n")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--json"]
    result = CliRunner().invoke(app, [*args, "--model", "nets.py:tagged", "--model-arg", "tag=007"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*args, "--model", "nets.py:quits"])
    assert result.exit_code == 2 and "SystemExit: 3" in result.output, result.output


def test_the_mlp_refuses_widths_below_one():
    with pytest.raises(ModelError, match=re.escape("hidden widths must be positive; got (0,)")):
        build_model("mlp", (1, 8, 8), 10, {"hidden": (0,)})
    linear = build_model("mlp", (1, 8, 8), 10, {"hidden": ()})  # no hidden layer: a linear model
    assert linear.init(0)[0]["linear_relu_stack.0.weight"].shape == (10, 64)


class RandomInEval(nn.Module):
    """Dropout on in eval mode too (Monte Carlo dropout): every forward draws from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.out(F.dropout(torch.relu(self.hidden(x.flatten(1))), 0.3, training=True))


class AveragedInEval(nn.Module):
    """Evaluates with averaged weights kept as buffers: its eval output reaches no parameter, its
    train output does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.register_buffer("avg", self.lin.weight.detach().clone())

    def forward(self, x):
        x = x.flatten(1)
        if self.training:
            with torch.no_grad():
                self.avg.mul_(0.9).add_(self.lin.weight, alpha=0.1)
            return self.lin(x)
        return F.linear(x, self.avg, self.lin.bias.detach())


@pytest.mark.parametrize("factory", [RandomInEval, AveragedInEval])
def test_fit_trains_as_the_tutorials_loop_whatever_the_model_does_before_it(factory):
    """`fit`'s check before training ran the model in eval mode on the global generator: a model that
    draws there trained on other dropout masks than the module loop's, and one that detaches only in
    eval mode was refused though it trains. `fit` now equals the tutorial's loop bitwise for both."""
    from purestep.core.loop import fit
    from purestep.core.reference import fit_reference

    model = functional(factory)
    x, y = data(3, 8 * 6)
    config = OptimizerConfig("sgd", lr=0.1, momentum=0.9)
    params, buffers = model.init(0)
    model.seed_like_module(0)
    result = fit(
        model, config.build(), params, buffers, x, y,
        eval_data=(x, y), epochs=2, batch_size=8, compiled=False, log_every=0,
    )  # fmt: skip
    module, history = fit_reference(model, config, (x, y), (x, y), epochs=2, batch_size=8, log=lambda s: None)
    mine, theirs = state_of(module)
    assert_equal(result.params, mine, True, "params")
    assert_equal(result.buffers, theirs, True, "buffers")
    assert [(h.eval_accuracy, h.eval_loss) for h in result.history] == history


@pytest.mark.parametrize("layer", [nn.Embedding, nn.EmbeddingBag])
def test_a_layer_with_sparse_gradients_is_refused_naming_it(layer):
    """`sparse=True` failed at the first update with torch's dispatcher error (no sparse addcmul)."""
    with pytest.raises(ModelError, match=r"^model '<lambda>': 1 takes sparse gradients \(sparse=True\)"):
        functional(lambda: nn.Sequential(nn.Flatten(), layer(10, 3, sparse=True)))

