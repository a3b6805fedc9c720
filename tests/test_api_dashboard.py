"""The dashboard page (``GET <prefix>/``): self-contained, escaped, and drawn by a real browser.

The browser tests serve the page and the real ``memory_stats`` body from a real server on
127.0.0.1 and load it in Debian's headless Chromium (skipped without it, failed under CI):
dumped after it ran, or driven over Chromium's DevTools pipe where a user would type the token.
Chromium's own resolver maps the names of the DNS-rebinding and cross-site tests to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers.needs import require_peer
from werkzeug.serving import make_server
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.api.dashboard import dashboard_html

PREFIX = "/api/v1/memory"
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)

WSGIApp = Callable[..., Iterable[bytes]]


class Elements(HTMLParser):
    """Each element's attributes and text, by id (enough to read a dumped DOM)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[str | None] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        ident = found.get("id")
        if ident:
            self.by_id[ident] = {"tag": tag, **found}
            self.text.setdefault(ident, "")
        if tag not in ("meta", "input", "br", "rect", "line", "link", "img"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if found.get("id"):
            self.by_id[str(found["id"])] = {"tag": tag, **found}

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


# -- the page itself


def test_page_is_self_contained_and_small() -> None:
    page = dashboard_html(PREFIX)
    assert page.startswith("<!DOCTYPE html>")
    assert len(page.encode()) < 15_000
    lowered = page.lower()
    for reference in ("http://", "https://", "//cdn", "<script src", "<link", "@import", "url("):
        assert reference not in lowered, reference
    assert "innerhtml" not in lowered  # data reaches the DOM through textContent only
    assert f"{PREFIX}" in page
    assert 'fetch(PREFIX + "/stats"' in page
    assert 'cache: "no-store"' in page
    assert "sessionStorage" in page


def test_page_has_the_elements_the_dashboard_fills() -> None:
    elements = Elements(dashboard_html(PREFIX)).by_id
    for ident in (
        "status",
        "chart",
        "line",
        "cache-items",
        "cache-size",
        "cache-hit-rate",
        "cache-evictions",
        "gc-counts",
        "gc-collections",
        "gc-frozen",
        "actions",
        "last-updated",
        "token-form",
    ):
        assert ident in elements, ident
    assert elements["line"]["tag"] == "polyline"
    assert elements["line"]["data-points"] == "0"
    assert "hidden" in elements["token-form"]  # shown only when the API says 401/403


def test_hostile_prefix_is_escaped() -> None:
    hostile = '/a"</script><b>&'
    page = dashboard_html(hostile)
    assert "<b>" not in page
    assert page.count("</script>") == 1
    assert page.lower().count("<script") == 1
    # in the markup: HTML-escaped
    assert "/a&quot;&lt;/script&gt;&lt;b&gt;&amp;" in page
    # in the script: a JSON string with <, > and & escaped, which decodes back to the prefix
    match = re.search(r"const PREFIX = (.*);", page)
    assert match is not None
    for raw in "<>&":
        assert raw not in match.group(1)
    assert json.loads(match.group(1)) == hostile


def test_trailing_slash_of_the_prefix_is_dropped() -> None:
    assert "const PREFIX = " + json.dumps(PREFIX) + ";" in dashboard_html(PREFIX + "/")


# -- in a real browser

TOKEN = "dashboard-S3cret_9"


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Cache-Control", "max-age=60")],
    )
    return [b"hello"]


def _optimizer(**settings: Any) -> MemoryOptimizer:
    return MemoryOptimizer(_hello, monitor_interval_s=0, gc_freeze=False, **settings)


@pytest.fixture
def make_optimizer() -> Iterator[Callable[..., MemoryOptimizer]]:
    """Optimizers that served a few requests and hold several live samples and one action."""
    made: list[MemoryOptimizer] = []

    def make(**settings: Any) -> MemoryOptimizer:
        optimizer = _optimizer(sample_interval_s=0, **settings)
        made.append(optimizer)
        client = Client(optimizer, use_cookies=False)
        for _ in range(3):
            assert client.get("/", buffered=True).status_code == 200
        for _ in range(4):
            optimizer.governor.sample()
            time.sleep(0.02)
        optimizer.governor.optimize("dashboard test")  # one row in the last-actions table
        assert len(optimizer.governor.samples) >= 4
        return optimizer

    yield make
    for optimizer in made:
        optimizer.governor.stop()


