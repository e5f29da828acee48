"""The floor: a step's matrix multiplies, timed alone at the step's own shapes and strides.

One eager step runs under a dispatch mode that records every `mm`/`addmm`/`bmm` with its
operand shapes and strides. Each recorded product is then replayed on fresh tensors of
the same layout through ATen (MKL here) and through oneDNN, and the faster of the two
counts: the floor is the sum of those best times, i.e. the step's matmul FLOPs over the
best fp32 matmul throughput this machine reaches at those shapes. oneDNN gets its left
operand contiguous, as the compiled step hands it over (a weight gradient's transposed
`dy` is written that way by the kernel producing it), so no copy is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
MATMULS = (aten.mm.default, aten.addmm.default, aten.bmm.default)


@dataclass(frozen=True)
class Matmul:
    """One recorded product: the op and each operand's `(shape, stride, dtype)`."""

    op: Any
    operands: tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype], ...]

    @property
    def flops(self) -> int:
        """Multiply-adds times two."""
        a, b = self.operands[-2][0], self.operands[-1][0]
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]

    def label(self) -> str:
        """E.g. `addmm 64x784 @ 784x512`."""
        a, b = self.operands[-2][0], self.operands[-1][0]
        return f"{self.op.__name__.split('.')[0]} {'x'.join(map(str, a))} @ {'x'.join(map(str, b))}"


@dataclass(frozen=True)
class MatmulTime:
    """Best-of timings of one product: ATen, oneDNN (None when unavailable), and the faster."""

    matmul: Matmul
    aten_s: float
    onednn_s: float | None

    @property
    def best_s(self) -> float:
        """The faster of the two implementations."""
        return min(self.aten_s, self.onednn_s if self.onednn_s is not None else float("inf"))


@dataclass(frozen=True)
class Floor:
    """A step's matmul FLOPs and the time they take at this machine's measured throughput."""

    flops: int
    times: tuple[MatmulTime, ...]

    @property
    def seconds(self) -> float:
        """Floor of one step: the sum of the best time of each of its products."""
        return sum(t.best_s for t in self.times)

    @property
    def aten_seconds(self) -> float:
        """The same sum through ATen alone."""
        return sum(t.aten_s for t in self.times)

    @property
    def gflops(self) -> float:
        """Effective fp32 matmul throughput at these shapes, GFLOP/s."""
        return self.flops / self.seconds / 1e9


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.matmuls: list[Matmul] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            operands = tuple((tuple(a.shape), tuple(a.stride()), a.dtype) for a in args[:3])
            self.matmuls.append(Matmul(func, operands))
        return func(*args, **(kwargs or {}))


def record_matmuls(fn: Callable[..., Any], *args: Any) -> list[Matmul]:
    """The matrix products `fn(*args)` runs, in order."""
    with _Recorder() as recorder:
        fn(*args)
    return recorder.matmuls


def _operand(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    return torch.randn(size).to(dtype).as_strided(shape, stride)


def _time(fn: Callable[[], Any], min_seconds: float, repeats: int) -> float:
    for _ in range(3):
        fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds / repeats:
        fn()
        calls += 1
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _onednn(m: Matmul, tensors: list[Tensor]) -> Callable[[], Any] | None:
    if not torch.backends.mkldnn.is_available() or m.op is aten.bmm.default:
        return None
    linear = torch.ops.mkldnn._linear_pointwise
    if m.op is aten.mm.default:
        a, b = tensors[0].contiguous(), tensors[1]
        return lambda: linear(a, b.t(), None, "none", [], "")
    bias, a, b = tensors
    return lambda: linear(a, b.t(), bias, "none", [], "")


def time_matmuls(
    matmuls: list[Matmul], min_seconds: float = 0.05, repeats: int = 5
) -> tuple[MatmulTime, ...]:
    """Time each product through ATen and oneDNN on fresh tensors of the recorded layout."""
    times = []
    for m in matmuls:
        tensors = [_operand(*o) for o in m.operands]
        aten_s = _time(lambda m=m, t=tensors: m.op(*t), min_seconds, repeats)
        onednn = _onednn(m, tensors)
        onednn_s = _time(onednn, min_seconds, repeats) if onednn is not None else None
        times.append(MatmulTime(m, aten_s, onednn_s))
    return tuple(times)


def best_of(rounds: list[tuple[MatmulTime, ...]]) -> tuple[MatmulTime, ...]:
    """Per product, the best ATen and the best oneDNN time over several timing rounds."""

    def best(times: tuple[MatmulTime, ...]) -> MatmulTime:
        onednn = [t.onednn_s for t in times if t.onednn_s is not None]
        return MatmulTime(times[0].matmul, min(t.aten_s for t in times), min(onednn) if onednn else None)

    return tuple(best(times) for times in zip(*rounds, strict=True))
