"""Running trials with ask-and-tell: N finished trials in the study in total, and nothing lost.

Before each trial a worker counts the study's trials that are finished or running; it stops
at `n_trials`. Two workers can still ask at the same moment for the last slot: the one whose
trial number is higher sees that, fails its empty trial (`reason: surplus`) without training,
and stops, so the study ends with exactly N finished trials.

SIGINT and SIGTERM are held back while the storage is written: the running trial is told
FAIL (with the reason) and the exception continues, so no trial is left RUNNING.

On a database storage each running trial is stamped by a heartbeat (heartbeat.py). A trial that
another worker failed as stale (this process was paused or stalled past the grace period) is
noticed at its next report or tell: training stops and its result is dropped, because the
study has queued a retry with the same parameters, seed and batch order, which recomputes it;
the trial stays FAIL and counts nowhere, so nothing is counted twice.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from purestep.core.errors import one_line, raise_for_signal, signal_exception
from purestep.search.heartbeat import (
    Heartbeat,
    fail_stale_trials,
    finished_elsewhere,
    lost_notice,
    start_heartbeat,
)
from purestep.search.objective import (
    EVAL_BATCH_SIZE,
    ConfigError,
    Splits,
    lr_at,
    pruned_reason,
    record_result,
    suggest_config,
)
from purestep.search.space import Space

if TYPE_CHECKING:
    from purestep.core.loop import EpochMetrics
    from purestep.core.pool import Pool
from purestep.search.study import FINISHED, TAKEN, best_of, count


class Shield:
    """Defers SIGINT/SIGTERM inside `hold()`; after the first one is raised, later ones wait.

    Only the main thread can own signal handlers; elsewhere `armed()` changes nothing. A
    signal the process was started ignoring (`nohup`, a background job) stays ignored.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.unwinding = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.depth > 0 or self.unwinding:
            self.pending = self.pending or signum
            return
        self.unwinding = True
        raise_for_signal(signum)  # or, inside a compiled package's call, as it returns

    @contextmanager
    def armed(self) -> Iterator[Shield]:
        """Install the handlers for the duration of a run, then put back the previous ones."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
        previous = {s: signal.signal(s, self._handler) for s in wanted}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Defer signals in the block; raise a deferred one on leaving it."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        self.deliver()

    def deliver(self) -> None:
        """Raise the deferred signal, if any, unless already unwinding from one."""
        if self.pending is not None and self.depth == 0 and not self.unwinding:
            signum, self.pending = self.pending, None
            self.unwinding = True
            raise signal_exception(signum)


@dataclass(frozen=True)
class TrialEnd:
    """What a worker reports after each of its trials."""

    trial: FrozenTrial
    finished: int
    best: FrozenTrial | None


def _interrupt_reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(e, SystemExit):
        return f"terminated (exit {e.code})"
    return one_line(f"{type(e).__name__}: {e}")


def _room(study: optuna.Study, n_trials: int, deadline: float | None) -> tuple[list[FrozenTrial], int]:
    """The study's trials and how many more may start (none once `deadline` has passed)."""
    if deadline is not None and time.time() >= deadline:
        return [], 0
    fail_stale_trials(study)  # a dead worker's trial stops counting as taken; its retry is queued
    trials = study.get_trials(deepcopy=False)
    return trials, n_trials - count(trials, TAKEN)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    deadline: float | None = None,
    shield: Shield | None = None,
    on_trial_start: Callable[[int, int], None] = lambda number, finished: None,
    on_trial_end: Callable[[TrialEnd], None] = lambda end: None,
) -> int:
    """Run trials until the study has `n_trials` finished ones or `deadline` (`time.time()`) passes.

    A trial that raises `optuna.TrialPruned` is pruned with its message as the user attribute
    `reason`; any other exception fails the running trial (with the reason) and propagates.
    Returns how many trials this call finished.
    """
    shield = shield or Shield()
    ran = 0
    while True:
        shield.deliver()
        trials, room = _room(study, n_trials, deadline)
        if room <= 0:
            break
        shield.depth += 1
        trial: optuna.Trial | None = None
        beat: Heartbeat | None = None
        try:
            trial = study.ask()
            shield.depth -= 1
            shield.deliver()
            if _fail_if_surplus(study, trial, shield, n_trials):
                break
            beat = start_heartbeat(trial)
            on_trial_start(trial.number, count(trials, FINISHED))
            # Every tell is inside the outer `try`: an exception that comes before it has held signals
            # back (a signal's handler runs at a call, such as the tell's entry) fails the trial with
            # the reason below instead of leaving it RUNNING; one that comes after it changes
            # nothing, as `_tell` leaves a finished trial as it is (its writes to one are refused).
            try:
                value = objective(trial)
            except optuna.TrialPruned as e:
                told = _tell(study, trial, shield, TrialState.PRUNED, reason=str(e) or "pruned", beat=beat)
            except ConfigError as e:
                raise _rejected(study, trial, shield, e, beat) from None
            else:
                told = _tell(study, trial, shield, TrialState.COMPLETE, value=value, beat=beat)
        except ConfigError:
            raise  # the trial was failed with it (`_rejected`)
        except BaseException as e:
            if trial is None:
                shield.depth -= 1
                raise
            if not finished_elsewhere(trial, e):  # else a report found it failed as stale
                _tell(study, trial, shield, TrialState.FAIL, reason=_interrupt_reason(e), beat=beat)
                raise
            told = False
        finally:
            if beat is not None:
                beat.stop()
        if not told:
            lost_notice(trial.number)
            continue
        ran += 1
        _report_end(study, trial.number, on_trial_end)
    return ran


