"""Private torch and Optuna names: only behind the one switch, and off when it says so.

`PURESTEP_FAST_PATHS=0` (`purestep.core.fastpath`) must turn every fast path built on a private
name off, so that CI's run with it off tests the public paths alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from purestep.core import _direct, _onednn, fastpath

PACKAGE = Path(__file__).resolve().parent.parent / "purestep"
# A dotted name through a private attribute of torch, Optuna, nn or atexit, or one read by getattr.
PRIVATE = re.compile(
    # torch._inductor, nn.modules.dropout._DropoutNd; not a module's name in quotes (sys.modules)
    r"(?<![\"'])\b(?:torch|optuna|nn|atexit)(?:\.\w+)*\._\w+"
    r"|\._threads\b"  # AsyncCompile.pool()._threads
    r"|getattr\([^,()]+,\s*\"_[a-z]\w*\""  # getattr(atexit, "_run_exitfuncs")
)
SWITCH = "from purestep.core import fastpath"
# Private names not yet behind the switch, each with its public replacement.
NOT_YET: dict[str, str] = {}


def private_names() -> dict[str, list[str]]:
    """Each module of the package that names a private torch/Optuna attribute, with the names."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names = PRIVATE.findall(path.read_text())
        if names:
            found[path.relative_to(PACKAGE).as_posix()] = names
    return found


def test_switch_reads_the_environment(monkeypatch):
    monkeypatch.delenv("PURESTEP_FAST_PATHS", raising=False)
    assert fastpath.enabled()
    monkeypatch.setenv("PURESTEP_FAST_PATHS", "1")
    assert fastpath.enabled()
    monkeypatch.setenv("PURESTEP_FAST_PATHS", "0")
    assert not fastpath.enabled()


def test_every_module_naming_a_private_name_consults_the_switch():
    found = private_names()
    assert found, "the pattern finds nothing: it no longer matches how private names are written"
    switched = {m for m in found if SWITCH in (PACKAGE / m).read_text()}
    unswitched = {m: n for m, n in found.items() if m not in switched and m not in NOT_YET}
    assert not unswitched, f"private names outside a module behind PURESTEP_FAST_PATHS: {unswitched}"
    gone = sorted(set(NOT_YET) - set(found))
    assert not gone, f"no private name left in {gone}: take it off NOT_YET"


def test_switch_off_turns_off_the_compile_fast_paths(monkeypatch):
    monkeypatch.setenv("PURESTEP_FAST_PATHS", "0")
    assert _direct.backend({}, lambda ran: None) is None
    assert not _onednn.available()


@pytest.mark.parametrize(("switch", "public"), [("0", True), ("1", False)])
def test_exit_is_sys_exit_with_fast_paths_off(switch, public):
    # The public exit raises SystemExit, which a caller can catch; the fast one ends the process.
    code = (
        "import torch, sys\n"
        "from purestep.cli._fast_exit import exit_now\n"
        "try:\n"
        "    exit_now(3)\n"
        "except SystemExit as e:\n"
        "    print('SystemExit', e.code, flush=True)\n"
        "    sys.exit(4)\n"
    )
    env = {**os.environ, "PURESTEP_FAST_PATHS": switch}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if public:
        assert (done.returncode, done.stdout) == (4, "SystemExit 3\n"), done.stderr
    else:
        assert (done.returncode, done.stdout) == (3, ""), done.stderr


def test_check_knows_every_dropout_layer_torch_has():
    # the saved steps and `check` name torch's dropout layers publicly; this says when torch adds one.
    from torch import nn

    from purestep.core.artifacts import DROPOUTS

    assert set(nn.modules.dropout._DropoutNd.__subclasses__()) <= set(DROPOUTS)


FAULTS = """
import resource, sys, torch
from purestep.core import allocator
if sys.argv[1] == "kept":
    assert allocator.keep_freed_memory()
else:  # glibc's own starting thresholds, set explicitly so that earlier imports do not move them
    import ctypes
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024) and mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)
def step():  # a step's mix of fresh tensors, 1.2 to 4.8 MB, freed before the next
    return [torch.empty(300_000 * k).fill_(1.0) for k in (1, 2, 4, 1, 3)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"), reason="glibc only")
def test_kept_freed_memory_spares_a_step_the_page_faults_of_glibcs_default_thresholds():
    def faults(arm: str) -> int:
        env = {**os.environ, "PURESTEP_FAST_PATHS": "1"}  # the switch itself: the test below
        run = [sys.executable, "-c", FAULTS, arm]
        return int(subprocess.run(run, capture_output=True, text=True, check=True, env=env).stdout)

    pages_per_step = 12 * 300_000 * 4 // 4096
    default, kept = faults("default"), faults("kept")
    assert default > 20 * pages_per_step / 2  # about every step faults its tensors in again
    assert kept < default / 5  # the first steps' memory, reused


def test_allocator_thresholds_stay_with_fast_paths_off(monkeypatch):
    from purestep.core import allocator

    monkeypatch.setenv("PURESTEP_FAST_PATHS", "0")
    allocator.keep_freed_memory.cache_clear()
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()


def test_a_tuning_process_keeps_freed_memory(monkeypatch):
    import torch

    from purestep.core import allocator
    from purestep.search.tune import _torch_set_up

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    threads = torch.get_num_threads()
    with _torch_set_up(threads + 1, compiled=False):
        assert calls == [1] and torch.get_num_threads() == threads + 1
    assert torch.get_num_threads() == threads
