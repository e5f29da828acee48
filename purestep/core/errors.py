"""The one exception type the CLI turns into a one-line message and exit code 1, and the one way
to make any error's text a single line."""


class PurestepError(RuntimeError):
    """A runtime failure whose message is already fit for a user: one line, with the cause."""


class DataError(PurestepError):
    """A dataset that cannot be found, downloaded or read."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (white space folded), or its type's name if it has none."""
    text = " ".join(str(error).split())
    if text or isinstance(error, str):
        return text
    return type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver's long report stops there), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
