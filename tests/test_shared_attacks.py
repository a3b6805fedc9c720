"""An attacker, and a hostile environment, against the shared cache on Redis.

Each test stands for one way a Redis shared by many processes could leak a page, poison one,
run code, exhaust a worker's memory, hang or fail requests, leak a secret or lose an
invalidation. Two middlewares on one redis-server stand for two processes (or machines);
what an attacker writes goes straight into Redis with a client of its own.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.apps import CountingApp
from helpers.openapi import PREFIX
from helpers.redis import RedisServer
from helpers.wsgi import get, open_, wrap
from werkzeug.test import Client, EnvironBuilder

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.backend import parse_backend
from wsgi_memopt.cache import redis_store, wire
from wsgi_memopt.cache.redis_store import RedisStore, connect
from wsgi_memopt.cache.shared import SharedStore
from wsgi_memopt.settings import Settings, shown_value

SECRET = "a-secret-of-sixteen-or-more"

Make = Callable[..., tuple[MemoryOptimizer, Client]]


@pytest.fixture
def processes() -> Iterator[Make]:
    """``make(app, **settings)``: a middleware on ``app`` (a process of its own); every one
    made stops its invalidation listener when the test ends."""
    made: list[MemoryOptimizer] = []

    def make(app: Any, **settings: Any) -> tuple[MemoryOptimizer, Client]:
        optimizer, client = wrap(app, **settings)
        made.append(optimizer)
        return optimizer, client

    yield make
    # All at once: each listener notices its stop within a poll, so the waits overlap.
    closing = [threading.Thread(target=optimizer.close) for optimizer in made]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


def shared_of(optimizer: MemoryOptimizer) -> SharedStore:
    """The optimizer's two-level store."""
    store = optimizer.cache.store
    assert isinstance(store, SharedStore)
    return store


def redis_of(optimizer: MemoryOptimizer) -> RedisStore:
    """The optimizer's Redis level."""
    return shared_of(optimizer).shared


def record_key_of(optimizer: MemoryOptimizer, path: str, host: str = "localhost") -> str:
    """The Redis key of the record of a plain GET of ``path`` (as werkzeug's client sends it)."""
    environ = EnvironBuilder(path, base_url=f"http://{host}/").get_environ()
    store = redis_of(optimizer)
    return store.record_key(store.key_text(optimizer.cache.key(environ)))


def is_hit(response: Any) -> bool:
    """Whether a response was served from the cache (either level)."""
    return str(response.headers["Cache-Status"]).startswith("wsgi-memopt; hit")


# -- the circuit breaker


def test_a_probe_answered_with_a_redis_error_does_not_leave_the_breaker_open(
    processes: Make, own_redis: RedisServer
) -> None:
    """After an outage, the probe that finds Redis back but gets one of Redis's own errors
    (here WRONGTYPE on a key someone else wrote) must not leave the process without Redis
    for good."""
    app = CountingApp()
    optimizer, client = processes(
        app, cache_backend=own_redis.url, cache_redis_timeout_s=0.2, cache_redis_retry_s=0.05
    )
    _, other_client = processes(app, cache_backend=own_redis.url)
    store = redis_of(optimizer)
    own_redis.kill()
    for path in ("/a", "/b", "/c"):
        get(client, path)
    assert store.breaker.state != "closed"
    own_redis.restart()
    with own_redis.client() as attacker:
        attacker.hset(record_key_of(optimizer, "/probe"), "field", "value")
    time.sleep(0.1)
    get(client, "/probe")  # the probe: Redis answers WRONGTYPE
    assert store.errors.snapshot().get("redis") == 1
    get(other_client, "/page")  # stored in Redis by another process
    time.sleep(0.1)
    assert is_hit(get(client, "/page")), store.stats()
    assert store.breaker.state == "closed"


# -- what a worker reads from Redis


