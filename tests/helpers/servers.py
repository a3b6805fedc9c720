"""Real servers in subprocesses on 127.0.0.1: starting, waiting, fetching and stopping them.

The port, gunicorn's flags and the child's environment come from ``benchmarks/_servers.py``
(``tests/conftest.py`` puts ``benchmarks/`` on ``sys.path``), so benchmarks and tests start
servers alike.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from _servers import HOST, child_env, control_socket_args, free_port

__all__ = [
    "BOOT_TIMEOUT_S",
    "EXAMPLES",
    "HOST",
    "REQUEST_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "GunicornServer",
    "Server",
    "Servers",
    "child_env",
    "fetch",
    "free_port",
    "gunicorn_command",
    "launch",
    "require_module",
    "require_peer",
    "stop",
    "wait_for",
]

BOOT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def require_peer(executable: str) -> str:
    """The path of a real peer program; skip without it, but fail under CI (which installs it)."""
    path = shutil.which(executable)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{executable} is not installed; .ci/run must install it")
        pytest.skip(f"{executable} is not installed")
    return path


def require_module(name: str) -> None:
    """Skip when ``name`` cannot be imported, but fail under CI (which installs it)."""
    if importlib.util.find_spec(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")


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
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


def fetch(port: int, path: str = "/") -> tuple[int, bytes]:
    """One GET on a fresh connection; no retry of any kind."""
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=REQUEST_TIMEOUT_S) as r:
        return r.status, r.read()


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``predicate`` until it holds; fail if ``proc`` exits or ``BOOT_TIMEOUT_S`` passes."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {BOOT_TIMEOUT_S:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:``port``, its output in ``log_path``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")


ServerT = TypeVar("ServerT", bound=Server)


def launch(
    command: list[str],
    port: int,
    log_path: Path,
    started: list[subprocess.Popen[bytes]],
    ready: Callable[[str], bool] | None,
    what: str,
    server_type: type[ServerT] = Server,  # type: ignore[assignment]
) -> ServerT:
    """Start ``command`` (recorded in ``started``, for the fixture to stop) and, unless
    ``ready`` is None, wait until its log says it is: no probe connection, which a worker
    would have to answer (and which would count as its first request)."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env())
    started.append(proc)
    server = server_type(proc, port, log_path)
    if ready is not None:
        wait_for(lambda: ready(server.log()), proc, what)
    return server


class GunicornServer(Server):
    """A gunicorn server, and a client for it."""

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """One GET on its own connection, read to the end (``.body`` holds the bytes)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            response.body = response.read()  # type: ignore[attr-defined]
            return response
        finally:
            connection.close()


class Servers:
    """Starts ``python -m gunicorn ARGS`` on 127.0.0.1; ``stop_all`` stops each by PID."""

    def __init__(self, log_dir: Path) -> None:
        require_module("gunicorn")
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, worker_class: str = "sync", wait_boot: bool = True
    ) -> GunicornServer:
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
            GunicornServer,
        )

    def stop_all(self) -> None:
        """Stop every server this one started."""
        for proc in self.started:
            stop(proc)
