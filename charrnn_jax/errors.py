"""Errors a user can fix: the CLIs print these as one `error:` line, with no traceback.

Any exception class with a true `user_error` attribute counts, so modules that import
nothing of the package (data.corpora's DataError) can raise them too.
"""


class UserError(ValueError):
    """Bad config, workdir, checkpoint, prompt or other input."""

    user_error = True


class NonFiniteLossError(RuntimeError):
    """Training diverged; raised before the bad state can be saved."""

    user_error = True


def is_user_error(error: BaseException) -> bool:
    """True for errors that end a command with one line instead of a traceback."""
    return bool(getattr(error, "user_error", False))
