"""The one error type users see: a clear line saying what went wrong and how to fix it."""


class FirstEpochError(Exception):
    """Bad input or a fault the user can fix. The CLI prints it on one line and exits with 2."""
