"""Tests of ``wsgi-memopt status``: real ``wsgi-memopt serve --demo`` servers on 127.0.0.1 read by
real ``python -m wsgi_memopt status`` processes, and canned answers from a stub server in-process.

Every wait is bounded (startup, each request, each command); servers are killed by PID.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import PROXY_VARIABLES, demo_token, one_error_line, run_cli
from helpers.servers import Server, fetch

from wsgi_memopt.cli import main
from wsgi_memopt.cli.status import StatusUnknown, api_url

PREFIX = "/api/v1/memory"
SUMMARY_LABELS = (
    "memory API:",
    "status:",
    "rss:",
    "cache:",
    "gc:",
    "restart:",
    "last actions:",
    "recommendations:",
)
# RSS of ~40 MB against a 100 GB limit: "excellent" whatever the host's memory is doing.
CALM = ("--set", "pressure_source=process", "--set", "process_limit_mb=100000")
CRITICAL = (
    "--set",
    "pressure_source=process",
    "--set",
    "process_limit_mb=1",
    "--set",
    "max_memory_percent=10",
    "--set",
    "critical_percent=20",
    "--set",
    "restart_percent=30",
)
LOCKED = ("--set", "api_token=s3cret")


def status(
    *args: str, app_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsgi_memopt status ARGS`` (a proxy in the environment is not used)."""
    return run_cli("status", *args, app_dir=app_dir, env=env)


def field(output: str, label: str) -> str:
    """The text after ``label:`` on its summary line."""
    found = re.search(rf"^{re.escape(label)}: +(.*)$", output, re.MULTILINE)
    assert found, f"no {label!r} line in:\n{output}"
    return found[1]


# -- against the real demo server


def test_summary_of_a_calm_server(serve: Callable[..., Server], app_dir: Path) -> None:
    server = serve("--demo", *CALM)
    assert fetch(server.port, "/slow").status == 200  # stored when the server closes it
    assert fetch(server.port, "/slow").headers["X-Cache"] == "HIT"

    result = status(server.url, "--token", demo_token(server), app_dir=app_dir)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    for label in SUMMARY_LABELS:
        assert re.search(rf"^{re.escape(label)}", out, re.MULTILINE), (label, out)
    assert field(out, "memory API") == server.url + PREFIX
    assert re.fullmatch(r"excellent, memory \d+\.\d% of process \(used .+\)", field(out, "status"))
    pid = server.proc.pid
    assert re.fullmatch(rf"\d+\.\d MB \(pid {pid}, up \d+ s\)", field(out, "rss"))
    cache = field(out, "cache")
    assert cache.startswith("1 items, ")
    assert "hit rate 50% (1 hits, 1 misses), 0 evictions" in cache
    assert re.fullmatch(
        r"collections gen0 \d+, gen1 \d+, gen2 \d+; mode between.*", field(out, "gc")
    )
    assert field(out, "restart") == "not needed"
    assert field(out, "last actions") == "none"
    assert "alert:" not in out


def test_url_forms(serve: Callable[..., Server], app_dir: Path) -> None:
    server = serve("--demo", *CALM)
    host_port = server.url.removeprefix("http://")
    for url in (
        f"{server.url}/",
        f"{server.url}{PREFIX}",
        f"{server.url}{PREFIX}/",
        host_port,  # no scheme: http
    ):
        result = status(url, "--token", demo_token(server), app_dir=app_dir)
        assert result.returncode == 0, (url, result.stderr)
        assert field(result.stdout, "memory API") == server.url + PREFIX


def test_json_has_both_bodies(serve: Callable[..., Server], app_dir: Path) -> None:
    server = serve("--demo", *CALM)
    result = status(
        server.url, "--json", "--timeout", "5", "--token", demo_token(server), app_dir=app_dir
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"health", "stats"}
    assert body["health"]["status"] == "excellent"
    assert body["health"]["source"] == "process"
    assert body["stats"]["process"]["pid"] == server.proc.pid
    assert {"memory", "cache", "gc", "governor"} <= set(body["stats"])


