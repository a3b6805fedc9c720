"""PasteDeploy factories (``wsgi_memopt/paste.py``) and ``examples/production*.ini``.

- both ini forms (``[pipeline:main]`` and ``filter-with``) load through ``paste.deploy.loadapp``
  and serve ``/slow`` from the cache on the second request, ``/me`` never;
- a bad or unknown ini value raises ``SettingsError`` naming the ini key;
- PasteDeploy's ``[DEFAULT]`` trap: a setting only in ``[DEFAULT]`` (or written ``set name =
  value``) still applies; the environment comes below the file;
- ``gunicorn --paste`` serves both ini files for real on 127.0.0.1 (sync and gthread workers),
  and refuses to boot, with the ``SettingsError`` in its log, when the ini has a bad value.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.needs import require_module
from helpers.servers import BOOT_TIMEOUT_S, EXAMPLES, Servers, fetch
from helpers.wsgi import checked, get
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer, SettingsError
from wsgi_memopt.paste import filter_app_factory, filter_factory

pytest.importorskip("paste.deploy")  # CI installs it: setup.cfg's test extra
from paste.deploy import loadapp

INI_FILES = ["production.ini", "production_filter_with.ini"]
# Test-friendly settings through PasteDeploy's global_conf (the [DEFAULT] route): no
# gc.freeze() of the test process, no monitor thread per loaded app.
QUIET = {"gc_freeze": "false", "monitor_interval_s": "0"}


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # `call:hello_app:make_app`


def load(path: Path, **global_conf: str) -> MemoryOptimizer:
    app = loadapp(f"config:{path}", global_conf={**QUIET, **global_conf})
    assert isinstance(app, MemoryOptimizer)
    return app


def write_ini(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "test.ini"
    path.write_text(textwrap.dedent(text))
    return path


FILTER_INI = """\
    [DEFAULT]
    {defaults}

    [app:main]
    use = call:hello_app:make_app
    slow_s = 0
    filter-with = memopt

    [filter:memopt]
    use = egg:wsgi_memopt
    {local}
    """


def filter_ini(tmp_path: Path, local: str = "", defaults: str = "") -> Path:
    return write_ini(tmp_path, FILTER_INI.format(local=local, defaults=defaults))


# -- loadapp


@pytest.mark.parametrize("ini", INI_FILES)
def test_both_ini_forms_load_and_cache_the_shared_page_only(ini: str) -> None:
    optimizer = load(EXAMPLES / ini, slow_s="0")
    assert optimizer.settings.cache_ttl_s == 300  # the file's value, not [DEFAULT]'s 600
    client = Client(checked(optimizer), use_cookies=False)

    first, second = get(client, "/slow"), get(client, "/slow")
    assert first.headers["Cache-Status"] == "wsgi-memopt; fwd=miss; stored"
    assert second.headers["Cache-Status"].startswith("wsgi-memopt; hit; ttl=")
    assert second.data == first.data

    new_visitor = get(client, "/me")
    assert "Set-Cookie" in new_visitor.headers
    assert "hit" not in new_visitor.headers["Cache-Status"]
    known = get(client, "/me", headers={"Cookie": "user=alice"})
    assert known.data == b"hello alice\n"
    assert "hit" not in known.headers["Cache-Status"]

    # /report says nothing about caching: kept only where the ini gives it a lifetime.
    kept = optimizer.settings.cache_default_ttl_s > 0
    assert kept is (ini == "production.ini")
    first_report, second_report = get(client, "/report"), get(client, "/report")
    assert ("hit" in second_report.headers["Cache-Status"]) is kept
    if kept:
        assert second_report.data == first_report.data
    assert optimizer.cache.stats()["items"] == 1 + kept  # /slow, and /report if kept


def test_the_pipeline_ini_reads_every_filter_key() -> None:
    settings = load(EXAMPLES / "production.ini").settings
    assert settings.cache_max_mb == 25
    assert settings.cache_exclude_paths == ("/admin/*",)
    assert settings.source_of("cache_max_mb") == "ini key 'cache_max_mb'"


def test_filter_app_factory_and_filter_factory_agree() -> None:
    def app(environ: object, start_response: Callable[..., object]) -> list[bytes]:
        return []

    conf = {"cache_max_mb": "5", "gc_freeze": "false", "monitor_interval_s": "0"}
    by_app_factory = filter_app_factory(app, {"here": "/srv"}, **conf)
    by_filter = filter_factory({"here": "/srv"}, **conf)(app)
    assert by_app_factory.settings == by_filter.settings
    assert by_app_factory.settings.cache_max_mb == 5
    assert by_app_factory.app is app


# -- errors name the ini key


@pytest.mark.parametrize(
    ("local", "defaults", "expected"),
    [
        pytest.param("cache_max_mb = lots", "", "ini key 'cache_max_mb'", id="bad-value"),
        pytest.param("cache_max_mbs = 5", "", "did you mean 'cache_max_mb'", id="unknown-key"),
        pytest.param("", "cache_ttl_s = soon", "ini key 'cache_ttl_s'", id="bad-default"),
        pytest.param("set gc_mode = sometimes", "", "ini key 'gc_mode'", id="bad-set"),
    ],
)
def test_a_bad_ini_value_names_the_ini_key(
    tmp_path: Path, local: str, defaults: str, expected: str
) -> None:
    with pytest.raises(SettingsError, match=expected):
        load(filter_ini(tmp_path, local, defaults))


# -- the [DEFAULT] trap


@pytest.mark.parametrize(
    ("local", "defaults", "ttl"),
    [
        pytest.param("", "cache_ttl_s = 42", 42, id="only-in-default-applies"),
        # PasteDeploy drops the section's key when [DEFAULT] has it: the docstring says so.
        pytest.param("cache_ttl_s = 7", "cache_ttl_s = 42", 42, id="plain-key-loses"),
        pytest.param("set cache_ttl_s = 7", "cache_ttl_s = 42", 7, id="set-key-wins"),
        pytest.param("cache_ttl_s = 7", "debug = true", 7, id="other-defaults-ignored"),
    ],
)
def test_settings_in_default_still_apply(
    tmp_path: Path, local: str, defaults: str, ttl: float
) -> None:
    assert load(filter_ini(tmp_path, local, defaults)).settings.cache_ttl_s == ttl


def test_the_ini_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_MAX_MB", "3")
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_MAX_ITEMS", "7")
    settings = load(filter_ini(tmp_path, "cache_max_mb = 25")).settings
    assert settings.cache_max_mb == 25
    assert settings.cache_max_items == 7
    assert settings.source_of("cache_max_items") == "WSGI_MEMOPT_CACHE_MAX_ITEMS"


# -- a stock filter behind the cache cannot poison a page

PREFIX_INI = """\
    [pipeline:main]
    pipeline = memopt prefix links

    [filter:memopt]
    use = egg:wsgi_memopt

    [filter:prefix]
    use = egg:PasteDeploy#prefix

    [app:links]
    use = call:test_paste:make_links_app
    """


def make_links_app(global_conf: dict[str, str], **conf: str) -> Callable[..., list[bytes]]:
    """``paste.app_factory``: a cacheable page linking to itself by the URL it was asked at."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        url = f"{environ['wsgi.url_scheme']}://{environ['HTTP_HOST']}/next"
        body = f'<a href="{url}">next</a>'.encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "public, max-age=600"),
            ],
        )
        return [body]

    return app


