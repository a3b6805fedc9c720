"""Tests of ``wsgi-memopt serve``: real servers on 127.0.0.1 (the demo and a module's app),
their banner, their stop, and the errors that keep them from starting."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import demo_token, one_error_line, run_cli
from helpers.headers import cache_status
from helpers.servers import STOP_TIMEOUT_S, Server, fetch

# -- serve --demo


def test_serve_demo_caches_slow_and_keeps_me_private(serve: Callable[..., Server]) -> None:
    server = serve("--demo")
    url, port = server.url, server.port
    output = server.log()
    assert re.search(rf"^ \* app: +{re.escape(url)}$", output, re.M)  # 127.0.0.1
    assert port != 0  # the real bound port is printed
    assert f"try: curl -i {url}/slow twice" in output

    status, _, index = fetch(port, "/")
    assert status == 200
    assert b'href="/slow"' in index

    first = fetch(port, "/slow")
    assert first.status == 200
    assert first.headers["X-Cache"] == "MISS"
    assert cache_status(first) == {"fwd": "miss", "stored": True}
    second = fetch(port, "/slow")
    assert second.status == 200
    assert cache_status(second)["hit"] is True
    assert second.headers["X-Cache"] == "HIT"
    assert second.body == first.body

    alice = fetch(port, "/me", headers={"Cookie": "user=alice"})
    bob = fetch(port, "/me", headers={"Cookie": "user=bob"})
    assert b"alice" in alice.body
    assert b"bob" in bob.body
    assert alice.body != bob.body
    assert alice.headers["Cache-Control"] == "private"

    assert fetch(port, "/no-such-page").status == 404


def test_serve_demo_makes_a_token_prints_it_and_the_api_takes_only_it(
    serve: Callable[..., Server],
) -> None:
    server = serve("--demo")
    api = f"{server.url}/api/v1/memory"
    token = demo_token(server)
    assert re.fullmatch(r"[0-9a-f]{32}", token)  # 128 random bits
    output = server.log()
    assert f" * memory API: {api}/  (the dashboard; it asks for the token)" in output
    assert f'try: curl -H "Authorization: Bearer {token}" {api}/stats' in output
    assert "api_token" not in output  # made here, not a setting the user gave

    stats = "/api/v1/memory/stats"
    status, _, body = fetch(server.port, stats, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    assert json.loads(body)["process"]["pid"] == server.proc.pid
    assert fetch(server.port, stats).status == 401  # loopback alone is not enough
    wrong = {"Authorization": f"Bearer {token[:-1]}"}
    assert fetch(server.port, stats, headers=wrong).status == 401
    # A load balancer's probe: the band only.
    status, _, body = fetch(server.port, "/api/v1/memory/health")
    assert (status, list(json.loads(body))) == (200, ["status"])

    assert demo_token(serve("--demo")) != token  # a new one for every run


def test_serve_demo_keeps_the_token_it_is_given(serve: Callable[..., Server]) -> None:
    server = serve("--demo", "--set", "api_token=mine-42")
    output = server.log()
    assert " * API token:  the api_token you set" in output
    assert "mine-42" not in output
    assert "api_token=<hidden> (explicit)" in output
    mine = {"Authorization": "Bearer mine-42"}
    assert fetch(server.port, "/api/v1/memory/stats", headers=mine).status == 200


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_stops_cleanly(serve: Callable[..., Server], signum: int) -> None:
    server = serve("--demo", "--no-threads")
    assert fetch(server.port).status == 200
    server.proc.send_signal(signum)
    assert server.proc.wait(timeout=STOP_TIMEOUT_S) == 0
    assert server.log().endswith("wsgi-memopt: stopped\n")
    assert "Traceback" not in server.errors()


def test_serve_shows_settings_and_their_sources(serve: Callable[..., Server]) -> None:
    server = serve(
        "--demo",
        "--set",
        "cache_max_mb=5",
        "--set",
        "api_prefix=/_mem",
        env={"WSGI_MEMOPT_CACHE_TTL_S": "60"},
    )
    output = server.log()
    assert "cache_max_mb=5 (explicit)" in output
    assert "cache_ttl_s=60 (env)" in output
    assert "api_prefix=/_mem (explicit)" in output


# -- serve MODULE:APP


@pytest.mark.parametrize(
    ("target", "greeting"),
    [("webapp:app", "hello"), ("webapp:create_app(greeting='hi')", "hi"), ("webapp", "hello")],
    ids=["attribute", "factory-call", "module-default"],
)
def test_serve_module_app(serve: Callable[..., Server], target: str, greeting: str) -> None:
    server = serve(target)
    assert f"serving {target} through MemoryOptimizer" in server.log()
    first, second = fetch(server.port, "/page"), fetch(server.port, "/page")
    assert first.body == second.body == f"{greeting} #1".encode()
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert "try: curl" not in server.log()  # the hint is for the demo


# -- what keeps a server from starting: one line


def test_a_bad_env_variable_is_named(app_dir: Path) -> None:
    result = run_cli("serve", "--demo", app_dir=app_dir, env={"WSGI_MEMOPT_CACHE_MAX_MB": "lots"})
    assert result.returncode == 2
    assert "WSGI_MEMOPT_CACHE_MAX_MB" in one_error_line(result)


def test_a_port_in_use_is_one_line_and_status_1(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--demo", "--port", str(port), app_dir=app_dir)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith(f"wsgi-memopt: error: cannot listen on http://127.0.0.1:{port}")
    assert "--port 0" in line