def test_a_token_is_required_and_sent(serve: Callable[..., Server], app_dir: Path) -> None:
    server = serve("--demo", *CALM, *LOCKED)

    refused = status(server.url, app_dir=app_dir)
    assert refused.returncode == 3
    line = one_error_line(refused)
    # /health answered (the band only, as to a load balancer); stats asked for the token.
    assert f"GET {server.url}{PREFIX}/stats: HTTP 401" in line
    assert "a bearer token is required" in line  # the server's own message
    assert "--token" in line

    wrong = status(server.url, "--token", "nope", app_dir=app_dir)
    assert wrong.returncode == 3
    assert "HTTP 401" in one_error_line(wrong)
    assert "not valid" in wrong.stderr
    assert "nope" not in wrong.stderr

    allowed = status(server.url, "--token", "s3cret", app_dir=app_dir)
    assert allowed.returncode == 0, allowed.stderr
    assert field(allowed.stdout, "status").startswith("excellent")

    from_env = status(server.url, app_dir=app_dir, env={"WSGI_MEMOPT_API_TOKEN": "s3cret"})
    assert from_env.returncode == 0, from_env.stderr


def test_forbidden_without_a_token_configured(serve: Callable[..., Server], app_dir: Path) -> None:
    # An app served with the defaults: the memory API is closed, loopback included.
    server = serve("webapp:app", *CALM)
    result = status(server.url, app_dir=app_dir)
    assert result.returncode == 3
    line = one_error_line(result)
    assert "HTTP 403" in line
    assert "set api_token" in line
    assert "api_allow_networks" in line


def test_critical_exits_2(serve: Callable[..., Server], app_dir: Path) -> None:
    server = serve("--demo", *CRITICAL)
    assert fetch(server.port).status == 200  # a request, so that the governor acts

    result = status(server.url, "--token", demo_token(server), app_dir=app_dir)

    assert result.returncode == 2, result.stderr
    out = result.stdout
    assert field(out, "status").startswith("critical, memory ")
    assert "% of process" in field(out, "status")
    assert field(out, "alert").startswith("critical: memory at ")
    assert "[POST optimize/force]" in out  # the recommendation and where to act
    actions = re.findall(r"^  - \d\d:\d\d:\d\d (\w+) \((\w+)\): freed \d+\.\d MB", out, re.M)
    assert ("emergency", "critical") in actions

    as_json = status(server.url, "--json", "--token", demo_token(server), app_dir=app_dir)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["health"]["status"] == "critical"


def test_nothing_listening_exits_3(app_dir: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = status(f"http://127.0.0.1:{port}", app_dir=app_dir)
    assert result.returncode == 3
    line = one_error_line(result)
    assert f"http://127.0.0.1:{port}{PREFIX}/health" in line
    assert "connection refused" in line


def test_a_silent_server_times_out(app_dir: Path) -> None:
    with socket.socket() as silent:  # the kernel accepts the connection; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = status(f"http://127.0.0.1:{port}", "--timeout", "0.5", app_dir=app_dir)
    assert result.returncode == 3
    assert "no answer within 0.5 s" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ftp://127.0.0.1/"], "is not an http(s) URL"),
        (["http://"], "is not an http(s) URL"),
        (["http://127.0.0.1:99999x"], "is not a valid URL"),
        (["http://127.0.0.1:8000/?x=1"], "without a query"),
        (["http://127.0.0.1:8000", "--timeout", "0"], "argument --timeout"),
        (["http://127.0.0.1:8000", "--prefix", "/"], "argument --prefix"),
        (["http://127.0.0.1:8000", "--token", ""], "--token is empty"),
        ([], "the following arguments are required: URL"),
    ],
)
def test_bad_usage_exits_3(app_dir: Path, args: list[str], expected: str) -> None:
    result = status(*args, app_dir=app_dir)
    assert result.returncode == 3  # not 2, which means "critical"
    assert expected in one_error_line(result)


# -- in-process: help, URLs, canned answers


def test_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wsgi-memopt status")
    assert "examples:\n  wsgi-memopt status" in out
    for line in (
        "  0  excellent or good",
        "  1  warning",
        "  2  critical, or the worker needs a restart (health answered 503)",
        "  3  the status could not be read",
    ):
        assert line in out
    assert "WSGI_MEMOPT_API_TOKEN" in out


