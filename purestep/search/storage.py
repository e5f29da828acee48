"""Where studies live: Optuna storage URLs, opened with one-line errors and passwords hidden.

`sqlite:///FILE`, `postgresql://...` and `mysql://...` (with an optional `+driver`) are
Optuna's RDB storage; `journal:FILE` is its append-only journal file, which several
processes can share without a database server.

Database storages carry a heartbeat: while a trial runs, its process stamps the trial every
`PURESTEP_HEARTBEAT_INTERVAL` seconds (default 5) with the database server's clock. Before a
worker starts a new trial it fails every RUNNING trial of the study whose stamp is older than
`PURESTEP_HEARTBEAT_GRACE` seconds (default 60) and queues one retry of its parameters
(Optuna's `RetryHeartbeatStaleTrialCallback`), which that worker runs next. So a worker killed with
SIGKILL, or a machine that lost power, loses no slot of the study. The journal storage has
no heartbeat in Optuna 5: a trial of a killed worker stays RUNNING there.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from purestep.core.errors import PurestepError

SQLITE_BUSY_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 10
HEARTBEAT_INTERVAL_SECONDS = 5
"""How often a running trial is stamped: one small UPDATE per worker, so cheap."""
HEARTBEAT_GRACE_SECONDS = 60
"""How old a stamp may get before its trial counts as dead: 12 missed beats, so a worker on a busy
machine or behind a slow link is not declared dead, while a killed one's slot comes back in a minute."""
HEARTBEAT_MAX_RETRY = 2
"""Retries of one set of parameters after its workers died; a trial that kills its worker every time
(say, out of memory) stops being retried."""
_RDB = re.compile(r"(sqlite|postgresql|postgres|mysql)(\+[A-Za-z0-9_]+)?://", re.IGNORECASE)
_DRIVERS = {"postgresql": "'psycopg[binary]'", "postgres": "'psycopg[binary]'", "mysql": "pymysql"}


class StorageURLError(PurestepError):
    """A storage URL that is not one purestep can open (a usage error)."""


class StorageError(PurestepError):
    """A storage that cannot be reached or read (a runtime error)."""


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: `kind` is `rdb` or `journal`; `path` is the file, when there is one."""

    url: str
    kind: str
    dialect: str
    path: Path | None

    @property
    def shown(self) -> str:
        """The URL with any password replaced by `***`."""
        return hide_password(self.url)


def parse_storage(url: str) -> StorageURL:
    """Check a storage URL's form (nothing is opened).

    Raises:
        StorageURLError: an unknown scheme, an empty path, or an in-memory SQLite database
            (which no second process and no re-run could resume).
    """
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise StorageURLError("journal storage needs a file: --storage journal:PATH")
        return StorageURL(url, "journal", "journal", Path(path))
    match = _RDB.match(url)
    if not match:
        raise StorageURLError(
            f"unknown storage URL {hide_password(url)!r}; use sqlite:///FILE, postgresql://USER@HOST/DB, "
            "mysql://USER@HOST/DB or journal:FILE"
        )
    dialect = match.group(1).lower()
    if dialect != "sqlite":
        return StorageURL(url, "rdb", dialect, None)
    path = url[match.end() :].removeprefix("/")
    if not path or path.startswith(":memory:") or path.startswith("file::memory:"):
        raise StorageURLError(
            f"{url!r} is not a file; an in-memory database cannot be resumed: use sqlite:///FILE"
        )
    return StorageURL(url, "rdb", "sqlite", Path(path.split("?", 1)[0]))


def hide_password(url: str) -> str:
    """`postgresql://me:secret@host/db` as `postgresql://me:***@host/db`."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def open_storage(url: StorageURL, create: bool) -> BaseStorage:
    """Open a storage; with `create=False` a missing file is an error instead of a new empty storage.

    Raises:
        StorageError: the storage cannot be reached, read or created.
    """
    if url.path is not None:
        if not create and not url.path.is_file():
            raise StorageError(f"no storage at {url.shown}: {url.path} does not exist")
        parent = url.path.parent
        if create and not parent.is_dir():
            raise StorageError(f"cannot create {url.shown}: directory {parent} does not exist")
    with storage_errors(url):
        try:
            if url.kind == "journal":
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend(str(url.path)))
            return _open_rdb(url)
        except (UnicodeDecodeError, ValueError, KeyError, RuntimeError) as e:
            raise StorageError(f"cannot read {url.shown}: {_first_line(e)}") from None
        except OSError as e:
            raise StorageError(f"cannot open {url.shown}: {e.strerror or _first_line(e)}") from None


