"""RememberedKeys: keys kept for a while, bounded in number and in bytes, forgotten by key,
path or all at once."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest
from helpers.wsgi import run_threads
from werkzeug.test import EnvironBuilder

from wsgi_memopt import Settings
from wsgi_memopt.cache.decision import ResponseCache
from wsgi_memopt.cache.entry import key_size
from wsgi_memopt.cache.policy import CacheKey
from wsgi_memopt.cache.remembered import RememberedKeys


def key_of(path: str) -> CacheKey:
    """The base key the middleware builds for ``GET http://localhost{path}``."""
    return ResponseCache(Settings()).key(EnvironBuilder(path=path).get_environ())


def test_a_key_is_remembered_until_ttl_after_it_was_remembered() -> None:
    remembered = RememberedKeys(limit=10, ttl_s=30.0)

    remembered.remember(key_of("/a"), 1000.0)

    assert remembered.get(key_of("/a"), 0.0) == 1030.0
    assert remembered.get(key_of("/b"), 0.0) == 0.0
    remembered.remember(key_of("/a"), 1010.0)  # remembered again: for longer
    assert remembered.get(key_of("/a"), 0.0) == 1040.0


def test_at_most_limit_keys_the_oldest_forgotten_first() -> None:
    remembered = RememberedKeys(limit=3, ttl_s=30.0)

    for number in range(10):
        remembered.remember(key_of(f"/p{number}"), 1000.0 + number)

    assert len(remembered) == 3
    assert [key_of(f"/p{number}") in remembered for number in (6, 7, 8, 9)] == [
        False,
        True,
        True,
        True,
    ]


def test_forget_under_takes_whole_path_segments_and_variants() -> None:
    remembered = RememberedKeys(limit=10, ttl_s=30.0)
    variant = (key_of("/a/b"), ("gzip",))
    for key in (key_of("/a"), variant, key_of("/ab"), key_of("/b")):
        remembered.remember(key, 1000.0)

    remembered.forget_under("/a", "/a/")

    assert [key in remembered for key in (key_of("/a"), variant, key_of("/ab"), key_of("/b"))] == [
        False,
        False,
        True,
        True,
    ]


def test_forget_and_clear() -> None:
    remembered = RememberedKeys(limit=10, ttl_s=30.0)
    remembered.remember(key_of("/a"), 1000.0)
    remembered.remember(key_of("/b"), 1000.0)

    remembered.forget(key_of("/a"))
    remembered.forget(key_of("/never"))
    assert (key_of("/a") in remembered, key_of("/b") in remembered) == (False, True)
    remembered.clear()
    assert (len(remembered), remembered.bytes) == (0, 0)


def long_url_key(number: int) -> CacheKey:
    """The key of a search at a 4 KB URL, its strings made anew as a server parses them."""
    return (
        "http",
        "".join(["local", "host"]),
        "",
        "".join(["/search"]),
        f"q={number}&" + "f" * 4000,
    )


def test_bytes_are_the_memory_the_keys_hold() -> None:
    # Seen before: 20,000 keys of 4 KB URLs held 160 MB while the cache reported 0 bytes.
    remembered = RememberedKeys(limit=10_000, ttl_s=30.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(500):
            remembered.remember(long_url_key(number), 1000.0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert remembered.bytes == pytest.approx(held, rel=0.10)
    assert remembered.bytes > 500 * 4000


def test_at_most_max_bytes_the_oldest_forgotten_first() -> None:
    budget = 50 * key_size(long_url_key(0))
    remembered = RememberedKeys(limit=10_000, ttl_s=30.0, max_bytes=budget)

    for number in range(200):
        remembered.remember(long_url_key(number), 1000.0 + number)
        assert remembered.bytes <= budget

    assert 30 < len(remembered) < 50
    assert long_url_key(199) in remembered
    assert long_url_key(0) not in remembered


def test_threads_remembering_and_forgetting_at_once_keep_the_bound() -> None:
    # Eight threads remember 2,000 keys each over a limit of 50 while they forget others:
    # no error, and never more than the limit once they are done.
    remembered = RememberedKeys(limit=50, ttl_s=30.0)
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for item in range(2000):
                remembered.remember(key_of(f"/t{number}/{item}"), 1000.0)
                remembered.forget(key_of(f"/t{(number + 1) % 8}/{item}"))
        except BaseException as error:
            errors.append(error)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        run_threads(8, worker, timeout_s=30.0)
    finally:
        sys.setswitchinterval(switch_interval)

    assert errors == []
    assert len(remembered) <= 50
    # The books agree with what is left.
    held = sum(key_size(key) + sys.getsizeof(0.5) for key in remembered)
    assert remembered.bytes == held + sys.getsizeof(remembered) - sys.getsizeof(
        RememberedKeys(0, 0)
    )
