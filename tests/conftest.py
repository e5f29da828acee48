"""Shared test set-up: a hypothesis CI profile and one inductor cache for the whole run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=15,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=10)
# The long runs: the properties that take a CI-sized count by default (test_check's 200-step one)
# run 50 examples each; `--hypothesis-profile long` or HYPOTHESIS_PROFILE=long. A failing example
# is reported as drawn (a smaller seed proves nothing more), so no shrinking.
settings.register_profile(
    "long",
    settings.get_profile("ci"),
    max_examples=50,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would
# every `purestep` it starts: the Ctrl-C tests need Python's own handler, here and in those children.
signal.signal(signal.SIGINT, signal.default_int_handler)

# One compile cache for every test (and every subprocess the tests start): warm after the first.
COMPILE_CACHE = Path(
    os.environ.setdefault(
        "PURESTEP_COMPILE_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "inductor")
    )
)
COMPILE_CACHE.mkdir(parents=True, exist_ok=True)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(COMPILE_CACHE)


@pytest.fixture(autouse=True)
def _compile_cache_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`purestep train` and `tune` run in-process turn saved step packages on for the whole process
    and point inductor at their cache (`set_compile_cache`); each test leaves both as it found them."""
    from purestep.core import step

    monkeypatch.setattr(step, "_ARTIFACTS", step._ARTIFACTS)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ["TORCHINDUCTOR_CACHE_DIR"])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under CI, a failure's whole report as it happens, not only in the summary at the end: a suite
    stopped at CI's time limit (or killed) still shows why each of its failed tests failed."""
    if report.failed and os.environ.get("CI"):
        sys.stdout.write(f"\n\n{report.nodeid} failed in {report.when}:\n{report.longreprtext}\n")
        sys.stdout.flush()
