"""Heartbeats: while a process runs a trial, a thread stamps it in the storage; a trial whose stamp
is older than the grace period counts as dead and is failed by the next worker (see storage.py).

Everything here is Optuna's public API: `record_heartbeat` and `get_heartbeat_interval` of a
storage, and `optuna.storages.fail_stale_trials`. Optuna runs its own heartbeat thread only
inside `Study.optimize`; purestep asks and tells, so it runs the thread itself.

A beat is missed when it raises or lands more than one interval after it was due (the stamp is
then more than two intervals old); each miss is logged at debug level on `purestep.search.heartbeat`
and counted, and a trial that missed any keeps the count as its user attribute `heartbeats_missed`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

import optuna

log = logging.getLogger(__name__)


class Heartbeat:
    """Stamps one running trial every `interval` seconds from a daemon thread until `stop()`.

    Beats follow a fixed schedule: a slow write does not push the next beat back by its own
    duration, and beats that a stall skipped are counted as missed rather than sent in a burst.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, trial_id: int, number: int, interval: float
    ) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.number = number
        self.interval = interval
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{number}", daemon=True)

    def start(self) -> Heartbeat:
        """Stamp the trial now (so it is watched from the start), then keep stamping it."""
        self._record_or_miss(due=time.monotonic())
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop stamping (idempotent); an unfinished write is left to finish on its own."""
        self._stop.set()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._record_or_miss(due)
            due += self.interval
            now = time.monotonic()
            if due < now:  # the write or a stall took more than an interval: skip, do not burst
                skipped = int((now - due) / self.interval) + 1
                due += skipped * self.interval
                self._miss(f"{skipped} beat(s) skipped while the previous one was late")

    def _record_or_miss(self, due: float) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as e:  # a lost connection or a locked database: the next beat tries again
            self._miss(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            return
        late = time.monotonic() - due
        if late > self.interval:
            self._miss(f"stamped {late:.1f} s after it was due")

    def _miss(self, why: str) -> None:
        self.missed += 1
        log.debug("trial %d: heartbeat missed (%s); %d missed so far", self.number, why, self.missed)


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
