"""The `purestep` command line: thin Typer commands over `purestep.core` and `purestep.search`.

`main` is the console script. It loads the commands (typer, rich, the command modules) only after it
has a SIGINT handler, so a Ctrl-C at start ends the run as one later does, not with a traceback.
"""

from __future__ import annotations

import os
import signal
from typing import Any, NoReturn

__all__ = ["app", "main"]


def _interrupted(signum: int, frame: Any = None) -> None:
    """SIGINT while the commands load: nothing is written yet, so end at once, as `main` would."""
    os.write(2, b"Interrupted.\n")
    os._exit(128 + signum)


def _commands() -> Any:
    """The Typer app with every command registered."""
    from purestep.cli import bench, check, report, train, tune  # noqa: F401  (registers the commands)
    from purestep.cli._app import app

    return app


def main() -> NoReturn:
    """Console-script entry point (`purestep`, `python -m purestep`)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not started ignoring it
        signal.signal(signal.SIGINT, _interrupted)
    _commands()
    from purestep.cli._app import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "app":
        return _commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
