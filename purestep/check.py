"""The equivalence pairs of `purestep check`, and the lockstep judgement behind the non-bitwise ones.

Free-running rows run both sides over the whole run from one init: functional eager vs the
tutorial's module loop (SGD bitwise, Adam within 1e-6 relative; AdamW to the same bound in the
tests) and the safetensors round trip (bitwise). Lockstep rows (compiled vs eager, batched trial vs
alone, JAX/optax vs eager) start both sides from the reference side's carry at every step and take
one step on the same batch. Each side must land where the same step lands in float64 arithmetic,
taking that side's own ReLU branches, within float32 rounding (`Twin.envelope`); and its branches
may differ from exact arithmetic's only at units whose exact pre-activation is within float32
rounding of zero. Two correct float32 steps can part at such a unit; a wrong step cannot hide
behind one.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vjp

from purestep.core.artifacts import DROPOUTS
from purestep.core.data import Dataset, batches
from purestep.core.interop import load, save
from purestep.core.loop import Callbacks, evaluate, steps_for, train_epoch
from purestep.core.losses import LossName, loss_fn
from purestep.core.model import Model, Params, mlp
from purestep.core.optim import Optimizer, OptimizerConfig
from purestep.core.reference import (
    loader,
    reference_model,
    test_loop,
    test_report,
    torch_optimizer,
    train_line,
    train_loop,
)
from purestep.core.step import (
    batch_over_trials,
    compile_step,
    make_train_step,
    short_batch,
    stack,
    trainable_update,
    unstack,
)

Tree = dict[str, Tensor]
Carry = tuple[Tree, Tree, Tree]
"""What a step hands to the next: `(params, buffers, state)`."""
Side = Callable[[Carry, Tensor, Tensor], tuple[Carry, Tensor]]
"""One implementation of one step: `(carry, x, y) -> (carry, loss)`."""
Unit = tuple[int, int]
"""A ReLU unit of one step: (which `nn.ReLU` module, flat index into its input)."""

U = 2.0**-24
"""float32's unit roundoff."""
HEADROOM = 128
"""A float32 quantity is trusted to `HEADROOM * U` times its tensor's largest magnitude (a ReLU's
input, the loss; for a gradient element, also that of its loss parts before they cancel and its
own spread where its operands' sums cancel: `Twin.rounding_scale`);
correct steps land well inside it (README, BENCHMARKS.md), and where the model is unsure of its
labels an error of 1e-4 in an update is several times outside it."""
ARITHMETIC = 16
"""The optimizer's own float32 ops: `ARITHMETIC * U` of each update, beside two ulps of the result."""


@dataclass(frozen=True)
class Flip:
    """Where two sides' ReLU branches first differ, from the same carry: step, how many units,
    the exact pre-activation nearest zero among them, and float32's rounding of that input."""

    step: int
    units: int
    closest: float
    rounding: float

    def text(self) -> str:
        """`step 37: 1 unit, exact input 3.4e-08 (float32 rounding 2.1e-05)`."""
        s = "" if self.units == 1 else "s"
        return (
            f"step {self.step}: {self.units} unit{s}, exact input {self.closest:.2g}"
            f" (float32 rounding {self.rounding:.2g})"
        )


@dataclass(frozen=True)
class Row:
    """One pair: its figure, the bound that figure is held to, and whether it passed.

    Free-running rows: `error` is the final params' `max_abs_diff`, or for a relative bound
    their `max_rel_diff`. Lockstep rows: the worst step's largest difference between the two
    sides over the largest change that step makes (per tensor, the worst tensor counts), and
    `bound` what the float64 judgement allows there; `passed` says both sides stayed within it at
    every step. `free_distance` and `first_flip` are facts about the free-running trajectories.
    """

    pair: str
    steps: int
    max_abs_param_diff: float
    max_abs_loss_diff: float
    error: float
    bound: float
    relative: bool
    passed: bool
    lockstep: bool = False
    free_distance: float | None = None
    first_flip: Flip | None = None
    flip_steps: int = 0
    failure: str = ""

    def bound_text(self) -> str:
        """`0`, `1e-06 rel` or `3.1e-05 rel/step`."""
        return f"{self.bound:.3g}" + (" rel" if self.relative else "") + ("/step" if self.lockstep else "")

    def facts(self) -> str:
        """The free-running trajectories and the first branch difference, as one line."""
        if not self.lockstep:
            return self.failure
        parts = [self.failure] if self.failure else []
        if self.free_distance is not None:
            parts.append(f"free-running end distance {self.free_distance:.2g} rel")
        if self.first_flip is None:
            parts.append("same ReLU branches at every step")
        else:
            steps = f"; {self.flip_steps} steps differ" if self.flip_steps > 1 else ""
            parts.append(f"first branch difference {self.first_flip.text()}{steps}")
        return "; ".join(parts)


