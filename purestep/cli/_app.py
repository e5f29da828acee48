"""The Typer app and its error policy: a one-line message and an exit code, never a traceback.

Exit codes: 0 done, 1 a runtime failure, 2 bad usage, 130 interrupted (Ctrl-C), 143 terminated.
Nothing here imports torch but `import_torch_held`: `purestep --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

DEBUG_ENV = "PURESTEP_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class _Group(TyperGroup):
    """Runs commands with click's non-standalone mode and maps every failure to one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        with _warnings_on_one_line():
            code = self._run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self, args: Sequence[str] | None, prog_name: str | None, complete_var: str | None, **extra: Any
    ) -> int:
        """The command's exit code; every failure printed as one line."""
        from purestep.core.errors import PurestepError, one_line

        code, _ending[0] = 0, False
        try:
            import_torch_held(sys.argv[1:] if args is None else list(args))
            rv = super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) else 0
        except typer.TyperException as e:
            _usage_error(e)
            code = e.exit_code
        except (KeyboardInterrupt, typer.Abort):  # Ctrl-C, raised past typer as Abort by `invoke`
            ending_from_signal()
            typer.echo("Interrupted.", err=True)
            code = 130
        except (PurestepError, ValueError, OSError) as e:
            if _debug():
                traceback.print_exc()
            typer.echo(f"Error: {one_line(e)}", err=True)
            code = 1
        except SystemExit as e:
            if e.code == 143:
                ending_from_signal()
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # a bug: still one line, the traceback behind --debug
            hint = "" if _debug() else " (purestep --debug ... for the traceback)"
            if _debug():
                traceback.print_exc()
            typer.echo(f"Error: {type(e).__name__}: {one_line(str(e))}{hint}", err=True)
            code = 1
        return code

    def invoke(self, ctx: typer.Context) -> Any:
        """The command; a Ctrl-C in it leaves as `typer.Abort`, which typer passes on to `main`
        (a KeyboardInterrupt it would turn into a silent exit 130)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Abort() from None


TRAINING = ("train", "check", "tune")
"""The commands that import torch (`report` and `bench`'s own process do not)."""


def import_torch_held(args: list[str]) -> None:
    """Import torch, for a command that will (`TRAINING`), with SIGINT and SIGTERM held until it is
    in: an exception a signal raised inside its native import was cleared (the run went on, exit 0)
    or ended the process (`std::terminate`, exit 134). Held, the signal is raised as the import
    returns, as any other. Not for `--help`, which stays fast."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in TRAINING or "--help" in args:
        return
    import importlib

    from purestep.core.errors import holding_signals

    holding_signals(importlib.import_module)("torch")


@contextmanager
def _warnings_on_one_line() -> Iterator[None]:
    """A library's warning shown as one line (`Warning: UserWarning: ...`), not Python's two (where
    it was raised, and that line of the library's source), while a command runs."""
    from purestep.core.errors import one_line

    def formatted(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        return f"Warning: {category.__name__}: {one_line(str(message))}\n"

    shown = warnings.formatwarning
    warnings.formatwarning = formatted  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = shown


def _usage_error(e: typer.TyperException) -> None:
    """A usage error as one line; no command at all shows the help (where rich has not already shown
    it) and no empty error line, exit 2 as click has it."""
    from purestep.core.errors import one_line

    if type(e).__name__ == "NoArgsIsHelpError":
        help_text = e.format_message().rstrip()
        if help_text:
            typer.echo(help_text, err=True)
        return
    # typer's choice check words its error as pydantic does ("Value error, 'x' is not one of ...")
    typer.echo(f"Error: {one_line(e.format_message()).replace(': Value error, ', ': ')}", err=True)


app = typer.Typer(
    cls=_Group,
    name="purestep",
    help="The PyTorch tutorial's MLP, trained by pure functions, checked and tuned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of failures."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


_ending = [False]  # the command is ending from a signal: what is left is its cleanup


def ending_from_signal() -> None:
    """Say the command is ending from a signal: one more exits at once (`on_signal`)."""
    _ending[0] = True


def on_signal(signum: int, frame: Any = None) -> None:
    """The CLI's SIGINT and SIGTERM handler: the first ends the command as `raise_for_signal` does;
    one more while it ends (a second Ctrl-C) exits at once, with that signal's code: raised in
    cleanup and exit handlers, it printed their tracebacks. Whatever was written stays consistent
    (the running trial's failure is told first; SQLite's journal covers the rest)."""
    from purestep.core.errors import raise_for_signal

    if _ending[0]:
        os._exit(128 + signum)
    raise_for_signal(signum, frame)


def install_signal_handlers() -> None:
    """`on_signal` for SIGTERM, and for SIGINT unless the process was started ignoring it (`nohup`,
    a background job)."""
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_signal)


def main() -> NoReturn:
    """Run the command line, once `purestep.cli.main` (the console script) has loaded the commands."""
    install_signal_handlers()
    # torch warns on every compile that a CUDA toolkit without a GPU is "no CUDA runtime"
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from purestep.cli._fast_exit import exit_now

    exit_now(app(standalone_mode=False))
