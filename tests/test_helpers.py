"""The shared test helpers hold what the tests rely on them for."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers.clock import FakeClock
from helpers.headers import cache_status
from helpers.needs import unavailable
from helpers.servers import HOST, fetch


def test_cache_status_parser_rejects_invalid_lists() -> None:
    for invalid in ("wsgi memopt; hit", "wsgi-memopt; TTL=1", "wsgi-memopt; ttl=", "wsgi-memopt;;"):
        with pytest.raises(AssertionError):
            cache_status([("Cache-Status", invalid)])
    assert cache_status([("Cache-Status", 'wsgi-memopt; fwd=miss; detail="a b"; stored')]) == {
        "fwd": "miss",
        "detail": '"a b"',
        "stored": True,
    }


def test_cache_status_parser_wants_exactly_one_header() -> None:
    for headers in ([], [("Cache-Status", "wsgi-memopt; hit")] * 2):
        with pytest.raises(AssertionError):
            cache_status(headers)


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=5.0)
    assert (clock(), clock()) == (5.0, 5.0)
    clock.advance(2.5)
    assert clock() == 7.5


def test_unavailable_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^x is missing$"):
        unavailable("x is missing", "CI installs x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"^x is missing; CI installs x$"):
        unavailable("x is missing", "CI installs x")


class _Echo(BaseHTTPRequestHandler):
    """Answers 404 with the method, the body and the X-Test header it got, chunked."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        got = self.rfile.read(int(self.headers["Content-Length"]))
        body = b"%s %s %s" % (self.command.encode(), got, self.headers["X-Test"].encode())
        self.send_response(404)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Status", "wsgi-memopt; fwd=miss")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer((HOST, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def test_fetch_returns_any_status_with_its_whole_body(echo_port: int) -> None:
    reply = fetch(echo_port, "/x", method="POST", headers={"X-Test": "yes"}, body=b"sent")
    assert (reply.status, reply.body) == (404, b"POST sent yes")  # no raise; chunks joined
    assert reply.headers["transfer-encoding"] == "chunked"  # names case-insensitive
    assert cache_status(reply) == {"fwd": "miss"}