@pytest.mark.parametrize(
    ("url", "prefix", "expected"),
    [
        ("http://h:1", PREFIX, "http://h:1/api/v1/memory"),
        ("http://h:1/", PREFIX, "http://h:1/api/v1/memory"),
        ("HTTP://h:1/api/v1/memory", PREFIX, "http://h:1/api/v1/memory"),
        ("http://h:1/api/v1/memory//", PREFIX, "http://h:1/api/v1/memory"),
        ("http://h:1/app", PREFIX, "http://h:1/app/api/v1/memory"),  # mounted under /app
        ("h:1", PREFIX, "http://h:1/api/v1/memory"),
        ("https://[::1]:8443", PREFIX, "https://[::1]:8443/api/v1/memory"),
        ("http://h:1", "/_mem", "http://h:1/_mem"),
        ("http://h:1/_mem/", "/_mem", "http://h:1/_mem"),
    ],
)
def test_api_url(url: str, prefix: str, expected: str) -> None:
    assert api_url(url, prefix) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mailto:someone@example.com", "no user or password in the URL"),
        ("http://user:pw@h:1/", "no user or password in the URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("http://h:1/#top", "without a query or fragment"),
    ],
)
def test_api_url_refuses_what_is_no_server_url(url: str, message: str) -> None:
    with pytest.raises(StatusUnknown) as info:
        api_url(url)
    assert message in str(info.value)


class _Canned(BaseHTTPRequestHandler):
    """Answers every GET from ``server.answers[path] = (status, headers, body)``."""

    def do_GET(self) -> None:
        answers: dict[str, tuple[int, dict[str, str], bytes]] = self.server.answers  # type: ignore[attr-defined]
        self.server.seen.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        code, headers, body = answers.get(self.path, (404, {}, b"not here"))
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.answers = {}  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


HEALTH = {
    "status": "warning",
    "memory_percent": 80.5,
    "source": "cgroup",
    "alert": {"level": "warning", "message": "memory at 80.5%\nof cgroup", "recommendation": "x"},
    "restart_reason": None,
    "recommendations": [
        {
            "finding": "memory in warning (80.5%)",
            "action": "run an optimize",
            "endpoint": "POST optimize",
        }
    ],
}
STATS = {
    "memory": {"percent": 80.5, "rss_mb": 400.0, "source": "cgroup", "status": "warning"},
    "cache": {"items": 3, "size_mb": 1.5, "hits": 9, "misses": 1, "hit_rate": 0.9, "evictions": 2},
    "gc": {"generations": [{"collections": 5}, {"collections": 4}, {"collections": 3}]},
    "governor": {
        "restart_reason": None,
        "last_actions": [
            {
                "kind": "optimize",
                "reason": "warning",
                "at": 0,
                "duration_ms": 12.3,
                "improvement": {"mb_freed": 2.5},
            },
        ],
    },
    "process": {"pid": 42, "uptime_s": 7200},
    "workers": {"server": "gunicorn", "master_pid": 7, "workers": [{}, {}], "total_rss_mb": 800},
}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["status", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_warning_exits_1_and_every_part_is_shown(
    stub: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers = {  # type: ignore[attr-defined]
        f"{PREFIX}/health": (200, {}, _json(HEALTH)),
        f"{PREFIX}/stats": (200, {}, _json(STATS)),
    }
    code, out, err = _run(capsys, _url(stub), "--token", "t0k")
    assert code == 1, err
    assert field(out, "status") == "warning, memory 80.5% of cgroup"
    assert field(out, "rss") == "400.0 MB (pid 42, up 2.0 h)"
    assert field(out, "cache").startswith(
        "3 items, 1.5 MB of ? MB, hit rate 90% (9 hits, 1 misses)"
    )
    assert field(out, "gc") == "collections gen0 5, gen1 4, gen2 3"
    assert field(out, "workers") == "2 under gunicorn master 7, 800.0 MB RSS in all"
    assert field(out, "alert") == "warning: memory at 80.5% of cgroup"  # kept on one line
    assert field(out, "last actions") == "1"
    assert re.search(
        r"^  - \d\d:\d\d:\d\d optimize \(warning\): freed 2\.5 MB in 12 ms$", out, re.M
    )
    assert "  - memory in warning (80.5%): run an optimize [POST optimize]" in out
    assert stub.seen == [  # type: ignore[attr-defined]
        (f"{PREFIX}/health", "Bearer t0k"),
        (f"{PREFIX}/stats", "Bearer t0k"),
    ]


def test_restart_needed_503_exits_2(
    stub: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    health = dict(HEALTH, status="restart-needed", restart_reason="rss above 90% for 300 s")
    stub.answers = {  # type: ignore[attr-defined]
        f"{PREFIX}/health": (503, {}, _json(health)),
        f"{PREFIX}/stats": (200, {}, _json({})),  # figures missing: shown as '?'
    }
    code, out, err = _run(capsys, _url(stub))
    assert code == 2, err
    assert field(out, "restart") == "needed: rss above 90% for 300 s"
    assert field(out, "rss") == "? MB"
    assert field(out, "cache").startswith("? items")


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ((200, {}, b"<html>hello</html>"), "HTTP 200, but the answer is not a JSON object"),
        ((200, {}, b"[1, 2]"), "not a JSON object"),
        ((200, {}, _json({"status": "splendid"})), "unknown status 'splendid'"),
        ((302, {"Location": "https://elsewhere/"}, b""), "redirected to https://elsewhere/"),
        (
            (500, {}, _json({"error": {"status": 500, "message": "boom\nagain"}})),
            "HTTP 500 Internal Server Error: boom again",
        ),
        ((429, {"Retry-After": "3"}, b""), "HTTP 429 Too Many Requests (retry after 3 s)"),
    ],
    ids=["html", "json-list", "unknown-status", "redirect-not-followed", "server-error", "429"],
)
def test_odd_answers_exit_3_in_one_line(
    stub: ThreadingHTTPServer,
    capsys: pytest.CaptureFixture[str],
    health: tuple[int, dict[str, str], bytes],
    expected: str,
) -> None:
    stub.answers = {  # type: ignore[attr-defined]
        f"{PREFIX}/health": health,
        f"{PREFIX}/stats": (200, {}, _json(STATS)),
    }
    code, out, err = _run(capsys, _url(stub), "--token", "t0k")
    assert code == 3
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"wsgi-memopt: error: GET {_url(stub)}{PREFIX}/health: ")
    assert expected in err
    assert all(path.startswith(PREFIX) for path, _ in stub.seen)  # type: ignore[attr-defined]


