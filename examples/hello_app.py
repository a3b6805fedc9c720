"""A plain WSGI app for the PasteDeploy examples (``production*.ini``).

- ``/slow``: the same page for everyone, slow to build (``slow_s``, default 0.2 s) and marked
  ``Cache-Control: public, max-age=60``: the cache answers it after the first request.
- ``/report``: a page that says nothing about caching, as many apps' pages do. It is stored
  only where the ini gives such pages a lifetime (``cache_default_ttl_s``, in
  ``production.ini``); under ``production_filter_with.ini`` it is built for every request.
- ``/me``: a personal page. A visitor without a ``user`` cookie is given one (``Set-Cookie``);
  the page names the visitor and says ``Cache-Control: private``. It is never stored: both
  the ``Set-Cookie`` and ``private`` keep it out of a shared cache, and a request with a
  ``Cookie`` header is never answered from one.

Loaded by PasteDeploy through ``[app:hello] use = call:hello_app:make_app`` (with
``examples/`` on ``sys.path``, as gunicorn's ``--chdir examples`` or ``--pythonpath`` does).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any

_visitors = itertools.count(1)


def make_app(global_conf: dict[str, str], **conf: str) -> Callable[..., Iterable[bytes]]:
    """``paste.app_factory``: the app, its ``/slow`` delay from the ``slow_s`` ini key."""
    slow_s = float(conf.get("slow_s", "0.2"))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/slow":
            time.sleep(slow_s)  # stands for a slow query or template
            body = f"built at {time.time():.6f} by pid {os.getpid()}\n".encode()
            headers = [("Cache-Control", "public, max-age=60")]
        elif path == "/report":
            body = f"report built at {time.time():.6f} by pid {os.getpid()}\n".encode()
            headers = []  # no Cache-Control, Expires or Last-Modified
        elif path == "/me":
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
            headers = [("Cache-Control", "private, no-store")]
            if "user" in cookie:
                user = cookie["user"].value
            else:
                user = f"visitor-{next(_visitors)}-{os.getpid()}"
                headers.append(("Set-Cookie", f"user={user}; Path=/; HttpOnly; SameSite=Lax"))
            body = f"hello {user}\n".encode()
        else:
            body = b"not found\n"
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            headers.append(("Content-Length", str(len(body))))
            start_response("404 Not Found", headers)
            return [body]
        headers += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        start_response("200 OK", headers)
        return [body]

    return app
