"""Compiled steps saved as packages: a later step loads them without tracing, and only for
the settings they were built for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from purestep.core import artifacts, fastpath
from purestep.core import step as step_module
from purestep.core.loop import evaluate, steps_for, train_epoch
from purestep.core.model import functional, mlp
from purestep.core.optim import adam, sgd
from purestep.core.step import CompiledStep, compile_step, make_eval_step, make_train_step

pytestmark = pytest.mark.compile
ROOT = Path(__file__).resolve().parent.parent


def _batch(rows: int = 8, features: int = 6, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(rows, features, generator=g, dtype=dtype), torch.randint(0, 3, (rows,), generator=g)


def _no_builds(*args, **kwargs):
    raise AssertionError("built a package that should have been loaded")


@pytest.fixture
def store(tmp_path, monkeypatch):
    folder = tmp_path / "steps"
    monkeypatch.setattr(step_module, "_ARTIFACTS", folder)
    return folder


def test_a_saved_step_loads_in_a_new_step_without_tracing_and_runs_without_dynamo(store, monkeypatch):
    model, optimizer = mlp(6, (5,), 3), sgd(0.1, momentum=0.9)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    x, y = _batch()
    eager = make_train_step(model, optimizer)(params, buffers, state, x, y)
    first = compile_step(make_train_step(model, optimizer), key="mlp sgd fp32")
    built = first(params, buffers, state, x, y)
    assert len(list(store.glob("*.pt2"))) == 1
    for mine, theirs in zip(built, eager):
        mine, theirs = (mine, theirs) if isinstance(mine, dict) else ({"": mine}, {"": theirs})
        assert list(mine) == list(theirs)
        assert all(torch.allclose(mine[k], theirs[k], rtol=1e-5, atol=1e-6) for k in mine)

    monkeypatch.setattr(artifacts, "build", _no_builds)
    monkeypatch.setattr(artifacts, "make_fx", _no_builds, raising=False)
    later = compile_step(make_train_step(model, optimizer), key="mlp sgd fp32")
    loaded = later(params, buffers, state, x, y)
    assert later._compiled is None  # no torch.compile, no Dynamo
    for mine, theirs in zip(loaded, built):
        mine, theirs = (mine, theirs) if isinstance(mine, dict) else ({"": mine}, {"": theirs})
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert later.direct() is not None


WARM_EPOCH = """
import json, sys
import torch
from purestep.core.loop import evaluate, train_epoch
from purestep.core.model import functional, mlp
from purestep.core.optim import sgd
from purestep.core.step import compile_step, make_eval_step, make_train_step, set_compile_cache

set_compile_cache(sys.argv[1])
model, optimizer = mlp(6, (5,), 3), sgd(0.1)
params, buffers = model.init(0)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
train = compile_step(make_train_step(model, optimizer), key="train mlp sgd fp32")
test = compile_step(make_eval_step(model), key="eval mlp sgd fp32")
state = optimizer.init(params)
params, buffers, state, losses = train_epoch(train, params, buffers, state, x, y, 8, log_every=0)
metrics = evaluate(test, params, buffers, x, y, 8)
loaded = sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules)
print(json.dumps({"loaded": loaded, "losses": losses.tolist(), "eval": [metrics.loss, metrics.accuracy],
                  "params": {k: v.tolist() for k, v in params.items()}}))
