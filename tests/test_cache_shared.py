"""Tests of the shared cache (wsgi_memopt.cache.shared and redis_store) with a real Redis.

Each test builds two or three middlewares on one Redis, each standing for a worker process
(its own cache, local store, single-flight table and listener; see helpers/shared.py), and
tells what happened by the app's call count, the responses and what Redis holds. Faults are
real: the test's own redis-server is killed, paused (SIGSTOP) or filled. Every wait is bounded;
durations are asserted only against generous bounds.
"""

from __future__ import annotations

import pickle
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.apps import CACHEABLE, CountingApp
from helpers.headers import cache_status
from helpers.redis import RedisCluster, RedisSentinel, RedisServer, require_redis
from helpers.shared import (
    WAIT_S,
    GatedApp,
    listening,
    processes,
    redis_names,
    wait_heard,
    wait_until,
)
from helpers.wsgi import get, open_, run_threads

from wsgi_memopt.backend import parse_backend
from wsgi_memopt.cache import listener
from wsgi_memopt.cache.policy import key_variables
from wsgi_memopt.cache.redis_store import RedisStore, Unavailable

PREFIX = "wsgi-memopt:"
RECORDS = PREFIX + "e:*"
NAMES = key_variables(())


@pytest.fixture(autouse=True)
def _listeners_stop_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener notices stop() within one poll of its channel: a short poll keeps the end
    of every test (which stops two or three of them) short."""
    monkeypatch.setattr(listener, "_POLL_S", 0.05)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on the test's (flushed) Redis, to look at what the cache wrote."""
    with redis.Redis.from_url(redis_url, socket_timeout=5.0) as made:
        yield made


# -- one process fills, the others serve


def test_a_page_fetched_by_one_process_is_a_hit_in_another(
    redis_url: str, client: redis.Redis
) -> None:
    app = CountingApp()
    with processes(app, redis_url, 3) as (a, b, c):
        first = a.get("/page")
        assert first.data == b"body #1"
        assert cache_status(first)["fwd"] == "miss"
        assert len(redis_names(client, RECORDS)) == 1
        for other in (b, c):
            reply = other.get("/page")
            assert reply.data == b"body #1"
            assert cache_status(reply)["hit"] is True
            assert reply.headers["X-Cache"] == "HIT"
        assert app.calls == 1
        assert (a.shared_stats()["misses"], a.shared_stats()["stores"]) == (1, 1)
        assert (b.shared_stats()["hits"], c.shared_stats()["hits"]) == (1, 1)
        # Each keeps its own copy: the next hit does not ask Redis.
        assert b.get("/page").data == b"body #1"
        assert b.shared_stats()["hits"] == 1
        assert len(b.store) == 1


def test_a_shared_hit_carries_its_age(redis_url: str) -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Age", "7")])
    with processes(app, redis_url) as (a, b):
        a.get("/page")
        reply = b.get("/page")
        assert int(reply.headers["Age"]) >= 7
        assert int(str(cache_status(reply)["ttl"])) <= 53


