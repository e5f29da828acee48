"""Files written whole or not at all: a temporary name beside the target, then a rename.

A crash at any moment leaves the previous file (or none) under the target's name, never a
half-written one; this is the one place that does it. And where purestep's caches live.
"""

from __future__ import annotations

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


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block ends without
    an error, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], value: Any, indent: int = 2) -> Path:
    """Write `value` as JSON to `path`, whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")
    return Path(path)