def _rejected(
    study: optuna.Study, trial: optuna.Trial, shield: Shield, e: ConfigError, beat: Heartbeat | None
) -> ConfigError:
    """Fail `trial`, whose settings the optimizer rejected; the error that stops the study."""
    _tell(study, trial, shield, TrialState.FAIL, reason=str(e), beat=beat)
    return ConfigError(
        f"trial {trial.number} drew settings the optimizer rejects ({e}); narrow the search space"
    )


def _fail_if_surplus(study: optuna.Study, trial: optuna.Trial, shield: Shield, n_trials: int) -> bool:
    """Fail `trial` without training it when the study already had its trials; True if so."""
    if not _surplus(study, trial.number, n_trials):
        return False
    _tell(study, trial, shield, TrialState.FAIL, reason="surplus: the study already had its trials")
    return True


def _report_end(study: optuna.Study, number: int, on_trial_end: Callable[[TrialEnd], None]) -> None:
    """Tell `on_trial_end` how trial `number` ended, with the study's count and best so far."""
    frozen = study.get_trials(deepcopy=False)
    done = next(t for t in frozen if t.number == number)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    on_trial_end(TrialEnd(done, count(frozen, FINISHED), best_of(frozen, minimize)))


def _surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """True when trials numbered below `number` already fill the study."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.number < number and t.state in TAKEN for t in trials) >= n_trials


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    shield: Shield,
    state: TrialState,
    value: float | None = None,
    reason: str | None = None,
    beat: Heartbeat | None = None,
) -> bool:
    """Finish `trial`; False when it was already finished elsewhere (failed as stale by another worker)."""
    shield.depth += 1
    try:
        if beat is not None:
            beat.stop()
            if beat.missed:
                trial.set_user_attr("heartbeats_missed", beat.missed)
        if reason is not None:
            trial.set_user_attr("reason", reason)
        told = study.tell(trial, value, state=state if value is None else None, skip_if_finished=True)
        return told.state == state
    except RuntimeError as e:
        if finished_elsewhere(trial, e):
            return False
        raise
    finally:
        shield.depth -= 1


@dataclass
class _Slot:
    """A trial in the pool: its Optuna handle, heartbeat and history so far."""

    trial: optuna.Trial
    beat: Heartbeat | None
    history: list[EpochMetrics]


def run_trial_batches(
    study: optuna.Study,
    space: Space,
    splits: Splits,
    *,
    batch: int,
    epochs: int,
    seed: int,
    compiled: bool,
    n_trials: int,
    deadline: float | None = None,
    shield: Shield | None = None,
    on_trial_start: Callable[[int, int], None] = lambda number, finished: None,
    on_trial_end: Callable[[TrialEnd], None] = lambda end: None,
) -> int:
    """`run_trials` with `batch` slots: a pool (core/pool.py) trains up to `batch` trials at once,
    and a slot freed by a trial that finished, was pruned or diverged takes a newly asked trial
    at the next step, while the study has room. Each trial reports, is pruned and is told on its own.
    A slot whose trial another worker failed as stale is dropped and takes the next trial too (the
    queued retry first), even after the pool had found the study full: the fail gave it room again.

    Interrupted, every trial in the pool is failed with the reason. Returns how many trials
    this call finished.
    """
    from purestep.core.pool import Pool

    shield = shield or Shield()
    pool = Pool(
        splits.x_fit,
        splits.y_fit,
        (splits.x_val, splits.y_val),
        eval_batch_size=EVAL_BATCH_SIZE,
        compiled=compiled,
        loss=splits.loss,  # type: ignore[arg-type]
    )
    running: dict[int, _Slot] = {}
    ran = 0
    asking = True

    def finish(number: int, state: TrialState | None, value: float | None = None, reason: str | None = None):
        nonlocal ran, asking
        slot = running[number]
        # The slot leaves `running` only once its trial is told: an interrupt before the tell has held
        # signals back then fails it with the others (below), where it was left RUNNING.
        ok = state is not None and _tell(study, slot.trial, shield, state, value, reason, slot.beat)
        del running[number]
        pool.remove(number)
        if slot.beat is not None:
            slot.beat.stop()
        if not ok:
            lost_notice(number)
            # Failed elsewhere, the trial no longer counts as taken: the study has room again (for the
            # retry queued with it), also when this pool had stopped asking because it was full.
            asking = True
            return
        ran += 1
        _report_end(study, number, on_trial_end)

    try:
        while True:
            shield.deliver()
            if asking and len(running) < batch:
                asking = _fill(
                    study,
                    space,
                    splits,
                    pool,
                    running,
                    batch,
                    epochs,
                    seed,
                    n_trials,
                    deadline,
                    shield,
                    on_trial_start,
                )
            if not running:
                break
            for end in pool.step():
                slot = running[end.key]
                if end.row is None:
                    finish(end.key, TrialState.PRUNED, reason=f"diverged: {end.diverged}")
                    continue
                slot.history.append(end.row)
                try:
                    reason = pruned_reason(slot.trial, end.row, epochs, shield.hold)
                    if reason is None and len(slot.history) == epochs:
                        finish(
                            end.key, TrialState.COMPLETE, record_result(slot.trial, slot.history, shield.hold)
                        )
                    elif reason is not None:
                        finish(end.key, TrialState.PRUNED, reason=reason)
                except RuntimeError as e:
                    if not finished_elsewhere(slot.trial, e):
                        raise
                    finish(end.key, None)
    except BaseException as e:
        for slot in running.values():
            _tell(study, slot.trial, shield, TrialState.FAIL, reason=_interrupt_reason(e))
        raise
    finally:
        for slot in running.values():
            if slot.beat is not None:
                slot.beat.stop()
    return ran


def _fill(
    study: optuna.Study,
    space: Space,
    splits: Splits,
    pool: Pool,
    running: dict[int, _Slot],
    batch: int,
    epochs: int,
    seed: int,
    n_trials: int,
    deadline: float | None,
    shield: Shield,
    on_trial_start: Callable[[int, int], None],
) -> bool:
    """Ask trials into the pool's free slots while the study has room; False once it has none."""
    trials, room = _room(study, n_trials, deadline)
    finished = count(trials, FINISHED)
    while len(running) < batch:
        if room <= 0:
            return False
        asked = _ask_into(
            study, space, splits, pool, running, epochs, seed, n_trials, shield, finished, on_trial_start
        )
        if not asked:
            return False
        room -= 1
    return True


