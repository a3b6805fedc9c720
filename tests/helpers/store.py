"""Checking a response store's books against what it holds."""

from __future__ import annotations

import collections

from wsgi_memopt.cache.decision import ResponseCache
from wsgi_memopt.cache.store import Entry, ResponseStore


def own_bytes(entries: list[Entry]) -> int:
    """What the entries hold alone; the store's books (its tables, remembered keys) apart."""
    return sum(entry.size for entry in entries)


def assert_consistent(store: ResponseStore, cache: ResponseCache | None = None) -> None:
    """The store's books agree with its entries: bytes, items, the Vary and URI indexes; and the
    ``cache`` in front of it, if given, counted no cache errors."""
    entries = store.entries()
    stats = store.stats()
    assert store.bytes == stats["bytes"] == own_bytes(entries) + store.books_bytes
    assert len(store) == len(store._entries) == stats["items"] == len(entries)
    assert all(key == entry.key for key, entry in store._entries.items())
    # The Vary index counts the variants of each base key; a plain entry is not indexed.
    per_base = collections.Counter(
        entry.base_key for entry in entries if entry.key is not entry.base_key
    )
    assert {base: known[1] for base, known in store._vary.items()} == dict(per_base)
    # The URI index files each entry once, and nothing else.
    indexed = [entry for bucket in store._by_uri.values() for entry in bucket]
    assert sorted(map(id, indexed)) == sorted(map(id, entries))
    assert all(store._by_uri.values())
    if cache is not None:
        counts = cache.stats()
        assert "cache-error" not in counts["rejected"]
        assert "cache-error" not in counts["bypassed"]
