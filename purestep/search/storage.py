"""Where studies live: Optuna storage URLs, opened with one-line errors and passwords hidden.

`sqlite:///FILE`, `postgresql://...` and `mysql://...` (with an optional `+driver`) are
Optuna's RDB storage; `journal:FILE` is its append-only journal file, which several
processes can share without a database server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from purestep.core.errors import PurestepError

SQLITE_BUSY_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 10
_RDB = re.compile(r"(sqlite|postgresql|postgres|mysql)(\+[A-Za-z0-9_]+)?://", re.IGNORECASE)
_DRIVERS = {"postgresql": "psycopg2-binary", "postgres": "psycopg2-binary", "mysql": "pymysql"}


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
            return optuna.storages.RDBStorage(url.url, engine_kwargs=_engine_kwargs(url.dialect))
        except (UnicodeDecodeError, ValueError, KeyError, RuntimeError) as e:
            raise StorageError(f"cannot read {url.shown}: {_first_line(e)}") from None
        except OSError as e:
            raise StorageError(f"cannot open {url.shown}: {e.strerror or _first_line(e)}") from None


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
