"""Tests of wsgi_memopt.cli: real ``wsgi-memopt`` processes on 127.0.0.1, and the pieces in-process.

Every server is started with ``python -m wsgi_memopt serve ... --port 0``, found through the URL
it prints, and stopped by PID in a finalizer; every wait is bounded.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import Any

import pytest

from wsgi_memopt.cli import UsageError, load_app, load_settings, main
from wsgi_memopt.settings import SettingsError

STARTUP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0

WEBAPP = """
import itertools
import types

_served = itertools.count(1)


def create_app(greeting="hello"):
    def app(environ, start_response):
        body = f"{greeting} #{next(_served)}".encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=60"),
            ],
        )
        return [body]

    return app


app = create_app()

holder = types.SimpleNamespace(app=app)
value = 42
"""


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()

    def token(self) -> str:
        """The API token ``serve --demo`` made for this run and printed."""
        found = re.search(r"^ \* API token: +(\S+)  \(made for this run\)$", self.output(), re.M)
        assert found, self.output()
        return found[1]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory, outside the current one, holding the module ``webapp``."""
    directory = tmp_path / "apps"
    directory.mkdir()
    (directory / "webapp.py").write_text(WEBAPP)
    return directory


def child_env(app_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)  # WSGI_MEMOPT_* were removed by conftest's autouse fixture
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_dir), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _default_sigint() -> None:
    # A test run started in the background inherits an ignored SIGINT, and so would the
    # server; give it the default disposition so that it can be stopped as by Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def serve(tmp_path: Path, app_dir: Path, request: pytest.FixtureRequest) -> Callable[..., Server]:
    """Start ``wsgi-memopt serve ARGS --port 0`` and wait until it prints its URL."""
    started = iter(range(1_000))

    def start(*args: str, env: Mapping[str, str] | None = None) -> Server:
        number = next(started)
        stdout, stderr = tmp_path / f"serve-{number}.out", tmp_path / f"serve-{number}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "wsgi_memopt", "serve", *args, "--port", "0"],
                stdout=out,
                stderr=err,
                env=child_env(app_dir, env),
                cwd=tmp_path,
                preexec_fn=_default_sigint,
            )
        request.addfinalizer(lambda: _stop(process))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(r"^ \* app: +(http://\S+)$", stdout.read_text(), re.MULTILINE)
            if found:
                return Server(process, found[1], stdout, stderr)
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}: {stderr.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"serve printed no URL within {STARTUP_TIMEOUT_S} s: {stderr.read_text()}")

    return start