def _ask_into(
    study: optuna.Study,
    space: Space,
    splits: Splits,
    pool: Pool,
    running: dict[int, _Slot],
    epochs: int,
    seed: int,
    n_trials: int,
    shield: Shield,
    finished: int,
    on_trial_start: Callable[[int, int], None],
) -> bool:
    """Ask one trial into a free slot; False if it was surplus. From `ask` until the trial is in
    `running`, any exception (an interrupt deferred by the shield included) fails that trial, so
    none is left RUNNING with no slot to fail it."""
    trial: optuna.Trial | None = None
    beat = None
    try:
        try:
            with shield.hold():
                trial = study.ask()
            if _fail_if_surplus(study, trial, shield, n_trials):
                return False
            beat = start_heartbeat(trial)
            with shield.hold():
                _, config = suggest_config(space, trial)
            on_trial_start(trial.number, finished)
            model = splits.model_for(config)
            optimizer = config.optimizer_config()
            params, buffers = model.init(seed, splits.x_fit.device)
            lrs = [lr_at(config, epoch, epochs) for epoch in range(epochs)]
            pool.add(
                trial.number,
                model,
                params,
                buffers,
                optimizer,
                batch_size=config.batch_size,
                lrs=lrs,
                shuffle=config.shuffle,
                seed=seed,
            )
            running[trial.number] = _Slot(trial, beat, [])
            return True
        except ConfigError as e:  # an interrupt before its tell is failed below, as in `run_trials`
            assert trial is not None
            raise _rejected(study, trial, shield, e, beat) from None
    except ConfigError:
        raise  # the trial was failed with it (`_rejected`)
    except BaseException as e:
        if trial is not None and trial.number not in running:
            _tell(study, trial, shield, TrialState.FAIL, reason=_interrupt_reason(e), beat=beat)
        raise
