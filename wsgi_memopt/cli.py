"""The ``wsgi-memopt`` command: serve an app through the middleware, show the settings.

Usage::

    wsgi-memopt serve myproject.wsgi:application        # wrap an app and serve it (development)
    wsgi-memopt serve 'myapp:create_app()' --port 0     # a factory; port 0 picks a free port
    wsgi-memopt serve --demo --set cache_max_mb=5       # the built-in demo app
    wsgi-memopt settings --set cache_ttl_s=60           # every effective setting and its source
    wsgi-memopt settings --json

``python -m wsgi_memopt`` runs the same command. Settings come from ``--set NAME=VALUE`` first,
then the ``WSGI_MEMOPT_*`` environment variables, then the defaults. Bad input (an app that
cannot be imported, a malformed or unknown setting) prints one line starting with
``wsgi-memopt: error:`` and exits with status 2; a server that cannot listen exits with 1.

``serve`` runs werkzeug's development server: in production, wrap the app in
:class:`~wsgi_memopt.MemoryOptimizer` and run it under gunicorn or uWSGI.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import errno
import importlib
import inspect
import json
import os
import re
import signal
import socket
import sys
import threading
import traceback
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


class UsageError(Exception):
    """Bad input: reported as one ``wsgi-memopt: error:`` line, exit status 2."""


class StartError(Exception):
    """The server could not start: one ``wsgi-memopt: error:`` line, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already reported
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    run: Callable[[argparse.Namespace], int] | None = args.run
    if run is None:
        return _fail("choose a command: serve or settings (see 'wsgi-memopt --help')")
    try:
        return run(args)
    except (UsageError, SettingsError) as error:
        return _fail(str(error))
    except StartError as error:
        return _fail(str(error), RUNTIME_ERROR)
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
    """Reports a usage error as one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


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


def build_parser() -> argparse.ArgumentParser:
    """The ``wsgi-memopt`` argument parser with its ``serve`` and ``settings`` commands."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Serve a WSGI app through MemoryOptimizer, or show its effective settings.",
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
    settings = load_settings(args.assignments)
    if args.demo:
        from .demo import make_demo_app

        app, name = make_demo_app(), "the demo app"
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
        f"{setting}={_shown(setting, text)} ({settings.source_of(setting)})"
        for setting, text in settings.as_text().items()
        if settings.source_of(setting) != "default"
    ]
    lines = [
        f"{PROG}: serving {name} through MemoryOptimizer "
        f"({'threaded' if args.threads else 'one request at a time'})",
        f" * app:        {url}",
        f" * settings:   {', '.join(overridden) or 'defaults'}",
    ]
    if args.host.strip("[]") in ("0.0.0.0", "::", ""):
        lines.append(f" * listening on all addresses ({args.host}), port {server.port}")
    if args.demo:
        lines.append(f" * try: curl -i {url}/slow twice")
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
