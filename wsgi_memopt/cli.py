"""The ``wsgi-memopt`` command: serve an app through the middleware, show the settings, check a
running server's memory status.

Usage::

    wsgi-memopt serve myproject.wsgi:application        # wrap an app and serve it (development)
    wsgi-memopt serve 'myapp:create_app()' --port 0     # a factory; port 0 picks a free port
    wsgi-memopt serve --demo --set cache_max_mb=5       # the built-in demo app
    wsgi-memopt settings --set cache_ttl_s=60           # every effective setting and its source
    wsgi-memopt settings --json
    wsgi-memopt status http://127.0.0.1:8000              # health and stats of a running server
    wsgi-memopt status http://10.0.0.5:8000 --token T --json

``python -m wsgi_memopt`` runs the same command. Settings come from ``--set NAME=VALUE`` first,
then the ``WSGI_MEMOPT_*`` environment variables, then the defaults. Bad input (an app that
cannot be imported, a malformed or unknown setting) prints one line starting with
``wsgi-memopt: error:`` and exits with status 2; a server that cannot listen exits with 1.

``status`` exits with 0 (excellent/good), 1 (warning), 2 (critical, or a restart needed) or 3
(the status could not be read: a usage error, no connection, an HTTP error), as monitoring
plugins do, so that scripts and cron can act on it.

``serve`` runs werkzeug's development server: in production, wrap the app in
:class:`~wsgi_memopt.MemoryOptimizer` and run it under gunicorn or uWSGI.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import errno
import http.client
import importlib
import inspect
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from werkzeug.serving import BaseWSGIServer

__all__ = ["load_app", "load_settings", "main"]

PROG = "wsgi-memopt"
USAGE_ERROR = 2  # bad input: the command line, the app to import, a setting
RUNTIME_ERROR = 1  # the server could not start
_SECRET_SETTINGS = frozenset({"api_token"})  # never printed
_DEFAULT_APP_NAMES = ("application", "app")  # what MODULE alone looks for, like gunicorn
_EMPTY = '""'  # how an empty list setting is shown

# ``status`` exit codes, as monitoring plugins (Nagios, Icinga) use them.
STATUS_OK = 0  # excellent or good
STATUS_WARNING = 1  # warning
STATUS_CRITICAL = 2  # critical, or the worker needs a restart (health answered 503)
STATUS_UNKNOWN = 3  # the status could not be read: usage, connection, HTTP or response errors
_STATUS_EXIT = {
    "excellent": STATUS_OK,
    "good": STATUS_OK,
    "warning": STATUS_WARNING,
    "critical": STATUS_CRITICAL,
    "restart-needed": STATUS_CRITICAL,
}
DEFAULT_API_PREFIX = "/api/v1/memory"
TOKEN_ENV = "WSGI_MEMOPT_API_TOKEN"
_MAX_BODY_BYTES = 16 << 20  # an answer larger than this is not the memory API's


class UsageError(Exception):
    """Bad input: reported as one ``wsgi-memopt: error:`` line, exit status 2."""


class StartError(Exception):
    """The server could not start: one ``wsgi-memopt: error:`` line, exit status 1."""


class StatusUnknown(Exception):
    """``status`` could not read the server's status: one ``wsgi-memopt: error:`` line, exit 3."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already reported
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    run: Callable[[argparse.Namespace], int] | None = args.run
    if run is None:
        return _fail("choose a command: serve, settings or status (see 'wsgi-memopt --help')")
    try:
        return run(args)
    except (UsageError, SettingsError) as error:
        return _fail(str(error))
    except StartError as error:
        return _fail(str(error), RUNTIME_ERROR)
    except StatusUnknown as error:
        return _fail(str(error), STATUS_UNKNOWN)
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


# -- the command line


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line, like every other error of the command.

    ``usage_status`` is the exit status of a usage error: 2, except for ``status``, whose 2
    means "critical".
    """

    def __init__(self, *args: Any, usage_status: int = USAGE_ERROR, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status

    def error(self, message: str) -> NoReturn:
        self.exit(self.usage_status, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


_SERVE_EPILOG = """\
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

_SETTINGS_EPILOG = """\
Each line reads 'name = value  (source)', the source being 'default', 'env' (a
WSGI_MEMOPT_<NAME> variable) or 'explicit' (--set). Secrets such as api_token are hidden.

examples:
  wsgi-memopt settings
  WSGI_MEMOPT_CACHE_TTL_S=60 wsgi-memopt settings --set cache_max_mb=10
  wsgi-memopt settings --json
"""