"""


def _epoch(train, test, model, optimizer):
    params, buffers = model.init(0)
    x, y = _batch(20)
    params, _, _, losses = train_epoch(train, params, buffers, optimizer.init(params), x, y, 8, log_every=0)
    metrics = evaluate(test, params, buffers, x, y, 8)
    return losses, metrics, params


def test_one_package_serves_every_batch_size_and_a_warm_epoch_never_loads_dynamo(store):
    """An epoch of 20 rows in batches of 8 builds two packages (train and eval, each for every
    batch size: 8 rows and the last 4) whose results equal the eager epoch's within one step's
    rounding; another batch size builds nothing, a 1-row batch its own package. A later process
    runs the whole epoch and its evaluation from them to the same bits, with neither Dynamo nor
    inductor loaded (fast paths on)."""
    model, optimizer = mlp(6, (5,), 3), sgd(0.1)
    train = compile_step(make_train_step(model, optimizer), key="train mlp sgd fp32")
    test = compile_step(make_eval_step(model), key="eval mlp sgd fp32")
    losses, metrics, params = _epoch(train, test, model, optimizer)
    assert train._compiled is None and test._compiled is None
    assert len(list(store.glob("*.pt2"))) == 2
    buffers, state = model.init(0)[1], optimizer.init(params)
    for rows in (3, 16, 1):
        x, y = _batch(rows)
        stepped = train(params, buffers, state, x, y)
        eager = make_train_step(model, optimizer)(params, buffers, state, x, y)
        assert all(torch.allclose(stepped[0][k], eager[0][k], rtol=1e-5, atol=1e-6) for k in params)
        assert len(list(store.glob("*.pt2"))) == (2 if rows > 1 else 3)
    assert train._compiled is None
    eager_losses, eager_metrics, eager_params = _epoch(
        make_train_step(model, optimizer), make_eval_step(model), model, optimizer
    )
    assert torch.allclose(losses, eager_losses, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(params[k], eager_params[k], rtol=1e-5, atol=1e-6) for k in params)
    assert (
        metrics.loss == pytest.approx(eager_metrics.loss, rel=1e-5)
        and metrics.accuracy == eager_metrics.accuracy
    )

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", WARM_EPOCH, str(store.parent)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    warm = json.loads(done.stdout.strip().splitlines()[-1])
    if fastpath.enabled():  # the public loader, with the fast paths off, imports both
        assert warm["loaded"] == []
    assert len(list(store.glob("*.pt2"))) == 3  # nothing built again
    assert warm["losses"] == losses.tolist() and warm["eval"] == [metrics.loss, metrics.accuracy]
    assert warm["params"] == {k: v.tolist() for k, v in params.items()}


_LAYERS = {
    "dropout": nn.Dropout,
    "in place": lambda rate: nn.Dropout(rate, inplace=True),
    "dropout1d": nn.Dropout1d,
    "dropout2d": nn.Dropout2d,
}


def _drop(kind: str, rate: float) -> nn.Module:
    """`nn.Dropout` (in place too), or channel-wise dropout with a row's features as its channels
    (`_apply`)."""
    return _LAYERS[kind](rate)


def _apply(drop: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`drop` on a copy of `x` (channel-wise: as (N, C, 1), which `nn.Dropout2d` reads as (N, C, L));
    in place, what it wrote into that copy (read after the layer ran)."""
    h = x.clone()
    channels = isinstance(drop, (nn.Dropout1d, nn.Dropout2d))
    out = drop(h.unsqueeze(-1)).squeeze(-1) if channels else drop(h)
    return h if drop.inplace else out


class _Dropped(nn.Module):
    """Dropout before a sum: a row of ones comes out as twice the count of inputs the mask kept."""

    def __init__(self, width: int = 1000, norm: bool = True, kind: str = "dropout"):
        super().__init__()
        self.drop = _drop(kind, 0.5)
        self.norm = nn.BatchNorm1d(width, affine=False) if norm else nn.Identity()
        self.sum = nn.Linear(width, 1, bias=False)
        nn.init.ones_(self.sum.weight)

    def forward(self, x):
        return self.sum(_apply(self.drop, x) + 0 * self.norm(x))