def test_a_failing_stats_exits_3(
    stub: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers = {f"{PREFIX}/health": (200, {}, _json(HEALTH))}  # type: ignore[attr-defined]
    code, out, err = _run(capsys, _url(stub))
    assert code == 3
    assert out == ""
    assert f"GET {_url(stub)}{PREFIX}/stats: HTTP 404" in err


@pytest.mark.parametrize("prefix", ["/_mem", "_mem", "/_mem/"], ids=["path", "no-slash", "slash"])
def test_prefix_is_where_the_api_is_asked(
    stub: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    stub.answers = {  # type: ignore[attr-defined]
        "/_mem/health": (200, {}, _json(HEALTH)),
        "/_mem/stats": (200, {}, _json(STATS)),
    }
    code, out, err = _run(capsys, _url(stub), "--prefix", prefix)
    assert code == 1, err
    assert field(out, "memory API") == f"{_url(stub)}/_mem"
    assert [path for path, _ in stub.seen] == ["/_mem/health", "/_mem/stats"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("prefix", ["/", "/a b", "/50%", "/mémoire"])
def test_prefix_the_server_could_not_have_is_refused(
    capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    code, out, err = _run(capsys, "http://127.0.0.1:1", "--prefix", prefix)
    assert code == 3
    assert out == ""
    assert err.startswith(f"wsgi-memopt: error: argument --prefix: {prefix!r}: expected a path")
    assert err.count("\n") == 1


def test_env_token_is_not_used_when_token_given(
    stub: ThreadingHTTPServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_MEMOPT_API_TOKEN", "from-env")
    stub.answers = {  # type: ignore[attr-defined]
        f"{PREFIX}/health": (200, {}, _json(dict(HEALTH, status="good"))),
        f"{PREFIX}/stats": (200, {}, _json(STATS)),
    }
    assert _run(capsys, _url(stub))[0] == 0
    assert _run(capsys, _url(stub), "--token", "given")[0] == 0
    assert [auth for _, auth in stub.seen] == [  # type: ignore[attr-defined]
        "Bearer from-env",
        "Bearer from-env",
        "Bearer given",
        "Bearer given",
    ]
    assert os.environ["WSGI_MEMOPT_API_TOKEN"] == "from-env"
