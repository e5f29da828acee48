"""Batched trials: trial k of a vmapped group equals that trial run alone; a new group never recompiles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from purestep import fit, load_dataset, mlp, sgd
from purestep.core.loop import fit_trials


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.x_train[:400], data.y_train[:400], data.x_test[:100], data.y_test[:100]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


hyper = st.tuples(st.floats(1e-3, 0.3), st.floats(0.01, 0.95), st.sampled_from([0.0, 1e-4, 1e-2]))


@given(
    trials=st.lists(hyper, min_size=1, max_size=5),
    momentum=st.booleans(),
    seed=st.integers(0, 1000),
    shuffle=st.booleans(),
    scheduled=st.booleans(),
)
@example(trials=[(0.1, 0.5, 0.0), (0.05, 0.9, 0.0)], momentum=True, seed=0, shuffle=True, scheduled=True)
def test_trial_k_of_a_batch_equals_it_alone(digits, trials, momentum, seed, shuffle, scheduled):
    """A stack is all SGD with momentum or all without (their states differ in keys). Scheduled,
    each trial decays its own rate (`lr_at[k]`) by its own factor."""
    x, y, ex, ey = digits
    model = mlp(64, (32,), 10)
    optimizers = [sgd(lr, momentum=m if momentum else 0.0, weight_decay=wd) for lr, m, wd in trials]
    inits = [model.init(seed + k)[0] for k in range(len(trials))]
    common = dict(epochs=2, batch_size=48, eval_data=(ex, ey), shuffle=shuffle, seed=seed, compiled=False)
    schedules = [lambda e, lr=lr, m=m: lr * m**e for lr, m, _ in trials]
    states = [o.init(p) for o, p in zip(optimizers, inits)]
    lr_at = schedules if scheduled else None
    batched = fit_trials(model, optimizers[0], inits, [{}] * len(inits), states, x, y, lr_at=lr_at, **common)
    for k, (optimizer, init) in enumerate(zip(optimizers, inits)):
        own = schedules[k] if scheduled else None
        alone = fit(model, optimizer, init, {}, x, y, lr_at=own, **common).history
        mine = batched[k].history
        assert len(mine) == len(alone) == 2 and batched[k].stopped is None
        for a, b in zip(mine, alone):
            assert close(a.eval_loss, b.eval_loss) and close(a.train_loss, b.train_loss), (k, a, b)
            assert a.eval_accuracy == pytest.approx(b.eval_accuracy, abs=1 / len(ey))


@pytest.mark.parametrize("drop", [True, False])
def test_pruned_and_diverged_trials_stop_and_the_rest_go_on(digits, drop):
    x, y, ex, ey = digits
    model = mlp(64, (32,), 10)
    optimizers = [sgd(0.05), sgd(0.05), sgd(0.1)]
    inits = [model.init(0)[0], {k: v * float("nan") for k, v in model.init(1)[0].items()}, model.init(2)[0]]
    states = [o.init(p) for o, p in zip(optimizers, inits)]
    results = fit_trials(
        model,
        optimizers[0],
        inits,
        [{}] * 3,
        states,
        x,
        y,
        epochs=3,
        eval_data=(ex, ey),
        compiled=False,
        keep=lambda k, row: not (k == 2 and row.epoch == 0),
        drop=drop,
    )
    assert results[1].stopped == "training loss became nan in epoch 1" and not results[1].history
    assert results[2].stopped == "stopped after epoch 1" and len(results[2].history) == 1
    assert results[0].stopped is None and len(results[0].history) == 3
    alone = fit(model, optimizers[0], inits[0], {}, x, y, epochs=3, eval_data=(ex, ey), compiled=False)
    assert close(results[0].history[-1].eval_loss, alone.history[-1].eval_loss)


@pytest.mark.compile
def test_a_new_group_of_the_same_shape_does_not_recompile(digits, monkeypatch):
    from purestep.core import loop

    sizes = []

    def train_epoch(step, params, *args, **kwargs):
        sizes.append(len(next(iter(params.values()))))
        return real(step, params, *args, **kwargs)

    real = loop.train_epoch
    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    x, y, ex, ey = digits
    model = mlp(64, (32,), 10)
    common = dict(epochs=1, batch_size=64, eval_data=(ex, ey), compiled=True)

    def group(lrs, seed, **more):
        optimizers = [sgd(lr, momentum=0.9) for lr in lrs]
        inits = [model.init(seed + k)[0] for k in range(len(lrs))]
        states = [o.init(p) for o, p in zip(optimizers, inits)]
        return fit_trials(model, optimizers[0], inits, [{}] * len(inits), states, x, y, **{**common, **more})

    group([0.01, 0.02, 0.03, 0.04], 0)
    group([0.01, 0.02], 0)
    torch.compiler.set_stance("fail_on_recompile")
    try:
        results = group([0.2, 0.1, 0.05, 0.3], 7)
        del sizes[:]
        # stopped trials leave the stack when a stack of the smaller size has run (2 here) and
        # ride along when leaving would compile a new one (3)
        two_pruned = group([0.2, 0.1, 0.05, 0.3], 7, epochs=2, keep=lambda k, row: k < 2)
        one_pruned = group([0.2, 0.1, 0.05, 0.3], 7, epochs=2, keep=lambda k, row: k != 0)
    finally:
        torch.compiler.set_stance("default")
    assert all(len(r.history) == 1 for r in results)
    assert sizes == [4, 2, 4, 4]
    assert [len(r.history) for r in two_pruned] == [2, 2, 1, 1]
    assert [len(r.history) for r in one_pruned] == [1, 2, 2, 2]
    for mine, alone in zip(two_pruned[:2] + one_pruned[1:], results[:2] + results[1:]):
        assert close(mine.history[0].eval_loss, alone.history[0].eval_loss)


@pytest.mark.parametrize(
    ("drop", "compiled_already", "ride_seconds", "leaves"),
    [
        (True, False, 0.0, True),
        (False, True, 100.0, False),
        (None, True, 0.0, True),
        (None, False, 0.5, False),
        (None, False, 60.0, True),
    ],
)
def test_stopped_trials_leave_the_stack_when_that_is_cheaper(drop, compiled_already, ride_seconds, leaves):
    from purestep.core.loop import leave_stack

    assert leave_stack(drop, compiled_already, ride_seconds) is leaves