@pytest.mark.parametrize("kind", ["dropout", "dropout1d", "in place"])
def test_a_model_with_dropout_and_batchnorm_gets_one_package_for_every_batch_size(store, kind):
    """`torch.dropout`'s CPU kernel cannot trace with a symbolic batch under `torch.func.grad`, nor
    can channel-wise or in-place dropout's; the package traces `native_dropout` (channel-wise: a mask
    drawn per channel; in place: written into the layer's input) instead: one train package for 4
    and 6 rows, whose masks come from torch's generator (one seed, one mask; another seed, another)
    and keep about half of the inputs, scaled by 2. Building a package draws nothing from that
    generator: the call that builds one gives what a later call that loads it gives (a 1-row
    batch's package is traced by running the step)."""
    for norm, batches in ((True, (4, 6)), (False, (1,))):
        model, optimizer = functional(_Dropped, norm=norm, kind=kind), sgd(1e-9)
        train = compile_step(make_train_step(model, optimizer, loss="mse"), key=f"dropped {norm} {kind}")
        params, buffers = model.init(0)
        state = optimizer.init(params)
        for rows in batches:
            x, y = torch.ones(rows, 1000), torch.zeros(rows, 1)
            sums = []
            for seed in (0, 0, 1):
                torch.manual_seed(seed)
                sums.append(train(params, buffers, state, x, y)[3].item() ** 0.5)
            assert sums[0] == sums[1] != sums[2]
            assert all(850 < s < 1150 and s != 1000 for s in sums)  # 1000 +- 32 a row; unmasked, 1000
        assert train._compiled is None
    assert len(list(store.glob("*.pt2"))) == 2


class _Kept(nn.Module):
    """Dropout at `rate` before a count: a row of ones comes out as the number of inputs kept; in
    eval mode, as the share it keeps (scaled at test time by 1 - rate, read from the layer)."""

    def __init__(self, rate=0.5, width=1000, hook=False, kind="dropout", other: float = 0, tags=()):
        super().__init__()
        self.tags = set(tags)  # plain data the key reads: its order follows the process's hash seed
        self.drop = _drop(kind, rate)
        self.sum = nn.Linear(width, 1, bias=False)
        nn.init.ones_(self.sum.weight)
        if hook:  # an attribute whose repr does not say what the forward does
            self.sum.register_forward_hook(lambda module, args, out: out)

    def forward(self, x):
        if not self.training:
            return self.sum(x) * (1 - self.drop.p)
        return self.sum(_apply(self.drop, x).sign())


