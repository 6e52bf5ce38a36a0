"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback.

A message names a setting through :func:`setting`: a Python caller reads the setting's name
(``model_parallel``), the command line its option (``--model-parallel``, :meth:`CnnbenchError.for_cli`).
"""

from __future__ import annotations

import re

_MARK = "\x1f"
_SETTING = re.compile(f"{_MARK}([A-Za-z0-9_]+){_MARK}")


def setting(name: str) -> str:
    """``name`` (a keyword of the Python API, a setting of an experiment file) inside an error
    message; the command line shows it as its option, ``--name-with-dashes``."""
    return f"{_MARK}{name}{_MARK}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class CnnbenchError(Exception):
    """A failure with a message meant for the user; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __str__(self) -> str:
        return _SETTING.sub(lambda m: m.group(1), super().__str__())

    def for_cli(self) -> str:
        """The message with each setting shown as the command line's option."""
        return _SETTING.sub(lambda m: flag(m.group(1)), super().__str__())


class UsageError(CnnbenchError):
    """Bad usage: an unknown name, an impossible option. Exit code 2, like click's usage errors."""

    exit_code = 2