def max_abs_diff(a: Params, b: Params) -> float:
    """Largest absolute difference over every leaf (NaN if any leaf has one)."""
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b)


def max_rel_diff(a: Params, b: Params) -> float:
    """Per leaf, the largest absolute difference over the largest magnitude in `b`; the worst leaf."""
    return max(
        ((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-30)).item()
        for k in b
    )


# ---------------------------------------------------------------------------------------------
# The step in float64


def _skeleton(model: Model) -> nn.Module:
    """The weightless module a model's train-mode `apply` runs through `functional_call`."""
    return model._train


def _wide(tree: Tree) -> Tree:
    return {k: v.double() if v.is_floating_point() else v for k, v in tree.items()}


def _log_sum_exp(out: Tensor, y: Tensor) -> Tensor:
    return torch.logsumexp(out, -1).mean()


def _minus_target_logit(out: Tensor, y: Tensor) -> Tensor:
    return -out.gather(-1, y.unsqueeze(-1)).mean()


def _square(out: Tensor, y: Tensor) -> Tensor:
    return torch.broadcast_tensors(out, y)[0].square().mean()


def _minus_twice_product(out: Tensor, y: Tensor) -> Tensor:
    return -2 * (out * y).mean()


LOSS_PARTS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], ...]] = {
    "cross_entropy": (_log_sum_exp, _minus_target_logit),
    "nll": (loss_fn("nll"),),
    "mse": (_square, _minus_twice_product),
}
"""Each loss as the terms whose sum (up to a constant) it is, and whose gradients at the model's
output cancel: softmax and one-hot for cross-entropy, output and target for MSE."""


PERTURBATIONS = 4
"""How many perturbed runs `Twin.spread` takes the largest change over."""


def _shake(t: Tensor, generator: torch.Generator) -> Tensor:
    """`t` times `1 + U * r`, `r` uniform in [-1, 1] per element (float tensors only)."""
    if not t.is_floating_point() or not t.numel():
        return t
    r = torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device) * 2 - 1
    return t * (1 + U * r)


def _ulp(t: Tensor) -> Tensor:
    """The spacing of float32 at each element of `t` (a float32 tensor), in float64."""
    return (torch.nextafter(t, torch.full_like(t, torch.inf)) - t).double()


