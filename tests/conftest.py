"""Fixtures for every test: the collector, the environment and the WSGI checks as found;
and the real servers (gunicorn, ``wsgi-memopt serve``, redis-server) that some tests start.

Helpers to import live in ``tests/helpers/``; this file holds only fixtures.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import server_starter, write_apps
from helpers.redis import RedisCluster, RedisSentinel, RedisServer, require_redis
from helpers.servers import Server, Servers
from werkzeug.middleware import lint


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Real gunicorn servers on 127.0.0.1, each stopped by its PID when the test ends."""
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory holding the app module ``webapp`` the ``wsgi-memopt`` tests load."""
    return write_apps(tmp_path)


@pytest.fixture
def serve(tmp_path: Path, app_dir: Path, request: pytest.FixtureRequest) -> Callable[..., Server]:
    """``serve(*args, env=None)``: a real ``wsgi-memopt serve ARGS`` on 127.0.0.1 that can load
    ``webapp``, stopped by its PID when the test ends."""
    return server_starter(tmp_path, app_dir, request.addfinalizer)


@pytest.fixture(autouse=True)
def _lint_input_has_readlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``checked`` be stacked on both sides of the middleware.

    werkzeug's lint wraps ``wsgi.input`` in an ``InputStream`` without ``readlines``, which
    PEP 3333 requires and the inner wsgiref validator checks for.
    """

    def readlines(self: Any, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    monkeypatch.setattr(lint.InputStream, "readlines", readlines, raising=False)


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """Every test leaves CPython's collector as it found it: a governor a test never stopped
    keeps the thresholds its GC schedule set, which would change the tests after it."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's WSGI_MEMOPT_* variables out of the tests."""
    for name in list(os.environ):
        if name.startswith("WSGI_MEMOPT_"):
            monkeypatch.delenv(name)


# Real Redis peers on 127.0.0.1 (tests/helpers/redis.py): without redis-server the tests that
# use them skip, under CI=true they fail. Each is stopped by its PID, whatever the test did.


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests take it through ``redis_url``."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared redis-server's URL, up and empty for this test."""
    redis_server.reset()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, to kill, pause or restart; stopped at its end."""
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()  # resumes it first if the test left it paused


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster for the whole run."""
    require_redis()
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The cluster's URL, every primary empty for this test."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A primary redis-server watched by one sentinel, for the whole run."""
    require_redis()
    sentinel = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel")).start()
    yield sentinel
    sentinel.stop()
