"""Helpers for the tests of ``wsgi-memopt``: ``python -m wsgi_memopt`` run to its end, or
started as a real ``serve`` on 127.0.0.1, and the app module both load.

A server is started with ``--port 0`` and found through the URL it prints; it is a
:class:`~helpers.servers.Server`, fetched and stopped with that module's helpers. Every wait
is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from helpers.servers import Server, child_env, stop, wait_for

COMMAND_TIMEOUT_S = 60.0
# A proxy in the developer's environment must not carry requests meant for loopback.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
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


def cli_env(app_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A server's clean environment (:func:`~helpers.servers.child_env`) with ``app_dir`` on
    PYTHONPATH, no proxy, and ``extra``."""
    env = {
        name: value for name, value in child_env().items() if name.lower() not in PROXY_VARIABLES
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
        env=cli_env(app_dir, env),
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


_APP_URL = re.compile(r"^ \* app: +(http://\S+)$", re.MULTILINE)


def demo_token(server: Server) -> str:
    """The API token ``serve --demo`` made for this run and printed."""
    found = re.search(r"^ \* API token: +(\S+)  \(made for this run\)$", server.log(), re.M)
    assert found, server.log()
    return found[1]


def server_starter(
    tmp_path: Path, app_dir: Path, addfinalizer: Callable[[Callable[[], None]], None]
) -> Callable[..., Server]:
    """A ``start(*args, env=None)`` that runs ``wsgi-memopt serve ARGS --port 0`` and waits
    until it prints its URL, whose port is the server's (its tests check the rest of what
    it printed); ``addfinalizer`` gets the stop of each server started."""
    numbers = iter(range(1_000))

    def start(*args: str, env: Mapping[str, str] | None = None) -> Server:
        number = next(numbers)
        stdout, stderr = tmp_path / f"serve-{number}.out", tmp_path / f"serve-{number}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsgi_memopt", "serve", *args, "--port", "0"],
                stdout=out,
                stderr=err,
                env=cli_env(app_dir, env),
                cwd=tmp_path,
                preexec_fn=_default_sigint,
            )
        addfinalizer(lambda: stop(proc))
        wait_for(
            lambda: _APP_URL.search(stdout.read_text()) is not None,
            proc,
            "serve to print its URL",
            stderr.read_text,
        )
        url = _APP_URL.search(stdout.read_text())[1]  # type: ignore[index]
        return Server(proc, urllib.parse.urlsplit(url).port or 0, stdout, stderr)

    return start


def _default_sigint() -> None:
    # A test run started in the background inherits an ignored SIGINT, and so would the
    # server; give it the default disposition so that it can be stopped as by Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
