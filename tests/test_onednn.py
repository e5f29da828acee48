"""The inductor pass that sends compiled fp32 CPU matrix products to oneDNN."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from purestep.core import _onednn

pytestmark = pytest.mark.skipif(not _onednn.available(), reason="this torch has no oneDNN")
aten = torch.ops.aten


def products(a, b, bias, c, d):
    return torch.mm(a, b), torch.addmm(bias, a, b), torch.bmm(c, d), torch.mm(a, b[:, :10])


@given(
    m=st.integers(32, 80),
    k=st.integers(32, 80),
    n=st.integers(32, 80),
    trials=st.integers(1, 4),
    seed=st.integers(0, 100),
)
def test_large_products_go_to_onednn_and_stay_within_rounding(m, k, n, trials, seed):
    g = torch.Generator().manual_seed(seed)
    a, b, bias = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(n, generator=g)
    c = torch.randn(trials, m, k, generator=g)
    d = torch.randn(trials, n, k, generator=g).transpose(1, 2)  # a stacked weight, transposed
    gm = make_fx(products)(a, b, bias, c, d)
    _onednn.ONEDNN_MATMULS(gm.graph)
    gm.recompile()
    targets = [node.target for node in gm.graph.nodes if node.op == "call_function"]
    assert torch.ops.purestep.onednn_mm.default in targets
    assert torch.ops.purestep.onednn_addmm.default in targets
    assert torch.ops.purestep.onednn_bmm.default in targets
    # a side of 10 (the last layer's) stays with ATen
    assert aten.mm.default in targets and aten.bmm.default not in targets
    for mine, theirs in zip(gm(a, b, bias, c, d), products(a, b, bias, c, d)):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-4)
