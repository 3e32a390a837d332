"""Errors a user can fix: the CLIs print these as one line, with no traceback."""

from charrnn_jax.input_pipeline import DataError


class UserError(ValueError):
    """Bad config, workdir, checkpoint, prompt or other input."""


class NonFiniteLossError(RuntimeError):
    """Training diverged; raised before the bad state can be saved."""


# What the command-line entry points turn into a one-line message and a non-zero exit.
USER_ERRORS = (UserError, DataError, NonFiniteLossError)