@pytest.mark.parametrize("evil_first", [True, False], ids=["evil-first", "honest-first"])
@pytest.mark.parametrize(
    ("header", "value", "evil"),
    [
        ("X-Forwarded-Server", "evil.example", b'<a href="http://evil.example/next">next</a>'),
        ("X-Forwarded-Scheme", "javascript", b'<a href="javascript://localhost/next">next</a>'),
    ],
)
def test_the_prefix_filter_behind_the_cache_cannot_poison_a_page(
    tmp_path: Path, header: str, value: str, evil: bytes, evil_first: bool
) -> None:
    # egg:PasteDeploy#prefix rewrites the host from X-Forwarded-Server and the scheme from
    # X-Forwarded-Scheme, for any client: behind the cache, such a request passes through.
    optimizer = load(write_ini(tmp_path, PREFIX_INI))
    client = Client(checked(optimizer), use_cookies=False)
    honest = b'<a href="http://localhost/next">next</a>'
    for step in ("evil", "honest") if evil_first else ("honest", "evil"):
        if step == "evil":
            assert get(client, "/page", headers={header: value}).data == evil  # a real test
        else:
            assert get(client, "/page").data == honest

    again = get(client, "/page")

    assert (again.data, again.headers["X-Cache"]) == (honest, "HIT")
    assert [entry.body for entry in optimizer.cache.entries()] == [honest]