def test_a_huge_value_under_a_record_key_is_not_read_whole(processes: Make, redis_url: str) -> None:
    """Whoever can write to Redis (even without the secret, when they "can only delete") puts
    a value far larger than any entry under a page's key (its name is no secret): the worker
    refuses it without holding all of it."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url, cache_redis_secret=SECRET)
    huge = 32 << 20
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set(record_key_of(optimizer, "/"), b"WMC\x01\x01" + bytes(huge))
    tracemalloc.start()
    try:
        response = get(client, "/")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    assert app.calls == 1  # a miss
    assert peak < huge // 2, f"the request allocated {peak / 2**20:.1f} MiB at its peak"
    assert redis_of(optimizer).refused.snapshot()


def fill_set(client: Any, name: str, members: int, prefix: str) -> None:
    """``members`` names under ``prefix`` added to the set ``name``, in batches."""
    batch = 10_000
    for start in range(0, members, batch):
        stop = min(start + batch, members)
        client.zadd(name, {f"{prefix}e:{n:032x}": 0 for n in range(start, stop)})


def test_an_invalidation_reads_a_huge_uri_set_in_bounded_batches(
    processes: Make, redis_url: str
) -> None:
    """A page's URI set grows by one member for each variant ever stored (a ``Vary`` on a
    header the client picks freely), and its members outlive their records. A POST then
    must still drop the page everywhere, without a worker holding the whole set at once."""
    app = CountingApp()
    first, first_client = processes(app, cache_backend=redis_url)
    _, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/page")
    store = redis_of(first)
    members = 100_000
    with redis.Redis.from_url(redis_url) as attacker:
        fill_set(attacker, store.uri_key("localhost", "/page", ""), members, store.prefix)
    tracemalloc.start()
    try:
        started = time.monotonic()
        assert open_(first_client, "POST", "/page").status_code == 200
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.errors.snapshot() == {}
    assert peak < 8 << 20, f"the POST allocated {peak / 2**20:.1f} MiB at its peak ({took:.2f} s)"
    calls = app.calls
    assert not is_hit(get(second_client, "/page"))  # dropped from Redis too
    assert app.calls == calls + 1


def test_an_invalidation_deletes_only_the_cache_s_own_records(
    processes: Make, redis_url: str
) -> None:
    """A name outside the cache's records slipped into a URI set (by whoever can write to the
    prefix) is not deleted by the next POST: the cache's user may reach more than the
    prefix."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    get(client, "/page")
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set("someone-else:precious", b"1")
        attacker.set(store.prefix + "l:precious", b"1")
        attacker.zadd(
            store.uri_key("localhost", "/page", ""),
            {"someone-else:precious": 0, store.prefix + "l:precious": 0},
        )
        assert open_(client, "POST", "/page").status_code == 200
        assert attacker.exists("someone-else:precious", store.prefix + "l:precious") == 2
        assert attacker.exists(record_key_of(optimizer, "/page")) == 0


def test_a_uri_set_does_not_keep_the_names_of_expired_variants(
    processes: Make, redis_url: str
) -> None:
    """Each value of a header the page varies on stores one more variant; once they have
    expired, their names must not pile up in the page's set (every client can send a new
    value, and every POST reads the set)."""
    app = CountingApp(headers=[("Cache-Control", "max-age=1"), ("Vary", "Accept-Language")])
    optimizer, client = processes(app, cache_backend=redis_url)
    for n in range(25):
        get(client, "/page", headers={"Accept-Language": f"a-{n}"})
    time.sleep(1.1)  # the first batch has ended (in Redis too)
    for n in range(25):
        get(client, "/page", headers={"Accept-Language": f"b-{n}"})  # stored while b lives
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as redis_client:
        live = len(list(redis_client.scan_iter(store.prefix + "e:*")))
        names = redis_client.zcard(store.uri_key("localhost", "/page", ""))
    assert live == 26  # the Vary marker and the second batch
    assert names <= live


# -- secrets


def test_a_password_given_as_a_query_argument_is_hidden_too() -> None:
    """redis-py reads ``?password=`` in a URL as the password: the settings printout and the
    stats must hide it as they hide ``redis://:password@host``."""
    url = "redis://127.0.0.1:9/0?password=hunter2-hunter2"
    address = parse_backend(url)
    assert address is not None
    client = connect(address, 0.1)
    assert client.connection_pool.connection_kwargs["password"] == "hunter2-hunter2"
    store = RedisStore(
        address, prefix="p:", timeout_s=0.1, retry_s=1.0, secret=None, key_names=(), client=client
    )
    assert "hunter2" not in str(shown_value("cache_backend", url))
    assert "hunter2" not in str(store.stats())


# -- requests that hang


def test_a_fill_lock_that_never_expires_does_not_hold_requests(
    processes: Make, redis_url: str
) -> None:
    """A fill lock without expiry (or one longer than any of ours) was not taken by a
    process of this cache: whoever wrote it must not make each miss of the page wait out
    ``cache_lock_timeout_s``."""
    app = CountingApp()
    optimizer, client = processes(
        app, cache_backend=redis_url, cache_redis_secret=SECRET, cache_lock_timeout_s=3.0
    )
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as attacker:
        for path, expiry in (("/forever", None), ("/a-day", 86400)):
            key = optimizer.cache.key(EnvironBuilder(path).get_environ())
            attacker.set(store._lock_key(key), "not ours", ex=expiry)
            started = time.monotonic()
            assert get(client, path).status_code == 200
            took = time.monotonic() - started
            assert took < 1.0, f"{path} waited {took:.1f} s"
    assert app.calls == 2


def test_a_fill_lock_of_another_process_is_still_waited_for(
    processes: Make, redis_url: str
) -> None:
    """The other side of the test above: a lock another process of this cache took (with
    the same ``cache_lock_timeout_s``) holds this process's miss until it goes."""
    app = CountingApp()
    settings = {"cache_backend": redis_url, "cache_lock_timeout_s": 3.0}
    first, _ = processes(app, **settings)
    _, second_client = processes(app, **settings)
    key = first.cache.key(EnvironBuilder("/page").get_environ())
    token = redis_of(first).claim(key, 3.0)
    assert token is not None
    releasing = threading.Timer(0.4, redis_of(first).release, (key, token))
    releasing.start()
    try:
        started = time.monotonic()
        assert get(second_client, "/page").status_code == 200
        took = time.monotonic() - started
    finally:
        releasing.join()
    assert 0.3 < took < 2.0


