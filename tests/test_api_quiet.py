"""What pauses the process or clears app state waits for a moment with no other request in flight.

POST optimize, optimize/force and gc/force wait ``api_quiet_wait_s`` for the other requests of
the process to end; if they do, the work runs and the endpoint answers 200; if not, it answers
202 saying what it deferred, and the governor runs it at the next moment nothing is in flight.

A real werkzeug server (threaded) on 127.0.0.1 serves an app whose ``/held`` request reads a
registered app cache after it has started answering, and is held open mid-body from the test:
an emergency that cleared that cache under it would break it with a ``KeyError``.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers.openapi import PREFIX, schema_errors
from werkzeug.serving import make_server

from wsgi_memopt import MemoryOptimizer

TOKEN = "quiet-Token_7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "127.0.0.1"
TIMEOUT_S = 30.0  # every wait of these tests is bounded by this


class HeldApp:
    """``/held`` answers its first chunk, waits for :attr:`release`, then reads its app cache."""

    def __init__(self) -> None:
        self.greetings = {"greeting": b"hello"}  # the app's own cache
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
        if environ["PATH_INFO"] == "/held":
            return self._held()
        return [b"ok"]

    def _held(self) -> Iterator[bytes]:
        yield b"started;"
        self.entered.set()
        assert self.release.wait(TIMEOUT_S), "the test never released the held request"
        yield self.greetings["greeting"]  # a KeyError if the cache was cleared under it


@dataclass
class Served:
    """The optimizer, its app and its server's port, and what the app's cleanup saw."""

    optimizer: MemoryOptimizer
    app: HeldApp
    port: int
    cleared_with_in_flight: list[int] = field(default_factory=list)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT_S)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def post(self, sub: str) -> tuple[int, dict[str, Any]]:
        status, body = self.request("POST", PREFIX + sub, AUTH)
        return status, json.loads(body)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    stops: list[Callable[[], None]] = []

    def start(**settings: Any) -> Served:
        app = HeldApp()
        optimizer = MemoryOptimizer(
            app,
            api_token=TOKEN,
            api_min_interval_s=0,
            monitor_interval_s=0,
            gc_freeze=False,
            **settings,
        )
        server = make_server(HOST, 0, optimizer, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        served = Served(optimizer, app, server.server_port)

        def clear_greetings() -> None:
            served.cleared_with_in_flight.append(optimizer.governor.in_flight)
            app.greetings.clear()

        optimizer.cleanups.register("greetings", clear_greetings)

        def stop() -> None:
            app.release.set()
            server.shutdown()
            thread.join(TIMEOUT_S)
            server.server_close()
            optimizer.governor.stop()

        stops.append(stop)
        return served

    yield start
    for stop in stops:
        stop()


class Held:
    """``GET /held`` in its own thread, held open mid-body until the app is released."""

    def __init__(self, served: Served) -> None:
        self.result: tuple[int, bytes] | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(served,))
        self._thread.start()
        assert served.app.entered.wait(TIMEOUT_S), "the held request never reached the app"

    def _run(self, served: Served) -> None:
        try:
            self.result = served.request("GET", "/held")
        except BaseException as error:  # reported by finish()
            self.result = error

    def finish(self, served: Served) -> tuple[int, bytes]:
        served.app.release.set()
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive()
        assert isinstance(self.result, tuple), f"the held request failed: {self.result!r}"
        return self.result


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def kinds(optimizer: MemoryOptimizer) -> list[str]:
    return [action.kind for action in optimizer.governor.history]


def test_a_forced_emergency_under_a_running_request_is_deferred_until_it_ends(
    serve: Callable[..., Served],
) -> None:
    served = serve(api_quiet_wait_s=0.2)
    held = Held(served)

    status, body = served.post("/optimize/force")

    assert status == 202
    assert body["deferred"] == "emergency"
    assert body["in_flight"] == 1  # the held request; the API's own is not counted
    assert "api_quiet_wait_s" in body["message"]
    assert schema_errors("POST", PREFIX + "/optimize/force", 202, body) == []
    assert kinds(served.optimizer) == []  # nothing ran under the held request
    assert served.app.greetings == {"greeting": b"hello"}
    stats = json.loads(served.request("GET", PREFIX + "/stats", AUTH)[1])
    assert stats["governor"]["deferred"] == ["emergency"]

    assert held.finish(served) == (200, b"started;hello")

    # The held request's close was the quiet moment: the emergency ran then, and only then.
    assert wait_for(lambda: kinds(served.optimizer) == ["emergency"])
    assert served.optimizer.governor.history[-1].reason == "api"
    assert served.cleared_with_in_flight == [0]
    assert served.app.greetings == {}
    assert served.optimizer.governor.deferred == []


def test_a_forced_emergency_waits_for_a_request_that_ends_in_time(
    serve: Callable[..., Served],
) -> None:
    served = serve(api_quiet_wait_s=TIMEOUT_S)
    held = Held(served)
    answer: list[tuple[int, dict[str, Any]]] = []
    poster = threading.Thread(target=lambda: answer.append(served.post("/optimize/force")))
    poster.start()
    # The endpoint is waiting: nothing has run while the held request is open.
    assert wait_for(lambda: served.optimizer.governor.in_flight == 2)
    assert kinds(served.optimizer) == []

    assert held.finish(served) == (200, b"started;hello")
    poster.join(TIMEOUT_S)
    assert not poster.is_alive()

    status, body = answer[0]
    assert status == 200
    assert body["kind"] == "emergency"
    assert served.cleared_with_in_flight == [1]  # the API's own request only
    assert served.app.greetings == {}


@pytest.mark.parametrize(
    ("sub", "kind"),
    [("/optimize", "optimize"), ("/gc/force", "collection")],
    ids=["optimize", "gc-force"],
)
def test_optimize_and_gc_force_are_deferred_too(
    serve: Callable[..., Served], sub: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgi_memopt")
    served = serve(api_quiet_wait_s=0)
    held = Held(served)

    status, body = served.post(sub)

    assert (status, body["deferred"]) == (202, kind)
    assert schema_errors("POST", PREFIX + sub, 202, body) == []
    assert served.optimizer.governor.deferred == [kind]
    assert held.finish(served) == (200, b"started;hello")
    assert wait_for(lambda: f"running the deferred {kind}: no request in flight" in caplog.text)
    assert served.optimizer.governor.deferred == []
    if kind == "optimize":
        assert wait_for(lambda: kinds(served.optimizer) == ["optimize"])


def test_cache_clear_does_not_wait(serve: Callable[..., Served]) -> None:
    # The response cache is the middleware's own, built to lose entries under running requests.
    served = serve(api_quiet_wait_s=TIMEOUT_S)
    held = Held(served)
    status, body = served.post("/cache/clear")
    assert status == 200
    assert set(body) == {"cleared_items", "freed_mb"}
    assert held.finish(served) == (200, b"started;hello")


def test_with_nothing_else_in_flight_it_runs_at_once(serve: Callable[..., Served]) -> None:
    served = serve(api_quiet_wait_s=TIMEOUT_S)
    status, body = served.post("/optimize/force")
    assert (status, body["kind"]) == (200, "emergency")
    assert served.cleared_with_in_flight == [1]  # the API's own request
