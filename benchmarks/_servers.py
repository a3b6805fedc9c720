"""What every script that starts a real server on loopback needs: a free port, gunicorn's
command-line quirks, and an environment without the developer's WSGI_MEMOPT_* settings.

Shared by the benchmarks and, through ``tests/helpers/servers.py``, by the tests that start
servers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys

__all__ = ["HOST", "child_env", "control_socket_args", "free_port", "stop_process"]

HOST = "127.0.0.1"  # never any other address


@functools.cache
def control_socket_args() -> tuple[str, ...]:
    """``--no-control-socket`` where this gunicorn has a control socket (>= 23), else nothing.

    Asked of ``gunicorn --help`` in a subprocess: importing gunicorn here would put it in this
    process's ``sys.modules``, which the governor reads to tell whether it serves a master.
    """
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return ("--no-control-socket",) if "--no-control-socket" in help_text else ()


def free_port() -> int:
    """A port free on 127.0.0.1 now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """This environment less any WSGI_MEMOPT_* setting, with unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_MEMOPT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop ``proc`` by its PID: SIGTERM, then SIGKILL if it has not exited ``timeout_s``
    later; returns once it has exited."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
