"""Where studies live: Optuna storage URLs, opened with one-line errors and passwords hidden.

`sqlite:///FILE`, `postgresql://...` and `mysql://...` (with an optional `+driver`) are
Optuna's RDB storage; `journal:FILE` is its append-only journal file, which several
processes can share without a database server; an existing file that does not begin with a
journal record is refused, unchanged, and a last record a crash cut off is cut before the next.

Database storages carry Optuna's heartbeat settings: while a trial runs, its process stamps it
every `PURESTEP_HEARTBEAT_INTERVAL` seconds (default 5) with the database server's clock
(heartbeat.py). Before a worker starts a trial it fails every RUNNING trial of the study whose
stamp is older than `PURESTEP_HEARTBEAT_GRACE` seconds (default 60) and queues one retry of its
parameters (Optuna's retry callback), which the next `ask` hands out. So a worker killed with
SIGKILL, or a machine that lost power, loses no slot of the study. The journal storage has
no heartbeat: a trial of a killed worker stays RUNNING there.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import re
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import TrialState

from purestep.core.errors import PurestepError, first_line

if TYPE_CHECKING:
    import sqlalchemy

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
DRIVER_MODULES = frozenset({"sqlite3", "_sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb"})
"""The modules SQLAlchemy imports for the databases a storage URL names."""
_DRIVERS = {"postgresql": "'psycopg[binary]'", "postgres": "'psycopg[binary]'", "mysql": "pymysql"}
_JOURNAL_RECORD_START = b'{"op_code":'
"""How every record Optuna writes to a journal file begins (a JSON object, `op_code` first)."""
_JOURNAL_HEAD_BYTES = 1 << 16
"""How much of a journal's first line is read to recognise it (its first record is a few hundred bytes)."""


_SQLITE_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


@atexit.register
def _close_sqlite_engines() -> None:
    """Close the process's SQLite connections as it exits (the CLI ends with `os._exit` after the
    atexit handlers): closing the last connection to a WAL database folds the WAL into the file and
    deletes -wal and -shm, so the file alone holds every finished trial (to copy, to send)."""
    for engine in list(_SQLITE_ENGINES):
        engine.dispose()


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
        StorageURLError: an unknown scheme, a database URL SQLAlchemy cannot parse or with a port
            outside 1 to 65535, an empty path, or an in-memory SQLite database (which no second
            process and no re-run could resume).
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
    _check_address(url)
    dialect = match.group(1).lower()
    if dialect != "sqlite":
        return StorageURL(url, "rdb", dialect, None)
    rest = url[match.end() :]
    if rest and not rest.startswith("/"):  # sqlite://x.db: a host, which SQLite has none of
        raise StorageURLError(f"{url!r} names no file: SQLite's URLs have three slashes, sqlite:///FILE")
    path = rest.removeprefix("/")
    if not path or path.startswith(":memory:") or path.startswith("file::memory:"):
        raise StorageURLError(
            f"{url!r} is not a file; an in-memory database cannot be resumed: use sqlite:///FILE"
        )
    return StorageURL(url, "rdb", "sqlite", Path(path.split("?", 1)[0]))


