"""User-facing errors.

Anything a user can cause by bad input (a missing file, an unknown name, a bad
config value) raises :class:`SsalError` with a one-line message that names the
bad file, field or value. The CLI prints that line and exits non-zero, with no
traceback.
"""


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"`` of any exception, for wrapping
    a library's error into a one-line :class:`SsalError`."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class SsalError(Exception):
    """An error caused by user input; ``str(err)`` is the one-line message."""


class TrainingDiverged(SsalError, FloatingPointError):
    """The loss became NaN or infinite: a setting (usually the learning rate)
    is too aggressive. A user error with a one-line message naming the setting;
    also a FloatingPointError for code that catches numeric failures."""


class PoolLabelAccessError(RuntimeError):
    """Raised when code tries to read the label of an image that is still in the
    unlabelled pool. This is a programming error, never a user error."""
