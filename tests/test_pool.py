"""The pool: trial k equals trial k alone whatever its slot and the moment it started; one train
graph and one eval graph serve every optimizer, batch size and stack size."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from purestep import fit, load_dataset, mlp
from purestep.core.optim import OptimizerConfig
from purestep.core.pool import Pool


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.x_train[:200], data.y_train[:200], data.x_test[:60], data.y_test[:60]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


MODEL = mlp(64, (16,), 10)
optimizers = st.one_of(
    st.builds(
        OptimizerConfig,
        st.just("sgd"),
        st.floats(1e-3, 0.3),
        st.sampled_from([0.0, 0.9]),
        weight_decay=st.sampled_from([0.0, 1e-3]),
    ),
    st.builds(OptimizerConfig, st.sampled_from(["adam", "adamw"]), st.floats(1e-4, 1e-2)),
    st.builds(  # with momentum: a third buffer, a state layout (and lane) of its own
        OptimizerConfig,
        st.just("rmsprop"),
        st.floats(1e-4, 1e-2),
        st.sampled_from([0.0, 0.5]),
        centered=st.booleans(),
    ),
)
trial = st.tuples(optimizers, st.sampled_from([32, 48, 64]), st.booleans(), st.integers(0, 3))


def run_pool(x, y, eval_data, trials, slots, delays, epochs, compiled=False, stack=None, model=MODEL):
    """Train `trials` in a pool of `slots`; trial k waits for a free slot, then `delays[k]` more steps."""
    pool = Pool(x, y, eval_data, eval_batch_size=32, compiled=compiled, stack=stack)
    histories: dict[int, list] = {k: [] for k in range(len(trials))}
    waiting = list(range(len(trials)))
    wait = delays[0] if delays else 0
    while waiting or len(pool):
        while waiting and len(pool) < slots and wait <= 0:
            k = waiting.pop(0)
            config, batch_size, shuffle, seed = trials[k]
            params, buffers = model.init(seed)
            lrs = [config.lr * (epochs - e) / epochs for e in range(epochs)]
            pool.add(
                k, model, params, buffers, config, batch_size=batch_size, lrs=lrs, shuffle=shuffle, seed=seed
            )
            wait = delays[len(trials) - len(waiting)] if waiting else 0
        wait -= 1
        if not len(pool):
            continue
        for end in pool.step():
            assert end.row is not None, end
            histories[end.key].append(end.row)
            if len(histories[end.key]) == epochs:
                pool.remove(end.key)
    return histories


def alone(x, y, eval_data, trial, epochs, compiled=False, model=MODEL):
    """`fit` of one trial, its generator seeded as a tuning trial's (`objective.train`)."""
    config, batch_size, shuffle, seed = trial
    params, buffers = model.init(seed)
    model.seed_like_module(seed)
    return fit(
        model,
        config.build_for(compiled),
        params,
        buffers,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        eval_data=eval_data,
        eval_batch_size=32,
        shuffle=shuffle,
        seed=seed,
        compiled=compiled,
        log_every=0,
        lr_at=lambda e: config.lr * (epochs - e) / epochs,
    ).history


def same_numbers(a, b) -> bool:
    """Two histories with the same epochs, losses and accuracies, bit for bit."""
    numbers = ("epoch", "train_loss", "eval_loss", "eval_accuracy")
    return [[getattr(r, n) for n in numbers] for r in a] == [[getattr(r, n) for n in numbers] for r in b]


@given(
    trials=st.lists(trial, min_size=1, max_size=6),
    slots=st.integers(1, 4),
    delays=st.lists(st.integers(0, 20), min_size=6, max_size=6),
    stack=st.booleans(),
)
def test_each_pooled_trial_equals_it_alone_whatever_its_slot_and_start(digits, trials, slots, delays, stack):
    """Stacked (vmapped lanes, the default off the CPU) or each slot alone (the default on a CPU)."""
    x, y, ex, ey = digits
    pooled = run_pool(x, y, (ex, ey), trials, slots, delays, epochs=2, stack=stack)
    for k, t in enumerate(trials):
        mine, own = pooled[k], alone(x, y, (ex, ey), t, epochs=2)
        assert len(mine) == len(own) == 2
        for a, b in zip(mine, own):
            assert a.epoch == b.epoch
            assert close(a.train_loss, b.train_loss) and close(a.eval_loss, b.eval_loss), (k, a, b)
            assert a.eval_accuracy == pytest.approx(b.eval_accuracy, abs=1 / len(ey))
        if not stack:  # each slot alone runs `fit`'s own steps: the same bits
            assert same_numbers(mine, own), k


@pytest.mark.parametrize("stack", [False, True])
def test_a_pooled_trial_leaves_labels_of_minus_100_out_of_its_eval_loss_as_alone(digits, stack):
    """The pool divided each eval batch's loss by every label, where `evaluate` (and torch's mean)
    leave the ignored ones out."""
    x, y, ex, ey = digits
    ey = torch.where(torch.arange(len(ey)) % 3 == 0, -100, ey)
    t = (OptimizerConfig("sgd", 0.05, 0.9), 32, True, 1)
    (mine,) = run_pool(x, y, (ex, ey), [t], 1, [0], epochs=2, stack=stack).values()
    own = alone(x, y, (ex, ey), t, epochs=2)
    assert all(close(a.eval_loss, b.eval_loss) for a, b in zip(mine, own)), (mine, own)