class Twin:
    """One step of `model` and `optimizer` in float64, each ReLU's branches exact or forced.

    It runs on a copy of the model whose `nn.ReLU` modules report their inputs and, at chosen
    units, take the other branch: `z * mask` in place of `relu(z)` is the same function with the
    branch fixed, forward and backward. The optimizer must act elementwise (every purestep one does).
    """

    def __init__(self, model: Model, optimizer: Optimizer, loss: LossName = "cross_entropy") -> None:
        self.model = copy.deepcopy(model)
        self.optimizer = optimizer
        self.relus = [m for m in _skeleton(self.model).modules() if isinstance(m, nn.ReLU)]
        self._flips: dict[int, Tensor] = {}
        self._masks: list[Tensor] | None = None
        self._seen: list[Tensor] | None = None
        for i, module in enumerate(self.relus):
            module.inplace = False
            module.register_forward_hook(functools.partial(self._hook, i))
        self._loss_fn = loss_fn(loss)
        self._parts = LOSS_PARTS[loss]
        self._grad = grad_and_value(self._loss, has_aux=True)
        self._update = trainable_update(model, optimizer.update)  # frozen params: untouched

    def _hook(self, i: int, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        z = inputs[0]
        if self._seen is not None:
            self._seen.append(z)
        if self._masks is not None:  # held branches, in call order (`spread` records every call)
            return z * self._masks[len(self._seen or ()) - 1]
        if i in self._flips:
            return z * ((z > 0) ^ self._flips[i]).to(z.dtype)
        return None

    def _loss(self, params: Tree, buffers: Tree, x: Tensor, y: Tensor) -> tuple[Tensor, Tree]:
        out, buffers = self.model.apply(params, buffers, x, train=True)
        return self._loss_fn(out, y), buffers

    def _record(self, params: Tree, buffers: Tree, x: Tensor) -> list[Tensor]:
        self._seen = []
        try:
            with torch.no_grad():
                self.model.apply(params, buffers, x, train=True)
            return self._seen
        finally:
            self._seen = None

    def inputs(self, params: Tree, buffers: Tree, x: Tensor) -> list[Tensor]:
        """Every ReLU's input on `x`, exactly, flattened: the units are its indices."""
        return [z.reshape(-1) for z in self._record(params, buffers, x)]

    def grads(
        self, params: Tree, buffers: Tree, x: Tensor, y: Tensor, flips: Sequence[Unit] = ()
    ) -> tuple[Tree, Tensor, Tree]:
        """Exact gradients, loss and new buffers, with the ReLU branches at `flips` taken the other way."""
        masks: dict[int, Tensor] = {}
        if flips:
            shapes = [z.shape for z in self._record(params, buffers, x)]
            for i, j in flips:
                masks.setdefault(i, torch.zeros(shapes[i].numel(), dtype=torch.bool, device=x.device))[j] = (
                    True
                )
            masks = {i: m.reshape(shapes[i]) for i, m in masks.items()}
        self._flips = masks
        try:
            grads, (loss, new_buffers) = self._grad(params, buffers, x, y)
            return grads, loss, new_buffers
        finally:
            self._flips = {}

    def gradient_scale(self, params: Tree, buffers: Tree, x: Tensor, y: Tensor) -> Tree:
        """Per parameter, the largest entry of the gradient the loss's parts would give if they
        did not cancel at the output (`LOSS_PARTS`): float32 rounds each part on its own scale,
        so a confident model's small gradient carries its parts' rounding, not its own."""

        def forward(p: Tree) -> tuple[Tensor, Tree]:
            return self.model.apply(p, buffers, x, train=True)

        out, pull_back, _ = vjp(forward, params, has_aux=True)
        parts = [torch.func.grad(part)(out, y).abs() for part in self._parts]
        return {k: g.abs().max() for k, g in pull_back(sum(parts))[0].items()}

    def spread(self, params: Tree, buffers: Tree, x: Tensor, y: Tensor, grads: Tree) -> Tree:
        """Per gradient element, its largest change in units of `U` over `PERTURBATIONS` runs with every
        float param, buffer and input times `1 + U * r` (seeded) and every ReLU's branches held: float32
        sums are exact sums of so perturbed terms, so this is where a cancelling sum's rounding lands."""
        generator = torch.Generator(device=x.device).manual_seed(0)

        def shaken(tree: Tree) -> Tree:
            return {k: _shake(v, generator) for k, v in tree.items()}

        self._masks = [(z > 0).to(z.dtype) for z in self._record(params, buffers, x)]
        spread = {k: torch.zeros_like(g) for k, g in grads.items()}
        try:
            for _ in range(PERTURBATIONS):
                self._seen = []
                moved = self._grad(shaken(params), shaken(buffers), _shake(x, generator), y)[0]
                spread = {k: torch.maximum(s, (moved[k] - grads[k]).abs()) for k, s in spread.items()}
        finally:
            self._masks, self._seen = None, None
        return {k: s / U for k, s in spread.items()}

    def rounding_scale(self, params: Tree, buffers: Tree, x: Tensor, y: Tensor, grads: Tree) -> Tree:
        """Per gradient element, the magnitude float32's rounding is taken relative to: the
        larger of its loss parts' (`gradient_scale`, per tensor) and its own `spread`."""
        scale = self.gradient_scale(params, buffers, x, y)
        return {k: torch.maximum(s, scale[k]) for k, s in self.spread(params, buffers, x, y, grads).items()}

    def update(self, grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        """The optimizer's update on exact values (of the trainable params, as the step's)."""
        return self._update(grads, state, params)

    def envelope(self, grads: Tree, state: Tree, params: Tree, old: Tree, scale: Tree) -> Envelope:
        """Where a float32 step from `old` (a carry's `_leaves`) may land, given exact `grads`.

        Per element of the new params and state: the lowest and highest exact result over
        gradients off by float32's rounding (`HEADROOM * U` of each gradient element's `scale`
        from `rounding_scale`, or of its tensor's largest entry if larger), taken at five points across
        that range; where those five are not in order (an extremum inside, as Adam's second
        moment has where the decayed gradient crosses zero) the range is widened by its own
        width. On top: the optimizer's own rounding.
        """
        tolerance = {k: HEADROOM * U * torch.maximum(g.abs().max(), scale[k]) for k, g in grads.items()}
        runs = [
            _carry(self.update({k: g + sign * tolerance[k] for k, g in grads.items()}, state, params))
            for sign in (-1.0, -0.5, 0.0, 0.5, 1.0)
        ]
        # the optimizer's running averages as a float32 step rounds them on the way: a difference
        # of two (centered RMSprop's variance) can cancel, and magnify that rounding in the result
        rounded = [
            _carry(self.update(grads, _scaled(state, 1 + sign * ARITHMETIC * U), params)) for sign in (-1, 1)
        ]
        low, high, slack, scale = {}, {}, {}, {}
        for k in runs[0]:
            values = torch.stack([r[k] for r in runs])
            low[k], high[k] = values.amin(0), values.amax(0)
            steps = values.diff(dim=0)
            turns = ~((steps >= 0).all(0) | (steps <= 0).all(0))
            width = torch.where(turns, high[k] - low[k], 0.0)
            low[k], high[k] = low[k] - width, high[k] + width
            for r in rounded:
                low[k], high[k] = torch.minimum(low[k], r[k]), torch.maximum(high[k], r[k])
            before = old[k].double()
            change = torch.maximum((low[k] - before).abs(), (high[k] - before).abs())
            slack[k] = ARITHMETIC * U * change
            scale[k] = change.max().item()
        return Envelope(low, high, slack, scale)


# ---------------------------------------------------------------------------------------------
# Lockstep


def side(train_step: Callable[..., tuple[Tensor | Tree, ...]]) -> Side:
    """A `train_step(*carry, x, y) -> (*carry, loss)` as a `Side`."""

    def run(carry: Carry, x: Tensor, y: Tensor) -> tuple[Carry, Tensor]:
        *out, loss = train_step(*carry, x, y)
        return tuple(out), loss

    return run


def _leaves(carry: Carry) -> Tree:
    """A carry's tensors in one flat dict: `params/<name>`, `buffers/<name>`, `state/<name>`."""
    return {
        f"{part}/{k}": v for part, tree in zip(("params", "buffers", "state"), carry) for k, v in tree.items()
    }


def _scaled(state: Tree, factor: float) -> Tree:
    """`state` with its per-element float buffers times `factor` (0-d hyperparameters as they are)."""
    return {k: v * factor if v.is_floating_point() and v.ndim else v for k, v in state.items()}


def _carry(update: tuple[Tree, Tree]) -> Tree:
    """An optimizer update's `(params, state)` keyed as `_leaves`."""
    return _leaves((update[0], {}, update[1]))


def _params_vector(tree: Tree) -> Tensor:
    return torch.cat([v.double().flatten() for k, v in tree.items() if k.startswith("params/")])


TWO_ULPS = 2.0**-22
"""Two ulps of a float32 value `v` are at most `|v| * TWO_ULPS`."""


@dataclass(frozen=True)
class Envelope:
    """Per leaf of a step's result: the lowest and highest exact value, the optimizer's rounding
    around them (two ulps of the result come on top), and the largest change the step makes."""

    low: Tree
    high: Tree
    slack: Tree
    scale: dict[str, float]

    def with_buffers(self, buffers: Tree, old: Tree) -> Envelope:
        """With the step's exact new buffers: float ones to within `HEADROOM * U` of their
        largest entry (statistics of a float32 forward pass), the others exactly."""
        low, high, slack, scale = dict(self.low), dict(self.high), dict(self.slack), dict(self.scale)
        for k, v in buffers.items():
            key = f"buffers/{k}"
            low[key] = high[key] = v
            rounding = HEADROOM * U * v.abs().max() if v.is_floating_point() and v.numel() else 0.0
            slack[key] = torch.zeros_like(v, dtype=torch.float64) + rounding
            scale[key] = (v.double() - old[key].double()).abs().max().item() if v.numel() else 0.0
        return Envelope(low, high, slack, scale)

    def outside(self, new: Tree) -> str:
        """The first leaf of `new` that leaves the envelope ('' if none)."""
        for k, low in self.low.items():
            if not low.is_floating_point():
                if not torch.equal(new[k], low):
                    return k
                continue
            v = new[k].double()
            reach = self.slack[k] + v.abs() * TWO_ULPS
            if not bool(((v >= low - reach) & (v <= self.high[k] + reach)).all()):
                return k
        return ""


class _Judge:
    """One step from one carry in float64, against which any number of results are judged."""

    def __init__(self, twin: Twin, carry: Carry, x: Tensor, y: Tensor) -> None:
        self.twin, self.old = twin, _leaves(carry)
        self.params, self.buffers, self.state = (_wide(tree) for tree in carry)
        self.x, self.y = (x.double() if x.is_floating_point() else x), _wide({"y": y})["y"]
        self.grads, self.loss, self.new_buffers = twin.grads(self.params, self.buffers, self.x, self.y)
        self.scale = twin.rounding_scale(self.params, self.buffers, self.x, self.y, self.grads)
        self._envelopes: dict[frozenset[Unit], Envelope] = {}
        self._effects: dict[Unit, Tensor] | None = None
        self.inputs: list[Tensor] = []
        self.rounding: list[float] = []

    def _new(self, grads: Tree) -> Tree:
        return _carry(self.twin.update(grads, self.state, self.params))

    def _grads(self, flips: Sequence[Unit]) -> tuple[Tree, Tree]:
        grads, _, buffers = self.twin.grads(self.params, self.buffers, self.x, self.y, flips)
        return grads, buffers

    def envelope(self, flips: frozenset[Unit] = frozenset()) -> Envelope:
        """The step's envelope with the ReLU branches at `flips` taken the other way."""
        if flips not in self._envelopes:
            grads, buffers = self._grads(sorted(flips)) if flips else (self.grads, self.new_buffers)
            envelope = self.twin.envelope(grads, self.state, self.params, self.old, self.scale)
            self._envelopes[flips] = envelope.with_buffers(buffers, self.old)
        return self._envelopes[flips]

    def ambiguous(self) -> list[Unit]:
        """The ReLU units whose exact input is within float32 rounding of zero."""
        if not self.inputs:
            self.inputs = self.twin.inputs(self.params, self.buffers, self.x)
            self.rounding = [HEADROOM * U * z.abs().max().item() for z in self.inputs]
        return [
            (i, j)
            for i, (z, tol) in enumerate(zip(self.inputs, self.rounding))
            for j in torch.nonzero(z.abs() <= tol).flatten().tolist()
        ]

    def judge(self, result: Carry, loss: Tensor) -> tuple[frozenset[Unit] | None, str]:
        """The branch choice under which `result` is this step in float64 to within float32's
        rounding (None if there is none), and where it is off when there is none."""
        new = _leaves(result)
        exact_loss = self.loss.item()
        if not abs(loss.double().item() - exact_loss) <= HEADROOM * U * max(abs(exact_loss), 1.0):
            return None, "loss"
        outside = ""
        for flips in self._choices(new):
            where = self.envelope(flips).outside(new)
            if not where:
                return flips, ""
            outside = outside or where
        return None, outside

    def _choices(self, new: Tree) -> Iterator[frozenset[Unit]]:
        """Branch choices to try: exact arithmetic's; the flips the result leans toward; and,
        when few units are ambiguous, every subset of them."""
        yield frozenset()
        units = self.ambiguous()
        if not units:
            return
        exact = self._new(self.grads)
        base = _params_vector(exact)
        effects = {u: _params_vector(self._new(self._grads([u])[0])) - base for u in units}
        residual = _params_vector(new) - base
        leaning = frozenset(u for u, e in effects.items() if (residual @ e).item() > 0.5 * (e @ e).item())
        if leaning:
            yield leaning
        if len(units) <= 4:
            for r in range(1, len(units) + 1):
                for subset in itertools.combinations(units, r):
                    if frozenset(subset) != leaning:
                        yield frozenset(subset)


def _figure(a: Tree, b: Tree, ea: Envelope, eb: Envelope) -> tuple[float, float]:
    """Per tensor, the largest difference of two results over the largest change the step
    makes, and on the same scale the largest difference their envelopes allow; the tensor
    where the first is the largest fraction of the second."""
    worst = (0.0, 0.0)
    for k in ea.low:
        diff = (a[k].double() - b[k].double()).abs().max().item()
        apart = torch.maximum(ea.high[k] - eb.low[k], eb.high[k] - ea.low[k]).max().item()
        rounding = max(ea.slack[k].max().item(), eb.slack[k].max().item()) * 2
        rounding += (a[k].abs().max().item() + b[k].abs().max().item()) * TWO_ULPS
        scale = ea.scale[k] or 1.0
        figure, bound = diff / scale, (apart + rounding) / scale
        if _ratio(figure, bound) > _ratio(*worst):
            worst = (figure, bound)
    return worst


def _ratio(figure: float, bound: float) -> float:
    return figure / bound if bound else (0.0 if figure == 0.0 else float("inf"))


@dataclass
class Lockstep:
    """What a lockstep run found: its worst step, the branch differences, the first failure."""

    steps: int = 0
    error: float = 0.0
    bound: float = 0.0
    max_abs_param_diff: float = 0.0
    max_abs_loss_diff: float = 0.0
    first_flip: Flip | None = None
    flip_steps: int = 0
    failure: str = ""

    def add(self, step: int, judge: _Judge, ours: tuple[Carry, Tensor], theirs: tuple[Carry, Tensor]) -> None:
        """Judge one step of both sides from the same carry, and keep what is worst."""
        (a, loss_a), (b, loss_b) = ours, theirs
        la, lb = _leaves(a), _leaves(b)
        self.steps = step + 1
        params = [k for k in la if k.startswith("params/")]
        diff = max_abs_diff({k: lb[k] for k in params}, {k: la[k] for k in params})
        self.max_abs_param_diff = max(self.max_abs_param_diff, diff)
        self.max_abs_loss_diff = max(
            self.max_abs_loss_diff, abs(loss_a.double().item() - loss_b.double().item())
        )
        (fa, where_a), (fb, where_b) = judge.judge(a, loss_a), judge.judge(b, loss_b)
        if fa is None or fb is None:
            if not self.failure:
                who, where = ("reference", where_a) if fa is None else ("other", where_b)
                self.failure = f"step {step}: the {who} side is off the float64 step at {where}"
            return
        figure, bound = _figure(lb, la, judge.envelope(fb), judge.envelope(fa))
        if _ratio(figure, bound) >= _ratio(self.error, self.bound):
            self.error, self.bound = figure, bound
        if fa != fb:
            self.flip_steps += 1
            if self.first_flip is None:
                units = fa ^ fb
                i, j = min(units, key=lambda u: abs(judge.inputs[u[0]][u[1]].item()))
                self.first_flip = Flip(step, len(units), judge.inputs[i][j].item(), judge.rounding[i])

    @property
    def passed(self) -> bool:
        """Both sides were this step in float64 to within float32's rounding, at every step."""
        return not self.failure


def lockstep(
    twin: Twin,
    reference: Side,
    other: Callable[[list[Carry], Tensor, Tensor], list[tuple[Carry, Tensor]]],
    carries: list[Carry],
    x: Tensor,
    y: Tensor,
    batch_size: int,
) -> tuple[Lockstep, float]:
    """Run `reference` on each carry, and `other` on all of them at once, from the reference's
    carries at every batch; judge each step against `twin`. Returns the judgement and the
    free-running distance: `other` run on its own results the whole way, against the reference,
    at the end (`max_rel_diff` over params, the worst carry)."""
    result = Lockstep()
    free = list(carries)
    for step, (xb, yb) in enumerate(batches(x, y, batch_size)):
        with short_batch(len(yb), batch_size):
            mine = [reference(c, xb, yb) for c in carries]
            theirs = other(carries, xb, yb)
            free = [c for c, _ in other(free, xb, yb)]
        for carry, ours, their in zip(carries, mine, theirs):
            result.add(step, _Judge(twin, carry, xb, yb), ours, their)
        carries = [c for c, _ in mine]
    distance = max(max_rel_diff(f[0], c[0]) for f, c in zip(free, carries))
    return result, distance


def lockstep_row(pair: str, result: Lockstep, distance: float) -> Row:
    """A lockstep run as a row of the table."""
    return Row(
        pair,
        result.steps,
        result.max_abs_param_diff,
        result.max_abs_loss_diff,
        result.error,
        result.bound,
        True,
        result.passed,
        lockstep=True,
        free_distance=distance,
        first_flip=result.first_flip,
        flip_steps=result.flip_steps,
        failure=result.failure,
    )


def one_at_a_time(side_: Side) -> Callable[[list[Carry], Tensor, Tensor], list[tuple[Carry, Tensor]]]:
    """A `Side` applied to each carry of a list."""
    return lambda carries, x, y: [side_(c, x, y) for c in carries]


# ---------------------------------------------------------------------------------------------
# The pairs


def reference_vs_eager(
    spec: Model,
    config: OptimizerConfig,
    seed: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    batch_size: int,
) -> tuple[Row, list[str], list[str]]:
    """The tutorial's loop against the eager functional step on the same batches, free-running:
    params and buffers at the end, and every line each side printed (which must be identical)."""
    ref_lines: list[str] = []
    model = reference_model(spec, seed, train[0].device)
    loss_fn = nn.CrossEntropyLoss()
    train_loop(
        loader(*train, batch_size),
        model,
        loss_fn,
        torch_optimizer(config, model.parameters()),
        ref_lines.append,
    )
    _, ref_loss = test_loop(loader(*test, batch_size), model, loss_fn, ref_lines.append)

    eager_lines: list[str] = []
    optimizer = config.build()
    train_step, eval_step = steps_for(spec, optimizer, compiled=False)
    params, buffers = spec.init(seed, train[0].device)
    spec.seed_like_module(seed)
    log = Callbacks(on_log=lambda b, loss, cur, size: eager_lines.append(train_line(loss, cur, size)))
    params, buffers, _, losses = train_epoch(
        train_step, params, buffers, optimizer.init(spec.trainable(params)), *train, batch_size, callbacks=log
    )
    metrics = evaluate(eval_step, params, buffers, *test, batch_size)
    eager_lines.append(test_report(metrics.accuracy, metrics.loss))

    relative = config.name != "sgd"
    bound = 1e-6 if relative else 0.0
    ours = params | {k: v for k, v in buffers.items() if v.is_floating_point()}
    theirs = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()] if k in ours}
    diff = max_abs_diff(ours, theirs)
    error = max_rel_diff(ours, theirs) if relative else diff
    counts = all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in buffers.items() if k not in ours)
    loss_diff = abs(metrics.loss - ref_loss)
    passed = error <= bound and loss_diff <= max(bound, 1e-5) and counts
    label = f"eager vs reference ({describe(config)})"
    failure = "" if passed else _why(error, bound, loss_diff, counts)
    row = Row(label, len(losses), diff, loss_diff, error, bound, relative, passed, failure=failure)
    return row, ref_lines, eager_lines


