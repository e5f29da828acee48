"""fp32 matrix products of compiled CPU graphs through oneDNN instead of ATen's BLAS.

ATen runs fp32 `mm`/`addmm` on the CPU through MKL; oneDNN, which torch also ships,
is twice as fast at the tutorial's shapes on the AMD EPYC of BENCHMARKS.md (353 vs
189 GFLOP/s). `ONEDNN_MATMULS` is an inductor post-grad pass that replaces every 2-d
fp32 CPU `mm(a, b)` and `addmm(bias, a, b)` (bias a row vector, the shape `F.linear`
makes) by oneDNN's linear, `mkldnn._linear_pointwise(a, b.t(), bias)`, when every
side is at least `MIN_SIDE` (a product with a side of 10, like the last layer's, is
faster through ATen). A batched `bmm`, which `vmap` over trials makes, becomes one
oneDNN linear per trial, stacked: twice as fast as ATen's batched GEMM at these
shapes, the copy included. It changes the summation order of those products,
nothing else: compiled results stay within rounding of eager.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten
MIN_SIDE = 32

_LIB = torch.library.Library("purestep", "FRAGMENT")
_LIB.define("onednn_mm(Tensor a, Tensor b) -> Tensor")
_LIB.define("onednn_addmm(Tensor bias, Tensor a, Tensor b) -> Tensor")
_LIB.define("onednn_bmm(Tensor a, Tensor b) -> Tensor")


def _linear(a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


_LIB.impl("onednn_mm", lambda a, b: _linear(a, b, None), "CPU")
_LIB.impl("onednn_addmm", lambda bias, a, b: _linear(a, b, bias), "CPU")
_LIB.impl("onednn_bmm", lambda a, b: torch.stack([_linear(a[i], b[i], None) for i in range(len(a))]), "CPU")


@torch.library.register_fake("purestep::onednn_mm")
def _mm_fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.register_fake("purestep::onednn_addmm")
def _addmm_fake(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.register_fake("purestep::onednn_bmm")
def _bmm_fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], a.shape[1], b.shape[2])


def available() -> bool:
    """True when this torch has oneDNN (mkldnn) for the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _is_cpu_fp32(node: torch.fx.Node, ndim: int) -> bool:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(value, Tensor):
        return False
    return value.device.type == "cpu" and value.dtype == torch.float32 and value.ndim == ndim


def _large(a: torch.fx.Node, b: torch.fx.Node, ndim: int = 2) -> bool:
    if not (_is_cpu_fp32(a, ndim) and _is_cpu_fp32(b, ndim)):
        return False
    (m, k), n = a.meta["val"].shape[-2:], b.meta["val"].shape[-1]
    return min(m, k, n) >= MIN_SIDE


def _replacement(node: torch.fx.Node):
    if node.target is aten.mm.default and not node.kwargs:
        a, b = node.args
        if _large(a, b):
            return torch.ops.purestep.onednn_mm.default
    if node.target is aten.bmm.default and not node.kwargs:
        a, b = node.args
        if _large(a, b, ndim=3):
            return torch.ops.purestep.onednn_bmm.default
    if node.target is aten.addmm.default and not node.kwargs:
        bias, a, b = node.args
        bias_value = bias.meta.get("val") if isinstance(bias, torch.fx.Node) else None
        if (
            _large(a, b)
            and isinstance(bias_value, Tensor)
            and bias_value.ndim == 1
            and bias_value.dtype == torch.float32
        ):
            return torch.ops.purestep.onednn_addmm.default
    return None


class OneDNNMatmuls(CustomGraphPass):
    """Inductor post-grad pass: fp32 CPU `mm`/`addmm` -> oneDNN linear."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            target = _replacement(node)
            if target is None:
                continue
            with graph.inserting_before(node):
                new = graph.call_function(target, node.args)
            new.meta.update(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))


ONEDNN_MATMULS = OneDNNMatmuls()
