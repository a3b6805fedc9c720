"""``wsgi-memopt serve``: an app (or the demo) through MemoryOptimizer on werkzeug's
development server, until Ctrl-C or SIGTERM::

    wsgi-memopt serve myproject.wsgi:application
    wsgi-memopt serve --demo --set cache_max_mb=5

In production, wrap the app in :class:`~wsgi_memopt.MemoryOptimizer` and run it under gunicorn
or uWSGI.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from ..settings import Settings
from .apps import load_app
from .common import PROG, RUNTIME_ERROR, CommandError, UsageError
from .settings import add_set_option, load_settings, shown

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from werkzeug.serving import BaseWSGIServer

    from .common import Commands

_EPILOG = """\
MODULE:APP names a WSGI application: MODULE is imported (the current directory is on the
path) and APP is an attribute of it, a dotted path to one, or a call of a factory with
literal arguments. MODULE alone looks for 'application', then 'app'.

examples:
  wsgi-memopt serve --demo                           then: curl -i http://127.0.0.1:8000/slow
  wsgi-memopt serve myproject.wsgi:application
  wsgi-memopt serve 'myapp:create_app()' --port 0    (port 0 picks a free port)
  wsgi-memopt serve 'myapp:create_app("dev")' --set cache_max_mb=10 --set cache_ttl_s=60
  WSGI_MEMOPT_CACHE_TTL_S=60 wsgi-memopt serve myapp:app --host 0.0.0.0 --no-threads

This is werkzeug's development server. In production, wrap the app in MemoryOptimizer and
run it under gunicorn or uWSGI.
"""


class StartError(CommandError):
    """The server could not start (exit status 1)."""

    status = RUNTIME_ERROR


def add_command(commands: Commands) -> None:
    """Add the ``serve`` command to the ``wsgi-memopt`` parser's ``commands``."""
    parser = commands.add_parser(
        "serve",
        help="serve a WSGI app (or the demo) through MemoryOptimizer, for development",
        description="Import a WSGI app, wrap it in MemoryOptimizer and serve it with\n"
        "werkzeug's development server until Ctrl-C.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="?", metavar="MODULE:APP", help="the app to serve")
    parser.add_argument("--demo", action="store_true", help="serve the built-in demo app instead")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port to listen on, 0 for a free one (default: 8000)",
    )
    parser.add_argument(
        "--threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="handle requests in threads (default: threaded)",
    )
    add_set_option(parser)
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; print where, with what, and then that it stopped."""
    if args.demo == (args.target is not None):
        raise UsageError("serve needs MODULE:APP or --demo (one of them)")
    given = load_settings(args.assignments)
    if args.demo:
        from ..demo import make_demo_app

        app, name = make_demo_app(), "the demo app"
        settings, token = _with_demo_token(given)
    else:
        # Like gunicorn and flask: an app in the current directory is importable, also
        # when the console script (whose sys.path[0] is its own directory) runs.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        app, name = load_app(args.target), args.target
        settings, token = given, None

    from ..middleware import MemoryOptimizer

    server = _listen(args.host, args.port, MemoryOptimizer(app, settings), args.threads)
    with _sigterm_as_interrupt():
        try:
            # Printed once SIGTERM is handled: whoever waits for the URL may stop us at once.
            print(_banner(args, name, server.port, given, settings, token), flush=True)
            server.serve_forever()  # returns on Ctrl-C (werkzeug catches KeyboardInterrupt)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print(f"{PROG}: stopped", flush=True)
    return 0


def _banner(
    args: argparse.Namespace,
    name: str,
    port: int,
    given: Settings,
    settings: Settings,
    token: str | None,
) -> str:
    """What is served where, the settings not left at their default, and for the demo what
    to try (with the token made for this run)."""
    url = _url(args.host, port)
    overridden = [
        f"{setting}={shown(setting, text)} ({given.source_of(setting)})"
        for setting, text in given.as_text().items()
        if given.source_of(setting) != "default"
    ]
    lines = [
        f"{PROG}: serving {name} through MemoryOptimizer "
        f"({'threaded' if args.threads else 'one request at a time'})",
        f" * app:        {url}",
    ]
    api = url + settings.api_prefix
    if args.demo and settings.api_enabled:
        lines.append(f" * memory API: {api}/  (the dashboard; it asks for the token)")
        lines.append(
            f" * API token:  {token}  (made for this run)"
            if token
            else " * API token:  the api_token you set"
        )
    lines.append(f" * settings:   {', '.join(overridden) or 'defaults'}")
    if args.host.strip("[]") in ("0.0.0.0", "::", ""):
        lines.append(f" * listening on all addresses ({args.host}), port {port}")
    if args.demo:
        lines.append(f" * try: curl -i {url}/slow twice")
        if token:
            lines.append(f' * try: curl -H "Authorization: Bearer {token}" {api}/stats')
    lines.append("Development server: do not use it in production. Press Ctrl-C to stop.")
    return "\n".join(lines)


def _with_demo_token(settings: Settings) -> tuple[Settings, str | None]:
    """The demo's settings with a fresh random ``api_token`` (and it), unless one was given:
    the memory API is closed by default, and the demo shows it."""
    if settings.api_token is not None or not settings.api_enabled:
        return settings, None
    # Hex: random bits that copy cleanly and never start with "-" (an option to argparse).
    token = secrets.token_hex(16)
    return settings.replace(api_token=token), token


def _listen(host: str, port: int, app: WSGIApplication, threaded: bool) -> BaseWSGIServer:
    """A werkzeug server already listening on ``host:port``, or a one-line StartError.

    The socket is bound here rather than by werkzeug, which on failure prints two lines and
    calls ``sys.exit(1)`` itself, and lets an unknown host escape as a traceback.
    """
    from werkzeug.serving import LISTEN_QUEUE, get_sockaddr, make_server, select_address_family

    host = host.strip("[]")  # [::1] is how a URL writes an IPv6 address
    if host.startswith("unix://"):
        raise UsageError("unix sockets are not supported here; use --host and --port")
    family = select_address_family(host, port)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise StartError(f"cannot open a socket for {host}: {error}") from None
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(LISTEN_QUEUE)
        return make_server(host, port, app, threaded=threaded, fd=sock.fileno())
    except OSError as error:
        hint = ""
        if error.errno == errno.EADDRINUSE:
            hint = " (choose another --port, or --port 0 for a free one)"
        elif error.errno == errno.EACCES and 0 < port < 1024:
            hint = " (ports below 1024 need privileges; try --port 8000)"
        raise StartError(
            f"cannot listen on {_url(host, port)}: {error.strerror or error}{hint}"
        ) from None
    finally:
        sock.close()  # the server holds its own duplicate of the socket


def _url(host: str, port: int) -> str:
    host = host.strip("[]")
    shown_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    return f"http://{shown_host}:{port}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM (``kill``, a supervisor, ``docker stop``) stop the server as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
