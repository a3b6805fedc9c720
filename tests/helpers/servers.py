"""Real servers in subprocesses on 127.0.0.1: starting, waiting, fetching and stopping them.

The port, gunicorn's flags and the child's environment come from ``benchmarks/_servers.py``
(``tests/helpers/__init__.py`` puts ``benchmarks/`` on ``sys.path``), so benchmarks and tests
start servers alike. Every server here is stopped by its PID and every wait is bounded.
"""

from __future__ import annotations

import http.client
import io
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from _servers import HOST, child_env, control_socket_args, free_port, stop_process
from werkzeug.datastructures import Headers

from helpers.needs import require_module

__all__ = [
    "BOOT_TIMEOUT_S",
    "EXAMPLES",
    "HOST",
    "REQUEST_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Reply",
    "Server",
    "Servers",
    "child_env",
    "fetch",
    "free_port",
    "gunicorn_command",
    "launch",
    "stop",
    "wait_for",
]

BOOT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def gunicorn_command(port: int, worker_class: str, *args: str) -> list[str]:
    """``python -m gunicorn`` on 127.0.0.1:``port``, logging to stderr, control socket off."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{HOST}:{port}",
        "--worker-class",
        worker_class,
        *(("--threads", "2") if worker_class == "gthread" else ()),
        "--graceful-timeout",
        "5",
        "--error-logfile",
        "-",
        *control_socket_args(),
        *args,
    ]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL after a bound."""
    stop_process(proc, STOP_TIMEOUT_S)


class Reply(NamedTuple):
    """A server's answer: its status, its headers (case-insensitive) and its whole body."""

    status: int
    headers: Headers
    body: bytes


class _Received:
    """What a socket received, for ``http.client`` to parse as if it were reading it now."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def fetch(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    """One request on a fresh connection, read until the server closes it; no retry, and
    any status is returned (none raises).

    The middleware stores a response when the server closes it, after its last byte went
    out, and the servers close the connection (``Connection: close``) only after that:
    reading to the close, not only to ``Content-Length``, makes "the first response was
    stored before the second request came" a certainty rather than a race.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        received = bytearray()
        while chunk := sock.recv(1 << 16):  # each wait bounded by the socket timeout
            received += chunk
    response = http.client.HTTPResponse(_Received(bytes(received)), method=method)  # type: ignore[arg-type]
    response.begin()
    return Reply(response.status, Headers(response.getheaders()), response.read())


def wait_for(
    predicate: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail if ``proc`` exits or ``BOOT_TIMEOUT_S`` passes
    (with the tail of ``log``, if given, in the failure)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not predicate():
        if proc.poll() is not None:
            message = f"the server exited ({proc.returncode}) while waiting for {what}"
        elif time.monotonic() > deadline:
            message = f"timed out after {BOOT_TIMEOUT_S:g} s waiting for {what}"
        else:
            time.sleep(0.05)
            continue
        pytest.fail(message if log is None else f"{message}\n{log()[-4000:]}")


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:``port``: its output in ``log_path``, its error
    output there too unless it has its own ``errors_path``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    errors_path: Path | None = None

    @property
    def url(self) -> str:
        """Where it listens: ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the server has written so far (to its output)."""
        return self.log_path.read_text(errors="replace")

    def errors(self) -> str:
        """What the server has written to its error output so far."""
        return (self.errors_path or self.log_path).read_text(errors="replace")


def launch(
    command: list[str],
    port: int,
    log_path: Path,
    started: list[subprocess.Popen[bytes]],
    ready: Callable[[str], bool] | None,
    what: str,
) -> Server:
    """Start ``command`` (recorded in ``started``, for the fixture to stop) and, unless
    ``ready`` is None, wait until its log says it is: no probe connection, which a worker
    would have to answer (and which would count as its first request)."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env())
    started.append(proc)
    server = Server(proc, port, log_path)
    if ready is not None:
        wait_for(lambda: ready(server.log()), proc, what, server.log)
    return server


class Servers:
    """Starts ``python -m gunicorn ARGS`` on 127.0.0.1; ``stop_all`` stops each by PID."""

    def __init__(self, log_dir: Path) -> None:
        require_module("gunicorn")
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, worker_class: str = "sync", wait_boot: bool = True) -> Server:
        """One master with one worker; ready, unless ``wait_boot`` is false, once it boots."""
        port = free_port()
        # Ready once a worker is booting: the master listens already, and a request that
        # arrives while the worker still loads the app waits in the listen queue.
        return launch(
            gunicorn_command(port, worker_class, "--workers", "1", *args),
            port,
            self.log_dir / f"gunicorn-{port}.log",
            self.started,
            (lambda log: "Booting worker with pid" in log) if wait_boot else None,
            "gunicorn to boot a worker",
        )

    def stop_all(self) -> None:
        """Stop every server this one started."""
        for proc in self.started:
            stop(proc)
