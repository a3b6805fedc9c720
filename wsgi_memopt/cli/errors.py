"""What every command shares: the program's name and the errors that end it in one line."""

from __future__ import annotations

PROG = "wsgi-memopt"
USAGE_ERROR = 2  # bad input: the command line, the app to import, a setting
RUNTIME_ERROR = 1  # the server could not start


class CommandError(Exception):
    """Ends the command with one ``wsgi-memopt: error:`` line and the exit status ``status``."""

    status = USAGE_ERROR


class UsageError(CommandError):
    """Bad input: the command line, the app to import, a setting (exit status 2)."""
