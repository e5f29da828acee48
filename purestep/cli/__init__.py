"""The `purestep` command line: thin Typer commands over `purestep.core` and `purestep.search`."""

from purestep.cli import bench, check, report, train, tune  # noqa: F401  (registers the commands)
from purestep.cli._app import app, main

__all__ = ["app", "main"]
