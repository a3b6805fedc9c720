"""Helpers for the tests of ``wsgi-memopt``: real ``python -m wsgi_memopt`` processes on
127.0.0.1, the app module they load, and a raw HTTP client.

Every server is started with ``--port 0``, found through the URL it prints, and killed by PID
in a finalizer; every wait is bounded.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

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


def write_apps(tmp_path: Path) -> Path:
    """A directory, outside the current one, holding the module ``webapp`` (see WEBAPP)."""
    directory = tmp_path / "apps"
    directory.mkdir()
    (directory / "webapp.py").write_text(WEBAPP)
    return directory


def child_env(app_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``app_dir`` on PYTHONPATH, no proxy, and ``extra``."""
    env = {  # WSGI_MEMOPT_* were removed by conftest's autouse fixture
        name: value for name, value in os.environ.items() if name.lower() not in _PROXY_VARIABLES
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_dir), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(
    *args: str, app_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsgi_memopt ARGS`` to its end, from ``app_dir``'s parent."""
    return subprocess.run(
        [sys.executable, "-m", "wsgi_memopt", *args],
        capture_output=True,
        text=True,
        env=child_env(app_dir, env),
        cwd=app_dir.parent,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``wsgi-memopt: error:`` line of a failed command (nothing on stdout)."""
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsgi-memopt: error: ")
    return lines[0]


@dataclass
class Server:
    """A running ``wsgi-memopt serve``: its process, the URL it printed, its output files."""

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


def server_starter(
    tmp_path: Path, app_dir: Path, addfinalizer: Callable[[Callable[[], None]], None]
) -> Callable[..., Server]:
    """A ``start(*args, env=None)`` that runs ``wsgi-memopt serve ARGS --port 0`` and waits
    until it prints its URL; ``addfinalizer`` gets the kill of each server started."""
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
        addfinalizer(lambda: _stop(process))
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


def _default_sigint() -> None:
    # A test run started in the background inherits an ignored SIGINT, and so would the
    # server; give it the default disposition so that it can be stopped as by Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=EXIT_TIMEOUT_S)


def fetch(
    url: str, *, cookie: str | None = None, token: str | None = None
) -> tuple[int, HTTPMessage, bytes]:
    """GET ``url`` and read until the server closes the connection.

    The middleware stores a response when the server closes it, after its last byte went
    out, and werkzeug closes the connection only after that. Reading to the end of the
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
