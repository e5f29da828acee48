"""Heartbeats: while a process runs trials, one thread stamps each of them in the storage once an
interval; a trial whose stamp is older than the grace period counts as dead and is failed by the
next worker (see storage.py).

Everything here is Optuna's public API: `record_heartbeat` and `get_heartbeat_interval` of a
storage, and `optuna.storages.fail_stale_trials`. Optuna runs its own heartbeat thread only
inside `Study.optimize`, one per trial; purestep asks and tells, so it runs the thread itself, one
per process and storage however many trials a pool runs at once.

A beat is missed when it raises or lands more than one interval after it was due (the stamp is
then more than two intervals old); each miss is logged at debug level on `purestep.search.heartbeat`
and counted, and a trial that missed any keeps the count as its user attribute `heartbeats_missed`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings

import optuna

log = logging.getLogger(__name__)


class Heartbeat:
    """Keeps one running trial stamped every `interval` seconds until `stop()`.

    Every trial a process runs on one storage is stamped by that process's one heartbeat thread
    (`_Beater`): a pool of K trials costs one thread, not K. Beats follow a fixed schedule: a slow
    write does not push the next beat back by its own duration, and beats that a stall skipped
    are counted as missed rather than sent in a burst.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, trial_id: int, number: int, interval: float
    ) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.number = number
        self.interval = interval
        self.missed = 0
        self._beater: _Beater | None = None

    def start(self) -> Heartbeat:
        """Stamp the trial now (so it is watched from the start), then keep stamping it."""
        self.record(due=time.monotonic())
        self._beater = _Beater.watch(self)
        return self

    def stop(self) -> None:
        """Stop stamping (idempotent); an unfinished write is left to finish on its own."""
        if self._beater is not None:
            self._beater.unwatch(self)

    def record(self, due: float) -> None:
        """Stamp the trial once; a write that raises or lands more than an interval after `due` is missed."""
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as e:  # a lost connection or a locked database: the next beat tries again
            self.miss(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            return
        late = time.monotonic() - due
        if late > self.interval:
            self.miss(f"stamped {late:.1f} s after it was due")

    def miss(self, why: str) -> None:
        """Count and log one missed beat."""
        self.missed += 1
        log.debug("trial %d: heartbeat missed (%s); %d missed so far", self.number, why, self.missed)


class _Beater:
    """The one thread that stamps every watched trial of one storage, once an interval; it ends
    when the last trial is unwatched, and the next `watch` starts a new one. A forked child has
    none of its parent's threads: it forgets the parent's beaters (`_forget_after_fork`)."""

    _lock = threading.Lock()
    _running: dict[tuple[int, float], _Beater] = {}  # (id(storage), interval): held while it runs

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float) -> None:
        self.storage = storage
        self.interval = interval
        self.pid = os.getpid()
        self.watched: dict[int, Heartbeat] = {}
        self._changed = threading.Condition(_Beater._lock)
        self._thread = threading.Thread(target=self._run, name="purestep-heartbeat", daemon=True)

    @classmethod
    def watch(cls, beat: Heartbeat) -> _Beater:
        """Add `beat` to its storage's beater, starting one if none runs."""
        with cls._lock:
            key = (id(beat.storage), beat.interval)
            beater = cls._running.get(key)
            if beater is None:
                beater = cls._running[key] = _Beater(beat.storage, beat.interval)
                beater._thread.start()
            beater.watched[id(beat)] = beat
            return beater

    def unwatch(self, beat: Heartbeat) -> None:
        """Stop stamping `beat`'s trial; the thread ends once nothing is watched."""
        if self.pid != os.getpid():  # a parent's beater copied by a fork: no thread, no lock to take
            self.watched.pop(id(beat), None)
            return
        with self._changed:
            self.watched.pop(id(beat), None)
            self._changed.notify()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            with self._changed:
                while self.watched and time.monotonic() < due:
                    self._changed.wait(due - time.monotonic())
                if not self.watched:
                    key = (id(self.storage), self.interval)
                    if _Beater._running.get(key) is self:
                        del _Beater._running[key]
                    return
                beats = list(self.watched.values())
            for beat in beats:  # outside the lock: a slow write must not hold up watch/unwatch
                beat.record(due)
            due += self.interval
            now = time.monotonic()
            if due < now:  # the writes or a stall took more than an interval: skip, do not burst
                skipped = int((now - due) / self.interval) + 1
                due += skipped * self.interval
                for beat in beats:
                    beat.miss(f"{skipped} beat(s) skipped while the previous one was late")


def _forget_after_fork() -> None:
    """In a forked child: no parent's beater runs here, and another thread may have held the lock
    at the fork, so start with a new lock and no beaters (as `logging` does for its locks)."""
    _Beater._lock = threading.Lock()
    _Beater._running = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def trial_id(trial: optuna.Trial) -> int:
    """The storage's ID of `trial`, through public storage methods."""
    study_id = trial.storage.get_study_id_from_name(trial.study.study_name)
    return trial.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def start_heartbeat(trial: optuna.Trial) -> Heartbeat | None:
    """Start stamping `trial` if its storage has a heartbeat interval (database storages), else None."""
    interval = getattr(trial.storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        return None
    return Heartbeat(trial.storage, trial_id(trial), trial.number, interval).start()


def finished_elsewhere(trial: optuna.Trial, error: BaseException) -> bool:
    """Whether `error` is a write refused because `trial` is finished: failed as stale by another
    worker. Optuna raises `UpdateFinishedTrialError` there, a RuntimeError (Optuna 4.0 a plain one)."""
    if not isinstance(error, RuntimeError):
        return False
    try:
        return trial.storage.get_trial(trial_id(trial)).state.is_finished()
    except Exception:  # the storage cannot say: the original error stands
        return False


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the study's running trials whose stamp is older than the grace period and queue a retry
    of each (Optuna's, through the storage's callback); nothing on storages without a heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def lost_notice(number: int) -> None:
    """Say, on stderr through logging, that trial `number` was taken over and its result dropped."""
    log.warning(
        "trial %d was failed by another worker while this one ran it (no heartbeat for longer than the "
        "grace period: a paused or stalled process); its result is dropped, a retry of its parameters "
        "recomputes it",
        number,
    )