_STATUS_EPILOG = f"""\
URL is the server's address (http://127.0.0.1:8000, or the path the app is mounted at), or
the memory API's own URL (ending with the prefix, {DEFAULT_API_PREFIX} unless --prefix says
otherwise). The command GETs <api>/health and <api>/stats and prints a summary: the status
band and memory percent, RSS, cache, GC, the governor's last actions, the restart reason
and the recommendations. The token is --token, else ${TOKEN_ENV}; without
one, the server must allow this address (api_allow_networks).

exit status:
  0  excellent or good
  1  warning
  2  critical, or the worker needs a restart (health answered 503)
  3  the status could not be read: bad usage, no connection, a timeout, an HTTP error
     (401/403: token missing or refused), an answer that is not the memory API's

examples:
  wsgi-memopt status http://127.0.0.1:8000
  wsgi-memopt status http://127.0.0.1:8000/api/v1/memory --json
  {TOKEN_ENV}=s3cret wsgi-memopt status http://10.0.0.5:8000 --timeout 5
  wsgi-memopt status http://127.0.0.1:8000 --prefix /_mem --token s3cret
  */5 * * * *  wsgi-memopt status http://127.0.0.1:8000 >/dev/null || alert-oncall
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``wsgi-memopt`` argument parser with its ``serve``, ``settings`` and ``status``
    commands."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Serve a WSGI app through MemoryOptimizer, show its effective settings, or\n"
        "check the memory status of a running server.",
        epilog="Run 'wsgi-memopt COMMAND --help' for the options and examples of a command.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(run=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a WSGI app (or the demo) through MemoryOptimizer, for development",
        description="Import a WSGI app, wrap it in MemoryOptimizer and serve it with\n"
        "werkzeug's development server until Ctrl-C.",
        epilog=_SERVE_EPILOG,
        formatter_class=formatter,
    )
    serve.add_argument("target", nargs="?", metavar="MODULE:APP", help="the app to serve")
    serve.add_argument("--demo", action="store_true", help="serve the built-in demo app instead")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port to listen on, 0 for a free one (default: 8000)",
    )
    serve.add_argument(
        "--threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="handle requests in threads (default: threaded)",
    )
    _add_set_option(serve)
    serve.set_defaults(run=_serve)

    settings = commands.add_parser(
        "settings",
        help="print every effective setting and where its value came from",
        description="Print every setting of MemoryOptimizer as it would be used: the defaults,\n"
        "overridden by WSGI_MEMOPT_* variables, overridden by --set.",
        epilog=_SETTINGS_EPILOG,
        formatter_class=formatter,
    )
    _add_set_option(settings)
    settings.add_argument(
        "--json", action="store_true", help='print {"name": {"value": ..., "source": ...}}'
    )
    settings.set_defaults(run=_show_settings)

    status = commands.add_parser(
        "status",
        help="print a running server's memory status; the exit status says its band",
        description="Read the memory API of a running server (health and stats) and print a\n"
        "summary; exit with 0, 1 or 2 by its status band, 3 when it cannot be read.",
        epilog=_STATUS_EPILOG,
        formatter_class=formatter,
        usage_status=STATUS_UNKNOWN,
    )
    status.add_argument("url", metavar="URL", help="the server's base URL or its API's URL")
    status.add_argument(
        "--token",
        metavar="T",
        help=f"the api_token, sent as 'Authorization: Bearer T' (default: ${TOKEN_ENV})",
    )
    status.add_argument(
        "--prefix",
        type=_api_prefix,
        default=DEFAULT_API_PREFIX,
        metavar="PATH",
        help="the server's api_prefix (default: %(default)s)",
    )
    status.add_argument(
        "--json", action="store_true", help='print {"health": ..., "stats": ...} as received'
    )
    status.add_argument(
        "--timeout",
        type=_timeout,
        default=10.0,
        metavar="S",
        help="seconds to wait for each answer (default: %(default)g)",
    )
    status.set_defaults(run=_status)
    return parser


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting, as in the env or an ini file (repeatable; wins over WSGI_MEMOPT_*)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def _api_prefix(text: str) -> str:
    prefix = "/" + text.strip().strip("/")
    if prefix == "/" or any(c in prefix for c in "?#") or any(c.isspace() for c in prefix):
        raise argparse.ArgumentTypeError(f"expected a path such as /api/v1/memory, got {text!r}")
    return prefix


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds above 0 (at most 3600), got {text!r}")
    return seconds


# -- settings


def load_settings(assignments: Sequence[str]) -> Settings:
    """The settings from ``NAME=VALUE`` strings over ``WSGI_MEMOPT_*`` over the defaults.

    :raises UsageError: for a malformed assignment or an unknown name.
    :raises SettingsError: for a value a setting does not allow (here or in the env).
    """
    explicit: dict[str, Any] = {}
    for assignment in assignments:
        raw_name, equals, value = assignment.partition("=")
        name = raw_name.strip().lower().replace("-", "_")
        if not equals or not name:
            raise UsageError(f"--set expects NAME=VALUE, got {assignment!r}")
        if name not in Settings.NAMES:
            # Checked here, not left to Settings: a name such as 'prefix' would otherwise
            # reach from_env's own parameters.
            close = difflib.get_close_matches(name, Settings.NAMES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "'wsgi-memopt settings' lists them"
            raise UsageError(f"--set {assignment}: there is no setting {name!r}; {hint}")
        explicit[name] = value
    # Settings parses string values as it parses env and ini text.
    return Settings.from_env(**explicit)


def _show_settings(args: argparse.Namespace) -> int:
    settings = load_settings(args.assignments)
    if args.json:
        values = {
            name: {
                "value": _shown(name, getattr(settings, name)),
                "source": settings.source_of(name),
            }
            for name in Settings.NAMES
        }
        output = json.dumps(values, indent=2) + "\n"
    else:
        texts = settings.as_text()
        width = max(map(len, texts))
        output = "".join(
            f"{name:<{width}} = {_shown(name, text) or _EMPTY}  ({settings.source_of(name)})\n"
            for name, text in texts.items()
        )
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0


def _shown(name: str, value: Any) -> Any:
    if name in _SECRET_SETTINGS and value not in (None, "none"):
        return "<hidden>"
    return value


# -- loading the app


def load_app(target: str) -> WSGIApplication:
    """Import ``MODULE:APP`` and return the WSGI application it names.

    ``APP`` is an attribute, a dotted path (``holder.app``) or a factory call with literal
    arguments (``create_app("dev", debug=True)``); without it, ``application`` then ``app``.

    :raises UsageError: when the module, the attribute or a callable app is not found, or
        importing the module or calling the factory raised (the line says where).
    """
    module_name, colon, expression = target.partition(":")
    module_name = module_name.strip()
    expression = expression.strip()
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        name = module_name.removesuffix(".py").replace("/", ".").replace(os.sep, ".")
        raise UsageError(f"{target!r}: give a module name, not a file, e.g. {name.strip('.')!r}")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise UsageError(f"{target!r}: expected MODULE:APP, e.g. 'myproject.wsgi:application'")
    if colon and not expression:
        raise UsageError(f"{target!r}: the APP after ':' is missing, e.g. '{module_name}:app'")
    module = _import(module_name)
    if not expression:
        for default in _DEFAULT_APP_NAMES:
            if hasattr(module, default):
                expression = default
                break
        else:
            names = " or ".join(repr(name) for name in _DEFAULT_APP_NAMES)
            raise UsageError(f"module {module_name!r} has no {names}; name the app: MODULE:APP")
    path, call = _parse_app_expression(target, expression)

    app: Any = module
    for depth, attribute in enumerate(path):
        where = ".".join([module_name, *path[:depth]]) if depth else f"module {module_name!r}"
        try:
            app = getattr(app, attribute)
        except AttributeError:
            raise UsageError(
                f"{where} has no attribute {attribute!r}{_did_you_mean(attribute, app)}"
            ) from None
        except Exception as error:
            raise UsageError(
                f"reading {module_name}:{'.'.join(path)} failed: {_describe(error)}"
            ) from None
    named = f"{module_name}:{'.'.join(path)}"
    if call is not None:
        args, kwargs = call
        if not callable(app):
            raise UsageError(f"{named} is {_a(type(app).__name__)}, not a factory to call")
        try:
            app = app(*args, **kwargs)
        except Exception as error:
            raise UsageError(
                f"calling {module_name}:{expression} failed: {_describe(error)}"
            ) from None
        named = f"{module_name}:{expression}"
    if not callable(app):
        raise UsageError(
            f"{named} is not a WSGI application: it is {_a(type(app).__name__)}, not a callable"
        )
    _check_wsgi_signature(app, named, is_call=call is not None)
    return app  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"no module named {module_name!r} (is it in the current directory or on "
                "PYTHONPATH?)"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_describe(error)}") from None
    except Exception as error:  # SyntaxError and whatever the module raised while importing
        raise UsageError(f"importing {module_name!r} failed: {_describe(error)}") from None


def _parse_app_expression(
    target: str, expression: str
) -> tuple[list[str], tuple[list[Any], dict[str, Any]] | None]:
    """``holder.app`` -> (["holder", "app"], None); ``make(1, x=2)`` -> (["make"], ([1], {...}))."""
    rule = (
        f"{target!r}: APP must be a name, a dotted path or a factory call with literal "
        "arguments, e.g. 'app', 'holder.app' or 'create_app()'"
    )
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise UsageError(rule) from None
    call = None
    if isinstance(node, ast.Call):
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise UsageError(rule) from None
        if any(kw.arg is None for kw in node.keywords):
            raise UsageError(rule)
        call = (args, kwargs)
        node = node.func
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise UsageError(rule)
    path.insert(0, node.id)
    return path, call


def _check_wsgi_signature(app: Any, named: str, *, is_call: bool) -> None:
    """Refuse what cannot be called as ``app(environ, start_response)``, e.g. a bare factory."""
    try:
        inspect.signature(app).bind(None, None)
    except TypeError:
        hint = "" if is_call else f"; if it is an app factory, call it: '{named}()'"
        raise UsageError(
            f"{named} is not a WSGI application: it cannot be called as "
            f"app(environ, start_response){hint}"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _did_you_mean(name: str, owner: object) -> str:
    close = difflib.get_close_matches(name, [n for n in dir(owner) if not n.startswith("__")], 1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(error: BaseException) -> str:
    """``Type: message (file:line)`` for an exception raised by the user's code."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, SyntaxError):
        return text  # its message already says where
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == __file__:
            break  # raised by the call itself (wrong arguments): no user code to point at
        if not frame.filename.startswith("<"):  # skip importlib's frozen frames
            return f"{text} ({_short_path(frame.filename)}:{frame.lineno})"
    return text