def fill_keys(client: Any, names: Iterator[str], value: bytes = b"x") -> None:
    """Every name in ``names`` set to ``value``, in batches."""
    batch: dict[str, bytes] = {}
    for name in names:
        batch[name] = value
        if len(batch) >= 20_000:
            client.mset(batch)
            batch = {}
    if batch:
        client.mset(batch)


def scan_calls(client: Any) -> int:
    """How many SCAN commands the server has run."""
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_the_stats_ask_a_bounded_number_of_scans_of_a_large_database(
    processes: Make, redis_url: str
) -> None:
    """A Redis shared with other applications may hold millions of keys: the stats (which
    /health, /metrics and every /stats read) count the cache's records with a bounded number
    of SCAN calls, and say ``keys: null`` when that did not reach the end."""
    optimizer, client = processes(CountingApp(), cache_backend=redis_url)
    get(client, "/page")
    with redis.Redis.from_url(redis_url) as other:
        fill_keys(other, (f"another-app:{n}" for n in range(300_000)))
        before = scan_calls(other)
        shared = redis_of(optimizer).stats()
        calls = scan_calls(other) - before
    assert shared["keys"] is None
    assert calls <= 101, f"{calls} SCAN calls for one report"


def test_the_stats_still_count_the_records_of_a_small_database(
    processes: Make, redis_url: str
) -> None:
    """The other side: a database the bounded SCAN goes through has its records counted."""
    optimizer, client = processes(CountingApp(), cache_backend=redis_url)
    for path in ("/a", "/b", "/c"):
        get(client, path)
    with redis.Redis.from_url(redis_url) as other:
        fill_keys(other, (f"another-app:{n}" for n in range(5_000)))
    assert redis_of(optimizer).stats()["keys"] == 3


def test_clear_drops_every_record_however_many(processes: Make, redis_url: str) -> None:
    """``cache.clear()`` (the API's cache/clear) promises every entry gone, in Redis too: not
    the first hundred thousand."""
    optimizer, client = processes(CountingApp(), cache_backend=redis_url)
    get(client, "/page")
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as other:
        fill_keys(other, (f"{store.prefix}e:{n:032x}" for n in range(101_000)))
        optimizer.cache.clear()
        left = sum(1 for _ in other.scan_iter(store.prefix + "e:*", count=10_000))
    assert left == 0


def test_invalidating_a_prefix_drops_every_uri_below_it(processes: Make, redis_url: str) -> None:
    """``cache.invalidate("/")`` drops every URI's records in Redis, however many URIs."""
    optimizer, _ = processes(CountingApp(), cache_backend=redis_url)
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as other:
        pipe = other.pipeline(transaction=False)
        for n in range(101_000):
            name = f"{store.prefix}e:{n:032x}"
            pipe.set(name, b"x")
            pipe.zadd(store.uri_key("localhost", f"/item/{n}", ""), {name: 0})
            if n % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        optimizer.cache.invalidate("/")
        left = sum(1 for _ in other.scan_iter(store.prefix + "e:*", count=10_000))
    assert left == 0