def test_a_stacked_lane_holds_one_state_layout(digits):
    """RMSprop with momentum keeps a third buffer: its slots stack apart from the two-buffer layout."""
    x, y, ex, ey = digits
    configs = [OptimizerConfig("sgd", 0.05, 0.9), OptimizerConfig("rmsprop", 1e-3, 0.5, centered=True)]
    trials = [
        (config, 64, False, seed) for seed, config in enumerate([*configs, OptimizerConfig("adam", 1e-3)])
    ]
    pooled = run_pool(x, y, (ex, ey), trials, 3, [0, 0, 0], epochs=2, stack=True)
    for k, t in enumerate(trials):
        for a, b in zip(pooled[k], alone(x, y, (ex, ey), t, epochs=2), strict=True):
            assert close(a.train_loss, b.train_loss) and close(a.eval_loss, b.eval_loss), (k, a, b)


@pytest.mark.parametrize("stack", [True, False])
def test_a_diverged_trial_leaves_and_the_others_go_on(digits, stack):
    x, y, ex, ey = digits
    pool = Pool(x, y, (ex, ey), eval_batch_size=32, compiled=False, stack=stack)
    params, buffers = MODEL.init(0)
    pool.add(
        "nan",
        MODEL,
        {k: v * float("nan") for k, v in params.items()},
        buffers,
        OptimizerConfig(lr=0.1),
        batch_size=64,
        lrs=[0.1, 0.1],
    )
    pool.add("ok", MODEL, params, buffers, OptimizerConfig(lr=0.1), batch_size=64, lrs=[0.1, 0.1])
    ends = []
    while not ends:
        ends = pool.step()
    assert {e.key: e.diverged for e in ends} == {"nan": "training loss became nan in epoch 1", "ok": None}
    pool.remove("nan")
    ends = []
    while not ends:
        ends = pool.step()
    assert len(pool) == 1 and [(e.key, e.row.epoch) for e in ends] == [("ok", 1)]
    with pytest.raises(KeyError):
        pool.remove("nan")


@pytest.mark.compile
def test_one_train_and_one_eval_graph_serve_every_trial_and_nothing_recompiles(digits):
    from torch._dynamo.utils import counters  # the test's own count; purestep needs none

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    x, y, ex, ey = digits
    configs = [
        OptimizerConfig("sgd", lr=0.05, momentum=0.9),
        OptimizerConfig("adam", lr=0.01),
        OptimizerConfig("rmsprop", lr=0.001, centered=True),
        OptimizerConfig("adamw", lr=0.003),
        OptimizerConfig("sgd", lr=0.1, nesterov=True, momentum=0.5),
        OptimizerConfig("rmsprop", lr=1e-3),
    ]
    before = graphs()
    warm = [(configs[0], 48, False, 0), (configs[1], 64, True, 1)]
    run_pool(x, y, (ex, ey), warm, 2, [0, 0], epochs=1, compiled=True, stack=True)
    assert graphs() - before <= 2
    trials = [(c, b, s, k) for k, (c, b, s) in enumerate(zip(configs, [16, 32, 48, 64, 199, 16], [0, 1] * 3))]
    torch.compiler.set_stance("fail_on_recompile")
    try:
        pooled = run_pool(x, y, (ex, ey), trials, 3, [0, 3, 0, 7, 1, 0], epochs=2, compiled=True, stack=True)
    finally:
        torch.compiler.set_stance("default")
    assert graphs() - before <= 2
    for k, t in enumerate(trials):
        own = alone(x, y, (ex, ey), t, epochs=2)
        # compiled and eager round differently, and free-running trajectories part slowly
        for a, b in zip(pooled[k], own):
            assert math.isclose(a.eval_loss, b.eval_loss, rel_tol=1e-3), (k, a, b)


@pytest.mark.compile
def test_a_compiled_pool_on_a_cpu_runs_each_trials_own_graphs_bit_for_bit(digits):
    """Not stacked, each slot runs the compiled steps `fit` runs for it alone (its saved graphs too)."""
    x, y, ex, ey = digits
    trials = [
        (OptimizerConfig("adam", lr=0.01), 64, True, 0),
        (OptimizerConfig("sgd", lr=0.05, momentum=0.9), 48, False, 1),
        (OptimizerConfig("rmsprop", lr=1e-3), 64, False, 2),
    ]
    pooled = run_pool(x, y, (ex, ey), trials, 2, [0, 1, 0], epochs=2, compiled=True)
    for k, t in enumerate(trials):
        assert same_numbers(pooled[k], alone(x, y, (ex, ey), t, epochs=2, compiled=True)), k


