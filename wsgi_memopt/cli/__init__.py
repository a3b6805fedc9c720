"""The ``wsgi-memopt`` command (also ``python -m wsgi_memopt``)::

    wsgi-memopt serve myproject.wsgi:application   # an app through the middleware (development)
    wsgi-memopt serve --demo --set cache_max_mb=5  # the built-in demo app
    wsgi-memopt settings --json                    # every effective setting and its source
    wsgi-memopt status http://127.0.0.1:8000       # a running server's memory status

Each command lives in its own module (:mod:`.serve`, :mod:`.settings`, :mod:`.status`; apps
are loaded by :mod:`.apps`). Settings come from ``--set NAME=VALUE``, then the
``WSGI_MEMOPT_*`` environment variables, then the defaults. An error is one line starting with
``wsgi-memopt: error:``: bad input exits with 2, a server that cannot listen with 1, and
``status`` has its own exit statuses (3 when it cannot read the status).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..settings import SettingsError
from . import serve, settings, status
from .common import PROG, USAGE_ERROR, CommandError, CommandParser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already reported
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    run: Callable[[argparse.Namespace], int] | None = args.run
    if run is None:
        return _fail("choose a command: serve, settings or status (see 'wsgi-memopt --help')")
    try:
        return run(args)
    except CommandError as error:
        return _fail(str(error), error.status)
    except SettingsError as error:
        return _fail(str(error))
    except KeyboardInterrupt:  # Ctrl-C before the server was up
        return 130
    except BrokenPipeError:  # e.g. `wsgi-memopt settings | head -3`
        # Point stdout at devnull so that the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _fail(message: str, status: int = USAGE_ERROR) -> int:
    line = re.sub(r"\s*\n\s*", " ", message.strip())
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The ``wsgi-memopt`` parser; each command's module adds its own sub-parser, whose
    ``run`` default is the function that carries it out."""
    parser = CommandParser(
        prog=PROG,
        description="Serve a WSGI app through MemoryOptimizer, show its effective settings, or\n"
        "check the memory status of a running server.",
        epilog="Run 'wsgi-memopt COMMAND --help' for the options and examples of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(run=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in (serve, settings, status):
        command.add_command(commands)
    return parser