def _short_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative


# -- serving


def _serve(args: argparse.Namespace) -> int:
    if args.demo == (args.target is not None):
        raise UsageError("serve needs MODULE:APP or --demo (one of them)")
    settings = given = load_settings(args.assignments)
    token = None
    if args.demo:
        from .demo import make_demo_app

        app, name = make_demo_app(), "the demo app"
        settings, token = _with_demo_token(settings)
    else:
        # Like gunicorn and flask: an app in the current directory is importable, also
        # when the console script (whose sys.path[0] is its own directory) runs.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        app, name = load_app(args.target), args.target

    from .middleware import MemoryOptimizer

    server = _listen(args.host, args.port, MemoryOptimizer(app, settings), args.threads)
    url = _url(args.host, server.port)
    overridden = [
        f"{setting}={_shown(setting, text)} ({given.source_of(setting)})"
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
        lines.append(f" * listening on all addresses ({args.host}), port {server.port}")
    if args.demo:
        lines.append(f" * try: curl -i {url}/slow twice")
        if token:
            lines.append(f' * try: curl -H "Authorization: Bearer {token}" {api}/stats')
    lines.append("Development server: do not use it in production. Press Ctrl-C to stop.")

    with _sigterm_as_interrupt():
        try:
            print("\n".join(lines), flush=True)
            server.serve_forever()  # returns on Ctrl-C (werkzeug catches KeyboardInterrupt)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print(f"{PROG}: stopped", flush=True)
    return 0


def _with_demo_token(settings: Settings) -> tuple[Settings, str | None]:
    """The demo's settings with a fresh random ``api_token`` (and it), unless one was given:
    the memory API is closed by default, and the demo shows it."""
    if settings.api_token is not None or not settings.api_enabled:
        return settings, None
    # Hex: 128 random bits that copy cleanly and never start with "-" (an option to argparse).
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
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


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


# -- status


def api_url(url: str, prefix: str = DEFAULT_API_PREFIX) -> str:
    """The memory API's URL from a server's ``url``: as is when it ends with ``prefix``, else
    with ``prefix`` appended. ``127.0.0.1:8000`` means ``http://127.0.0.1:8000``.

    :raises StatusUnknown: for a URL that is not an http(s) URL with a host.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        raise StatusUnknown(f"{url!r} is not a valid URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise StatusUnknown(
            f"{url!r} is not an http(s) URL of a server, e.g. 'http://127.0.0.1:8000'"
        )
    if "@" in parts.netloc:
        raise StatusUnknown(f"{url!r}: no user or password in the URL; give --token")
    if parts.query or parts.fragment:
        raise StatusUnknown(f"{url!r}: give the server's URL without a query or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith(prefix):
        path += prefix
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: it would carry the bearer token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _status(args: argparse.Namespace) -> int:
    api = api_url(args.url, args.prefix)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    token = token.strip() if token else None
    if args.token is not None and not token:
        raise StatusUnknown("--token is empty")
    opener = urllib.request.build_opener(_NoRedirects)
    health_code, health_body = _get_json(opener, f"{api}/health", token, args.timeout, (200, 503))
    _, stats_body = _get_json(opener, f"{api}/stats", token, args.timeout, (200,))
    band = health_body.get("status")
    exit_status = _STATUS_EXIT.get(band) if isinstance(band, str) else None
    if exit_status is None:
        raise StatusUnknown(f"GET {api}/health: unknown status {band!r} in the answer")
    if health_code == 503:
        exit_status = STATUS_CRITICAL  # the worker needs a restart, whatever the band says
    if args.json:
        output = json.dumps({"health": health_body, "stats": stats_body}, indent=2) + "\n"
    else:
        output = "".join(f"{line}\n" for line in _summary(api, health_body, stats_body))
    sys.stdout.write(output)
    sys.stdout.flush()
    return exit_status


def _get_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    token: str | None,
    timeout: float,
    accepted: tuple[int, ...],
) -> tuple[int, dict[str, Any]]:
    """``(status code, JSON object)`` of ``GET url``; StatusUnknown for anything else."""
    headers = {"Accept": "application/json", "User-Agent": f"{PROG}/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            with opener.open(request, timeout=timeout) as response:
                code: int = response.status
                raw: bytes = response.read(_MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as error:
            with error:
                code, raw = error.code, error.read(_MAX_BODY_BYTES + 1)
            if code not in accepted:
                raise StatusUnknown(_http_error(url, error, raw, token)) from None
    except StatusUnknown:
        raise
    except urllib.error.URLError as error:
        raise StatusUnknown(f"GET {url}: {_network_reason(error.reason, timeout)}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise StatusUnknown(f"GET {url}: {_network_reason(error, timeout)}") from None
    if len(raw) > _MAX_BODY_BYTES:
        raise StatusUnknown(f"GET {url}: the answer is larger than {_MAX_BODY_BYTES >> 20} MB")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StatusUnknown(
            f"GET {url}: HTTP {code}, but the answer is not a JSON object; is this the memory "
            "API of wsgi_memopt (see --prefix)?"
        )
    return code, body


def _http_error(url: str, error: urllib.error.HTTPError, raw: bytes, token: str | None) -> str:
    """One line for an HTTP error: the code, the server's own message, a hint."""
    message = ""
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = str(body["error"].get("message") or "")
    except ValueError:
        pass
    text = f"GET {url}: HTTP {error.code} {error.reason}".rstrip()
    if message:
        text += f": {message}"
    if error.code == 401 and not token:
        text += f" (give --token or set {TOKEN_ENV})"
    elif error.code == 404 and not message:
        text += " (is it a wsgi_memopt server? is its api_prefix different: --prefix?)"
    elif 300 <= error.code < 400:
        location = error.headers.get("Location")
        text += f"; redirected to {location}, give that URL" if location else "; a redirect"
    elif error.code == 429:
        retry = error.headers.get("Retry-After")
        text += f" (retry after {retry} s)" if retry else ""
    return text


def _network_reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s (--timeout)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running, on this host and port?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)


