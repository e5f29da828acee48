"""A pool of trial slots: many trials trained side by side, each on its own schedule.

Each slot holds one trial: its own params, buffers and optimizer state, its own learning rate
per epoch, epoch counter, position in the epoch and data order. The caller removes finished,
pruned or diverged trials and adds new ones between steps; no slot waits for another.

Stacked (`stacks(device)`: off the CPU), slots of one model, batch size and union state layout
(`needs_third_buffer`: RMSprop with momentum keeps a third buffer) form a lane, their trees
stacked on a leading axis in the union state of `tunable` (so every optimizer family stacks),
and every `step()` advances each slot by one batch, one vmapped call per lane (a lane
whose slots sit at different batch lengths, an epoch's short last batch, splits for that step).
A slot that finishes an epoch is evaluated with the others that finished it at that step, in
one batched pass. Compiled, the steps keep their dimensions symbolic (`compile_shape_free`), so
one train graph (per state layout) and one eval graph serve every lane, batch size and stack size.

On a CPU, where K stacked products cost K single ones, nothing stacks: every `step()` runs one
epoch of each slot in turn with the very steps, graphs and generator `fit` runs for that trial
alone (`run_epoch`), so a pooled trial's numbers are its numbers alone, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from purestep.core.data import epoch_order
from purestep.core.loop import EpochMetrics, NonFiniteLoss, _counted, _metrics, _row, run_epoch, steps_for
from purestep.core.losses import LossName
from purestep.core.model import Buffers, Model, Params
from purestep.core.optim import (
    Optimizer,
    OptimizerConfig,
    State,
    family_of,
    family_update,
    needs_third_buffer,
    tunable,
)
from purestep.core.step import (
    EvalStep,
    TrainStep,
    batch_eval_over_trials,
    batch_over_slots,
    compile_shape_free,
    make_eval_step,
    make_train_step,
)

Tree = dict[str, Tensor]


@dataclass
class Slot:
    """One trial's place in the pool: what it trains with and where it is."""

    key: Hashable
    lrs: Sequence[float]
    """The learning rate of each epoch (the schedule, as data); its length is the trial's epochs."""
    shuffle: bool
    seed: int
    family: str
    epoch: int = 0
    start: int = 0
    """The first row of the next batch in this epoch."""
    order: Tensor | None = None
    losses: list[Tensor] = field(default_factory=list)
    began: float = 0.0
    trees: tuple[Tree, Tree, State] | None = None
    """In a pool that does not stack: its params, buffers and optimizer state (else they sit in
    its lane), `steps`, the (train, eval) steps `fit` runs for it, and `rng`, its generator's state."""
    steps: tuple[TrainStep, EvalStep] | None = None
    rng: Tensor | None = None


@dataclass(frozen=True)
class EpochEnd:
    """A slot's epoch ended: its metrics row, or why it stopped (a non-finite training loss)."""

    key: Hashable
    row: EpochMetrics | None
    diverged: str | None = None


@dataclass
class _Lane:
    model: Model
    batch_size: int
    slots: list[Slot]
    trees: tuple[Tree, Tree, State] | None
    """The slots' params, buffers and state stacked in slot order; None in a lane that does not stack."""
    stacked: bool
    """Whether the lane's slots share one vmapped call a batch; else each runs an epoch alone."""


_STEPS: dict[tuple[Model, bool, LossName, str | None], tuple[TrainStep, EvalStep]] = {}
USAGE: Counter[str] = Counter()
"""Pool steps run in this process (`steps`: a batch stacked, an epoch each otherwise) and the live
slots they advanced (`slot_steps`)."""


def stacks(device: torch.device | str) -> bool:
    """Whether a pool on `device` stacks its slots by default: off the CPU. On a CPU a batched
    product of K trials costs K single ones (BENCHMARKS.md, "The pool's slots on a CPU")."""
    return torch.device(device).type != "cpu"


def _draws(model: Model, x: Tensor) -> bool:
    """Whether `model`'s train-mode forward draws from torch's generator on rows `x` (dropout with
    a rate above 0, RReLU): its slots cannot share a vmapped call, which splits one generator
    among them, and still draw what each draws alone, from its own."""
    devices = [x.device] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        params, buffers = model.init(0, x.device)
        states = [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]
        model.apply(params, buffers, x, train=True)
        after = [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]
    return any(not torch.equal(a, b) for a, b in zip(states, after))


