"""Tests of wsgi_memopt.backend: the ``cache_backend`` URL taken apart, and shown without its
password."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.backend import BackendAddress, parse_backend, redacted
from wsgi_memopt.settings import SettingsError


@pytest.mark.parametrize("url", ["memory", "MEMORY", " memory "])
def test_memory_is_no_backend(url: str) -> None:
    assert parse_backend(url) is None


ACCEPTED: list[Any] = [
    pytest.param(
        "rediss://cache:6380/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem&client_name=web",
        ("single", True, (("cache", 6380),), None, None, None, 1),
        id="rediss-tls-options",
    ),
    pytest.param(
        "redis://localhost",
        ("single", False, (("localhost", 6379),), None, None, None, 0),
        id="redis-default-port",
    ),
    pytest.param(
        "redis://cache.internal:6380/2",
        ("single", False, (("cache.internal", 6380),), None, None, None, 2),
        id="redis-port-db",
    ),
    pytest.param(
        "redis://:pw@10.0.0.5:6379/0",
        ("single", False, (("10.0.0.5", 6379),), None, "pw", None, 0),
        id="redis-password",
    ),
    pytest.param(
        "rediss://app:p%40ss%3Aword@cache:6390/3",
        ("single", True, (("cache", 6390),), "app", "p@ss:word", None, 3),
        id="rediss-user-quoted-password",
    ),
    pytest.param(
        "redis://app@cache",
        ("single", False, (("cache", 6379),), "app", None, None, 0),
        id="redis-user-only",
    ),
    pytest.param(
        "redis://[::1]:6390/1",
        ("single", False, (("::1", 6390),), None, None, None, 1),
        id="redis-ipv6",
    ),
    pytest.param(
        "redis://[::1]/1",
        ("single", False, (("::1", 6379),), None, None, None, 1),
        id="redis-ipv6-default-port",
    ),
    pytest.param(
        "REDIS://Cache:1/0",
        ("single", False, (("Cache", 1),), None, None, None, 0),
        id="scheme-any-case",
    ),
    pytest.param(
        "unix:///run/redis/redis.sock",
        ("single", False, (), None, None, None, 0),
        id="unix",
    ),
    pytest.param(
        "unix:///run/redis/redis.sock?db=4",
        ("single", False, (), None, None, None, 4),
        id="unix-db",
    ),
    pytest.param(
        "unix://:pw@/run/redis/redis.sock",
        ("single", False, (), None, "pw", None, 0),
        id="unix-password",
    ),
    pytest.param(
        "redis+cluster://a:7000,b:7001,c",
        ("cluster", False, (("a", 7000), ("b", 7001), ("c", 6379)), None, None, None, 0),
        id="cluster-nodes",
    ),
    pytest.param(
        "rediss+cluster://app:pw@a:7000",
        ("cluster", True, (("a", 7000),), "app", "pw", None, 0),
        id="cluster-tls-user",
    ),
    pytest.param(
        "redis+sentinel://s1:26380,s2/mymaster/2",
        ("sentinel", False, (("s1", 26380), ("s2", 26379)), None, None, "mymaster", 2),
        id="sentinel-nodes-db",
    ),
    pytest.param(
        "rediss+sentinel://:pw@s/my%20primary",
        ("sentinel", True, (("s", 26379),), None, "pw", "my primary", 0),
        id="sentinel-tls-quoted-service",
    ),
]


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_an_accepted_url_and_what_it_names(url: str, expected: tuple[Any, ...]) -> None:
    address = parse_backend(url)
    assert isinstance(address, BackendAddress)
    kind, tls, nodes, username, password, service, db = expected
    assert address.kind == kind
    assert address.tls is tls
    assert address.nodes == nodes
    assert (address.username, address.password) == (username, password)
    assert address.service == service
    assert address.db == db
    assert address.url == url  # what redis-py reads for a single server


def test_spaces_around_a_url_are_not_part_of_it() -> None:
    address = parse_backend("  redis://cache:6380/1\n")
    assert address is not None
    assert address.url == "redis://cache:6380/1"


REFUSED = [
    pytest.param("", id="empty"),
    pytest.param("mem", id="not-memory"),
    pytest.param("http://cache:6379", id="http"),
    pytest.param("redis+unix:///s.sock", id="unknown-scheme"),
    pytest.param("redis://", id="no-host"),
    pytest.param("redis://cache:0", id="port-0"),
    pytest.param("redis://cache:65536", id="port-too-high"),
    pytest.param("redis://cache:port", id="port-not-a-number"),
    pytest.param("redis://cache/-1", id="db-negative"),
    pytest.param("redis://cache/one", id="db-not-a-number"),
    pytest.param("redis://cache/1/2", id="two-dbs"),
    pytest.param("redis://a:1,b:2", id="single-with-two-hosts"),
    pytest.param("redis://[::1", id="ipv6-unclosed"),
    pytest.param("unix://", id="unix-no-path"),
    pytest.param("unix://host/run/redis.sock", id="unix-with-host"),
    pytest.param("unix:///s.sock?db=x", id="unix-db-not-a-number"),
    pytest.param("unix:///s.sock?db=-1", id="unix-db-negative"),
    pytest.param("redis+cluster://a:7000/1", id="cluster-with-db"),
    pytest.param("redis+cluster://a:7000,", id="cluster-empty-node"),
    pytest.param("redis+sentinel://s:26379", id="sentinel-no-service"),
    pytest.param("redis+sentinel://s:26379/", id="sentinel-empty-service"),
    pytest.param("redis+sentinel://s/svc/1/2", id="sentinel-two-dbs"),
    # Options that would undo the cache's own timeouts and retries, or say a db twice.
    pytest.param("redis://cache/0?socket_timeout=30", id="query-socket-timeout"),
    pytest.param("redis://cache/0?retry_on_timeout=yes", id="query-retry"),
    pytest.param("redis://cache/0?health_check_interval=1", id="query-health-check"),
    pytest.param("redis://cache/0?db=3", id="query-db-beside-the-path"),
    pytest.param("redis+cluster://a:7000?ssl_cert_reqs=none", id="cluster-with-a-query"),
    pytest.param("redis+sentinel://s/svc?client_name=x", id="sentinel-with-a-query"),
]


@pytest.mark.parametrize("url", REFUSED)
def test_a_bad_url_raises_value_error_saying_what_is_allowed(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'memory', or a Redis URL"):
        parse_backend(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://app:pw@cache", "redis://app:***@cache"),
        ("rediss://app:p%40ss@cache", "rediss://app:***@cache"),
        ("redis://:p@ss@cache", "redis://:***@cache"),
        ("unix://:pw@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("redis+cluster://:pw@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
        ("redis+sentinel://app:pw@s1,s2/svc/1", "redis+sentinel://app:***@s1,s2/svc/1"),
        # redis-py takes a password from the query too.
        ("redis://cache/0?password=pw", "redis://cache/0?password=***"),
        ("unix:///s.sock?db=1&password=pw&x=1", "unix:///s.sock?db=1&password=***&x=1"),
        ("redis://app@cache", "redis://app@cache"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("memory", "memory"),
    ],
)
def test_redacted_hides_the_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_redacted_hides_an_unreadable_url_whole() -> None:
    assert "pw" not in redacted("redis://:pw@[::1")


def test_a_redis_backend_without_redis_py_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py is imported when the middleware is built (before a fork), so a missing extra
    # shows at start-up, as one error naming the setting, never at the first request.
    monkeypatch.setitem(sys.modules, "redis.cluster", None)
    with pytest.raises(
        SettingsError, match=r"needs redis-py: pip install 'wsgi-memopt\[redis\]'"
    ) as info:
        MemoryOptimizer(lambda environ, start: [], cache_backend="redis://:pw@127.0.0.1:1/0")
    assert info.value.setting == "cache_backend"
    assert "pw" not in str(info.value)