# -- gunicorn --paste, for real on 127.0.0.1


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
@pytest.mark.parametrize("ini", INI_FILES)
def test_gunicorn_paste_serves_through_the_filter(
    servers: Servers, ini: str, worker_class: str
) -> None:
    require_module("paste.deploy")
    server = servers.start(
        "--paste",
        str(EXAMPLES / ini),
        "--chdir",
        str(EXAMPLES),
        # The memory API is closed unless opened: to this test's loopback, through the env.
        "--env",
        "WSGI_MEMOPT_API_ALLOW_NETWORKS=127.0.0.1/32",
        worker_class=worker_class,
    )
    first, second = fetch(server.port, "/slow"), fetch(server.port, "/slow")
    me = fetch(server.port, "/me")
    log = server.log()
    report = f"--- gunicorn log (tail) ---\n{log[-4000:]}"
    assert (first.status, second.status, me.status) == (200, 200, 200), report
    assert first.headers["Cache-Status"] == "wsgi-memopt; fwd=miss; stored", report
    assert second.headers["Cache-Status"].startswith("wsgi-memopt; hit; ttl="), report
    assert second.body == first.body
    assert me.headers["Set-Cookie"].startswith("user=visitor-"), report
    assert "hit" not in me.headers["Cache-Status"], report
    stats = json.loads(fetch(server.port, "/api/v1/memory/stats").body)
    pool = stats["workers"]  # under a gunicorn master: the sibling workers, from psutil
    assert pool is not None, report
    assert pool["server"] == "gunicorn", report
    assert stats["process"]["pid"] in [worker["pid"] for worker in pool["workers"]], report
    assert pool["total_rss_mb"] > 0, report
    health = fetch(server.port, "/api/v1/memory/health")  # from the middleware, not the app
    assert health.status == 200, report
    assert json.loads(health.body)["source"] in ("host", "container", "process"), report
    # The ini's logging sections route the wsgi_memopt logger to stderr (here, the log).
    assert "wsgi_memopt INFO [GC] froze the startup heap" in log, report
    assert "Traceback" not in log, report


def test_gunicorn_refuses_to_boot_on_a_bad_ini_value(servers: Servers, tmp_path: Path) -> None:
    require_module("paste.deploy")
    ini = (
        (EXAMPLES / "production.ini")
        .read_text()
        .replace("cache_max_mb = 25", "cache_max_mb = lots")
    )
    assert "cache_max_mb = lots" in ini
    bad = tmp_path / "bad.ini"
    bad.write_text(ini)
    server = servers.start("--paste", str(bad), "--chdir", str(EXAMPLES), wait_boot=False)
    try:
        server.proc.wait(timeout=BOOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn still running with a bad ini:\n{server.log()[-4000:]}")
    log = server.log()
    assert server.proc.returncode != 0, log[-4000:]
    assert "SettingsError: setting cache_max_mb (from ini key 'cache_max_mb'): 'lots'" in log, log[
        -4000:
    ]
