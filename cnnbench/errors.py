"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback."""


class CnnbenchError(Exception):
    """A failure with a message meant for the user; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(CnnbenchError):
    """Bad usage: an unknown name, an impossible option. Exit code 2, like click's usage errors."""

    exit_code = 2