def _why(error: float, bound: float, loss_diff: float, counts: bool) -> str:
    """Why a free-running pair failed, in a few words."""
    if not (math.isfinite(error) and math.isfinite(loss_diff)):
        return "the run diverged (non-finite params or loss): lower --lr to compare the two"
    if not counts:
        return "an integer buffer (a count) differs"
    if error > bound:
        return f"params {error:.3g} apart, above the bound {bound:.3g}"
    return f"test losses {loss_diff:.3g} apart"


def deterministic(model: Model) -> tuple[Model, bool]:
    """`model`, or a copy with its dropout layers at p = 0 (and whether there were any): what the
    lockstep rows compare, since a float64 twin cannot draw a float32 step's dropout masks."""
    copied = copy.deepcopy(model)
    dropouts = [m for m in _skeleton(copied).modules() if isinstance(m, DROPOUTS)]
    for m in dropouts:
        m.p = 0.0
    return (copied, True) if dropouts else (model, False)


def _steps(model: Model, optimizer: Optimizer, changed: bool, compiled: bool) -> Callable[..., object]:
    """The train step of `model` (shared with the rest of the process, unless `changed`: a model
    equal to a shipped one but with dropout off must not take that one's cached graphs)."""
    if not changed:
        return steps_for(model, optimizer, compiled=compiled)[0]
    step = make_train_step(model, optimizer)
    return compile_step(step) if compiled else step


