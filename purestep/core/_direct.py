"""Fast path: a loop enters a compiled step's graph directly, skipping Dynamo's entry.

Uses two private torch names, and nothing else does: `torch._inductor.compile_fx.compile_fx`
(inductor as `torch.compile`'s default backend calls it, here wrapped to note each run of
the graph) and the worker threads of `torch._inductor.async_compile.AsyncCompile.pool()`
(to tell inductor's compile workers from a caller's threads). Its measured win is in
BENCHMARKS.md ("Private names"). When `fastpath.enabled()` is False, or either name is
missing, `backend()` is None: the step compiles through public `torch.compile(..., options=)`
and every call goes through Dynamo.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from purestep.core import fastpath

Ran = tuple[Callable[..., Any], tuple[Any, ...], Any]


def backend(options: dict[str, Any], noted: Callable[[Ran], None]) -> Callable[..., Any] | None:
    """A `torch.compile` backend: inductor with `options`, calling `noted((graph, inputs,
    outputs))` after each run of a graph; None when the fast path is off or unavailable."""
    if not fastpath.enabled():
        return None
    try:
        from torch._inductor.compile_fx import compile_fx
    except ImportError:
        return None

    def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graph = compile_fx(gm, example_inputs, config_patches=options)

        def run(*inputs: Any) -> Any:
            outputs = graph(*inputs)
            noted((graph, inputs, outputs))
            return outputs

        return run

    return compile_graph


def _leaves(trees: Sequence[Any]) -> list[Any]:
    """The tensors of a step's arguments or results: dicts' values in order, tensors as they are."""
    return [leaf for tree in trees for leaf in (tree.values() if isinstance(tree, dict) else (tree,))]


def entry(args: tuple[Any, ...], result: Any, ran: Ran) -> Callable[..., Any] | None:
    """The graph of `ran` as a plain function of the step's arguments, rebuilding its results;
    None if the graph's inputs and results are not all the step's own tensors."""
    graph, inputs, outputs = ran
    single = not isinstance(result, tuple)
    trees = (result,) if single else result
    argument = {id(leaf): i for i, leaf in enumerate(_leaves(args))}
    produced = {id(out): j for j, out in enumerate(outputs)}
    if not all(id(x) in argument for x in inputs):
        return None
    take = [argument[id(x)] for x in inputs]
    # Each result is a graph output, or an argument handed back as it came (a hyperparameter).
    picks = [(id(r) in produced, produced.get(id(r), argument.get(id(r)))) for r in _leaves(trees)]
    if any(i is None for _, i in picks):
        return None
    keys = [list(tree) if isinstance(tree, dict) else None for tree in trees]

    def step(*args: Any) -> Any:
        leaves = _leaves(args)
        outputs = graph(*[leaves[i] for i in take])
        values = iter([outputs[i] if from_graph else leaves[i] for from_graph, i in picks])
        out = tuple(next(values) if k is None else dict(zip(k, values)) for k in keys)
        return out[0] if single else out

    return step


def other_threads() -> bool:
    """Whether a non-daemon thread other than this one and inductor's compile workers is alive
    (inductor's workers counted as others when this torch does not say which they are)."""
    workers: set[threading.Thread] = set()
    compiler = sys.modules.get("torch._inductor.async_compile")
    if compiler is not None:
        try:
            if compiler.AsyncCompile.pool.cache_info().currsize:
                workers = set(compiler.AsyncCompile.pool()._threads)
        except AttributeError:
            pass
    current = threading.current_thread()
    return any(t is not current and not t.daemon and t not in workers for t in threading.enumerate())
