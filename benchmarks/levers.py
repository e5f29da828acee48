"""A/B of the levers on the compiled step: `python -m benchmarks.levers [--threads N]`.

Each variant is the compiled train step with one thing changed. They run in
interleaved rounds over the same batches (so a burst of load on a shared machine
hits them all alike), in reverse order every other round (the first of a round runs
slightly slower); each reports its best round in ms per step and, against the
step as shipped (`steps_for`), the median over the rounds of the two's ratio within
a round, which a change of the machine's speed between rounds does not skew. Variants
that change files outside `compile_step` are built here from the same pieces, to
measure a proposed change before making it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.data import synthetic
from purestep.core._onednn import OneDNNMatmuls
from purestep.core.loop import _BatchCall, evaluate, steps_for, train_epoch
from purestep.core.model import Buffers, Model, NeuralNetwork, Params, mlp
from purestep.core.optim import Optimizer, State, sgd
from purestep.core.step import (
    CompiledStep,
    _inductor_options,
    compile_step,
    make_eval_step,
    make_train_step,
    steady,
)


class LinearChainMLP(Model):
    """`apply` as a plain chain of `F.linear`/`F.relu` over the params dict (no `functional_call`)."""

    def __init__(self) -> None:
        super().__init__(NeuralNetwork, {}, "linear chain")

    def apply(
        self, params: Params, buffers: Buffers, x: Tensor, train: bool = True
    ) -> tuple[Tensor, Buffers]:
        return self._chain(params, x), buffers

    def _chain(self, params: Params, x: Tensor) -> Tensor:
        h = x.flatten(1)
        layers = 3
        for i in range(layers):
            name = f"linear_relu_stack.{2 * i}"
            h = F.linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
            if i < layers - 1:
                h = F.relu(h)
        return h


SHIPPED = "as shipped (steps_for)"


def _compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    return CompiledStep(fn, _inductor_options() | options)


def _through_dynamo(step: Callable[..., Any], skip_guards: bool) -> Callable[..., Any]:
    """`step` entered through Dynamo on every call (no direct entry into its graph), its
    guards checked, or skipped as `set_stance(skip_guard_eval_unsafe=True)` skips them."""

    def call(*args: Any) -> Any:
        current = torch._dynamo.eval_frame._stance
        stance = torch.compiler.set_stance(
            current.stance, skip_guard_eval_unsafe=skip_guards, force_backend=current.backend
        )
        with stance:
            return step(*args)

    return call


def variants(lr: float, cpp_wrapper: bool) -> dict[str, tuple[Callable[..., Any], Model, Optimizer, str]]:
    """name -> (compiled step, model, optimizer, batching)."""
    spec, optimizer = mlp(), sgd(lr)
    step = make_train_step(spec, optimizer)
    plain = LinearChainMLP()
    shipped = steps_for(spec, optimizer, compiled=True)[0]
    out = {
        SHIPPED: (shipped, spec, optimizer, "slices"),
        "matmuls through ATen (no matmul pass)": (
            _compile(step, post_grad_custom_post_pass=None),
            spec,
            optimizer,
            "slices",
        ),
        "small products through BLAS, not fused": (
            _compile(step, post_grad_custom_post_pass=OneDNNMatmuls(fuse_small=False)),
            spec,
            optimizer,
            "slices",
        ),
        "weight gradients' operand copied inside oneDNN": (
            _compile(step, post_grad_custom_post_pass=OneDNNMatmuls(contiguous_gradients=False)),
            spec,
            optimizer,
            "slices",
        ),
        "inductor size asserts on": (_compile(step, size_asserts=True), spec, optimizer, "slices"),
        "batches as views precomputed once": (compile_step(step), spec, optimizer, "views"),
        "via Dynamo every call, guards checked": (_through_dynamo(shipped, False), spec, optimizer, "slices"),
        "via Dynamo every call, guards skipped": (_through_dynamo(shipped, True), spec, optimizer, "slices"),
        "apply as an F.linear chain": (
            compile_step(make_train_step(plain, optimizer)),
            plain,
            optimizer,
            "slices",
        ),
        "bf16 autocast": (
            compile_step(make_train_step(spec, optimizer, precision="bf16")),
            spec,
            optimizer,
            "slices",
        ),
    }
    if cpp_wrapper:
        out["inductor cpp_wrapper"] = (_compile(step, cpp_wrapper=True), spec, optimizer, "slices")
    return out


def _views_epoch(step: Callable[..., Any], params: Params, state: State, xs: Any, ys: Any) -> Tensor:
    losses, call, buffers = [], _BatchCall(step, len(ys[0])), {}
    for i, (xb, yb) in enumerate(zip(xs, ys)):
        new_params, buffers, new_state, loss = call(params, buffers, state, xb, yb)
        if i == 0 and steady((params, state), (new_params, new_state)):
            call.go_direct()
        params, state = new_params, new_state
        losses.append(loss)
        if i % 100 == 0:
            loss.item()
    return torch.stack(losses)


def main(argv: list[str] | None = None) -> None:
    """Time every variant in interleaved rounds and print a Markdown table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=19_200, help="rows per timed pass (a multiple of 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--cpp-wrapper", action="store_true", help="also time inductor's C++ wrapper")
    p.add_argument("--only", nargs="*", default=[], help="time only variants whose names contain one")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, y = synthetic(args.n, 1)
    x = images.float().div(255).unsqueeze(1)
    xs, ys = x.split(64), y.split(64)
    table = {
        name: variant
        for name, variant in variants(1e-3, args.cpp_wrapper).items()
        if name == SHIPPED or not args.only or any(word in name for word in args.only)
    }
    runs: dict[str, list[float]] = {name: [] for name in table}
    for step, spec, optimizer, _ in table.values():
        params, buffers = spec.init(0)
        step(params, buffers, optimizer.init(params), x[:64], y[:64])
    for r in range(args.rounds):
        order = list(table.items())
        for name, (step, spec, optimizer, batching) in order[:: -1 if r % 2 else 1]:
            params, buffers = spec.init(0)
            state = optimizer.init(params)
            start = time.perf_counter()
            if batching == "views":
                _views_epoch(step, params, state, xs, ys).sum().item()
            else:
                train_epoch(step, params, buffers, state, x, y, 64)[3].sum().item()
            runs[name].append((time.perf_counter() - start) / len(ys) * 1e3)
    shipped = runs[SHIPPED]
    print(f"{torch.get_num_threads()} threads, {len(ys)} steps per pass, {args.rounds} rounds")
    print("vs shipped: the median over the rounds of this variant / shipped in the same round\n")
    print("| variant | ms / step, best | vs shipped | rounds |\n| --- | ---: | ---: | --- |")
    for name, times in runs.items():
        ratio = statistics.median(t / s for t, s in zip(times, shipped, strict=True))
        print(f"| {name} | {min(times):.3f} | {ratio:.2f} | {' '.join(f'{t:.2f}' for t in times)} |")
    print("\n| eval pass over 10000 rows, compiled | batch | s |\n| --- | ---: | ---: |")
    spec = mlp()
    eval_step = compile_step(make_eval_step(spec))
    ex, ey = synthetic(10_000, 2)
    ex = ex.float().div(255).unsqueeze(1)
    params, buffers = spec.init(0)
    for batch in (64, 1000, 10_000):
        evaluate(eval_step, params, buffers, ex, ey, batch)
        best = min(_timed(lambda b=batch: evaluate(eval_step, params, buffers, ex, ey, b)) for _ in range(3))
        print(f"| mean of per-batch losses, as the tutorial | {batch} | {best:.4f} |")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