def compiled_vs_eager(
    spec: Model, config: OptimizerConfig, seed: int, train: tuple[Tensor, Tensor], batch_size: int
) -> Row:
    """The compiled step against the eager one, in lockstep (dropout off)."""
    optimizer = config.build()
    model, changed = deterministic(spec)
    params, buffers = spec.init(seed, train[0].device)
    result, distance = lockstep(
        Twin(model, optimizer),
        side(_steps(model, optimizer, changed, compiled=False)),
        one_at_a_time(side(_steps(model, optimizer, changed, compiled=True))),
        [(params, buffers, optimizer.init(spec.trainable(params)))],
        *train,
        batch_size,
    )
    note = ", dropout off" if changed else ""
    return lockstep_row(f"compiled vs eager ({describe(config)}{note})", result, distance)


def batched_vs_alone(
    spec: Model,
    config: OptimizerConfig,
    seed: int,
    train: tuple[Tensor, Tensor],
    batch_size: int,
    trials: int = 3,
) -> Row:
    """K trials (own seed, own learning rate) through `vmap` against each one run alone, in
    lockstep (dropout off)."""
    configs = [OptimizerConfig(**{**config.to_dict(), "lr": config.lr * 2.0**k}) for k in range(trials)]
    optimizers = [c.build() for c in configs]
    model, changed = deterministic(spec)
    inits = [spec.init(seed + k, train[0].device) for k in range(trials)]
    carries = [(p, b, o.init(spec.trainable(p))) for o, (p, b) in zip(optimizers, inits)]
    alone = make_train_step(model, optimizers[0])
    batched = batch_over_trials(alone)

    def together(carries: list[Carry], x: Tensor, y: Tensor) -> list[tuple[Carry, Tensor]]:
        stacked = [stack([c[i] for c in carries]) for i in range(3)]
        params, buffers, state, losses = batched(*stacked, x, y)
        buffers_each = unstack(buffers) if buffers else [{}] * len(carries)
        return [
            ((p, b, s), loss) for p, b, s, loss in zip(unstack(params), buffers_each, unstack(state), losses)
        ]

    result, distance = lockstep(
        Twin(model, optimizers[0]), side(alone), together, carries, *train, batch_size
    )
    note = ", dropout off" if changed else ""
    return lockstep_row(f"batched ({trials} trials) vs alone ({describe(config)}{note})", result, distance)


