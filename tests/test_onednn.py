"""The inductor pass that routes compiled fp32 CPU matrix products: oneDNN or fused kernels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from purestep.core import _onednn

pytestmark = pytest.mark.skipif(
    not _onednn.available(), reason="the oneDNN pass is off (fast paths off, or no oneDNN in this torch)"
)
aten = torch.ops.aten
purestep_ops = torch.ops.purestep


def products(a, b, bias, c, d, e):
    return (
        torch.mm(a, b),
        torch.addmm(bias, a, b),
        torch.bmm(c, d),
        torch.mm(a.t(), e),  # a weight gradient: dy.t() @ x
        torch.bmm(c.transpose(1, 2), c),  # the same over stacked trials
        torch.mm(a, b[:, :10]),  # the last layer's side of 10
        torch.addmm(bias[:10], a, b[:, :10]),
        torch.bmm(c, d[:, :, :10]),
    )


def rewritten(fn, *args) -> tuple[torch.fx.GraphModule, list]:
    gm = make_fx(fn, tracing_mode="fake")(*args)
    _onednn.ONEDNN_MATMULS(gm.graph)
    gm.recompile()
    return gm, [node.target for node in gm.graph.nodes if node.op == "call_function"]


@given(
    m=st.integers(32, 80),
    k=st.integers(32, 80),
    n=st.integers(32, 80),
    trials=st.integers(1, 4),
    seed=st.integers(0, 100),
)
def test_each_product_goes_where_it_runs_fastest_and_stays_within_rounding(m, k, n, trials, seed):
    g = torch.Generator().manual_seed(seed)
    a, b, bias = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(n, generator=g)
    c = torch.randn(trials, m, k, generator=g)
    d = torch.randn(trials, n, k, generator=g).transpose(1, 2)  # a stacked weight, transposed
    e = torch.randn(m, n, generator=g)
    args = (a, b, bias, c, d, e)
    gm, targets = rewritten(products, *args)
    assert targets.count(purestep_ops.onednn_mm.default) == 1
    assert targets.count(purestep_ops.onednn_addmm.default) == 1
    assert targets.count(purestep_ops.onednn_bmm.default) == 1
    assert targets.count(purestep_ops.onednn_mm_contiguous.default) == 1
    assert targets.count(purestep_ops.onednn_bmm_contiguous.default) == 1
    # the three products with a side of 10 became a multiply and a sum, fused by inductor
    assert not {aten.mm.default, aten.addmm.default, aten.bmm.default} & set(targets)
    assert targets.count(aten.sum.dim_IntList) == 3
    for mine, theirs in zip(gm(*args), products(*args), strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-4)


def test_each_half_of_the_pass_turns_off_alone():
    a, b, bias, c, d = (
        torch.randn(40, 36),
        torch.randn(36, 33),
        torch.randn(33),
        torch.randn(2, 40, 36),
        torch.randn(2, 36, 33),
    )
    args = (a, b, bias, c, d, torch.randn(40, 33))
    gm = make_fx(products, tracing_mode="fake")(*args)
    _onednn.Rewrite(fuse_small=False, contiguous_gradients=False)(gm.graph)
    targets = [node.target for node in gm.graph.nodes if node.op == "call_function"]
    assert targets.count(purestep_ops.onednn_mm.default) == 2
    assert targets.count(purestep_ops.onednn_bmm.default) == 2
    assert purestep_ops.onednn_mm_contiguous.default not in targets
    assert aten.mm.default in targets and aten.addmm.default in targets and aten.bmm.default in targets
    assert _onednn.Rewrite().uuid() != _onednn.Rewrite(fuse_small=False).uuid()


def test_a_large_product_with_one_small_side_stays_with_blas():
    a, b = torch.randn(1024, 640), torch.randn(640, 8)  # 5M multiply-adds, past SMALL_MACS
    _, targets = rewritten(torch.mm, a, b)
    assert aten.mm.default in targets and aten.sum.dim_IntList not in targets


def test_the_transposed_operand_is_written_contiguous_by_its_producer():
    """The weight gradient's `dy.t()` comes from inductor already contiguous: no copy in the call."""
    for op in (purestep_ops.onednn_mm_contiguous.default, purestep_ops.onednn_bmm_contiguous.default):
        assert torch.Tag.needs_contiguous_strides in op.tags
    for op in (purestep_ops.onednn_mm.default, purestep_ops.onednn_bmm.default):
        assert torch.Tag.needs_contiguous_strides not in op.tags


def test_compiled_step_with_the_pass_matches_eager(tmp_path):
    """Through inductor: a tiny MLP's compiled grad step stays within rounding of eager."""
    from torch.func import grad

    from purestep.core.step import compile_step

    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(48, 40, generator=g) / 7, torch.randn(10, 48, generator=g) / 7
    x, y = torch.randn(64, 40, generator=g), torch.randint(0, 10, (64,), generator=g)

    def loss(params, x, y):
        h = torch.relu(x @ params["w1"].t())
        return torch.nn.functional.cross_entropy(h @ params["w2"].t(), y)

    step = grad(loss)
    params = {"w1": w1, "w2": w2}
    compiled = compile_step(step, cache_dir=tmp_path)
    for name, value in compiled(params, x, y).items():
        torch.testing.assert_close(value, step(params, x, y)[name], rtol=1e-5, atol=1e-6)