def test_a_planted_key_of_another_type_does_not_stop_an_invalidation(
    processes: Make, redis_url: str
) -> None:
    """A string written where a URI's set belongs (by whoever can write to the prefix) is
    passed over: the other URIs under the invalidated prefix are still dropped."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    get(client, "/docs/page")
    store = redis_of(optimizer)
    with redis.Redis.from_url(redis_url) as attacker:
        for n in range(20):
            attacker.set(store.uri_key("localhost", f"/docs/{n}", ""), b"not a set")
        optimizer.cache.invalidate("/docs")
        assert attacker.exists(record_key_of(optimizer, "/docs/page")) == 0


# -- coherence


def test_a_post_drops_the_page_even_when_redis_evicted_its_uri_set(
    processes: Make, redis_url: str
) -> None:
    """Under memory pressure with ``maxmemory-policy allkeys-lru`` a hot page's URI set
    idles (only stores touch it) while its record is read all the time, so Redis evicts
    the set and keeps the record (seen with a real eviction: 3329 keys evicted, the hot
    page's set among them, its record kept). Here the eviction is done by hand."""
    app = CountingApp()
    first, first_client = processes(app, cache_backend=redis_url)
    _, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/hot")
    store = redis_of(first)
    with redis.Redis.from_url(redis_url) as redis_client:
        assert redis_client.delete(store.uri_key("localhost", "/hot", "")) == 1
    assert open_(first_client, "POST", "/hot").status_code == 200
    calls = app.calls
    assert not is_hit(get(second_client, "/hot"))  # the page as the POST left it
    assert app.calls == calls + 1


# -- what Redis and its channel learn


def readable(client: Any, name: bytes) -> bytes:
    """A key's name and what it holds, as whoever reads Redis sees it."""
    if client.type(name) == b"zset":
        return b" ".join([name, *sorted(client.zrange(name, 0, -1))])
    return name + b" " + (client.get(name) or b"")


def test_a_session_cookie_a_page_varies_on_is_not_written_to_redis_in_clear(
    processes: Make, redis_url: str
) -> None:
    """A public page that varies on ``Cookie`` (Django's sessions add ``Vary: Cookie``) is
    stored per cookie: whoever can read Redis or its channel must not find the session
    cookie there, ready to be replayed."""
    cookie = "sessionid=s3cr3t-session-token"
    app = CountingApp(headers=[("Cache-Control", "public, max-age=60"), ("Vary", "Cookie")])
    optimizer, client = processes(app, cache_backend=redis_url, cache_redis_secret=SECRET)
    with redis.Redis.from_url(redis_url) as reader:
        channel = reader.pubsub(ignore_subscribe_messages=True)
        channel.subscribe(redis_of(optimizer).channel)
        response = get(client, "/account", headers={"Cookie": cookie})
        assert "stored" in response.headers["Cache-Status"]
        seen = [readable(reader, name) for name in reader.scan_iter("*")]
        shared_of(optimizer).discard(optimizer.cache.entries()[0])  # one message published
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = channel.get_message(timeout=0.1)
            if message is not None:
                seen.append(message["data"])
                break
        channel.close()
    assert len(seen) >= 4  # the record, the Vary marker, the URI set, the message
    assert not [value for value in seen if b"s3cr3t-session-token" in value]


def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Whether ``condition()`` came true within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_discarded_variant_still_leaves_every_process(processes: Make, redis_url: str) -> None:
    """The message that drops one key everywhere names it by digest: the other process
    still finds its own copy by it (a variant here, a plain page beside it stays)."""
    app = CountingApp(headers=[("Cache-Control", "public, max-age=60"), ("Vary", "Cookie")])
    settings = {"cache_backend": redis_url, "cache_redis_secret": SECRET}
    first, first_client = processes(app, **settings)
    second, second_client = processes(app, **settings)
    for client in (first_client, second_client):
        get(client, "/account", headers={"Cookie": "a=1"})
        get(client, "/account", headers={"Cookie": "a=2"})
    assert len(second.cache.entries()) == 2
    assert wait_for(lambda: shared_of(second).listener.connected)
    entry = next(e for e in first.cache.entries() if "a=1" in str(e.key))
    shared_of(first).discard(entry)
    assert wait_for(lambda: len(second.cache.entries()) == 1)
    assert "a=2" in str(second.cache.entries()[0].key)


# -- crafted records and messages


def frame(meta: bytes, body: bytes = b"") -> bytes:
    """An unsigned record of this version around ``meta`` (JSON) and ``body``."""
    return b"WMC" + bytes((wire.VERSION, 0)) + len(meta).to_bytes(4, "big") + meta + body


def test_a_record_nested_past_the_parser_s_depth_is_refused_as_a_record(
    processes: Make, redis_url: str
) -> None:
    """Without a secret anyone may write a record: one whose JSON nests deeper than the
    parser goes is a bad record (refused, counted as such), not a failure of Redis."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set(record_key_of(optimizer, "/"), frame(b"[" * 100_000 + b"]" * 100_000))
    assert get(client, "/").status_code == 200
    assert app.calls == 1
    store = redis_of(optimizer)
    assert store.errors.snapshot() == {}
    assert sum(store.refused.snapshot().values()) == 1


def test_malformed_messages_leave_the_listener_applying_the_next_one(
    processes: Make, redis_url: str
) -> None:
    """Without a secret anyone may publish on the channel: messages nested past the parser's
    depth, not objects, missing their fields or of unknown kinds are passed over, and the
    listener still applies the next real invalidation."""
    app = CountingApp()
    _, first_client = processes(app, cache_backend=redis_url)
    second, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/page")
    get(second_client, "/page")  # a copy in the second process too
    listener = shared_of(second).listener
    assert wait_for(lambda: listener.connected)
    junk = [
        b"[" * 100_000 + b"]" * 100_000,
        b'"a string"',
        b'{"op": "uri"}',
        b'{"op": "key", "id": ["not", "text"]}',
        b'{"op": "nonsense"}',
        b"\xff\xfe not even text",
    ]
    with redis.Redis.from_url(redis_url) as attacker:
        for message in junk:
            attacker.publish(redis_of(second).channel, message)
    assert wait_for(lambda: listener.received == len(junk))
    assert len(second.cache.entries()) == 1
    assert open_(first_client, "POST", "/page").status_code == 200
    assert wait_for(lambda: len(second.cache.entries()) == 0)
    assert redis_of(second).refused.snapshot() == {"message": 5}


def test_a_post_while_redis_was_out_of_reach_still_drops_the_page_there(
    processes: Make, redis_url: str
) -> None:
    """A process that lost Redis for a moment (its breaker opened after three timeouts)
    takes a POST: once Redis answers again, the page the POST changed must not be served
    from Redis to the other processes."""
    app = CountingApp()
    first, first_client = processes(app, cache_backend=redis_url, cache_redis_retry_s=0.05)
    _, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/page")
    breaker = redis_of(first).breaker
    for _ in range(3):
        breaker.failed()  # three timeouts in a row, as a short partition gives
    assert breaker.state == "open"
    assert open_(first_client, "POST", "/page").status_code == 200
    time.sleep(0.1)
    get(first_client, "/another")  # Redis answers this process again
    assert breaker.state == "closed"
    calls = app.calls
    assert not is_hit(get(second_client, "/page"))
    assert app.calls == calls + 1


def test_a_signed_record_put_back_keeps_its_age_and_its_end(
    processes: Make, redis_url: str
) -> None:
    """Whoever can write to Redis without the secret may put back a record the cache wrote
    (a signature says who wrote it, not that it is still current; the docs say so), but
    cannot make it younger or live longer: the age travels in the signed record."""
    app = CountingApp(headers=[("Cache-Control", "max-age=2")])
    settings = {"cache_backend": redis_url, "cache_redis_secret": SECRET}
    first, first_client = processes(app, **settings)
    _, second_client = processes(app, **settings)
    get(first_client, "/page")
    name = record_key_of(first, "/page")
    with redis.Redis.from_url(redis_url) as attacker:
        saved = attacker.get(name)
        time.sleep(1.1)
        attacker.set(name, saved)  # without expiry, and after a second
        response = get(second_client, "/page")
        assert is_hit(response)
        assert int(response.headers["Age"]) >= 1
        time.sleep(1.0)
        attacker.set(name, saved)
    assert not is_hit(get(second_client, "/page"))  # past its two seconds: stale, refetched
    assert app.calls == 2


def test_neither_the_redis_password_nor_the_secret_shows_anywhere(
    processes: Make, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis password in the URL (wrong here, so that Redis's refusal is logged too) and
    the signing secret appear in no report, no metric and no log line."""
    password = "pw-hunter2-hunter2"
    url = redis_url.replace("redis://", f"redis://cache:{password}@")  # no such user
    optimizer, client = processes(
        CountingApp(),
        cache_backend=url,
        cache_redis_secret=SECRET,
        api_allow_networks="127.0.0.1/32",
    )
    caplog.set_level(logging.DEBUG, logger="wsgi_memopt")
    get(client, "/page")
    shown = [caplog.text]
    for endpoint in ("stats", "health", "metrics"):
        response = get(client, f"{PREFIX}/{endpoint}", environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert response.status_code == 200
        shown.append(response.get_data(as_text=True))
    assert redis_of(optimizer).errors.snapshot()  # Redis refused the password: logged
    assert "127.0.0.1" in shown[1]  # the stats name the backend
    for text in shown:
        assert password not in text
        assert SECRET not in text


def test_the_settings_repr_hides_the_secret_and_the_redis_password() -> None:
    """``repr(settings)`` is what a traceback with locals, or a debug log, shows."""
    settings = Settings(
        cache_backend="redis://cache:pw-hunter2-hunter2@127.0.0.1:6379/0",
        cache_redis_secret=SECRET,
    )
    shown = repr(settings)
    assert "pw-hunter2-hunter2" not in shown
    assert SECRET not in shown


class _Boom:
    """What a pickle-reading cache would run: it leaves a file behind."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_pickle_in_redis_runs_nothing(processes: Make, redis_url: str, tmp_path: Path) -> None:
    """A pickle under a page's key (bare, or after a record's header) is refused as a bad
    record, and nothing in it runs."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Boom(str(marker)))
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set(record_key_of(optimizer, "/a"), payload)
        attacker.set(record_key_of(optimizer, "/b"), frame(payload))
    for path in ("/a", "/b"):
        assert not is_hit(get(client, path))
    assert not marker.exists()
    assert sum(redis_of(optimizer).refused.snapshot().values()) == 2
    assert app.calls == 2


@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_record_moved_under_another_key_is_refused(
    processes: Make, redis_url: str, secret: str | None
) -> None:
    """A real record (an admin's public page, say) copied under another page's key, or a
    page's Vary marker copied under another page, is refused, signed or not."""
    app = CountingApp(headers=[("Cache-Control", "public, max-age=60"), ("Vary", "Cookie")])
    optimizer, client = processes(app, cache_backend=redis_url, cache_redis_secret=secret)
    plain = CountingApp()
    other, other_client = processes(plain, cache_backend=redis_url, cache_redis_secret=secret)
    get(other_client, "/admin")
    get(client, "/varies", headers={"Cookie": "a=1"})
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.copy(record_key_of(other, "/admin"), record_key_of(other, "/home"))
        attacker.copy(record_key_of(optimizer, "/varies"), record_key_of(optimizer, "/home2"))
    assert not is_hit(get(other_client, "/home"))
    assert not is_hit(get(client, "/home2", headers={"Cookie": "a=1"}))
    # Signed, the key is in the signature; unsigned, in the record.
    reason = "a record filed under another key" if secret is None else "a record not signed"
    for store in (redis_of(optimizer), redis_of(other)):
        assert [name for name in store.refused.snapshot() if name.startswith(reason)] != []


@pytest.mark.parametrize("signer", [None, "another-secret-of-sixteen"])
def test_with_a_secret_a_message_not_signed_with_it_changes_nothing(
    processes: Make, redis_url: str, signer: str | None
) -> None:
    """With a secret, a ``clear`` published without it (or with another) is refused: every
    process keeps its copies."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url, cache_redis_secret=SECRET)
    get(client, "/page")
    store = redis_of(optimizer)
    assert wait_for(lambda: shared_of(optimizer).listener.connected)
    text = json.dumps({"op": "clear", "origin": "attacker"})
    message = wire.seal_message(text, None if signer is None else signer.encode())
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.publish(store.channel, message)
    assert wait_for(lambda: shared_of(optimizer).listener.received == 1)
    assert len(optimizer.cache.entries()) == 1
    assert store.refused.snapshot() == {"message": 1}


# -- one user's page, another's request


def test_credentials_decide_alike_whichever_process_stored_the_page(
    processes: Make, redis_url: str
) -> None:
    """A page not marked public is never served from Redis to a request with credentials,
    and a response to one is never written there; a public one is shared."""
    app = CountingApp(echo="HTTP_COOKIE")
    public = CountingApp(headers=[("Cache-Control", "public, max-age=60")])
    first, first_client = processes(app, cache_backend=redis_url)
    _, second_client = processes(app, cache_backend=redis_url)
    _, third_client = processes(public, cache_backend=redis_url)
    _, fourth_client = processes(public, cache_backend=redis_url)

    private = get(second_client, "/mine", headers={"Cookie": "user=alice"})
    assert b"alice" in private.data
    with redis.Redis.from_url(redis_url) as reader:
        assert reader.exists(record_key_of(first, "/mine")) == 0
    assert b"alice" not in get(first_client, "/mine").data  # nobody else gets it

    get(first_client, "/page")  # stored by an anonymous request
    for headers in ({"Cookie": "user=bob"}, {"Authorization": "Bearer bob"}):
        assert not is_hit(get(second_client, "/page", headers=headers))

    get(third_client, "/public")
    assert is_hit(get(fourth_client, "/public", headers={"Cookie": "user=bob"}))


def test_a_forwarding_header_never_puts_its_page_before_a_plain_request(
    processes: Make, redis_url: str
) -> None:
    """``X-Forwarded-Proto`` is in the key, ``X-Forwarded-Host`` passes the request through:
    a page built for either never reaches another process's plain request."""
    for header in ("X-Forwarded-Proto", "X-Forwarded-Host"):
        app = CountingApp(echo="HTTP_" + header.upper().replace("-", "_"))
        _, first_client = processes(app, cache_backend=redis_url)
        _, second_client = processes(app, cache_backend=redis_url)
        path = "/" + header.lower()
        get(first_client, path, headers={header: "evil.example"})
        response = get(second_client, path)
        assert not is_hit(response)
        assert b"evil" not in response.data
        assert is_hit(get(first_client, path))  # the plain page, stored by the second


def crafted_record(
    status: str, headers: list[list[str]], body: bytes = b"poisoned", **fields: Any
) -> bytes:
    """An unsigned record of a page, as whoever writes Redis without the secret makes one
    (``fields`` replace those of a plain one); its key digest filled in by
    :func:`file_record`."""
    meta = {
        "key": "",
        "status": status,
        "headers": headers,
        "vary": [],
        "age": 0,
        "written": time.time(),
        "lifetime": 600,
        "swr": 0,
        "sie": 0,
        "keep": 0,
        "must_revalidate": False,
        "shared_with_credentials": True,
        "etag": None,
        "last_modified": None,
        "modified": None,
        **fields,
    }
    return json.dumps(meta).encode() + b"\0" + body


def file_record(optimizer: MemoryOptimizer, path: str, crafted: bytes) -> tuple[str, bytes]:
    """The Redis key of ``path``'s record, and ``crafted`` framed for it."""
    store = redis_of(optimizer)
    key_str = store.key_text(optimizer.cache.key(EnvironBuilder(path).get_environ()))
    meta, _, body = crafted.partition(b"\0")
    document = json.loads(meta)
    document["key"] = wire.key_id(key_str)
    return store.record_key(key_str), frame(json.dumps(document).encode(), body)


def test_a_crafted_record_cannot_split_the_response(processes: Make, redis_url: str) -> None:
    """Without a secret, whoever writes Redis can put a page; a status or header carrying a
    line break (a second response smuggled to a proxy in front) or a header name that is no
    token is refused as a bad record: the app's own page is served."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    crafted = {
        "/status": crafted_record("200 OK\r\nSet-Cookie: x=1", []),
        "/value": crafted_record("200 OK", [["X-Note", "a\r\n\r\nHTTP/1.1 200 OK"]]),
        "/name": crafted_record("200 OK", [["X Note:", "a"]]),
        "/code": crafted_record("2000 OK", []),
    }
    with redis.Redis.from_url(redis_url) as attacker:
        for path, record in crafted.items():
            attacker.set(*file_record(optimizer, path, record))
    for path in crafted:
        response = get(client, path)
        assert response.data.startswith(b"body #"), path
    assert sum(redis_of(optimizer).refused.snapshot().values()) == len(crafted)


def test_a_crafted_record_of_a_plain_page_is_served_without_a_secret(
    processes: Make, redis_url: str
) -> None:
    """The documented limit, so that the test above proves its point: without a secret a
    well-formed record written by anyone is a page like any other."""
    optimizer, client = processes(CountingApp(), cache_backend=redis_url)
    with redis.Redis.from_url(redis_url) as attacker:
        record = crafted_record("200 OK", [["Content-Type", "text/plain"]])
        attacker.set(*file_record(optimizer, "/page", record))
    assert get(client, "/page").data == b"poisoned"


# -- coherence within one process


def test_a_request_between_the_two_levels_of_a_post_keeps_no_old_copy(
    processes: Make, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET of the page that runs in this process while its POST is dropping it in Redis
    must not leave the old page here (the process skips its own message, so nothing else
    would drop that copy before cache_local_ttl_s)."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    get(client, "/page")
    store = redis_of(optimizer)
    dropping = store.invalidate_uri
    seen: list[bool] = []

    def meanwhile(host: str, path: str, query: str, key: Any = None) -> int:
        seen.append(is_hit(get(client, "/page")))  # another thread's request, as it lands
        return dropping(host, path, query, key)

    monkeypatch.setattr(store, "invalidate_uri", meanwhile)
    assert open_(client, "POST", "/page").status_code == 200
    assert seen == [True]
    calls = app.calls
    assert not is_hit(get(client, "/page"))
    assert app.calls == calls + 1


def test_a_copy_that_missed_its_invalidation_lives_at_most_the_local_ttl(
    processes: Make, redis_url: str
) -> None:
    """An invalidation whose message never reached a process (dropped in Redis alone here)
    leaves that process's copy for ``cache_local_ttl_s`` at most, fast path included."""
    app = CountingApp()
    first, first_client = processes(app, cache_backend=redis_url, cache_local_ttl_s=0.3)
    get(first_client, "/page")
    assert is_hit(get(first_client, "/page"))
    redis_of(first).invalidate_uri("localhost", "/page", "")  # no message
    assert is_hit(get(first_client, "/page"))  # the copy here, within its bound
    time.sleep(0.35)
    assert not is_hit(get(first_client, "/page"))
    assert app.calls == 2


def test_the_age_of_a_page_travels_to_the_other_process(processes: Make, redis_url: str) -> None:
    """A response that arrived 30 s old is served by another process at least that old, and
    stale at its own end, not 60 s after that process first read it."""
    app = CountingApp(headers=[("Cache-Control", "max-age=31"), ("Age", "30")])
    _, first_client = processes(app, cache_backend=redis_url)
    _, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/page")
    time.sleep(0.5)
    response = get(second_client, "/page")
    assert is_hit(response)
    assert 30 <= int(response.headers["Age"]) <= 31
    assert response.headers["Cache-Status"] in (
        "wsgi-memopt; hit; ttl=1",
        "wsgi-memopt; hit; ttl=0",
    )
    time.sleep(0.6)
    assert not is_hit(get(second_client, "/page"))


def test_a_flood_of_refused_messages_and_records_is_counted_not_logged_line_by_line(
    processes: Make, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can publish on the channel, or write one bad record under a busy page, must
    not make each worker write a log line per message or per request: the stats count
    them all."""
    app = CountingApp(headers=[("Cache-Control", "no-store")])  # the bad record stays
    optimizer, client = processes(app, cache_backend=redis_url, cache_redis_secret=SECRET)
    get(client, "/warm")  # starts the listener
    store = redis_of(optimizer)
    assert wait_for(lambda: shared_of(optimizer).listener.connected)
    caplog.set_level(logging.WARNING, logger="wsgi_memopt")
    with redis.Redis.from_url(redis_url) as attacker:
        pipe = attacker.pipeline(transaction=False)
        for n in range(300):
            pipe.publish(store.channel, json.dumps({"op": "clear", "origin": str(n)}))
        pipe.execute()
        attacker.set(record_key_of(optimizer, "/busy"), b"WMC junk")
    assert wait_for(lambda: shared_of(optimizer).listener.received == 300)
    for _ in range(50):
        get(client, "/busy")
    refused = store.refused.snapshot()
    assert refused["message"] == 300
    assert sum(refused.values()) == 300 + 50
    lines = [record for record in caplog.records if "refused" in record.getMessage()]
    assert len(lines) <= 4, [record.getMessage() for record in lines[:6]]


def test_a_crafted_record_with_a_huge_header_list_is_refused(
    processes: Make, redis_url: str
) -> None:
    """A record's JSON is bounded (a megabyte), but within it a crafted record could list a
    hundred thousand headers, each request building them all (and the server sending them):
    more headers than any response has is a bad record. So is a Vary list as long."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    many = [["X-Many", "y"]] * 5_000
    crafted = {
        "/headers": crafted_record("200 OK", many),
        "/varies": crafted_record("200 OK", [], vary=[f"HTTP_X_{n}" for n in range(5_000)]),
    }
    with redis.Redis.from_url(redis_url) as attacker:
        for path, record in crafted.items():
            attacker.set(*file_record(optimizer, path, record))
    for path in crafted:
        response = get(client, path)
        assert response.data.startswith(b"body #"), path
        assert len(response.headers) < 20
    assert sum(redis_of(optimizer).refused.snapshot().values()) == len(crafted)


# -- what the docs promise


def test_the_documented_acl_lets_the_cache_do_everything_and_nothing_more(
    processes: Make, own_redis: RedisServer
) -> None:
    """docs/shared-cache.md gives a Redis user limited to the prefix: every command the cache
    sends (a page stored and read by another process, single flight, a POST, a prefix, a
    clear, the stats, the listener) works with it, and it cannot touch another key."""
    docs = (Path(__file__).parents[1] / "docs" / "shared-cache.md").read_text()
    found = re.search(r"`(ACL SETUSER memopt [^`]+)`", docs)
    assert found is not None
    with own_redis.client() as admin:
        admin.execute_command(*found[1].replace(">password", ">pw-memopt-memopt").split())
        admin.set("someone-else:key", b"1")
    url = own_redis.url.replace("redis://", "redis://memopt:pw-memopt-memopt@")
    app = CountingApp()
    settings = {"cache_backend": url, "cache_redis_secret": SECRET, "cache_lock_timeout_s": 1.0}
    first, first_client = processes(app, **settings)
    second, second_client = processes(app, **settings)
    get(first_client, "/a/page")
    assert is_hit(get(second_client, "/a/page"))
    get(second_client, "/b/page")
    assert open_(first_client, "POST", "/a/page").status_code == 200
    assert wait_for(lambda: shared_of(second).listener.received >= 1)
    first.cache.invalidate("/b")
    first.cache.clear()
    stats = redis_of(first).stats()
    for optimizer in (first, second):
        assert redis_of(optimizer).errors.snapshot() == {}
    assert stats["keys"] == 0
    assert stats["used_memory_bytes"]
    with redis.Redis.from_url(url) as limited, pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("someone-else:key")


def test_an_invalidation_stops_draining_a_set_someone_keeps_filling(
    processes: Make, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever adds names to a URI's set faster than a POST takes them out must not hold the
    POST for as long as they keep at it: after a bounded number of batches the set goes
    whole (the batch is made small here, so that one thread outpaces it)."""
    monkeypatch.setattr(redis_store, "_SET_BATCH", 10)
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    get(client, "/page")
    store = redis_of(optimizer)
    uri = store.uri_key("localhost", "/page", "")
    stop = threading.Event()

    def fill() -> None:
        with redis.Redis.from_url(redis_url) as attacker:
            while not stop.is_set():
                fill_set(attacker, uri, 2_000, store.prefix)

    filling = threading.Thread(target=fill)
    filling.start()
    stopping = threading.Timer(4.0, stop.set)  # the attacker gives up after a while
    stopping.start()
    try:
        time.sleep(0.1)
        started = time.monotonic()
        assert open_(client, "POST", "/page").status_code == 200
        took = time.monotonic() - started
    finally:
        stop.set()
        stopping.cancel()
        filling.join(10.0)
    assert took < 2.0


def test_a_number_too_large_for_a_float_is_a_bad_record(processes: Make, redis_url: str) -> None:
    """JSON integers have no bound: an age of 10**400 is refused as a bad record, not
    counted as a failure of Redis."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    record = crafted_record("200 OK", [], age=10**400)
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set(*file_record(optimizer, "/page", record))
    assert not is_hit(get(client, "/page"))
    store = redis_of(optimizer)
    assert store.errors.snapshot() == {}
    assert sum(store.refused.snapshot().values()) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"age": -1e308, "lifetime": 1e308},
        {"lifetime": 1e308, "swr": 1e308},
        {"lifetime": 1e308, "keep": 1e308, "etag": '"v"'},
        {"age": 1e308},
    ],
)
def test_a_record_with_extreme_times_does_not_fail_the_request(
    processes: Make, redis_url: str, fields: dict[str, Any]
) -> None:
    """Finite but extreme ages, lifetimes and windows (their sums past a float) must not fail
    the request: the record is refused, or served as a page like any other."""
    app = CountingApp()
    optimizer, client = processes(app, cache_backend=redis_url)
    record = crafted_record("200 OK", [["Content-Type", "text/plain"]], **fields)
    with redis.Redis.from_url(redis_url) as attacker:
        attacker.set(*file_record(optimizer, "/page", record))
    for _ in range(2):
        assert get(client, "/page").status_code == 200
    assert redis_of(optimizer).errors.snapshot() == {}


def test_a_page_built_for_another_host_never_reaches_this_one(
    processes: Make, redis_url: str
) -> None:
    """The Host is in the key: a page asked for under a Host an attacker picks (an app that
    builds its links from it) is stored apart, and never served under the real name."""
    app = CountingApp(echo="HTTP_HOST")
    _, first_client = processes(app, cache_backend=redis_url)
    _, second_client = processes(app, cache_backend=redis_url)
    get(first_client, "/", headers={"Host": "evil.example"})
    response = get(second_client, "/")
    assert not is_hit(response)
    assert b"evil" not in response.data
    assert is_hit(get(second_client, "/", headers={"Host": "evil.example"}))
