"""Loading the WSGI app that ``wsgi-memopt serve MODULE:APP`` names.

``MODULE`` is imported; ``APP`` is an attribute of it, a dotted path to one, or a call of a
factory with literal arguments (gunicorn's syntax, plus dotted paths); without it,
``application`` then ``app``::

    load_app("myproject.wsgi:application")
    load_app("myapp:holder.app")
    load_app('myapp:create_app("dev", debug=True)')

Every failure is one :class:`UsageError` line naming what was not found and, for an error
raised by the user's code, its type, message and ``file:line``.

werkzeug's ``import_string`` is not used: it reads no dotted path or call after the colon,
its error is a multi-line report, and building that report imports a failed module again.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import traceback
from typing import TYPE_CHECKING, Any

from ..settings import did_you_mean
from .common import UsageError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_DEFAULT_APP_NAMES = ("application", "app")  # what MODULE alone looks for, like gunicorn


def load_app(target: str) -> WSGIApplication:
    """Import ``MODULE:APP`` and return the WSGI application it names.

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
        expression = _default_app_name(module, module_name)
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
        # The module itself (or its package) is missing, not something it imports.
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"no module named {module_name!r} (is it in the current directory or on "
                "PYTHONPATH?)"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_describe(error)}") from None
    except Exception as error:  # SyntaxError and whatever the module raised while importing
        raise UsageError(f"importing {module_name!r} failed: {_describe(error)}") from None


def _default_app_name(module: Any, module_name: str) -> str:
    for name in _DEFAULT_APP_NAMES:
        if hasattr(module, name):
            return name
    names = " or ".join(repr(name) for name in _DEFAULT_APP_NAMES)
    raise UsageError(f"module {module_name!r} has no {names}; name the app: MODULE:APP")


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
        if any(keyword.arg is None for keyword in node.keywords):  # **kwargs
            raise UsageError(rule)
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise UsageError(rule) from None
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
    hint = did_you_mean(name, [n for n in dir(owner) if not n.startswith("__")])
    return f"; {hint}" if hint else ""


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