@pytest.mark.parametrize("stack", [None, True])
def test_random_layers_draw_in_a_pool_what_they_draw_alone(digits, stack):
    """Dropout reads the global generator: each slot keeps its own, seeded as `fit`'s caller seeds it;
    in a pool that stacks (off the CPU), a model that draws runs its slots alone too (one vmapped call
    would split one generator among them)."""
    from purestep import cnn

    x, y, ex, ey = digits
    x, ex = x.view(-1, 1, 8, 8), ex.view(-1, 1, 8, 8)
    model = cnn(1, 10, width=4, dense=16, dropout=0.5)
    config = OptimizerConfig("sgd", lr=0.05, momentum=0.9)
    trials = [(config, 32, True, seed) for seed in range(3)]
    pooled = run_pool(x, y, (ex, ey), trials, 3, [0, 0, 0], epochs=2, model=model, stack=stack)
    for k, t in enumerate(trials):
        assert same_numbers(pooled[k], alone(x, y, (ex, ey), t, epochs=2, model=model)), k


@pytest.mark.parametrize(
    "config",
    [
        OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        OptimizerConfig("sgd", lr=0.1),
        OptimizerConfig("adamw", lr=0.01),
        OptimizerConfig("rmsprop", lr=0.01, momentum=0.5, centered=True),
    ],
)
def test_one_familys_update_equals_the_union_bit_for_bit(digits, config):
    from purestep.core.optim import family_of, family_update, tunable
    from purestep.core.step import make_train_step

    x, y, _, _ = digits
    union = tunable(config)
    params, buffers = MODEL.init(0)
    state = union.init(params)
    mine = make_train_step(MODEL, union._replace(update=family_update(family_of(config))))
    theirs = make_train_step(MODEL, union)
    a = b = (params, buffers, state)
    for start in range(0, 96, 32):
        a = mine(*a, x[start : start + 32], y[start : start + 32])[:3]
        b = theirs(*b, x[start : start + 32], y[start : start + 32])[:3]
    for tree_a, tree_b in zip(a, b):
        assert tree_a.keys() == tree_b.keys()
        assert all(torch.equal(tree_a[k], tree_b[k]) for k in tree_a)


class _FrozenFirst(torch.nn.Module):
    """An MLP whose first layer is frozen (`requires_grad=False`), as fine-tuning leaves a trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)
        self.first.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x.flatten(1))))


@pytest.mark.parametrize("stack", [False, True])
def test_a_pooled_trial_with_a_frozen_layer_equals_it_alone_and_leaves_the_layer(digits, stack):
    """Per slot (the CPU's default) and stacked: two SGD trials share a vmapped call, Adam and
    RMSprop run alone. Each trial's history is its `fit`'s, its frozen layer comes back bit for bit
    and its state holds nothing for it."""
    from purestep import functional

    x, y, ex, ey = digits
    model = functional(_FrozenFirst)
    configs = [
        OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
        OptimizerConfig("sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
        OptimizerConfig("adam", lr=0.01, weight_decay=0.01),
        OptimizerConfig("rmsprop", lr=0.01, weight_decay=0.01),
    ]
    trials = [(config, 64, seed % 2 == 0, seed) for seed, config in enumerate(configs)]
    pool = Pool(x, y, (ex, ey), eval_batch_size=32, compiled=False, stack=stack)
    inits = {}
    for k, (config, batch_size, shuffle, seed) in enumerate(trials):
        inits[k] = model.init(seed)
        lrs = [config.lr * (2 - e) / 2 for e in range(2)]
        pool.add(k, model, *inits[k], config, batch_size=batch_size, lrs=lrs, shuffle=shuffle, seed=seed)
    histories: dict[int, list] = {k: [] for k in range(len(trials))}
    finals = {}
    while len(pool):
        for end in pool.step():
            assert end.row is not None, end
            histories[end.key].append(end.row)
            if len(histories[end.key]) == 2:
                finals[end.key] = pool.trees(end.key)
                pool.remove(end.key)
    for k, t in enumerate(trials):
        own = alone(x, y, (ex, ey), t, epochs=2, model=model)
        if stack:  # the union's update, vmapped: the same steps to float32 rounding
            for a, b in zip(histories[k], own, strict=True):
                assert close(a.train_loss, b.train_loss) and close(a.eval_loss, b.eval_loss), (k, a, b)
        else:
            assert same_numbers(histories[k], own), k
        params, _, state = finals[k]
        init = inits[k][0]
        assert all(torch.equal(params[n], init[n]) for n in ("first.weight", "first.bias")), k
        assert not torch.equal(params["second.weight"], init["second.weight"]), k
        assert not [n for n in state if n.endswith(("first.weight", "first.bias"))], k


def test_workers_spread_over_the_gpus_in_turn():
    from purestep.search.tune import worker_device

    spread = [worker_device("cuda", k, 3) for k in range(5)]
    assert spread == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert worker_device("cuda", 4, 1) == "cuda:0"
    assert worker_device("cuda:1", 0, 4) == "cuda:1" and worker_device("cpu", 3, 2) == "cpu"
    assert worker_device("cuda", 2, 0) == "cuda"  # no GPU: load_data says so, in one line