def _check_address(url: str) -> None:
    """Refuse a database URL that SQLAlchemy cannot parse, or whose port is not 1 to 65535: the
    driver would fail on it only once the storage is opened, as if the server were at fault."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        port = make_url(url).port
    except ArgumentError:
        problem = "SQLAlchemy cannot parse it"
    except ValueError:  # the text after the host's colon is not a number
        problem = "its port is not a number from 1 to 65535"
    else:
        if port is None or 0 < port < 65536:
            return
        problem = f"port {port} is not a number from 1 to 65535"
    raise StorageURLError(f"malformed storage URL {hide_password(url)!r}: {problem}")


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
        if not create and url.kind == "rdb" and url.path.stat().st_size == 0:  # opening writes tables
            raise StorageError(f"no storage at {url.shown}: {url.path} is empty")
        parent = url.path.parent
        if create and not parent.is_dir():
            raise StorageError(f"cannot create {url.shown}: directory {parent} does not exist")
    if url.kind == "journal":
        _check_journal(url)
    with storage_errors(url):
        try:
            if url.kind == "journal":
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend(str(url.path), lock_obj=JournalLock(url.path)))
            return _open_rdb(url)
        except (UnicodeDecodeError, ValueError, KeyError, RuntimeError, AssertionError) as e:
            raise StorageError(f"cannot read {url.shown}: {_first_line(e)}") from None
        except OSError as e:
            raise StorageError(f"cannot open {url.shown}: {e.strerror or _first_line(e)}") from None


def _check_journal(url: StorageURL) -> None:
    """Refuse an existing, non-empty file whose first line is not an Optuna journal record.

    Optuna takes an unparsable last line for a record half-written by a crash (which `JournalLock`
    cuts before the next record), so a text file given as a journal would be written to and then
    fail with a puzzling error.
    A first line that is still being written (no newline yet) passes if it begins like a record.

    Raises:
        StorageError: the file is not an Optuna journal; nothing has been written to it.
    """
    assert url.path is not None, "a journal URL names a file"
    try:
        with url.path.open("rb") as f:
            head = f.readline(_JOURNAL_HEAD_BYTES)
    except OSError:
        return  # a missing file is a new journal; Optuna's open reports any other failure
    if not head:
        return
    if head.endswith(b"\n"):
        try:
            record = json.loads(head)
        except ValueError:  # not JSON, or not text
            record = None
        ok = isinstance(record, dict) and "op_code" in record
    else:
        ok = head.startswith(_JOURNAL_RECORD_START) or _JOURNAL_RECORD_START.startswith(head)
    if not ok:
        raise StorageError(f"cannot read {url.shown}: not an Optuna journal")


class JournalLock(JournalFileSymlinkLock):
    """Optuna's default lock of a journal file, which Optuna takes for each record it appends; once
    taken, it cuts a record that a crash left half-written at the end of the file
    (`cut_partial_record`), so the record about to be appended does not land on it."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.journal = path

    def acquire(self) -> bool:
        super().acquire()
        try:
            cut_partial_record(self.journal)
        except BaseException:
            self.release()
            raise
        return True


