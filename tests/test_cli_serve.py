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
from helpers.cli import (
    EXIT_TIMEOUT_S,
    Server,
    cache_status,
    fetch,
    one_error_line,
    run_cli,
    server_starter,
    write_apps,
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_apps(tmp_path)


@pytest.fixture
def serve(tmp_path: Path, app_dir: Path, request: pytest.FixtureRequest) -> Callable[..., Server]:
    return server_starter(tmp_path, app_dir, request.addfinalizer)


# -- serve --demo


def test_serve_demo_caches_slow_and_keeps_me_private(serve: Callable[..., Server]) -> None:
    server = serve("--demo")
    url = server.url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    assert url.rsplit(":", 1)[1] != "0"  # the real bound port is printed
    output = server.output()
    assert f"try: curl -i {url}/slow twice" in output

    status, _, index = fetch(f"{url}/")
    assert status == 200
    assert b'href="/slow"' in index

    status, first_headers, first = fetch(f"{url}/slow")
    assert status == 200
    assert first_headers["X-Cache"] == "MISS"
    assert cache_status(first_headers) == ["wsgi-memopt", "fwd=miss", "stored"]
    status, second_headers, second = fetch(f"{url}/slow")
    assert status == 200
    assert "hit" in cache_status(second_headers)
    assert second_headers["X-Cache"] == "HIT"
    assert second == first

    _, alice_headers, alice = fetch(f"{url}/me", cookie="user=alice")
    _, _, bob = fetch(f"{url}/me", cookie="user=bob")
    assert b"alice" in alice
    assert b"bob" in bob
    assert alice != bob
    assert alice_headers["Cache-Control"] == "private"

    status, _, _ = fetch(f"{url}/no-such-page")
    assert status == 404


def test_serve_demo_makes_a_token_prints_it_and_the_api_takes_only_it(
    serve: Callable[..., Server],
) -> None:
    server = serve("--demo")
    api = f"{server.url}/api/v1/memory"
    token = server.token()
    assert re.fullmatch(r"[0-9a-f]{32}", token)  # 128 random bits
    output = server.output()
    assert f" * memory API: {api}/  (the dashboard; it asks for the token)" in output
    assert f'try: curl -H "Authorization: Bearer {token}" {api}/stats' in output
    assert "api_token" not in output  # made here, not a setting the user gave

    status, _, body = fetch(f"{api}/stats", token=token)
    assert status == 200
    assert json.loads(body)["process"]["pid"] == server.process.pid
    assert fetch(f"{api}/stats")[0] == 401  # loopback alone is not enough
    assert fetch(f"{api}/stats", token=token[:-1])[0] == 401
    status, _, body = fetch(f"{api}/health")  # a load balancer's probe: the band only
    assert (status, list(json.loads(body))) == (200, ["status"])

    assert serve("--demo").token() != token  # a new one for every run


def test_serve_demo_keeps_the_token_it_is_given(serve: Callable[..., Server]) -> None:
    server = serve("--demo", "--set", "api_token=mine-42")
    output = server.output()
    assert " * API token:  the api_token you set" in output
    assert "mine-42" not in output
    assert "api_token=<hidden> (explicit)" in output
    assert fetch(f"{server.url}/api/v1/memory/stats", token="mine-42")[0] == 200


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_stops_cleanly(serve: Callable[..., Server], signum: int) -> None:
    server = serve("--demo", "--no-threads")
    assert fetch(f"{server.url}/")[0] == 200
    server.process.send_signal(signum)
    assert server.process.wait(timeout=EXIT_TIMEOUT_S) == 0
    assert server.output().endswith("wsgi-memopt: stopped\n")
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
    output = server.output()
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
    assert f"serving {target} through MemoryOptimizer" in server.output()
    _, first_headers, first = fetch(f"{server.url}/page")
    _, second_headers, second = fetch(f"{server.url}/page")
    assert first == second == f"{greeting} #1".encode()
    assert first_headers["X-Cache"] == "MISS"
    assert second_headers["X-Cache"] == "HIT"
    assert "try: curl" not in server.output()  # the hint is for the demo


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