def test_vary_variants_are_shared_between_processes(redis_url: str, client: redis.Redis) -> None:
    app = CountingApp(
        headers=[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
        echo="HTTP_ACCEPT_LANGUAGE",
    )
    with processes(app, redis_url) as (a, b):
        assert a.get("/page", headers={"Accept-Language": "en"}).data == b"body #1 'en'"
        assert a.get("/page", headers={"Accept-Language": "fr"}).data == b"body #2 'fr'"
        # Two variants and the marker under the base key naming the header.
        assert len(redis_names(client, RECORDS)) == 3
        assert b.get("/page", headers={"Accept-Language": "fr"}).data == b"body #2 'fr'"
        assert b.get("/page", headers={"Accept-Language": "en"}).data == b"body #1 'en'"
        assert app.calls == 2
        assert b.get("/page", headers={"Accept-Language": "de"}).data == b"body #3 'de'"
        assert a.get("/page", headers={"Accept-Language": "de"}).data == b"body #3 'de'"
        assert a.get("/page").data == b"body #4 None"
        assert app.calls == 4


@pytest.mark.parametrize(
    "cache_control",
    ["no-store", "private, max-age=60", "no-cache, max-age=0, must-revalidate"],
)
def test_a_page_that_may_not_be_stored_never_reaches_redis(
    redis_url: str, client: redis.Redis, cache_control: str
) -> None:
    app = CountingApp(headers=[("Cache-Control", cache_control)])
    with processes(app, redis_url, cache_lock_timeout_s=2.0) as (a, b):
        a.get("/page")
        b.get("/page")
        assert app.calls == 2
        assert client.keys("*") == []  # no record, no URI set, no lock left behind
        assert a.shared_stats()["stores"] == b.shared_stats()["stores"] == 0


def test_a_private_response_to_credentials_never_reaches_redis(
    redis_url: str, client: redis.Redis
) -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60")], echo="HTTP_COOKIE")
    with processes(app, redis_url) as (a, b):
        assert a.get("/me", headers={"Cookie": "user=alice"}).data == b"body #1 'user=alice'"
        assert client.keys("*") == []
        reply = b.get("/me", headers={"Cookie": "user=bob"})
        assert reply.data == b"body #2 'user=bob'"
        assert client.keys("*") == []
        # Nor is it served to a request without credentials.
        assert b"alice" not in a.get("/me").data


def test_a_public_response_to_credentials_is_shared(redis_url: str) -> None:
    app = CountingApp(headers=[("Cache-Control", "public, max-age=60")])
    with processes(app, redis_url) as (a, b):
        a.get("/news", headers={"Authorization": "Bearer one"})
        assert b.get("/news", headers={"Authorization": "Bearer two"}).data == b"body #1"
        assert app.calls == 1


@pytest.mark.parametrize(
    ("headers", "life_s"),
    [
        ([("Cache-Control", "max-age=600")], 600),
        ([("Cache-Control", "max-age=600, stale-while-revalidate=300")], 900),
        ([("Cache-Control", "max-age=600, stale-if-error=1200")], 1800),
        ([("Cache-Control", "max-age=600"), ("ETag", '"v1"')], 600 + 1800),
        ([("Cache-Control", "max-age=600"), ("Age", "100")], 500),
    ],
    ids=["max-age", "swr", "sie", "etag-keeps-for-revalidation", "age"],
)
def test_the_redis_ttl_is_the_entrys_life(
    redis_url: str, client: redis.Redis, headers: list[tuple[str, str]], life_s: int
) -> None:
    app = CountingApp(headers=headers)
    with processes(app, redis_url, 1, cache_ttl_s=1800) as (a,):
        a.get("/page")
        (record,) = redis_names(client, RECORDS)
        ttl_ms = client.pttl(record)
        assert life_s * 1000 - 5_000 < ttl_ms <= life_s * 1000
        # The page's URI set lives as long as its records (read a moment later).
        (uri,) = redis_names(client, PREFIX + "u:*")
        assert client.pttl(uri) >= ttl_ms - 1_000


def test_a_local_copy_lives_at_most_cache_local_ttl_s(redis_url: str) -> None:
    app = CountingApp()
    with processes(app, redis_url, cache_local_ttl_s=0.2) as (a, b):
        a.get("/page")
        b.get("/page")
        assert b.shared_stats()["hits"] == 1
        (copy,) = b.store.entries()
        assert copy.keep_until <= b.store.clock() + 0.2
        b.get("/page")
        assert b.shared_stats()["hits"] == 1  # its own copy
        time.sleep(0.25)
        # Its copy is gone: Redis is asked again, and still has the page.
        assert b.get("/page").data == b"body #1"
        assert b.shared_stats()["hits"] == 2
        # The process that stored it keeps its copy no longer.
        assert a.get("/page").data == b"body #1"
        assert a.shared_stats()["hits"] == 1
        assert app.calls == 1


# -- invalidation reaches Redis and every process


def test_a_post_drops_the_page_in_redis_and_in_every_process(
    redis_url: str, client: redis.Redis
) -> None:
    app = CountingApp()
    with processes(app, redis_url, 3) as (a, b, c):
        a.get("/page")
        a.get("/other")
        b.get("/page")
        c.get("/page")
        listening(a, b, c)
        heard = [p.store.listener.received for p in (b, c)]
        assert open_(a.client, "POST", "/page").status_code == 200
        assert len(redis_names(client, RECORDS)) == 1  # /other's
        for process, before in zip((b, c), heard, strict=True):
            wait_heard(process, before, "the POST")
            assert [entry.path for entry in process.store.entries()] == []
        calls = app.calls
        assert b.get("/page").data == b"body #%d" % (calls + 1)
        assert c.get("/page").data == b"body #%d" % (calls + 1)
        assert b.get("/other").data == b"body #2"


def test_invalidate_drops_a_path_and_below_everywhere(redis_url: str, client: redis.Redis) -> None:
    app = CountingApp()
    paths = ["/a", "/a/b", "/a/b/c", "/about", "/b"]
    with processes(app, redis_url) as (a, b):
        for path in paths:
            a.get(path)
            b.get(path)
        assert app.calls == len(paths)
        listening(a, b)
        before = b.store.listener.received
        assert a.optimizer.cache.invalidate("/a") >= 3
        wait_heard(b, before, "the invalidation")
        assert sorted(entry.path for entry in b.store.entries()) == ["/about", "/b"]
        assert sorted(entry.path for entry in a.store.entries()) == ["/about", "/b"]
        assert len(redis_names(client, RECORDS)) == 2
        assert len(redis_names(client, PREFIX + "u:*")) == 2
        assert b.get("/a/b").data == b"body #6"
        assert b.get("/about").data == b"body #4"


def test_clear_empties_redis_and_every_process(redis_url: str, client: redis.Redis) -> None:
    app = CountingApp()
    with processes(app, redis_url, 3) as (a, b, c):
        for path in ("/x", "/y"):
            a.get(path)
            b.get(path)
            c.get(path)
        listening(a, b, c)
        heard = [p.store.listener.received for p in (b, c)]
        a.optimizer.cache.clear()
        assert client.keys(PREFIX + "*") == []
        for process, before in zip((b, c), heard, strict=True):
            wait_heard(process, before, "the clear")
            assert len(process.store) == 0
        assert c.get("/x").data == b"body #3"


def test_the_governors_emergency_leaves_redis_alone(redis_url: str, client: redis.Redis) -> None:
    app = CountingApp()
    with processes(app, redis_url) as (a, b):
        a.get("/page")
        b.get("/page")
        published = b.store.published
        b.optimizer.governor.emergency("test")
        assert len(b.store) == 0
        assert len(a.store) == 1
        assert b.store.published == published
        assert len(redis_names(client, RECORDS)) == 1
        assert b.get("/page").data == b"body #1"
        assert b.shared_stats()["hits"] == 2


def test_a_prefix_keeps_two_apps_apart_on_one_redis(redis_url: str, client: redis.Redis) -> None:
    one, two = CountingApp(b"one"), CountingApp(b"two")
    with (
        processes(one, redis_url, 1, cache_redis_prefix="one:") as (a,),
        processes(two, redis_url, 1, cache_redis_prefix="two:") as (b,),
    ):
        assert a.get("/page").data == b"one #1"
        assert b.get("/page").data == b"two #1"
        assert len(redis_names(client, "one:e:*")) == len(redis_names(client, "two:e:*")) == 1
        a.optimizer.cache.clear()
        assert redis_names(client, "one:*") == []
        assert len(redis_names(client, "two:e:*")) == 1
        b.store.clear_local()
        assert b.get("/page").data == b"two #1"


def test_other_key_headers_never_read_each_others_records(redis_url: str) -> None:
    app = CountingApp(echo="HTTP_X_TENANT")
    with (
        processes(app, redis_url, cache_key_headers="X-Tenant") as (a, a2),
        processes(app, redis_url, 1) as (b,),
    ):
        tenant = {"X-Tenant": "t1"}
        assert a.get("/page", headers=tenant).data == b"body #1 't1'"
        assert a2.get("/page", headers=tenant).data == b"body #1 't1'"
        assert a2.get("/page", headers={"X-Tenant": "t2"}).data == b"body #2 't2'"
        # Keyed on other headers, the same request is another key: never a's record.
        assert b.get("/page", headers=tenant).data == b"body #3 't1'"
        assert b.shared_stats()["refused_records"] == {}
        assert app.calls == 3


# -- what Redis holds is not trusted


def test_another_secret_never_serves_a_record(redis_url: str) -> None:
    app = CountingApp()
    secret, other = "a-secret-of-sixteen+", "another-secret-as-long"
    with (
        processes(app, redis_url, 2, cache_redis_secret=secret) as (a, a2),
        processes(app, redis_url, 1, cache_redis_secret=other) as (b,),
    ):
        a.get("/page")
        assert a2.get("/page").data == b"body #1"
        assert b.get("/page").data == b"body #2"
        assert b.shared_stats()["refused_records"] == {
            "a record not signed with this cache's secret": 1
        }
        assert b.shared_stats()["hits"] == 0
        # b's own record (signed with its secret) is refused by a in turn.
        a2.store.clear_local()
        assert a2.get("/page").data == b"body #3"
        assert a2.shared_stats()["refused_records"] == {
            "a record not signed with this cache's secret": 1
        }


def test_with_a_secret_a_forged_invalidation_is_refused(
    redis_url: str, client: redis.Redis
) -> None:
    app = CountingApp()
    with processes(app, redis_url, cache_redis_secret="a-secret-of-sixteen+") as (a, b):
        a.get("/page")
        b.get("/page")
        listening(a, b)
        received = b.store.listener.received
        client.publish(PREFIX + "invalidate", '{"op":"clear","origin":"forger"}')
        wait_heard(b, received, "the forged message")
        assert len(b.store) == 1
        assert b.shared_stats()["refused_records"] == {"message": 1}
        # a's own, sealed with the secret, is applied.
        a.optimizer.cache.clear()
        wait_until(lambda: len(b.store) == 0, "a's clear to reach b")


def test_a_record_moved_under_another_key_is_refused(redis_url: str, client: redis.Redis) -> None:
    app = CountingApp()
    with processes(app, redis_url) as (a, b):
        a.get("/one")
        (one,) = redis_names(client, RECORDS)
        a.get("/two")
        (two,) = set(redis_names(client, RECORDS)) - {one}
        moved = client.get(one)
        assert moved is not None
        client.set(two, moved, keepttl=True)
        assert b.get("/two").data == b"body #3"
        assert b.shared_stats()["refused_records"] == {"a record filed under another key": 1}


class _Trap:
    """Unpickled, it creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_pickle_in_redis_is_refused_and_never_run(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    trap = tmp_path / "unpickled"
    app = CountingApp()
    with processes(app, redis_url) as (a, b):
        a.get("/page")
        (record,) = redis_names(client, RECORDS)
        client.set(record, pickle.dumps(_Trap(trap)), keepttl=True)
        reply = b.get("/page")
        assert reply.status_code == 200
        assert reply.data == b"body #2"
        assert not trap.exists()
        assert b.shared_stats()["refused_records"] == {"not a wsgi_memopt record": 1}
        assert b.shared_stats()["errors"] == 0


# -- single flight across processes


def test_one_fill_for_many_threads_in_many_processes(redis_url: str, client: redis.Redis) -> None:
    app = GatedApp(CACHEABLE, delay_s=0.3)
    count = 9
    with processes(app, redis_url, 3, cache_lock_timeout_s=5.0) as running:
        barrier = threading.Barrier(count)
        bodies: list[bytes] = [b""] * count

        def ask(n: int) -> None:
            # Each thread its own client; the processes share nothing but Redis.
            own = running[n % len(running)].new_client()
            barrier.wait(WAIT_S)
            bodies[n] = get(own, "/slow").data

        run_threads(count, ask, 2 * WAIT_S)
        assert app.calls == 1
        assert bodies == [b"body #1"] * count
        assert redis_names(client, PREFIX + "l:*") == []  # the fill lock was let go


def test_waiters_stop_waiting_for_a_hung_fill_after_the_lock_timeout(
    redis_url: str, client: redis.Redis
) -> None:
    app = GatedApp(CACHEABLE)
    with processes(app, redis_url, cache_lock_timeout_s=0.5) as (a, b):
        app.hold()
        hung = threading.Thread(target=a.get, args=("/slow",))
        hung.start()
        try:
            assert app.waiting.wait(WAIT_S)
            assert len(redis_names(client, PREFIX + "l:*")) == 1  # a leads the fill
            started = time.monotonic()
            reply = b.get("/slow")
            waited = time.monotonic() - started
        finally:
            app.release()
            hung.join(WAIT_S)
        assert not hung.is_alive()
        assert reply.data == b"body #2"
        # It waited for a's fill, about the lock's life, then asked the app itself.
        assert 0.25 <= waited < 5.0
        assert app.calls == 2


def test_stale_while_revalidate_refreshes_once_across_processes(redis_url: str) -> None:
    # The first response arrives stale (its Age is its max-age): within stale-while-revalidate,
    # every process serves it while one of them refreshes it.
    app = GatedApp([("Cache-Control", "max-age=60, stale-while-revalidate=60"), ("Age", "60")])
    with processes(app, redis_url, 3, cache_lock_timeout_s=5.0) as (a, b, c):
        a.get("/page")
        app.headers = [("Cache-Control", "max-age=60, stale-while-revalidate=60")]
        app.hold()
        refreshing = threading.Thread(target=b.get, args=("/page",))
        refreshing.start()
        try:
            assert app.waiting.wait(WAIT_S)  # b served it stale, and is refreshing it
            for other in (c, a):
                stale = other.get("/page")
                assert stale.data == b"body #1"
                assert int(str(cache_status(stale)["ttl"])) <= 0
            assert app.calls == 2
        finally:
            app.release()
            refreshing.join(WAIT_S)
        assert not refreshing.is_alive()
        fresh = c.get("/page")
        assert fresh.data == b"body #2"
        assert int(str(cache_status(fresh)["ttl"])) > 0
        assert app.calls == 2


# -- faults: the requests go on without Redis


def test_requests_go_on_while_redis_is_down_and_the_breaker_opens(
    own_redis: RedisServer,
) -> None:
    app = CountingApp()
    settings: dict[str, Any] = {"cache_redis_timeout_s": 0.5, "cache_redis_retry_s": 1.0}
    with processes(app, own_redis.url, **settings) as (a, b):
        a.get("/before")
        own_redis.kill()
        for n in range(4):
            reply = b.get(f"/down/{n}")
            assert (reply.status_code, reply.data) == (200, b"body #%d" % (n + 2))
        stats = b.shared_stats()
        assert stats["state"] == "open"
        assert stats["breaker_opened"] == 1
        # A lookup and a store each for the first request, then the lookup that opened it.
        assert stats["errors_by_kind"] == {"connection": 3}
        assert stats["skipped"] >= 5
        assert stats["used_memory_bytes"] is None
        # a still serves its own copy of the page it stored before the outage.
        assert a.get("/before").data == b"body #1"

        own_redis.restart()
        attempts = iter(range(1_000))

        def shared_again() -> bool:
            path = f"/after/{next(attempts)}"
            a.get(path)
            calls = app.calls
            b.get(path)
            return app.calls == calls

        wait_until(shared_again, "a page stored by a to be a hit in b again")
        assert b.shared_stats()["state"] == "closed"


def test_a_hung_redis_costs_a_request_its_timeout_then_nothing(own_redis: RedisServer) -> None:
    app = CountingApp()
    timeout_s = 0.3
    settings: dict[str, Any] = {"cache_redis_timeout_s": timeout_s, "cache_redis_retry_s": 1.0}
    with processes(app, own_redis.url, 1, **settings) as (a,):
        a.get("/warm")  # connected, listening
        own_redis.pause()
        durations = []
        for n in range(5):
            started = time.monotonic()
            assert a.get(f"/page/{n}").status_code == 200
            durations.append(time.monotonic() - started)
        stats = a.shared_stats()
        assert stats["errors_by_kind"] == {"timeout": 3}
        assert stats["state"] == "open"
        # The first request waited for its lookup and its store, the second for its lookup
        # (the third timeout: the breaker opened); then nobody waited for Redis.
        assert durations[0] < 2 * timeout_s + 1.0
        assert durations[1] < timeout_s + 1.0
        assert all(duration < timeout_s for duration in durations[2:])

        own_redis.resume()
        attempts = iter(range(1_000))

        def stored() -> bool:
            a.get(f"/resumed/{next(attempts)}")
            stats = a.shared_stats()
            return bool(stats["state"] == "closed" and stats["stores"] > 1)

        wait_until(stored, "the breaker to close once Redis answers again")


def test_the_listener_subscribes_again_after_a_restart(own_redis: RedisServer) -> None:
    app = CountingApp()
    with processes(app, own_redis.url, cache_local_ttl_s=600) as (a, b):
        a.get("/page")
        b.get("/page")
        listening(a, b)
        own_redis.restart()
        wait_until(lambda: b.store.listener.reconnects == 1, "b to subscribe again")
        assert b.shared_stats()["resubscribed"] == 1
        # Its copies stay (each lives at most cache_local_ttl_s): no wave of misses.
        assert len(b.store) == 1
        listening(a, b)
        received = b.store.listener.received
        a.optimizer.cache.invalidate("/")
        wait_heard(b, received, "an invalidation after it")
        assert len(b.store) == 0


def fill_redis(server: RedisServer) -> None:
    """Leave ``server`` refusing every write: ``maxmemory`` 1 MB, no eviction, more in use."""
    with server.client() as raw:
        raw.set("filler", b"x" * 400_000)
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", "1mb")
    memory = server.info_memory()
    assert memory["used_memory"] > memory["maxmemory"]


def test_a_full_redis_refuses_stores_without_opening_the_breaker(
    own_redis: RedisServer,
) -> None:
    app = CountingApp()
    with processes(app, own_redis.url, cache_lock_timeout_s=1.0) as (a, b):
        a.get("/before")
        fill_redis(own_redis)
        for n in range(5):
            reply = a.get(f"/full/{n}")
            assert (reply.status_code, reply.data) == (200, b"body #%d" % (n + 2))
        stats = a.shared_stats()
        # Each request's fill lock and store refused: Redis answered, it is not down.
        assert stats["errors_by_kind"] == {"out-of-memory": 10}
        assert (stats["state"], stats["breaker_opened"]) == ("closed", 0)
        assert stats["maxmemory_bytes"] == 1 << 20
        # What it holds is still read.
        assert b.get("/before").data == b"body #1"
        assert b.shared_stats()["hits"] == 1


def test_a_probe_answered_with_an_error_closes_the_breaker(own_redis: RedisServer) -> None:
    address = parse_backend(own_redis.url)
    assert address is not None
    store = RedisStore(
        address, prefix=PREFIX, timeout_s=0.5, retry_s=0.2, secret=None, key_names=NAMES
    )
    key = tuple(f"part {n}" for n in NAMES)
    store.get(key, {}, 0.0)
    own_redis.kill()
    for _ in range(3):
        store.get(key, {}, 0.0)
    assert store.breaker.state == "open"
    own_redis.restart()
    fill_redis(own_redis)
    wait_until(lambda: store.breaker.state == "half-open", "the breaker to let a probe out")
    # The probe is a write, which the full Redis refuses: an answer, not an outage.
    with pytest.raises(Unavailable):
        store.claim(key, 1.0)
    assert store.breaker.state == "closed"
    assert store.get(key, {}, 0.0) == (key, None, ())
    errors = store.errors.snapshot()
    assert errors == {"connection": 3, "out-of-memory": 1}
    store.client.close()


# -- other deployments: cluster, sentinel, unix socket


def test_a_cluster_shares_invalidates_and_clears_across_slots(
    redis_cluster_url: str, redis_cluster: RedisCluster
) -> None:
    app = CountingApp()
    paths = [f"/{top}/{n}" for top in ("a", "b") for n in range(6)]
    with processes(app, redis_cluster_url) as (a, b):
        for path in paths:
            a.get(path)
        for number, path in enumerate(paths, 1):
            assert b.get(path).data == b"body #%d" % number
        assert app.calls == len(paths)
        holding = [node for node in redis_cluster.nodes if node.client().dbsize() > 0]
        assert len(holding) > 1  # the keys are spread over the slots of several nodes

        listening(a, b)
        before = b.store.listener.received
        a.optimizer.cache.invalidate("/a")
        wait_heard(b, before, "the invalidation")
        assert sorted(entry.path for entry in b.store.entries()) == paths[6:]
        stats = b.shared_stats()
        assert stats["keys"] == 6
        assert stats["kind"] == "cluster"
        # Redis's memory is the cluster's: every primary's.
        total = sum(node.info_memory()["used_memory"] for node in redis_cluster.nodes)
        assert abs(stats["used_memory_bytes"] - total) < total * 0.2

        a.optimizer.cache.clear()
        with redis_cluster.client() as raw:
            assert redis_names(raw, PREFIX + "*") == []
        wait_until(lambda: len(b.store) == 0, "the clear to reach b")
        assert b.get("/b/0").data == b"body #%d" % (len(paths) + 1)


def test_a_sentinel_names_the_primary_the_processes_share(redis_sentinel: RedisSentinel) -> None:
    redis_sentinel.primary.flush()
    app = CountingApp()
    with processes(app, redis_sentinel.url) as (a, b):
        a.get("/page")
        assert b.get("/page").data == b"body #1"
        assert app.calls == 1
        assert b.shared_stats()["kind"] == "sentinel"
        with redis_sentinel.primary.client() as raw:
            assert len(redis_names(raw, RECORDS)) == 1


def test_a_unix_socket_and_its_database(tmp_path: Path) -> None:
    require_redis()
    # A socket's path has a short limit (108 bytes): not under pytest's long tmp_path.
    with tempfile.TemporaryDirectory(prefix="wm-", dir="/tmp") as short:
        socket_path = Path(short) / "redis.sock"
        extra = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
        server = RedisServer(tmp_path / "redis", extra=extra).start()
        try:
            app = CountingApp()
            with processes(app, f"unix://{socket_path}?db=3") as (a, b):
                a.get("/page")
                assert b.get("/page").data == b"body #1"
                assert app.calls == 1
            with redis.Redis(unix_socket_path=str(socket_path), db=3) as raw:
                assert len(redis_names(raw, RECORDS)) == 1
            with server.client() as raw:
                assert raw.dbsize() == 0  # database 0 untouched
        finally:
            server.stop()


# -- what the memory API shows


def test_the_stats_endpoint_shows_the_shared_store_without_its_password(
    own_redis: RedisServer,
) -> None:
    password = "pw-0f9c3a7e"
    with own_redis.client() as raw:
        raw.config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{own_redis.port}/0"
    app = CountingApp()
    with processes(app, url, api_allow_networks="127.0.0.1/32") as (a, b):
        a.get("/page")
        b.get("/page")
        listening(a, b)
        reply = b.client.get(
            "/api/v1/memory/stats",
            base_url="http://127.0.0.1/",
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
            buffered=True,
        )
        assert reply.status_code == 200
        assert password not in reply.get_data(as_text=True)
        shared = reply.get_json()["cache"]["shared"]
        assert shared["backend"] == f"redis://:***@127.0.0.1:{own_redis.port}/0"
        assert shared["kind"] == "single"
        assert shared["state"] == "closed"
        assert (shared["hits"], shared["misses"], shared["stores"]) == (1, 0, 0)
        assert (shared["errors"], shared["errors_by_kind"]) == (0, {})
        assert isinstance(shared["used_memory_bytes"], int)
        assert shared["used_memory_bytes"] > 0
        assert shared["keys"] == 1
        assert shared["listening"] is True
        assert shared["local_ttl_s"] == 5.0