def cut_partial_record(path: Path) -> None:
    """Cut the bytes after a journal file's last newline: the start of a record whose writer died
    mid-write (SIGKILL, a power loss). Optuna writes each record with its newline last and its
    reader skips a last line without one, so no process has read that record and its writer never
    saw it written: nothing finished is lost. Everything up to the last newline is left as it is.
    Call it holding the journal's lock, as `JournalLock` does."""
    with path.open("r+b") as f:
        end = keep = f.seek(0, os.SEEK_END)
        size = 1  # the last byte first: a newline unless a writer died
        while keep > 0:
            start = max(0, keep - size)
            f.seek(start)
            newline = f.read(keep - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep, size = start, _JOURNAL_HEAD_BYTES
        if keep < end:
            f.truncate(keep)
            os.fsync(f.fileno())


def _open_rdb(url: StorageURL, attempts: int = 5) -> HeartbeatRDBStorage:
    """Open a database storage, creating Optuna's tables in a new database.

    Workers started at once on a new database all create the tables; on PostgreSQL all but one
    fail ("relation ... already exists", or a duplicate key in the catalog) and the schema is
    then there, so opening again succeeds. Only such errors are retried, not a refused
    connection or password (`OperationalError`).
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    interval, grace = heartbeat_settings()
    new = url.path is not None and (not url.path.exists() or url.path.stat().st_size == 0)
    # purestep asks and tells and runs the heartbeat itself (heartbeat.py), which Optuna warns about.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study")
    for attempt in range(attempts):
        try:
            return HeartbeatRDBStorage(
                url.url, engine_kwargs=_engine_kwargs(url.dialect), interval=interval, grace=grace, wal=new
            )
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def heartbeat_settings() -> tuple[int, int]:
    """The heartbeat interval and grace period in seconds, from the environment or the defaults.

    Raises:
        StorageError: a value that is not a whole number of seconds > 0, or a grace period shorter
            than two intervals (one late beat would fail a live trial).
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
    if grace < 2 * interval:
        raise StorageError(
            f"PURESTEP_HEARTBEAT_GRACE ({grace}) must be at least twice "
            f"PURESTEP_HEARTBEAT_INTERVAL ({interval})"
        )
    return interval, grace


class HeartbeatRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with the heartbeat settings, and trial state changes that are atomic on
    SQLite too.

    Optuna changes a trial's state by reading it, then writing it. PostgreSQL and MySQL lock the
    row in between (`SELECT ... FOR UPDATE`); SQLite ignores that, so two workers could both claim
    one queued trial, or a late `tell` could complete a trial that another worker has just failed
    as stale (and queued a retry of: one configuration counted twice). Reports and user attributes
    check that the trial is running, then write, and on SQLite the check ran outside the write's
    transaction: a paused worker's report could land on a trial failed meanwhile. On SQLite each
    state change, report and user attribute here runs in a `BEGIN IMMEDIATE` transaction, which
    takes the database's write lock before the read. With `wal=True` (a database file purestep
    creates) the database is put in WAL mode, which the file keeps, so readers (every worker's
    sampler, the parent's progress poller) never hold up a writer such as a heartbeat. An existing
    file is left in its mode: opening it writes nothing.
    """

    def __init__(
        self,
        url: str,
        engine_kwargs: dict[str, object],
        interval: int,
        grace: int,
        max_retry: int = HEARTBEAT_MAX_RETRY,
        wal: bool = False,
    ) -> None:
        # Optuna's retry callback; RetryFailedTrialCallback is its name before Optuna 4.9.
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        retry = retry or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                **{_CALLBACK_ARGUMENT: retry(max_retry=max_retry)},
            )
        self._sqlite_setup()
        if wal and self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")

    def __getstate__(self) -> dict[str, object]:
        """Pickled without the thread-local flag (the engine and its listener are rebuilt)."""
        state = super().__getstate__()
        state.pop("_immediate", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._sqlite_setup()

    def _sqlite_setup(self) -> None:
        import sqlalchemy

        self._immediate = threading.local()
        if self.engine.dialect.name != "sqlite":
            return
        sqlalchemy.event.listen(self.engine, "begin", self._begin)
        _SQLITE_ENGINES.add(self.engine)

    def _begin(self, connection: sqlalchemy.engine.Connection) -> None:
        if getattr(self._immediate, "on", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Optuna's state change, with the read and the write in one transaction on SQLite too.

        Claiming a queued trial (WAITING -> RUNNING) that another worker has claimed and finished
        meanwhile gives False, as a claim that lost the race; Optuna 4.0's `ask` lets the error escape.
        """
        with self._read_and_write_at_once():
            try:
                return super().set_trial_state_values(trial_id, state, values)
            except RuntimeError:  # UpdateFinishedTrialError, or a plain RuntimeError in Optuna 4.0
                claim = state == TrialState.RUNNING and values is None
                if claim and self.get_trial(trial_id).state.is_finished():
                    return False
                raise

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Optuna's report; refused, with nothing written, once the trial is finished."""
        with self._read_and_write_at_once():
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Optuna's user attribute; refused, with nothing written, once the trial is finished."""
        with self._read_and_write_at_once():
            super().set_trial_user_attr(trial_id, key, value)

    @contextmanager
    def _read_and_write_at_once(self) -> Iterator[None]:
        """On SQLite, this thread's next transaction takes the write lock before its first read."""
        self._immediate.on = True
        try:
            yield
        finally:
            self._immediate.on = False


_CALLBACK_ARGUMENT = (
    "heartbeat_stale_trial_callback"
    if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
    else "failed_trial_callback"  # its name before Optuna 4.9
)


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
    except ImportError as e:
        if e.name and e.name.partition(".")[0] not in DRIVER_MODULES:  # the caller's (no name: Optuna's)
            raise
        driver = _DRIVERS.get(url.dialect, "the database driver that the URL names")
        raise StorageError(
            f"cannot open {url.shown}: its {url.dialect} driver is not installed (pip install {driver})"
        ) from None
    except SQLAlchemyError as e:
        cause = getattr(e, "orig", None) or e
        raise StorageError(f"storage {url.shown}: {_first_line(cause)}") from None
    except optuna.exceptions.StorageInternalError as e:  # Optuna's words over the database's own
        cause = e.__cause__ if e.__cause__ is not None else e
        cause = getattr(cause, "orig", None) or cause
        raise StorageError(f"storage {url.shown}: {_first_line(cause)}") from None
    except (ValueError, AssertionError) as e:
        if url.kind != "journal" or not _from_journal(e):
            raise
        cause = f"{type(e).__name__}: {_first_line(e)}" if isinstance(e, AssertionError) else _first_line(e)
        raise StorageError(f"cannot read {url.shown}: {cause}") from None


def _from_journal(e: BaseException) -> bool:
    """Whether `e` is the journal's own failure: a record of the file that does not parse (raised
    while reading it), or Optuna's assertion that a record it has just written is there. A value
    error from the code that reads or writes the study (say, a changed search space) is not."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    modules = []
    tb = e.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__"))
        tb = tb.tb_next
    if isinstance(e, AssertionError):
        return bool(modules) and modules[-1] == JournalStorage.__module__
    return JournalFileBackend.__module__ in modules


def _first_line(e: BaseException) -> str:
    return hide_password(first_line(e))