def _open_rdb(url: StorageURL, attempts: int = 5) -> HeartbeatRDBStorage:
    """Open a database storage, creating Optuna's tables in a new database.

    Workers started at once on a new database all create the tables; on PostgreSQL all but one
    fail ("relation ... already exists", or a duplicate key in the catalog) and the schema is
    then there, so opening again succeeds. Only such errors are retried, not a refused
    connection or password (`OperationalError`).
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    interval, grace = heartbeat_settings()
    for attempt in range(attempts):
        try:
            return HeartbeatRDBStorage(
                url.url, engine_kwargs=_engine_kwargs(url.dialect), interval=interval, grace=grace
            )
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def heartbeat_settings() -> tuple[int, int]:
    """The heartbeat interval and grace period in seconds, from the environment or the defaults.

    Raises:
        StorageError: a value that is not a whole number of seconds > 0, or a grace period not
            longer than the interval (every live trial would look dead).
    """
    values = []
    for name, default in (
        ("PURESTEP_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL_SECONDS),
        ("PURESTEP_HEARTBEAT_GRACE", HEARTBEAT_GRACE_SECONDS),
    ):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = 0
        if value <= 0:
            raise StorageError(f"{name} must be a whole number of seconds > 0, got {text!r}")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(
            f"PURESTEP_HEARTBEAT_GRACE ({grace}) must be longer than PURESTEP_HEARTBEAT_INTERVAL ({interval})"
        )
    return interval, grace


class HeartbeatRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with a heartbeat that also works with ask-and-tell.

    Optuna starts heartbeats and fails stale trials only inside `Study.optimize`. Here the
    storage does both itself: `create_new_trial` first fails the study's stale trials (queueing
    a retry of each, which it hands out at once) and a trial that becomes RUNNING is stamped
    from a daemon thread until a finished state is written for it. `get_heartbeat_interval`
    reports None so that `Study.optimize` and `Study.ask` neither start a second heartbeat nor
    warn that ask-and-tell is outside `optimize`.
    """

    def __init__(
        self,
        url: str,
        engine_kwargs: dict[str, object],
        interval: int,
        grace: int,
        max_retry: int = HEARTBEAT_MAX_RETRY,
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
        self._beats: dict[int, threading.Event] = {}
        self._beats_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        """Pickled without this process's heartbeats (their threads stay here)."""
        state = super().__getstate__()
        del state["_beats"], state["_beats_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._beats = {}
        self._beats_lock = threading.Lock()

    def get_heartbeat_interval(self) -> int | None:
        """None: the heartbeat is this storage's own (see the class docstring)."""
        return None

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """IDs of the study's RUNNING trials whose last stamp is older than the grace period."""
        return self._get_stale_trial_ids(study_id)

    def fail_stale_trials(self, study_id: int) -> list[FrozenTrial]:
        """Fail the study's stale trials and queue a retry of each; returns the trials failed here."""
        failed = []
        for trial_id in self.stale_trial_ids(study_id):
            try:
                if self.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    failed.append(self.get_trial(trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first
        if failed:
            study = optuna.load_study(study_name=self.get_study_name_from_id(study_id), storage=self)
            for trial in failed:
                self.heartbeat_stale_trial_callback(study, trial)
        return failed

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """A new RUNNING trial (stamped from now on), or a retry of a dead worker's trial.

        This is the method both `create_new_trial` and Optuna's cached storage (which every
        `Study` wraps around its storage) call.
        """
        if template_trial is not None:
            return super()._create_new_trial(study_id, template_trial)
        if self.fail_stale_trials(study_id):
            for waiting in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
                try:
                    if self.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                        return self.get_trial(waiting._trial_id)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
        trial = super()._create_new_trial(study_id)
        self._start_beat(trial._trial_id)
        return trial

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: list[float] | None = None
    ) -> bool:
        """Write the state; start stamping a trial that becomes RUNNING, stop when it finishes."""
        try:
            if state == TrialState.RUNNING and values is None:
                changed = self._claim(trial_id)
            else:
                changed = super().set_trial_state_values(trial_id, state, values)
        finally:
            if state.is_finished():
                self._stop_beat(trial_id)
        if changed and state == TrialState.RUNNING:
            self._start_beat(trial_id)
        return changed

    def _claim(self, trial_id: int) -> bool:
        """WAITING -> RUNNING in one conditional UPDATE, so of the workers that race for a queued
        trial exactly one gets it.

        Optuna reads the state, then writes it; SQLite has no row locks (`FOR UPDATE` does
        nothing there), so two workers could both read WAITING and both run the trial. As in
        Optuna, a finished trial raises `UpdateFinishedTrialError` and a running one gives False.
        """
        import sqlalchemy
        from optuna.storages._rdb.models import TrialModel
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            claimed = session.execute(
                sqlalchemy.update(TrialModel)
                .where(TrialModel.trial_id == trial_id, TrialModel.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING)
            )
            trial = TrialModel.find_or_raise_by_id(trial_id, session)
            if claimed.rowcount == 1:
                trial.datetime_start = datetime.now()
                return True
            self.check_trial_is_updatable(trial_id, trial.state)
            return False

    def _start_beat(self, trial_id: int) -> None:
        stop = threading.Event()
        with self._beats_lock:
            if trial_id in self._beats:
                return
            self._beats[trial_id] = stop
        self.record_heartbeat(trial_id)
        threading.Thread(
            target=self._beat, args=(trial_id, stop), name=f"heartbeat-{trial_id}", daemon=True
        ).start()

    def _beat(self, trial_id: int, stop: threading.Event) -> None:
        assert self.heartbeat_interval is not None
        while not stop.wait(self.heartbeat_interval):
            try:
                self.record_heartbeat(trial_id)
            except Exception:  # a lost connection: the next beat tries again; the grace covers a few
                continue

    def _stop_beat(self, trial_id: int) -> None:
        with self._beats_lock:
            stop = self._beats.pop(trial_id, None)
        if stop is not None:
            stop.set()


def _engine_kwargs(dialect: str) -> dict[str, object]:
    if dialect == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS}, "pool_pre_ping": True}


@contextmanager
def storage_errors(url: StorageURL) -> Iterator[None]:
    """Turn a database or journal failure into a `StorageError` with one line of cause."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ImportError:
        driver = _DRIVERS.get(url.dialect, "the database driver that the URL names")
        raise StorageError(
            f"cannot open {url.shown}: its {url.dialect} driver is not installed (pip install {driver})"
        ) from None
    except SQLAlchemyError as e:
        cause = getattr(e, "orig", None) or e
        raise StorageError(f"storage {url.shown}: {_first_line(cause)}") from None
    except optuna.exceptions.StorageInternalError as e:
        raise StorageError(f"storage {url.shown}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return hide_password(text.splitlines()[0]) if text else type(e).__name__
