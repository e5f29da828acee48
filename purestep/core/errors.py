"""The one exception type the CLI turns into a one-line message and exit code 1."""


class PurestepError(RuntimeError):
    """A runtime failure whose message is already fit for a user: one line, with the cause."""


class DataError(PurestepError):
    """A dataset that cannot be found, downloaded or read."""
