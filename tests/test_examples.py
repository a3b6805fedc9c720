"""The Flask and Django examples (``examples/flask_app.py``, ``examples/django_site/``).

Each runs in process (werkzeug's test ``Client``, behind the WSGI checks) and under real
gunicorn on 127.0.0.1 (sync and gthread workers), with the same checks:

- the cacheable view is served from the cache on its second request;
- session and CSRF views are never shared: two visitors (two cookie jars) get different
  cookies and tokens, each visitor keeps their own, and a token works only with its session;
- no response carrying ``Set-Cookie`` is ever served from the cache.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from types import ModuleType
from urllib.parse import urlencode

import pytest
from helpers.needs import require_module
from helpers.servers import EXAMPLES, Servers
from helpers.servers import fetch as fetch_over_http
from helpers.wsgi import checked
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer

TOKEN = re.compile(rb'name="(?:csrf_token|csrfmiddlewaretoken)" value="([^"]+)"')


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def set_cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                jar.load(value.strip())
        return {key: morsel.value for key, morsel in jar.items()}

    @property
    def hit(self) -> bool:
        return "; hit" in (self.header("Cache-Status") or "") or self.header("X-Cache") == "HIT"


# method, path, the Cookie header (or ""), a urlencoded form (POST only)
Fetch = Callable[[str, str, str, dict[str, str] | None], Reply]


@dataclass
class Example:
    name: str
    paths: dict[str, str]  # "cached", "session", "form" -> the example's URL
    replies: list[Reply] = field(default_factory=list)


EXAMPLES_UNDER_TEST = {
    "flask": ("flask_app:app", {"cached": "/cached", "session": "/session", "form": "/form"}),
    "django": (
        "django_site.wsgi:application",
        {"cached": "/cached/", "session": "/session/", "form": "/form/"},
    ),
}


def load_example(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Callable[..., object], MemoryOptimizer]:
    """A fresh copy of the example's WSGI app (what a server calls) and its optimizer.

    The settings are test-friendly, given through the environment as the examples build
    ``MemoryOptimizer(app)`` with no settings.
    """
    require_module(name)
    # No gc.freeze() of the test process, no monitor thread, no single-flight wait.
    monkeypatch.setenv("WSGI_MEMOPT_GC_FREEZE", "false")
    monkeypatch.setenv("WSGI_MEMOPT_MONITOR_INTERVAL_S", "0")
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_LOCK_TIMEOUT_S", "0")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "django_site.settings")  # not left behind
    monkeypatch.syspath_prepend(str(EXAMPLES))
    file = EXAMPLES / ("flask_app.py" if name == "flask" else "django_site/wsgi.py")
    module = _fresh_module(file)
    if name == "flask":
        app, optimizer = module.app, module.app.wsgi_app
    else:
        app = optimizer = module.application
    assert isinstance(optimizer, MemoryOptimizer)
    return app, optimizer


def _fresh_module(file: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{uuid.uuid4().hex}", file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_process(wsgi_app: Callable[..., object]) -> Fetch:
    client = Client(checked(wsgi_app), use_cookies=False)  # cookies by hand: two visitors

    def fetch(method: str, path: str, cookie: str, form: dict[str, str] | None) -> Reply:
        headers = {"Cookie": cookie} if cookie else {}
        response = client.open(
            path,
            method=method,
            headers=headers,
            data=form,
            buffered=True,
            environ_base={"REMOTE_ADDR": "127.0.0.1"},  # werkzeug leaves it unset
        )
        return Reply(response.status_code, list(response.headers.items()), response.data)

    return fetch


def over_http(port: int) -> Fetch:
    def fetch(method: str, path: str, cookie: str, form: dict[str, str] | None) -> Reply:
        headers = {"Cookie": cookie} if cookie else {}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        reply = fetch_over_http(port, path, method=method, headers=headers, body=body)
        return Reply(reply.status, list(reply.headers.items()), reply.body)

    return fetch


class Visitor:
    """One browser: its own cookie jar."""

    def __init__(self, fetch: Fetch, seen: list[Reply]) -> None:
        self.fetch = fetch
        self.seen = seen
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        reply = self.fetch(method, path, cookie, form)
        self.cookies.update(reply.set_cookies)
        self.seen.append(reply)
        return reply


def check_example(fetch: Fetch, paths: dict[str, str]) -> list[Reply]:
    """Every check of the module docstring against one running example; all its replies."""
    seen: list[Reply] = []
    alice, bob = Visitor(fetch, seen), Visitor(fetch, seen)

    # The cacheable view: a hit the second time, for anyone without a cookie.
    first = alice.request("GET", paths["cached"])
    second = bob.request("GET", paths["cached"])
    assert (first.status, second.status) == (200, 200)
    assert not first.hit
    assert second.hit, second.headers
    assert second.body == first.body

    # Sessions: each visitor counts their own visits.
    for visitor in (alice, bob, alice, alice):
        assert visitor.request("GET", paths["session"]).status == 200
    assert seen[-1].body == b"visits: 3\n"
    assert bob.request("GET", paths["session"]).body == b"visits: 2\n"

    # CSRF: a form token per session, not shared; POST accepts it with its own session only.
    alice_page, bob_page = alice.request("GET", paths["form"]), bob.request("GET", paths["form"])
    alice_token, bob_token = _token(alice_page), _token(bob_page)
    assert alice_token != bob_token
    assert alice.cookies != bob.cookies
    assert not alice_page.hit
    assert not bob_page.hit
    again = alice.request("GET", paths["form"])  # with her cookie now: still not from the cache
    assert again.status == 200
    assert not again.hit
    accepted = alice.request("POST", paths["form"], _form(alice_token))
    assert accepted.status == 200
    assert accepted.body == b"accepted\n"
    refused = alice.request("POST", paths["form"], _form(bob_token))
    # Django's masked tokens all unmask to the visitor's secret: bob's is only valid for bob.
    assert refused.status == 403

    # Whatever carried Set-Cookie came from the app, never from the cache.
    with_cookie = [reply for reply in seen if reply.header("Set-Cookie")]
    assert with_cookie  # the session and CSRF views did set cookies
    assert not [reply.headers for reply in with_cookie if reply.hit]
    assert [reply.hit for reply in seen].count(True) == 1  # only the cacheable view's second GET

    # The memory API answers from the middleware, in front of the framework's own routing.
    health = fetch("GET", "/api/v1/memory/health", "", None)
    assert health.status == 200
    assert json.loads(health.body)["status"] in ("excellent", "good", "warning", "critical")
    assert health.header("Cache-Control") == "no-store"
    return seen


def _form(token: str) -> dict[str, str]:
    return {"csrf_token": token, "csrfmiddlewaretoken": token}  # Flask's name, Django's name


def _token(reply: Reply) -> str:
    assert reply.status == 200, reply
    match = TOKEN.search(reply.body)
    assert match, reply.body
    return match.group(1).decode()


@pytest.mark.parametrize("name", list(EXAMPLES_UNDER_TEST))
def test_example_in_process(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app, optimizer = load_example(name, monkeypatch)
    check_example(in_process(app), EXAMPLES_UNDER_TEST[name][1])
    assert optimizer.cache.stats()["items"] == 1  # the cacheable view, nothing personal


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
@pytest.mark.parametrize("name", list(EXAMPLES_UNDER_TEST))
def test_example_under_gunicorn(servers: Servers, name: str, worker_class: str) -> None:
    require_module(name)
    target, paths = EXAMPLES_UNDER_TEST[name]
    server = servers.start("--chdir", str(EXAMPLES), target, worker_class=worker_class)
    try:
        check_example(over_http(server.port), paths)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\n--- gunicorn log (tail) ---\n{server.log()[-4000:]}"
        ) from error
    assert "Traceback" not in server.log(), server.log()[-4000:]