@pytest.mark.parametrize("kind", list(_LAYERS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one store for every rate
@given(rate=st.floats(0, 1))
@example(rate=0.0)
@example(rate=1.0)
def test_models_that_differ_only_in_dropout_rate_share_packages_and_each_drops_at_its_own_rate(
    store, kind, rate
):
    """An unbatched step takes its dropout rates as an input (channel-wise and in place too): models
    built with any rates share one train package and one eval package, and each keeps its own share
    of inputs: of 1000 a row, about 1000 (1 - rate), binomial (sd at most 16; 100 is 6 of them),
    exactly all at 0 and none at 1. The eval step reads its rate too (a test-time scale): 1000 (1 - rate)."""
    optimizer = sgd(1e-9)
    x, y = torch.ones(2, 1000), torch.zeros(2, 1)
    model = functional(_Kept, rate=rate, kind=kind)
    train, evaluate_step = steps_for(model, optimizer, compiled=True, loss="mse")
    params, buffers = model.init(0)
    kept = train(params, buffers, optimizer.init(params), x, y)[3].item() ** 0.5  # rows' root mean square
    expected = 1000 * (1 - rate)
    assert kept == expected if rate in (0.0, 1.0) else abs(kept - expected) < 100
    scaled = (evaluate_step(params, buffers, x, y)[0].item() / 2) ** 0.5  # a sum over the 2 rows
    assert scaled == pytest.approx(expected, rel=1e-6, abs=1e-3)
    assert len(list(store.glob("*.pt2"))) == 2


def test_a_package_built_at_another_rate_gives_a_trial_what_its_own_build_gives(store, monkeypatch):
    """Rates are inputs, so a package's graph is the same whichever trial traced it: a trial at rate
    0.5 draws, from the package a rate-0.3 trial built, the masks it draws from one it built itself."""
    optimizer = sgd(0.1)
    x, y = torch.ones(4, 1000), torch.zeros(4, 1)

    def last_loss(*rates: float) -> torch.Tensor:
        for rate in rates:
            model = functional(_Kept, rate=rate)
            described = artifacts.step_key(model, optimizer, "mse", "fp32", False)
            lifted = artifacts.dropouts(model.train_module())
            train = compile_step(make_train_step(model, optimizer, loss="mse"), key=described, rates=lifted)
            params, buffers = model.init(0)
            torch.manual_seed(7)
            loss = train(params, buffers, optimizer.init(params), x, y)[3]
        return loss

    shared = last_loss(0.3, 0.5)
    monkeypatch.setattr(step_module, "_ARTIFACTS", store.parent / "other")
    own = last_loss(0.5)
    assert len(list(store.glob("*.pt2"))) == len(list((store.parent / "other").glob("*.pt2"))) == 1
    assert torch.equal(shared, own) and 400 < own.item() ** 0.5 < 600


def test_the_step_key_leaves_out_only_the_rates_a_package_takes_as_an_input():
    """Two rates, one key, unbatched; batched steps bake the rate in, and so does a model whose
    tree cannot be read as data (a hook); any other keyword argument is in the key, as before, even
    one the tree does not show (`other`)."""
    def keyed(batched: bool = False, **kwargs):
        return artifacts.step_key(functional(_Kept, **kwargs), sgd(0.1), "mse", "fp32", batched)

    assert keyed(rate=0.5) == keyed(rate=0.75) != keyed(rate=0.5, width=999)
    assert keyed(True, rate=0.5) != keyed(True, rate=0.75)
    assert keyed(rate=0.5, hook=True) != keyed(rate=0.75, hook=True)
    assert keyed(rate=0.5, other=2.0) != keyed(rate=0.5, other=3.0) != keyed(rate=0.5)
    assert keyed(rate=0.5, other=0.5) != keyed(rate=0.25, other=0.25)  # equal to a rate, not one
    assert None not in {keyed(rate=0.5), keyed(True, rate=0.5), keyed(rate=0.5, hook=True)}


def test_a_model_whose_closure_no_key_can_see_gets_no_saved_step():
    """A class defined inside a function (it may read its closure), and a model made from an
    instance (built by a lambda): their steps are compiled but not saved."""

    class Local(_Kept):
        pass

    for model in (functional(Local), functional(_Kept())):
        assert artifacts.step_key(model, sgd(0.1), "mse", "fp32", False) is None


KEYS = """
import sys
sys.path.insert(0, sys.argv[1])
from test_artifacts import _Kept
from purestep.core import artifacts
from purestep.core.model import functional, resolve_factory
from purestep.core.optim import sgd
models = [
    functional(_Kept, tags={"relu", "gelu", "tanh", "silu", 3, 2.5, None, ("a", 1)}),
    functional(resolve_factory(sys.argv[2] + ":Net"), rate=0.3),
    functional(resolve_factory(sys.argv[2] + ":make"), rate=0.3),
]
for model in models:
    print(artifacts.step_key(model, sgd(0.1), "mse", "fp32", False))
"""


def test_a_model_has_one_step_key_in_every_process(tmp_path):
    """Processes with other hash seeds find one key: for a set argument and attribute (of strings,
    whose order follows the seed, and of mixed types), and for a class and a function from a user's
    model file (imported under a name made from its path)."""
    file = tmp_path / "net.py"
    file.write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self, rate):\n"
        "        super().__init__(nn.Linear(4, 8), nn.Dropout(rate), nn.Linear(8, 2))\n"
        "def make(rate):\n"
        "    return Net(rate)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    keys = [
        subprocess.run(
            [sys.executable, "-c", KEYS, str(ROOT / "tests"), str(file)],
            capture_output=True, text=True, check=True, env={**env, "PYTHONHASHSEED": str(seed)},
        ).stdout.split("\n")[:3]
        for seed in (1, 2, 3)
    ]
    assert keys[0] == keys[1] == keys[2] and len(set(keys[0])) == 3 and "None" not in keys[0]
    other = artifacts.step_key(functional(_Kept, tags={"relu"}), sgd(0.1), "mse", "fp32", False)
    assert other is not None and other != keys[0][0]


