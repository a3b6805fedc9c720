"""What every command shares: the program's name, the errors that end it in one line, and the
parser class of the command and of each sub-command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, NoReturn

PROG = "wsgi-memopt"
USAGE_ERROR = 2  # bad input: the command line, the app to import, a setting
RUNTIME_ERROR = 1  # the server could not start

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction["CommandParser"]


class CommandError(Exception):
    """Ends the command with one ``wsgi-memopt: error:`` line and the exit status ``status``."""

    status = USAGE_ERROR


class UsageError(CommandError):
    """Bad input: the command line, the app to import, a setting (exit status 2)."""


class CommandParser(argparse.ArgumentParser):
    """Reports a usage error as one line, like every other error of the command.

    ``usage_status`` is the exit status of a usage error: 2 unless a command gives its own
    (``status``, whose 2 means "critical").
    """

    def __init__(self, *args: Any, usage_status: int = USAGE_ERROR, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status

    def error(self, message: str) -> NoReturn:
        self.exit(self.usage_status, f"{PROG}: error: {message} (see '{self.prog} --help')\n")
