"""Denormals flushed to zero on every thread that computes, and put back as they were."""

from __future__ import annotations

import pytest
import torch

from purestep.core import denormals
from purestep.core.optim import OptimizerConfig

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def _split_product() -> torch.Tensor:
    """A denormal product large enough that every thread of torch's team computes a share of it."""
    n = max(torch.get_num_threads(), 1) * (1 << 17)
    return torch.full((n,), denormals.SMALL) * denormals.FACTOR


@pytest.fixture(params=[1, 2, 3])
def threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_flushed_reaches_every_thread_and_puts_them_back(threads: int) -> None:
    assert not denormals.flushing() and (_split_product() != 0).all()
    with denormals.flushed() as on:
        assert on and denormals.flushing()
        assert (_split_product() == 0).all()  # every thread's share, not only this thread's
        with denormals.flushed(False) as inner:
            assert not inner and (_split_product() != 0).all()
        assert (_split_product() == 0).all()
    assert not denormals.flushing() and (_split_product() != 0).all()


def test_a_decaying_optimizer_state_turns_denormal_unless_flushed() -> None:
    """Adam's first moment over a weight whose gradient went to zero decays by beta1 a step."""
    adam = OptimizerConfig(name="adam").build()

    def first_moment() -> torch.Tensor:
        params = {"w": torch.ones(8)}
        params, state = adam.update({"w": torch.full((8,), 1e-30)}, adam.init(params), params)
        for _ in range(200):
            params, state = adam.update({"w": torch.zeros(8)}, state, params)
        return state["exp_avg.w"]

    kept = first_moment()
    assert ((kept != 0) & (kept.abs() < SMALLEST_NORMAL)).all()
    with denormals.flushed():
        assert (first_moment() == 0).all()