@pytest.mark.parametrize(
    "layer, shape, lead",
    [
        (nn.Dropout1d, (64, 32, 8), 2),  # (N, C, L)
        (nn.Dropout1d, (64, 32), 1),  # (C, L)
        (nn.Dropout2d, (64, 32, 8), 2),  # read as (N, C, L), as torch does (with a warning)
        (nn.Dropout2d, (16, 32, 4, 4), 2),
        (nn.Dropout3d, (16, 32, 2, 2, 2), 2),
        (nn.Dropout3d, (64, 8, 2, 2), 1),  # (C, D, H, W)
    ],
)
def test_a_traced_channel_wise_rate_masks_the_dims_torchs_own_layer_masks(layer, shape, lead):
    """Traced with its rate as an input, channel-wise dropout draws one value per channel (and per
    row, batched) as torch's own layer does on the same input, batched or not: constant along the
    other dims, 0 or 2 at rate 0.5."""
    x = torch.ones(shape)
    traced = layer(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's, for a 3-d input to dropout2d
        with artifacts.rates_as([traced], torch.tensor([0.5])), artifacts._TracedDropout():
            mine = traced(x)
        own = layer(0.5)(x)
    for out in (mine, own):
        flat = out.reshape(*shape[:lead], -1)
        assert bool((flat == flat[..., :1]).all()) and set(flat[..., 0].unique().tolist()) == {0.0, 2.0}


_ALPHAS = {"alpha": nn.AlphaDropout, "feature alpha": nn.FeatureAlphaDropout}


def _alpha_values(rate: float) -> tuple[float, float]:
    """What torch's alpha dropout turns a kept 1 and a dropped value into at `rate` < 1."""
    alpha = 1.7580993408473766
    a = ((alpha**2 * rate + 1) * (1 - rate)) ** -0.5
    return a + alpha * a * rate, alpha * a * (rate - 1)


@pytest.mark.parametrize(
    "kind, shape, lead",
    [("alpha", (64, 32), 2), ("feature alpha", (64, 32, 4), 2), ("feature alpha", (16, 8, 2, 2), 2)],
)
def test_traced_alpha_dropout_takes_the_values_and_masks_the_dims_torchs_own_layer_does(kind, shape, lead):
    """Traced with its rate as an input, alpha dropout turns a 1 into the two values torch's own layer
    does (kept and dropped, which keep a SELU network's mean and variance), keeps about 1 - p of the
    elements (feature-wise: of the channels, constant along the other dims), and gives all zeros at
    p = 1 and the input at p = 0, as torch's does."""
    x = torch.ones(shape)
    for rate in (0.0, 0.3, 1.0):
        traced = _ALPHAS[kind](rate)
        with artifacts.rates_as([traced], torch.tensor([rate])), artifacts._TracedDropout():
            mine = traced(x)
        own = _ALPHAS[kind](rate)(x)
        if rate in (0.0, 1.0):
            assert torch.equal(mine, own) and torch.equal(mine, x * (1 - rate))
            continue
        kept, dropped = _alpha_values(rate)
        for out in (mine, own):
            flat = out.reshape(*shape[:lead], -1)
            assert bool((flat == flat[..., :1]).all())
            assert sorted(out.unique().tolist()) == pytest.approx([dropped, kept], rel=1e-6)
            assert abs(float((out > 0).float().mean()) - (1 - rate)) < 0.06  # sd 0.01 over 2048


class _AlphaSum(nn.Module):
    """Alpha dropout at `rate` on a row of ones (feature-wise: its features as channels), summed."""

    def __init__(self, rate=0.5, width=1000, kind="alpha"):
        super().__init__()
        self.drop = _ALPHAS[kind](rate)
        self.sum = nn.Linear(width, 1, bias=False)
        nn.init.ones_(self.sum.weight)

    def forward(self, x):
        return self.sum(self.drop(x.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("kind", list(_ALPHAS))
def test_alpha_dropout_rates_share_packages_and_each_keeps_its_own_share(store, kind):
    """Alpha dropout's rate is an input of a saved step too: models at four rates (and two batch
    sizes) share one train package and one eval package, and each trial's row of 1000 ones sums to
    about what its own rate gives (1000 (1 - p) kept of the value a kept 1 becomes, the rest dropped;
    sd under 32, 150 is 4.7 of them), exactly 1000 at p = 0 and 0 at p = 1."""
    optimizer = sgd(1e-9)
    for rate in (0.0, 0.2, 0.6, 1.0):
        model = functional(_AlphaSum, rate=rate, kind=kind)
        train, evaluate_step = steps_for(model, optimizer, compiled=True, loss="mse")
        params, buffers = model.init(0)
        for rows in (2, 3):
            x, y = torch.ones(rows, 1000), torch.zeros(rows, 1)
            assert (evaluate_step(params, buffers, x, y)[0].item() / rows) ** 0.5 == 1000  # eval: no dropout
            torch.manual_seed(0)
            total = train(params, buffers, optimizer.init(params), x, y)[3].item() ** 0.5
            if rate in (0.0, 1.0):
                assert total == pytest.approx(1000 * (1 - rate), abs=1e-3)
            else:
                kept, dropped = _alpha_values(rate)
                assert abs(total - 1000 * ((1 - rate) * kept + rate * dropped)) < 150
    assert len(list(store.glob("*.pt2"))) == 2


def _parts(description: str, args, options=None):
    return artifacts.key(description, args, options or {"size_asserts": "False"})


def test_every_setting_that_shapes_the_graph_changes_the_name():
    model, optimizer = mlp(6, (5,), 3), sgd(0.1)
    params, _ = model.init(0)
    state = optimizer.init(params)
    x, y = _batch()
    base = _parts("mlp sgd fp32", (params, state, x, y))
    wider, _ = mlp(6, (7,), 3).init(0)
    changed = [
        _parts("mlp sgd bf16", (params, state, x, y)),
        _parts("mlp adam fp32", (params, adam(0.1).init(params), x, y)),
        _parts("mlp sgd fp32", (wider, sgd(0.1).init(wider), x, y)),
        _parts("mlp sgd fp32", (params, state, *_batch(16))),
        _parts("mlp sgd fp32", (params, state, *_batch(dtype=torch.float64))),
        _parts("mlp sgd fp32", (params, state, x.t().contiguous().t(), y)),
        _parts("mlp sgd fp32", (params, state, x, y), {"size_asserts": "True"}),
        _parts("mlp sgd fp32", ({k: v.double() for k, v in params.items()}, state, x, y)),
        artifacts.key("mlp sgd fp32", (params, state, x, y), {"size_asserts": "False"}, threads=9),
    ]
    names = {artifacts.name(parts) for parts in changed}
    assert artifacts.name(base) not in names and len(names) == len(changed)

    def any_batch(*batch: torch.Tensor) -> str:
        return artifacts.name(artifacts.key("mlp sgd fp32", (params, state, *batch), {}, every_batch=True))

    assert any_batch(x, y) == any_batch(*_batch(16)) == any_batch(*_batch(2)) != artifacts.name(base)
    one_row = (params, state, *_batch(1))
    assert any_batch(*one_row[2:]) == artifacts.name(artifacts.key("mlp sgd fp32", one_row, {}))
    assert any_batch(*_batch(16, features=7)) != any_batch(x, y)  # only the batch is any size
    assert base["torch"] == torch.__version__ and base["purestep.core"]
    assert base["threads"] == torch.get_num_threads() != 9  # inductor writes it into CPU kernels


def test_the_step_key_names_the_model_its_sources_the_optimizer_loss_precision_and_batching():
    from purestep.core.model import Model, NeuralNetwork, cnn, functional

    keys = {
        artifacts.step_key(mlp(), sgd(0.1), "cross_entropy", "fp32", False),
        artifacts.step_key(mlp(hidden=(256,)), sgd(0.1), "cross_entropy", "fp32", False),
        artifacts.step_key(cnn(), sgd(0.1), "cross_entropy", "fp32", False),
        artifacts.step_key(mlp(), adam(0.1), "cross_entropy", "fp32", False),
        artifacts.step_key(mlp(), sgd(0.1), "nll", "fp32", False),
        artifacts.step_key(mlp(), sgd(0.1), "cross_entropy", "bf16", False),
        artifacts.step_key(mlp(), sgd(0.1), "cross_entropy", "fp32", True),
    }
    assert None not in keys and len(keys) == 7
    assert artifacts.step_key(mlp(), sgd(0.5), "cross_entropy", "fp32", False) in keys  # lr is data
    reordered = Model(NeuralNetwork, {"classes": 10, "hidden": (512, 512), "in_features": 784}, "mlp")
    assert reordered == mlp()  # the same model, so the same packages
    assert artifacts.step_key(reordered, sgd(0.1), "cross_entropy", "fp32", False) in keys
    typed_in = functional(eval("lambda: torch.nn.Linear(3, 4)"))  # no source file to hash: not saved
    assert artifacts.step_key(typed_in, sgd(0.1), "mse", "fp32", False) is None


def test_a_package_under_another_settings_name_is_never_loaded(store, monkeypatch):
    """Even a package copied under the name of other settings is refused: its sidecar records the
    settings it was built for, and a step whose settings differ builds (here: fails to build,
    and falls back to compiling in-process) rather than load it."""
    model, optimizer = mlp(6, (5,), 3), sgd(0.1)
    params, buffers = model.init(0)
    state = optimizer.init(params)
    x, y = _batch()
    args = (params, buffers, state, x, y)
    compile_step(make_train_step(model, optimizer), key="mlp sgd fp32")(*args)
    (built,) = store.glob("*.pt2")
    options = CompiledStep(lambda: None, None)._options_text()
    other = artifacts.key("mlp sgd bf16", args, options, every_batch=True)  # the name it looks up
    target = store / f"{artifacts.name(other)}.pt2"
    shutil.copy(built, target)
    shutil.copy(built.with_suffix(".json"), target.with_suffix(".json"))
    assert artifacts.load(target, other) is None

    calls = []
    monkeypatch.setattr(artifacts, "build", lambda *a, **k: calls.append(a) or _no_builds())
    bf16 = compile_step(make_train_step(model, optimizer, precision="bf16"), key="mlp sgd bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16(*args)
    assert [a[5] for a in calls] == [True, False]  # for every batch size, then for this one
    assert any("not saved" in str(w.message) for w in caught)
    assert bf16._compiled is not None  # compiled in this process instead


def test_a_package_takes_the_umasks_mode_and_a_sidecar_a_crash_cut_short_is_rebuilt_not_read(store):
    """A package is readable as the umask lets any new file be (it was 0600, its temporary name's:
    a cache shared by a team's accounts served only its builder). A sidecar cut off mid-write (a
    crash, a full disk) is no package: the next step builds it again, and the sidecar is then
    written whole, where before it was read and raised."""
    model, optimizer = mlp(6, (5,), 3), sgd(0.1)
    params, buffers = model.init(0)
    args = (params, buffers, optimizer.init(params), *_batch())
    before = os.umask(0o027)
    try:
        compile_step(make_train_step(model, optimizer), key="mlp sgd fp32")(*args)
    finally:
        os.umask(before)
    (package,) = store.glob("*.pt2")
    assert [p.stat().st_mode & 0o777 for p in (package, package.with_suffix(".json"))] == [0o640, 0o640]
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []  # no temporary left
    sidecar = package.with_suffix(".json")
    whole = sidecar.read_text()
    sidecar.write_text(whole[: len(whole) // 2])
    again = compile_step(make_train_step(model, optimizer), key="mlp sgd fp32")
    again(*args)
    assert json.loads(sidecar.read_text()) == json.loads(whole)
    assert again.direct() is not None