def fetch(
    url: str, *, cookie: str | None = None, token: str | None = None
) -> tuple[int, HTTPMessage, bytes]:
    """GET ``url`` and read until the server closes the connection.

    The middleware stores a response when the server closes it (SPEC §5), after its last byte
    went out, and werkzeug closes the connection only after that. Reading to the end of the
    connection, not only to ``Content-Length`` as urllib does, makes "the first response was
    stored before the second request came" a certainty rather than a race.
    """
    parts = urllib.parse.urlsplit(url)
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    address = (parts.hostname or "", parts.port or 80)
    with socket.create_connection(address, timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = bytearray()
        while chunk := sock.recv(1 << 16):  # each wait bounded by the socket timeout
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status_line, _, header_lines = head.partition(b"\r\n")
    headers = http.client.parse_headers(io.BytesIO(header_lines + b"\r\n\r\n"))
    return int(status_line.split()[1]), headers, body


def cache_status(headers: HTTPMessage) -> list[str]:
    """The members of ``Cache-Status`` (RFC 9211): ``["wsgi-memopt", "fwd=miss", "stored"]``."""
    return [part.strip() for part in headers["Cache-Status"].split(";")]


def run_cli(
    *args: str, app_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgi_memopt", *args],
        capture_output=True,
        text=True,
        env=child_env(app_dir, env),
        cwd=app_dir.parent,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


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


# -- bad input: one line on stderr, exit status 2, no traceback


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "no_such_module_xyz:app"], "no module named 'no_such_module_xyz'"),
        (["serve", "webapp:ap"], "module 'webapp' has no attribute 'ap'; did you mean 'app'?"),
        (["serve", "webapp:holder.nope"], "webapp.holder has no attribute 'nope'"),
        (["serve", "webapp:value"], "webapp:value is not a WSGI application"),
        (["serve", "webapp:create_app"], "call it: 'webapp:create_app()'"),
        (["serve", "webapp:create_app(x)"], "literal arguments"),
        (["serve", "--demo", "--set", "cache_max_mb=-1"], "cache_max_mb: '-1' is not allowed"),
        (["serve", "--demo", "--set", "nosuch=1"], "there is no setting 'nosuch'"),
        (["serve", "--demo", "--set", "cache_max_mbb=1"], "did you mean 'cache_max_mb'?"),
        (["serve", "--demo", "--set", "cache_max_mb"], "--set expects NAME=VALUE"),
        (["serve", "--demo", "--port", "http"], "argument --port"),
        (["serve"], "MODULE:APP or --demo"),
        (["serve", "--demo", "webapp:app"], "MODULE:APP or --demo"),
        (["settings", "--set", "cache_ttl_s=soon"], "cache_ttl_s: 'soon' is not allowed"),
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "choose a command"),
    ],
    ids=[
        "unknown-module",
        "missing-attribute",
        "missing-dotted-attribute",
        "not-callable",
        "bare-factory",
        "non-literal-argument",
        "bad-value",
        "unknown-setting",
        "misspelt-setting",
        "set-without-equals",
        "bad-port",
        "no-target",
        "target-and-demo",
        "settings-bad-value",
        "unknown-command",
        "no-command",
    ],
)
def test_bad_input_is_one_line_and_status_2(app_dir: Path, args: list[str], expected: str) -> None:
    result = run_cli(*args, app_dir=app_dir)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsgi-memopt: error: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('boom')\n", "RuntimeError: boom (apps/broken.py:1)"),
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
        ("def broken(:\n", "SyntaxError"),
    ],
    ids=["raises", "missing-dependency", "syntax-error"],
)
def test_an_app_module_that_fails_to_import_is_one_line(
    app_dir: Path, source: str, expected: str
) -> None:
    (app_dir / "broken.py").write_text(source)
    result = run_cli("serve", "broken:app", app_dir=app_dir)
    assert result.returncode == 2
    assert result.stderr.startswith("wsgi-memopt: error: importing 'broken' failed: ")
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_bad_env_variable_is_named(app_dir: Path) -> None:
    result = run_cli("serve", "--demo", app_dir=app_dir, env={"WSGI_MEMOPT_CACHE_MAX_MB": "lots"})
    assert result.returncode == 2
    assert result.stderr.startswith("wsgi-memopt: error: ")
    assert "WSGI_MEMOPT_CACHE_MAX_MB" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_port_in_use_is_one_line_and_status_1(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--demo", "--port", str(port), app_dir=app_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(f"wsgi-memopt: error: cannot listen on http://127.0.0.1:{port}")
    assert "--port 0" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- settings


def test_settings_shows_every_value_and_its_source(app_dir: Path) -> None:
    result = run_cli(
        "settings",
        "--set",
        "cache_max_mb=5",
        app_dir=app_dir,
        env={"WSGI_MEMOPT_CACHE_TTL_S": "60", "WSGI_MEMOPT_API_TOKEN": "s3cr3t"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(load_settings([]).NAMES)
    assert re.search(r"^cache_ttl_s +=\s60 +\(env\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^cache_max_mb +=\s5 +\(explicit\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^cache_max_items +=\s500 +\(default\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^api_token += <hidden> +\(env\)$", result.stdout, re.MULTILINE)
    assert "s3cr3t" not in result.stdout


def test_settings_json(app_dir: Path) -> None:
    result = run_cli(
        "settings",
        "--json",
        "--set",
        "cache_statuses=200,301",
        app_dir=app_dir,
        env={"WSGI_MEMOPT_CACHE_TTL_S": "60"},
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["cache_ttl_s"] == {"value": 60.0, "source": "env"}
    assert values["cache_statuses"] == {"value": [200, 301], "source": "explicit"}
    assert values["api_token"] == {"value": None, "source": "default"}
    assert values["cache_max_mb"] == {"value": 25.0, "source": "default"}


# -- in-process: help, settings, loading apps


@pytest.mark.parametrize("command", [[], ["serve"], ["settings"]], ids=["top", "serve", "settings"])
def test_help_has_a_description_and_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: wsgi-memopt {' '.join(command)}".rstrip())
    if command:
        assert "examples:\n  wsgi-memopt " + command[0] in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"wsgi-memopt \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_set_names_are_normalised_and_parsed() -> None:
    settings = load_settings(["Cache-Max-MB=5", "cache_paths=/a/*, /b/*"])
    assert settings.cache_max_mb == 5.0
    assert settings.cache_paths == ("/a/*", "/b/*")
    assert settings.api_token is None
    assert settings.source_of("cache_max_mb") == "explicit"
    with pytest.raises(SettingsError, match="api_token"):
        load_settings(["api_token="])  # an empty token is a mistake, not "no token"


def test_set_cannot_reach_from_env_parameters() -> None:
    with pytest.raises(UsageError, match="no setting 'prefix'"):
        load_settings(["prefix=X_"])


@pytest.fixture
def module(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.syspath_prepend(str(app_dir))
    yield "webapp"
    sys.modules.pop("webapp", None)


def _body(app: Any) -> bytes:
    chunks: Any = app({}, lambda status, headers, exc_info=None: None)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("expression", "body"),
    [
        ("app", b"hello #"),
        ("holder.app", b"hello #"),
        ("create_app()", b"hello #"),
        ("create_app('hi')", b"hi #"),
        ("create_app(greeting='hey')", b"hey #"),
        (" create_app ( 'spaced' ) ", b"spaced #"),
    ],
)
def test_load_app_expressions(module: str, expression: str, body: bytes) -> None:
    assert _body(load_app(f"{module}:{expression}")).startswith(body)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("webapp.py:app", "give a module name, not a file, e.g. 'webapp'"),
        ("apps/webapp:app", "give a module name, not a file, e.g. 'apps.webapp'"),
        (":app", "expected MODULE:APP"),
        ("webapp:", "the APP after ':' is missing"),
        ("webapp:app[0]", "APP must be a name, a dotted path or a factory call"),
        ("webapp:create_app(**{})", "APP must be a name"),
        ("webapp:value()", "is an int, not a factory to call"),
        ("webapp:app()", "calling webapp:app() failed: TypeError"),
        ("webapp:holder.missing", "webapp.holder has no attribute 'missing'"),
    ],
)
def test_load_app_errors(module: str, target: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_app(target)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
