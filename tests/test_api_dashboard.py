"""The dashboard page (SPEC §8.1 ``GET /``): self-contained, escaped, and drawn by a real browser.

The browser tests serve the page and the real ``memory_stats`` body from a real server on
127.0.0.1 and load it in Debian's headless Chromium (skipped without it, failed under CI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import require_peer
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


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.fixture
def optimizer() -> Iterator[MemoryOptimizer]:
    """An optimizer that served a few requests and holds several live samples."""
    optimizer = MemoryOptimizer(_hello, monitor_interval_s=0, gc_freeze=False, sample_interval_s=0)
    client = Client(optimizer, use_cookies=False)
    for _ in range(3):
        assert client.get("/", buffered=True).status_code == 200
    for _ in range(4):
        optimizer.governor.sample()
        time.sleep(0.02)
    optimizer.governor.optimize("dashboard test")  # one row in the last-actions table
    assert len(optimizer.governor.samples) >= 4
    yield optimizer
    optimizer.governor.stop()


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Callable[[WSGIApp], str]:
    """Start a real server on 127.0.0.1 for an app; its base URL. Stopped at teardown."""

    def start(app: WSGIApp) -> str:
        server = make_server("127.0.0.1", 0, app)
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


def test_chromium_draws_the_chart_from_live_samples(
    optimizer: MemoryOptimizer, serve: Callable[[WSGIApp], str], tmp_path: Path
) -> None:
    # The middleware itself serves the page and the stats it polls (loopback: allowed).
    url = serve(optimizer) + PREFIX + "/"
    dom = Elements(_chromium(tmp_path, "--dump-dom", url).stdout)
    line = dom.by_id["line"]
    points = int(str(line["data-points"]))
    assert points >= 4
    coordinates = str(line["points"]).split()
    assert len(coordinates) == points
    for pair in coordinates:
        x, y = (float(value) for value in pair.split(","))
        assert 40 <= x <= 630
        assert 10 <= y <= 210
    status = dom.by_id["status"]["data-status"]
    assert status in ("excellent", "good", "warning", "critical")
    assert dom.text["status"] == status
    assert dom.text["cache-items"] == str(optimizer.cache.stats()["items"])
    assert dom.text["gc-collections"].count("/") == 2
    assert int(str(dom.by_id["last-updated"]["data-refreshes"])) >= 1
    assert dom.text["error"] == ""
    assert "hidden" in dom.by_id["auth"]
    assert "hidden" in dom.by_id["token-form"]
    assert "dashboard test" in dom.text["actions"]


def test_chromium_screenshot_is_written(
    optimizer: MemoryOptimizer, serve: Callable[[WSGIApp], str], tmp_path: Path
) -> None:
    url = serve(optimizer) + PREFIX + "/"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


def test_chromium_asks_for_a_token_on_401(serve: Callable[[WSGIApp], str], tmp_path: Path) -> None:
    # A token and no allowed network: the page loads, its stats do not until a token is given.
    guarded = MemoryOptimizer(
        _hello, monitor_interval_s=0, gc_freeze=False, api_token="s3cret", api_allow_networks="none"
    )
    url = serve(guarded) + PREFIX + "/"
    dom = Elements(_chromium(tmp_path, "--dump-dom", url).stdout)
    assert "hidden" not in dom.by_id["auth"]
    assert "hidden" not in dom.by_id["token-form"]
    assert "401" in dom.text["error"]
    assert dom.by_id["line"]["data-points"] == "0"
    assert dom.by_id["last-updated"]["data-refreshes"] == "0"
