"""Files written whole or not at all: a temporary name beside the target, then a rename.

A crash at any moment leaves the previous file (or none) under the target's name, never a
half-written one; this is the one place that does it. And where purestep's caches live.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_home() -> Path:
    """`$XDG_CACHE_HOME/purestep`, else `~/.cache/purestep`: what purestep keeps and can rebuild."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "purestep"


def rename_into_place(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Rename `tmp` (a file or a folder, already synced) onto `path`, then sync `path`'s folder so
    the rename itself survives a power loss: until the folder's entry is on disk, a crash can
    bring back the old name (or none)."""
    os.replace(tmp, path)
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on this platform (Windows): its renames are its own
        return
    try:
        os.fsync(fd)
    except OSError as e:  # a file system that does not sync folders
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def creation_mode(directory: bool = False) -> int:
    """The mode `open` or `mkdir` would give a new file (0o666) or folder (0o777) under the umask;
    a temporary name is created private (0o600, 0o700), so what is renamed into place takes this."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write (ending in `suffix`, for writers that read it);
    renamed onto `path` when the block ends without an error, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # a file written over keeps its mode; a new one gets the umask's, as `open` would give it
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else creation_mode())
        rename_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], value: Any, indent: int = 2) -> Path:
    """Write `value` as JSON to `path`, whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")
    return Path(path)
