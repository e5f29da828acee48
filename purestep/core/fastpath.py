"""One switch for every fast path that leans on a private torch or Optuna name, or tunes the
process beyond what torch sets (glibc's malloc thresholds, `allocator.py`).

`PURESTEP_FAST_PATHS=0` turns them all off, so the public path alone can be tested.
"""

from __future__ import annotations

import os


def enabled() -> bool:
    """Whether fast paths built on private internals may be used (default yes)."""
    return os.environ.get("PURESTEP_FAST_PATHS", "1") != "0"
