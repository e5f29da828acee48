"""Files written whole or not at all: a temporary name beside the target, then a rename.

A crash at any moment leaves the previous file (or none) under the target's name, never a
half-written one; this is the one place that does it. And where purestep's caches live.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
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


class NotRegularFile(OSError):
    """A path to write whole that names a device, a FIFO, a socket or a folder: renaming a file
    onto it would replace it, not write into it."""


def not_a_file(path: Path) -> bool:
    """Whether `path` (its link followed) exists and is not a regular file: a folder, a device, a FIFO."""
    try:
        return not stat.S_ISREG(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def refuse_special(path: Path) -> None:
    """Raise `NotRegularFile` when `path` (its link followed) exists and is not a regular file."""
    if not_a_file(path):
        raise NotRegularFile(f"{path} exists and is not a regular file; it is not replaced")


@contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write (ending in `suffix`, for writers that read it);
    renamed onto `path` when the block ends without an error, removed when it raises. A `path`
    that exists and is not a regular file (`/dev/null`, a FIFO) is refused (`NotRegularFile`)."""
    path = Path(path)
    refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        refuse_special(path)  # nor one made while the file was written
        # a file written over keeps its mode; a new one gets the umask's, as `open` would give it
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else creation_mode())
        rename_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite(value: Any) -> Any:
    """`value` with every NaN and infinity as None (null): strict JSON has no token for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = None) -> str:
    """`value` as strict JSON (`finite`): what every JSON purestep writes or prints is."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], value: Any, indent: int = 2) -> Path:
    """Write `value` as strict JSON (`strict_json`) to `path`, whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(strict_json(value, indent) + "\n", encoding="utf-8")
    return Path(path)