def pool_steps(
    model: Model, compiled: bool, loss: LossName = "cross_entropy", family: str | None = None
) -> tuple[TrainStep, EvalStep]:
    """The pool's (train, eval) steps of `model`, one batch per slot; built once.

    The update is the union one (`tunable`); given a `family`, only that family's rule runs
    (`family_update`): an eager step then costs what the trial's own optimizer costs.
    """
    key = (model, compiled, loss, family)
    if key not in _STEPS:
        update = tunable(OptimizerConfig())
        if family is not None:
            update = Optimizer(update.init, family_update(family))
        train = batch_over_slots(make_train_step(model, update, loss, shape_free=True))
        evaluate = batch_eval_over_trials(make_eval_step(model, loss, shape_free=True))
        if compiled:
            train, evaluate = compile_shape_free(train), compile_shape_free(evaluate)
        _STEPS[key] = train, evaluate
    return _STEPS[key]


_SINGLE: dict[tuple[Model, LossName], TrainStep] = {}


def _single_step(model: Model, loss: LossName) -> TrainStep:
    """The eager pool's step for a slot alone: `pool_steps`'s train step, not vmapped (its
    update reads the trial's own family from the state, `Optimizer.eager_update`)."""
    key = (model, loss)
    if key not in _SINGLE:
        _SINGLE[key] = make_train_step(model, tunable(OptimizerConfig()), loss, shape_free=True, eager=True)
    return _SINGLE[key]


def _take(tree: Tree, index: Tensor | None) -> Tree:
    return tree if index is None else {k: v.index_select(0, index) for k, v in tree.items()}


def _put(tree: Tree, index: Tensor | None, new: Tree) -> Tree:
    if index is None:
        return new
    for k, v in tree.items():
        v.index_copy_(0, index, new[k])
    return tree


def _call(step, compiled: bool, trees: tuple[Tree, ...], x: Tensor, y: Tensor, per_trial: bool):
    """`step(*trees, x, y)`, kept in the one compiled graph where Dynamo would specialise a size
    of 1: a single trial runs stacked twice (the copy's results dropped), a single row eagerly.
    `per_trial`: `x` and `y` carry the trial axis first (else every trial reads them)."""
    if not compiled:
        return step(*trees, x, y)
    if (y.shape[1] if per_trial else y.shape[0]) == 1:
        with torch.compiler.set_stance("force_eager"):
            return step(*trees, x, y)
    if len(next(iter(trees[0].values()))) > 1:
        return step(*trees, x, y)
    # fresh tensors in and out, not views: Dynamo guards on a view's base too
    trees = tuple({k: torch.cat([v, v]) for k, v in tree.items()} for tree in trees)
    if per_trial:
        x, y = torch.cat([x, x]), torch.cat([y, y])
    out = step(*trees, x, y)
    return tuple(
        {k: v[:1].clone() for k, v in o.items()} if isinstance(o, dict) else o[:1].clone() for o in out
    )


