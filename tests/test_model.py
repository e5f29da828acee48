"""Model contract: params are the reference module's named parameters; init is bitwise the tutorial's."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from purestep import NeuralNetwork, mlp

widths = st.lists(st.integers(1, 48), min_size=0, max_size=3).map(tuple)


@given(
    seed=st.integers(0, 2**31 - 1), hidden=widths, in_features=st.integers(1, 40), classes=st.integers(2, 12)
)
def test_init_is_bitwise_the_tutorials_module(seed, hidden, in_features, classes):
    params = mlp(in_features, hidden, classes).init(seed)
    torch.manual_seed(seed)
    module = NeuralNetwork(in_features, hidden, classes)
    expected = dict(module.named_parameters())
    assert list(params) == list(expected)
    for k, v in expected.items():
        assert torch.equal(params[k], v), k


def test_default_is_the_tutorials_784_512_512_10_stack():
    params = mlp().init(0)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes == {
        "linear_relu_stack.0.weight": (512, 784),
        "linear_relu_stack.0.bias": (512,),
        "linear_relu_stack.2.weight": (512, 512),
        "linear_relu_stack.2.bias": (512,),
        "linear_relu_stack.4.weight": (10, 512),
        "linear_relu_stack.4.bias": (10,),
    }


def test_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    mlp(8, (4,), 3).init(7)
    assert torch.equal(before, torch.random.get_rng_state())


@given(seed=st.integers(0, 1000), batch=st.integers(1, 9))
def test_apply_equals_the_module_and_params_fit_it(seed, batch):
    model = mlp(12, (16, 8), 5)
    params = model.init(seed)
    x = torch.rand(batch, 1, 3, 4, generator=torch.Generator().manual_seed(seed))
    reference = model.module()
    reference.load_state_dict(params)
    assert torch.equal(model.apply(params, x), reference(x))
    assert torch.equal(functional_call(reference, params, (x,)), reference(x))


def test_apply_holds_no_real_weights():
    model = mlp()
    assert all(p.device.type == "meta" for p in model._skeleton.parameters())
