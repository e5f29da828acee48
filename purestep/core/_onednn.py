"""Where the fp32 matrix products of compiled CPU graphs run: oneDNN, or inductor's own kernels.

ATen runs fp32 `mm`/`addmm` on the CPU through MKL; oneDNN, which torch also ships,
is twice as fast at the tutorial's shapes on the AMD EPYC of BENCHMARKS.md (353 vs
189 GFLOP/s). `ONEDNN_MATMULS` is an inductor post-grad pass over every fp32 CPU
`mm(a, b)`, `addmm(bias, a, b)` (bias a row vector, the shape `F.linear` makes) and
`bmm(a, b)` (which `vmap` over trials makes), of static shape or with a symbolic batch (a step
saved for every batch size, `core/artifacts.py`), whose rows are counted as `SYMBOLIC_ROWS`:

- every side at least `MIN_SIDE`: oneDNN's linear, `mkldnn._linear_pointwise(a, b.t(), bias)`;
  a `bmm` as one linear per trial, stacked (twice as fast as ATen's batched GEMM here).
  oneDNN reads a strided `b` as is but copies a strided `a`; a weight gradient's `a` is
  a transposed view (`dy.t() @ x`), so that product asks inductor for a contiguous `a`,
  which the kernel producing `dy` then writes transposed, at no extra pass.
- a side under `MIN_SIDE` and at most `SMALL_MACS` multiply-adds (the last layer's
  three products, a side of 10): a broadcast multiply and sum, which inductor fuses
  into the neighbouring kernels (the loss, the ReLU backward, the update) instead of a
  BLAS call that costs more to enter than to run.

The pass changes the summation order of products, nothing else: compiled results stay
within rounding of eager.

A fast path on two private torch names, and the only place they are used:
`torch._inductor.custom_graph_pass.CustomGraphPass` (the base class inductor's cache asks of a
pass, imported only when a pass is made: it loads Dynamo and inductor) and
`torch.ops.mkldnn._linear_pointwise`. Its measured win is in BENCHMARKS.md ("Private
names"). When `fastpath.enabled()` is False or a name is missing, `matmul_pass()` is None
and products run as inductor compiles them by default. Importing this module registers the
`purestep::onednn_*` ops, which saved packages call.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from purestep.core import fastpath

aten = torch.ops.aten
MIN_SIDE = 32
SMALL_MACS = 1 << 22
SYMBOLIC_ROWS = 512
"""What a symbolic side (a batch, unknown when a package for every batch size compiles) counts as
when choosing: a product's kernel is chosen once for all its sizes, so by a fixed size, never by
whichever batch happened to compile first; train batches up to here keep the static choice."""

_LIB = torch.library.Library("purestep", "FRAGMENT")
_LIB.define("onednn_mm(Tensor a, Tensor b) -> Tensor")
_LIB.define("onednn_mm_contiguous(Tensor a, Tensor b) -> Tensor", tags=(torch.Tag.needs_contiguous_strides,))
_LIB.define("onednn_addmm(Tensor bias, Tensor a, Tensor b) -> Tensor")
_LIB.define("onednn_bmm(Tensor a, Tensor b) -> Tensor")
_LIB.define("onednn_bmm_contiguous(Tensor a, Tensor b) -> Tensor", tags=(torch.Tag.needs_contiguous_strides,))


def _linear(a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


_LIB.impl("onednn_mm", lambda a, b: _linear(a, b, None), "CPU")
_LIB.impl("onednn_mm_contiguous", lambda a, b: _linear(a, b, None), "CPU")
_LIB.impl("onednn_addmm", lambda bias, a, b: _linear(a, b, bias), "CPU")


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    return torch.stack([_linear(a[i], b[i], None) for i in range(len(a))])


_LIB.impl("onednn_bmm", _bmm, "CPU")
_LIB.impl("onednn_bmm_contiguous", _bmm, "CPU")


def _product_fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(*a.shape[:-1], b.shape[-1])


def _addmm_fake(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return _product_fake(a, b)


for _name in ("onednn_mm", "onednn_mm_contiguous", "onednn_bmm", "onednn_bmm_contiguous"):
    torch.library.register_fake(f"purestep::{_name}", _product_fake)
torch.library.register_fake("purestep::onednn_addmm", _addmm_fake)


def available() -> bool:
    """True when fast paths are on and this torch has oneDNN's linear for the CPU."""
    return (
        fastpath.enabled()
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _value(node: object) -> Tensor | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, Tensor) else None


def _is_cpu_fp32(node: object, ndim: int) -> bool:
    value = _value(node)
    if value is None:
        return False
    return value.device.type == "cpu" and value.dtype == torch.float32 and value.ndim == ndim


def _sides(a: torch.fx.Node, b: torch.fx.Node, ndim: int = 2) -> tuple[int, int, int] | None:
    """`(m, k, n)` of a CPU fp32 product, a symbolic side counted as `SYMBOLIC_ROWS`, else None."""
    if not (_is_cpu_fp32(a, ndim) and _is_cpu_fp32(b, ndim)):
        return None
    (m, k), n = a.meta["val"].shape[-2:], b.meta["val"].shape[-1]
    sides = tuple(side if isinstance(side, int) else SYMBOLIC_ROWS for side in (m, k, n))
    return sides if all(isinstance(side, (int, torch.SymInt)) for side in (m, k, n)) else None