class Pool:
    """Trials trained side by side on `(x, y)` and evaluated on `eval_data` after each of their epochs."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        eval_data: tuple[Tensor, Tensor],
        *,
        eval_batch_size: int,
        compiled: bool,
        loss: LossName = "cross_entropy",
        stack: bool | None = None,
    ) -> None:
        """`stack`: train a lane's slots in one vmapped call a batch (default: `stacks(y.device)`);
        else each slot runs an epoch at a time alone, as `fit` runs it."""
        self.x, self.y = x, y
        self.eval_x, self.eval_y = eval_data
        self.eval_batch_size = eval_batch_size
        self.compiled, self.loss = compiled, loss
        self.stack = stacks(y.device) if stack is None else stack
        self.lanes: dict[tuple[Model, int, bool], _Lane] = {}

    def __len__(self) -> int:
        return sum(len(lane.slots) for lane in self.lanes.values())

    def add(
        self,
        key: Hashable,
        model: Model,
        params: Params,
        buffers: Buffers,
        config: OptimizerConfig,
        *,
        batch_size: int,
        lrs: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        """Start a trial in a free slot: `config`'s optimizer from `params`, `len(lrs)` epochs."""
        if batch_size < 1 or not lrs:
            raise ValueError("batch_size must be >= 1 and a trial needs at least one epoch")
        slot = Slot(key, lrs, shuffle, seed, family_of(config))
        # a lane stacks one state layout: RMSprop with momentum keeps a third buffer
        name = (model, batch_size, needs_third_buffer(config))
        if name not in self.lanes:
            stacked = self.stack and not _draws(model, self.x[:2])
            self.lanes[name] = _Lane(model, batch_size, [], None, stacked)
        lane = self.lanes[name]
        if not lane.stacked:
            optimizer = config.build_for(self.compiled)
            slot.trees = params, buffers, optimizer.init(model.trainable(params))
            slot.steps = steps_for(model, optimizer, self.compiled, loss=self.loss)
            with self._own_generator():
                model.seed_like_module(seed)
                slot.rng = self._rng()
            lane.slots.append(slot)
            return
        state = tunable(config).init(model.trainable(params))
        # its own copies: the pool writes its stacks in place, and compiled graphs guard on views' bases
        one = tuple({k: v.clone() for k, v in tree.items()} for tree in (params, buffers, state))
        mine = tuple({k: v.unsqueeze(0) for k, v in tree.items()} for tree in one)
        lane.trees = mine if lane.trees is None else tuple(
            {k: torch.cat([v, t[k]]) for k, v in tree.items()} for tree, t in zip(lane.trees, mine)
        )
        lane.slots.append(slot)

    def remove(self, key: Hashable) -> None:
        """Free the slot of trial `key` (finished, pruned or diverged)."""
        for name, lane in self.lanes.items():
            keep = [i for i, s in enumerate(lane.slots) if s.key != key]
            if len(keep) == len(lane.slots):
                continue
            if not keep:
                del self.lanes[name]
                return
            if lane.trees is not None:
                index = torch.tensor(keep, device=self.y.device)
                lane.trees = tuple(_take(tree, index) for tree in lane.trees)
            lane.slots = [lane.slots[i] for i in keep]
            return
        raise KeyError(key)

    def trees(self, key: Hashable) -> tuple[Params, Buffers, State]:
        """Trial `key`'s params, buffers and optimizer state as they are now (copies of its rows
        where its lane stacks them)."""
        for lane in self.lanes.values():
            for i, slot in enumerate(lane.slots):
                if slot.key != key:
                    continue
                if slot.trees is not None:
                    return slot.trees
                params, buffers, state = ({k: v[i].clone() for k, v in tree.items()} for tree in lane.trees)
                return params, buffers, state
        raise KeyError(key)

    def step(self) -> list[EpochEnd]:
        """Advance every slot by one batch (stacked) or one epoch (not); the epochs that ended, evaluated."""
        ends: list[EpochEnd] = []
        USAGE["steps"] += 1
        USAGE["slot_steps"] += len(self)
        for lane in list(self.lanes.values()):
            ends += self._advance(lane) if lane.stacked else [self._epoch(lane, slot) for slot in lane.slots]
        return ends

    def _own_generator(self):
        """Leave the global generators (the CPU's and the pool's device's) as they were after the block."""
        devices = [self.y.device] if self.y.device.type != "cpu" else []
        return torch.random.fork_rng(devices, device_type=self.y.device.type)

    def _rng(self, state: Tensor | None = None) -> Tensor:
        """The state of the generator random layers draw from on the pool's device (set to `state` first)."""
        device = self.y.device
        if device.type == "cpu":
            if state is not None:
                torch.set_rng_state(state)
            return torch.get_rng_state()
        module = torch.get_device_module(device)
        if state is not None:
            module.set_rng_state(state, device)
        return module.get_rng_state(device)

    def _epoch(self, lane: _Lane, slot: Slot) -> EpochEnd:
        """One epoch of a slot alone, as `fit` runs it, with the slot's own generator."""
        with self._own_generator():
            self._rng(slot.rng)
            try:
                *trees, row = run_epoch(
                    slot.steps,
                    slot.trees,
                    self.x,
                    self.y,
                    (self.eval_x, self.eval_y),
                    epoch=slot.epoch,
                    batch_size=lane.batch_size,
                    eval_batch_size=self.eval_batch_size,
                    lr=slot.lrs[slot.epoch],
                    shuffle=slot.shuffle,
                    seed=slot.seed,
                )
            except NonFiniteLoss as e:
                return EpochEnd(slot.key, None, str(e))
            finally:
                slot.rng, slot.epoch = self._rng(), slot.epoch + 1
        slot.trees = tuple(trees)
        return EpochEnd(slot.key, row)

    def _begin_epoch(self, lane: _Lane, i: int, slot: Slot) -> None:
        slot.order = epoch_order(len(self.y), slot.epoch, slot.seed, self.y.device) if slot.shuffle else None
        slot.losses, slot.began = [], time.perf_counter()
        lane.trees[2]["lr"][i] = slot.lrs[slot.epoch]

    def _rows(self, slot: Slot, rows: int) -> tuple[Tensor, Tensor]:
        span = slice(slot.start, slot.start + rows)
        if slot.order is None:
            return self.x[span], self.y[span]
        index = slot.order[span]
        return self.x[index], self.y[index]

    def _advance(self, lane: _Lane) -> list[EpochEnd]:
        """One batch for every slot of `lane`: one call per batch length (and, eager, per family:
        a compiled graph runs every family's rule, an eager step only the ones it needs)."""
        n = len(self.y)
        groups: dict[tuple[int, str | None], list[int]] = {}
        for i, slot in enumerate(lane.slots):
            if slot.start == 0:
                self._begin_epoch(lane, i, slot)
            group = None if self.compiled else slot.family
            groups.setdefault((min(lane.batch_size, n - slot.start), group), []).append(i)
        for (rows, group), members in groups.items():
            if len(members) == 1 and not self.compiled:
                self._alone(lane, members[0], rows)
                continue
            train, _ = pool_steps(lane.model, self.compiled, self.loss, group)
            whole = len(members) == len(lane.slots)
            index = None if whole else torch.tensor(members, device=self.y.device)
            data = [self._rows(lane.slots[i], rows) for i in members]
            xb, yb = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
            trees = tuple(_take(tree, index) for tree in lane.trees)
            params, buffers, state, losses = _call(train, self.compiled, trees, xb, yb, per_trial=True)
            lane.trees = tuple(_put(t, index, new) for t, new in zip(lane.trees, (params, buffers, state)))
            for j, i in enumerate(members):
                lane.slots[i].losses.append(losses[j])
                lane.slots[i].start += rows
        return self._end_epochs(lane)

    def _alone(self, lane: _Lane, i: int, rows: int) -> None:
        """One batch for slot `i` by a plain eager step (no vmap): the union's on views of its
        lane's stacks, the results written back in place."""
        slot = lane.slots[i]
        trees = tuple({k: v[i] for k, v in tree.items()} for tree in lane.trees)
        *out, loss = _single_step(lane.model, self.loss)(*trees, *self._rows(slot, rows))
        for tree, new in zip(lane.trees, out):
            for k, v in tree.items():
                v[i].copy_(new[k])
        slot.losses.append(loss)
        slot.start += rows

    def _end_epochs(self, lane: _Lane) -> list[EpochEnd]:
        n = len(self.y)
        done = [i for i, s in enumerate(lane.slots) if s.start >= n]
        if not done:
            return []
        ends: list[EpochEnd] = []
        finite: list[tuple[int, float]] = []
        for i in done:
            slot = lane.slots[i]
            train_loss = torch.stack(slot.losses).mean().item()
            if math.isfinite(train_loss):
                finite.append((i, train_loss))
            else:
                ends.append(EpochEnd(slot.key, None, str(NonFiniteLoss(slot.epoch, train_loss))))
        if finite:
            metrics = self._evaluate(lane, [i for i, _ in finite])
            for (i, train_loss), m in zip(finite, metrics):
                slot = lane.slots[i]
                ends.append(
                    EpochEnd(slot.key, _row(slot.epoch, train_loss, m, time.perf_counter() - slot.began))
                )
        for i in done:
            slot = lane.slots[i]
            slot.epoch, slot.start, slot.losses = slot.epoch + 1, 0, []
        return ends

    def _evaluate(self, lane: _Lane, members: list[int]):
        """The eval metrics of `members`, in one batched pass per eval batch."""
        _, batched = pool_steps(lane.model, self.compiled, self.loss)
        whole = len(members) == len(lane.slots)
        index = None if whole else torch.tensor(members, device=self.y.device)
        params, buffers = _take(lane.trees[0], index), _take(lane.trees[1], index)
        means, metric = [], []
        for start in range(0, len(self.eval_y), self.eval_batch_size):
            xb = self.eval_x[start : start + self.eval_batch_size]
            yb = self.eval_y[start : start + self.eval_batch_size]
            loss_sum, metric_sum = _call(batched, self.compiled, (params, buffers), xb, yb, per_trial=False)
            means.append(loss_sum / _counted(yb))
            metric.append(metric_sum)
        columns = torch.stack(means).T.tolist()
        totals = torch.stack(metric).sum(0).tolist()
        return [_metrics(c, t, self.eval_y) for c, t in zip(columns, totals)]