def _summary(api: str, health: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    """The readable summary: one labelled line per part, then the lists."""
    memory = _dict(stats.get("memory"))
    cache = _dict(stats.get("cache"))
    gc_stats = _dict(stats.get("gc"))
    governor = _dict(stats.get("governor"))
    process = _dict(stats.get("process"))

    percent = _number(health.get("memory_percent"), memory.get("percent"))
    source = _text(health.get("source") or memory.get("source"))
    status_line = f"{_text(health.get('status'))}, memory {_fmt(percent, '.1f')}% of {source}"
    if memory.get("limit_mb") is not None:
        status_line += (
            f" (used {_mb(memory.get('used_mb'))} of {_mb(memory.get('limit_mb'))}, "
            f"{_mb(memory.get('available_mb'))} available)"
        )
    rss_line = _mb(memory.get("rss_mb"))
    if process:
        rss_line += f" (pid {_text(process.get('pid'))}, up {_duration(process.get('uptime_s'))})"

    hits, misses = _number(cache.get("hits")), _number(cache.get("misses"))
    hit_rate = _fmt(_number(cache.get("hit_rate")), ".0%")
    cache_line = (
        f"{_fmt(_number(cache.get('items')), 'd')} items, {_mb(cache.get('size_mb'), '.3g')}"
        f" of {_mb(cache.get('max_mb'), 'g')}, hit rate {hit_rate}"
        f" ({_fmt(hits, 'd')} hits, {_fmt(misses, 'd')} misses), "
        f"{_fmt(_number(cache.get('evictions')), 'd')} evictions"
    )

    generations = _list(gc_stats.get("generations"))
    counts = [_fmt(_number(_dict(gen).get("collections")), "d") for gen in generations]
    gc_line = (
        "collections " + ", ".join(f"gen{i} {count}" for i, count in enumerate(counts))
        if counts
        else "collections ?"
    )
    scheduled = _list(gc_stats.get("collections"))
    if gc_stats.get("mode") is not None:
        gc_line += f"; mode {_text(gc_stats.get('mode'))}"
        if scheduled:
            gc_line += f" ({sum(_number(n) or 0 for n in scheduled):g} run by wsgi_memopt)"

    lines = [
        f"memory API:  {api}",
        f"status:      {status_line}",
        f"rss:         {rss_line}",
        f"cache:       {cache_line}",
        f"gc:          {gc_line}",
    ]
    modules = stats.get("modules")
    if isinstance(modules, dict):
        lines.append(
            "modules:     " + ", ".join(f"{_fmt(_number(v), 'd')} {k}" for k, v in modules.items())
        )
    workers = stats.get("workers")
    if isinstance(workers, dict):
        pool = _list(workers.get("workers"))
        lines.append(
            f"workers:     {len(pool)} under {_text(workers.get('server'))} master "
            f"{_text(workers.get('master_pid'))}, {_mb(workers.get('total_rss_mb'))} RSS in all"
        )
    reason = health.get("restart_reason") or governor.get("restart_reason")
    lines.append(f"restart:     {'needed: ' + _text(reason) if reason else 'not needed'}")
    alert = health.get("alert")
    if isinstance(alert, dict):
        lines.append(f"alert:       {_text(alert.get('level'))}: {_text(alert.get('message'))}")

    actions = [_dict(action) for action in _list(governor.get("last_actions"))]
    lines.append(f"last actions: {len(actions) or 'none'}")
    for action in actions:
        improvement = _dict(action.get("improvement"))
        at = _number(action.get("at"))
        when = time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else "?"
        duration = _fmt(_number(action.get("duration_ms")), ".0f")
        lines.append(
            f"  - {when} {_text(action.get('kind'))} ({_text(action.get('reason'))}): "
            f"freed {_mb(improvement.get('mb_freed'))} in {duration} ms"
        )

    advice = [_dict(item) for item in _list(health.get("recommendations"))]
    lines.append(f"recommendations: {len(advice) or 'none'}")
    for item in advice:
        where = item.get("setting") or item.get("endpoint")
        lines.append(
            f"  - {_text(item.get('finding'))}: {_text(item.get('action'))}"
            + (f" [{_text(where)}]" if where else "")
        )
    return lines


# Tolerant readers: the answer comes from a server, maybe of another version; a missing or
# odd figure shows as '?' rather than stopping the summary.


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(*values: object) -> float | None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "?"
    if spec == "d":
        return str(round(value))
    return format(value, spec)


def _mb(value: object, spec: str = ".1f") -> str:
    return f"{_fmt(_number(value), spec)} MB"


def _duration(value: object) -> str:
    seconds = _number(value)
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _text(value: object) -> str:
    """A value from the answer on one line (a message must not break the summary's lines)."""
    if value is None:
        return "?"
    return re.sub(r"\s+", " ", str(value)).strip()