@dataclass
class Seen:
    """One request a test server answered, as it arrived."""

    method: str
    path: str
    query: str
    authorization: str | None
    cookie: str | None
    origin: str | None
    status: str


def recording(app: WSGIApp, seen: list[Seen]) -> WSGIApp:
    """``app``, noting each request and the status it answered."""

    def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(
                Seen(
                    environ["REQUEST_METHOD"],
                    environ["PATH_INFO"],
                    environ.get("QUERY_STRING", ""),
                    environ.get("HTTP_AUTHORIZATION"),
                    environ.get("HTTP_COOKIE"),
                    environ.get("HTTP_ORIGIN"),
                    status,
                )
            )
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return record


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Callable[[WSGIApp], str]:
    """Start a real server on 127.0.0.1 for an app; its base URL. Stopped at teardown."""

    def start(app: WSGIApp) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()

        request.addfinalizer(stop)
        return f"http://127.0.0.1:{server.server_port}"

    return start


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    executable = require_peer("chromium")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    profile.mkdir()
    result = subprocess.run(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class DevTools:
    """Headless Chromium driven over its DevTools pipe (it reads fd 3 and writes fd 4): enough
    of the protocol to open a page, run a script in it and read the result, as a user's
    browser would run it."""

    def __init__(self, tmp_path: Path) -> None:
        executable = require_peer("chromium")
        profile = tmp_path / f"devtools-{time.monotonic_ns()}"
        profile.mkdir()
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child, before exec
            os.dup2(commands_read, 100)
            os.dup2(replies_write, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--virtual-time")]
        self._process = subprocess.Popen(
            [executable, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=as_fds_3_and_4,
            pass_fds=(3, 4),
            env={**os.environ, "HOME": str(tmp_path)},
        )
        os.close(commands_read)
        os.close(replies_write)
        self._ids = iter(range(1, 1_000_000))
        self._buffer = b""
        self._session: str | None = None

    def open(self, url: str) -> None:
        """Open ``url`` in a new tab and attach to it."""
        target = self._call("Target.createTarget", {"url": url})["targetId"]
        attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]

    def evaluate(self, expression: str) -> Any:
        """The value of a script run in the page (a promise is awaited)."""
        reply = self._call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is still loading
            if value:
                return value
            time.sleep(0.05)
        pytest.fail(f"{expression!r} never held within {timeout_s} s")

    def close(self) -> None:
        try:
            self._call("Browser.close", {}, session=False)
            self._process.wait(timeout=10)
        except (OSError, TimeoutError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(timeout=10)
        finally:
            os.close(self._commands)
            os.close(self._replies)

    def _call(self, method: str, params: dict[str, Any], session: bool = True) -> Any:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                reply = json.loads(raw)
                if reply.get("id") == ident:  # events and other replies are not needed
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            ready, _, _ = select.select([self._replies], [], [], deadline - time.monotonic())
            if not ready:
                raise TimeoutError(f"Chromium did not answer {method} within 30 s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise OSError("Chromium closed its DevTools pipe")
            self._buffer += chunk


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[DevTools]:
    browser = DevTools(tmp_path)
    yield browser
    browser.close()


def _dom_values(browser: DevTools) -> dict[str, Any]:
    return dict(
        browser.evaluate(
            """({
              points: document.getElementById("line").getAttribute("points"),
              count: document.getElementById("line").getAttribute("data-points"),
              status: document.getElementById("status").getAttribute("data-status"),
              statusText: document.getElementById("status").textContent,
              items: document.getElementById("cache-items").textContent,
              collections: document.getElementById("gc-collections").textContent,
              error: document.getElementById("error").textContent,
              authHidden: document.getElementById("auth").hidden,
              formHidden: document.getElementById("token-form").hidden,
              actions: document.getElementById("actions").textContent,
            })"""
        )
    )


def _assert_chart_drawn(points: str, count: str) -> None:
    coordinates = points.split()
    assert int(count) == len(coordinates) >= 4
    for pair in coordinates:
        x, y = (float(value) for value in pair.split(","))
        assert 40 <= x <= 630
        assert 10 <= y <= 210


def test_chromium_asks_for_the_token_and_draws_the_chart_with_it(
    make_optimizer: Callable[..., MemoryOptimizer],
    serve: Callable[[WSGIApp], str],
    devtools: DevTools,
) -> None:
    # What a user does: open the page, type the token into its form, submit.
    optimizer = make_optimizer(api_token=TOKEN)
    seen: list[Seen] = []
    url = serve(recording(optimizer, seen)) + PREFIX + "/"
    devtools.open(url)
    devtools.wait_for('!document.getElementById("token-form").hidden')
    assert "bearer token is required" in devtools.evaluate(
        'document.getElementById("error").textContent'
    )
    devtools.evaluate(
        f"""document.getElementById("token").value = {json.dumps(TOKEN)};
        document.getElementById("token-form").requestSubmit();"""
    )
    devtools.wait_for('document.getElementById("last-updated").dataset.refreshes >= 1')

    dom = _dom_values(devtools)
    _assert_chart_drawn(dom["points"], dom["count"])
    assert dom["status"] in ("excellent", "good", "warning", "critical")
    assert dom["statusText"] == dom["status"]
    assert dom["items"] == str(optimizer.cache.stats()["items"])
    assert dom["collections"].count("/") == 2
    assert dom["error"] == ""
    assert dom["authHidden"]
    assert dom["formHidden"]
    assert "dashboard test" in dom["actions"]
    # Kept in the tab's session storage; never in a cookie or the URL.
    assert devtools.evaluate('sessionStorage.getItem("wsgi_memopt.token")') == TOKEN
    assert devtools.evaluate("document.cookie") == ""
    assert devtools.evaluate("location.href") == url

    # A reload of the tab polls with the kept token at once: no form.
    # (A mark on the old page tells it apart from the reloaded one, which has none.)
    devtools.evaluate("window.beforeReload = true; location.reload()")
    devtools.wait_for(
        '!window.beforeReload && document.getElementById("last-updated").dataset.refreshes >= 1'
    )
    assert devtools.evaluate('document.getElementById("token-form").hidden') is True

    polls = [request for request in seen if request.path == PREFIX + "/stats"]
    assert [poll.status for poll in polls][:1] == ["401 UNAUTHORIZED"]  # before the form
    sent = [poll for poll in polls if poll.authorization is not None]
    assert len(sent) >= 2
    assert {(poll.authorization, poll.status) for poll in sent} == {(f"Bearer {TOKEN}", "200 OK")}
    assert all(TOKEN not in request.query and request.cookie is None for request in seen)


def test_chromium_draws_the_chart_for_an_allow_listed_loopback(
    make_optimizer: Callable[..., MemoryOptimizer],
    serve: Callable[[WSGIApp], str],
    tmp_path: Path,
) -> None:
    # The operator opened the API to loopback: the page needs no token from 127.0.0.1.
    optimizer = make_optimizer(
        api_allow_networks="127.0.0.1/32", max_memory_percent=50, critical_percent=70
    )
    url = serve(optimizer) + PREFIX + "/"
    dom = Elements(_chromium(tmp_path, "--dump-dom", url).stdout)
    _assert_chart_drawn(str(dom.by_id["line"]["points"]), str(dom.by_id["line"]["data-points"]))
    # The band lines sit where the configured thresholds put the bands (y = 210 - 2 x percent).
    for band, percent in (("good", 40), ("warning", 50), ("critical", 70)):
        assert dom.by_id["band-" + band]["y1"] == f"{210 - 2 * percent:.1f}"
        assert dom.text["label-" + band] == str(percent)
    status = dom.by_id["status"]["data-status"]
    assert status in ("excellent", "good", "warning", "critical")
    assert dom.text["status"] == status
    assert int(str(dom.by_id["last-updated"]["data-refreshes"])) >= 1
    assert dom.text["error"] == ""
    assert "hidden" in dom.by_id["auth"]
    assert "hidden" in dom.by_id["token-form"]


def test_chromium_screenshot_is_written(
    make_optimizer: Callable[..., MemoryOptimizer],
    serve: Callable[[WSGIApp], str],
    tmp_path: Path,
) -> None:
    url = serve(make_optimizer(api_allow_networks="loopback")) + PREFIX + "/"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


def _refused_page(tmp_path: Path, url: str, *flags: str) -> Elements:
    dom = Elements(_chromium(tmp_path, *flags, "--dump-dom", url).stdout)
    assert "hidden" not in dom.by_id["auth"]
    assert "hidden" not in dom.by_id["token-form"]
    assert dom.by_id["line"]["data-points"] == "0"
    assert dom.by_id["last-updated"]["data-refreshes"] == "0"
    return dom


def test_chromium_asks_for_a_token_on_401(serve: Callable[[WSGIApp], str], tmp_path: Path) -> None:
    # A token and no allowed network: the page loads, its stats do not until a token is given.
    url = serve(_optimizer(api_token="s3cret")) + PREFIX + "/"
    assert "401" in _refused_page(tmp_path, url).text["error"]


def test_chromium_shows_how_to_open_a_closed_api(
    serve: Callable[[WSGIApp], str], tmp_path: Path
) -> None:
    error = _refused_page(tmp_path, serve(_optimizer()) + PREFIX + "/").text["error"]
    assert "403" in error
    assert "api_token" in error
    assert "api_allow_networks" in error


def test_chromium_on_a_rebound_name_gets_no_data_from_an_allow_listed_loopback(
    serve: Callable[[WSGIApp], str], tmp_path: Path
) -> None:
    # DNS rebinding: the browser resolves a name of the attacker's to 127.0.0.1, and the page
    # at that name polls "its own" origin, which is our server.
    seen: list[Seen] = []
    base = serve(recording(_optimizer(api_allow_networks="loopback"), seen))
    port = base.rsplit(":", 1)[1]
    rules = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
    dom = _refused_page(tmp_path, f"http://rebind.test:{port}{PREFIX}/", rules)
    assert "Host" in dom.text["error"]
    stats = [request for request in seen if request.path == PREFIX + "/stats"]
    assert stats
    assert {request.status for request in stats} == {"403 FORBIDDEN"}


def test_chromium_cross_site_form_post_clears_nothing(
    serve: Callable[[WSGIApp], str], tmp_path: Path
) -> None:
    # A page elsewhere submits a form to the API of a server open to loopback, as the
    # operator's browser would on visiting it.
    optimizer = _optimizer(api_allow_networks="loopback")
    seen: list[Seen] = []
    target = serve(recording(optimizer, seen))
    assert Client(optimizer).get("/cached", buffered=True).status_code == 200  # stored
    form = (
        f'<form method="post" action="{target}{PREFIX}/cache/clear"><input name="a" value="1">'
        "</form><script>document.forms[0].submit()</script>"
    ).encode()

    def evil(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(
            "200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(form)))]
        )
        return [form]

    evil_port = serve(evil).rsplit(":", 1)[1]
    rules = "--host-resolver-rules=MAP evil.test 127.0.0.1"
    _chromium(tmp_path, rules, "--dump-dom", f"http://evil.test:{evil_port}/")

    posts = [request for request in seen if request.method == "POST"]
    assert [(post.path, post.status) for post in posts] == [
        (PREFIX + "/cache/clear", "403 FORBIDDEN")
    ]
    assert posts[0].origin == f"http://evil.test:{evil_port}"
    assert Client(optimizer).get("/cached", buffered=True).headers["X-Cache"] == "HIT"