def safetensors_round_trip(spec: Model, seed: int) -> Row:
    """Params and buffers through a safetensors file and back: bitwise."""
    params, buffers = spec.init(seed)
    params = params | buffers
    with tempfile.TemporaryDirectory() as tmp:
        back, _ = load(save(Path(tmp) / "params.safetensors", params, {"seed": seed}))
    same = back.keys() == params.keys() and all(torch.equal(back[k], v) for k, v in params.items())
    diff = max_abs_diff(back, params)
    return Row("safetensors round trip", 0, diff, 0.0, diff, 0.0, False, same)


def describe(config: OptimizerConfig) -> str:
    """`sgd, momentum 0.9, nesterov, wd 0.0001` or `adam`."""
    parts = [config.name]
    if config.name == "sgd" and config.momentum:
        parts.append(f"momentum {config.momentum:g}")
    if config.name == "sgd" and config.nesterov:
        parts.append("nesterov")
    if config.weight_decay:
        parts.append(f"wd {config.weight_decay:g}")
    return ", ".join(parts)


def run_checks(
    data: Dataset,
    config: OptimizerConfig,
    *,
    seed: int = 0,
    batch_size: int = 64,
    steps: int | None = None,
    hidden: tuple[int, ...] = (512, 512),
    model: Model | None = None,
    extra: Callable[[Model, tuple[Tensor, Tensor], int], list[Row]] | None = None,
) -> tuple[list[Row], bool]:
    """Every pair on the first `steps` batches of the training set (`None`: a whole epoch).

    `model` defaults to the tutorial's MLP with `hidden` widths. `config` sets the SGD rows;
    Adam runs with the same learning rate and weight decay. Returns the rows and whether the
    printed tutorial lines of reference and eager agree.
    """
    spec = model or mlp(data.in_features, hidden, data.classes)
    n = len(data.y_train) if steps is None else min(len(data.y_train), steps * batch_size)
    train = data.x_train[:n], data.y_train[:n]
    test = data.x_test, data.y_test
    sgd_config = OptimizerConfig(**{**config.to_dict(), "name": "sgd"})
    adam_config = OptimizerConfig("adam", lr=config.lr, weight_decay=config.weight_decay)
    rows, same_lines = [], True
    for c in (sgd_config, adam_config):
        row, ref_lines, eager_lines = reference_vs_eager(spec, c, seed, train, test, batch_size)
        rows.append(row)
        same_lines &= ref_lines == eager_lines
    rows.append(compiled_vs_eager(spec, sgd_config, seed, train, batch_size))
    rows.append(batched_vs_alone(spec, sgd_config, seed, train, batch_size))
    rows.append(safetensors_round_trip(spec, seed))
    if extra is not None:
        rows.extend(extra(spec, train, seed))
    return rows, same_lines