def _is_row_bias(bias: object) -> bool:
    value = _value(bias)
    return value is not None and value.ndim == 1 and value.dtype == torch.float32


Operands = tuple[torch.fx.Node | None, torch.fx.Node, torch.fx.Node, int]


def _operands(node: torch.fx.Node) -> Operands | None:
    """`(bias, a, b, ndim)` of an `mm`/`bmm` (bias None) or row-bias `addmm` this pass may rewrite."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target is aten.mm.default:
        return (None, *node.args, 2)
    if node.target is aten.bmm.default:
        return (None, *node.args, 3)
    if node.target is aten.addmm.default and _is_row_bias(node.args[0]):
        return (*node.args, 2)
    return None


_ONEDNN = {  # (ndim, bias, needs a contiguous `a`) -> op
    (2, True, False): torch.ops.purestep.onednn_addmm.default,
    (2, False, False): torch.ops.purestep.onednn_mm.default,
    (2, False, True): torch.ops.purestep.onednn_mm_contiguous.default,
    (3, False, False): torch.ops.purestep.onednn_bmm.default,
    (3, False, True): torch.ops.purestep.onednn_bmm_contiguous.default,
}


def _onednn_target(operands: Operands, contiguous_gradients: bool):
    """The oneDNN op for a large product."""
    bias, a, b, ndim = operands
    transposed = not a.meta["val"].is_contiguous() and b.meta["val"].is_contiguous()
    return _ONEDNN[ndim, bias is not None, bias is None and transposed and contiguous_gradients]


def _is_small(operands: Operands, sides: tuple[int, int, int]) -> bool:
    batch = operands[1].meta["val"].shape[0] if operands[3] == 3 else 1
    return (batch if isinstance(batch, int) else SYMBOLIC_ROWS) * math.prod(sides) <= SMALL_MACS


def _call(graph: torch.fx.Graph, target, *args) -> torch.fx.Node:
    """A new node computing `target(*args)`, with its fake value as the pass's inputs have."""
    node = graph.call_function(target, args)
    values = [_value(arg) if isinstance(arg, torch.fx.Node) else arg for arg in args]
    mode = next((v.fake_mode for v in values if getattr(v, "fake_mode", None) is not None), None)
    if mode is None:
        node.meta["val"] = target(*values)
    else:
        with mode:
            node.meta["val"] = target(*values)
    return node


def _decompose(graph: torch.fx.Graph, node: torch.fx.Node, operands: Operands) -> torch.fx.Node:
    """`(a[..., :, :, None] * b[..., None, :, :]).sum(-2)` (+ bias) in place of a small product."""
    bias, a, b, _ = operands
    with graph.inserting_before(node):
        columns = _call(graph, aten.unsqueeze.default, a, -1)
        rows = _call(graph, aten.unsqueeze.default, b, -3)
        terms = _call(graph, aten.mul.Tensor, columns, rows)
        out = _call(graph, aten.sum.dim_IntList, terms, [-2])
        return out if bias is None else _call(graph, aten.add.Tensor, out, bias)


class Rewrite:
    """Inductor post-grad pass: large fp32 CPU products to oneDNN, small ones to fused kernels.

    `fuse_small` and `contiguous_gradients` turn off one half each, to measure them
    (`python -m benchmarks.levers`).
    """

    def __init__(self, fuse_small: bool = True, contiguous_gradients: bool = True) -> None:
        self.fuse_small = fuse_small
        self.contiguous_gradients = contiguous_gradients

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            operands = _operands(node)
            sides = operands and _sides(*operands[1:])
            if not sides:
                continue
            if min(sides) >= MIN_SIDE:
                with graph.inserting_before(node):
                    new = graph.call_function(_onednn_target(operands, self.contiguous_gradients), node.args)
                new.meta.update(node.meta)
            elif self.fuse_small and _is_small(operands, sides):
                new = _decompose(graph, node, operands)
            else:
                continue
            node.replace_all_uses_with(new)
            graph.erase_node(node)

    def uuid(self) -> bytes:
        source = hashlib.sha256(Path(__file__).read_bytes()).digest()
        return source + bytes([self.fuse_small, self.contiguous_gradients])


@functools.cache
def _pass_class() -> type[Rewrite] | None:
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:
        return None
    return type("OneDNNMatmuls", (Rewrite, CustomGraphPass), {"__module__": __name__})


def matmul_pass(fuse_small: bool = True, contiguous_gradients: bool = True) -> Rewrite | None:
    """The pass as inductor's cache accepts it; None when `available()` is False or this torch
    has no custom-pass base class."""
    cls = _pass_class() if available() else None
    return None if cls is None else cls(fuse_small, contiguous_gradients)


def __getattr__(name: str) -> Any:
    """`ONEDNN_MATMULS`, the pass as shipped, made on first use (it imports inductor)."""
    if name == "ONEDNN_MATMULS":
        value = globals()[name] = matmul_pass()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
