"""Tests of wsgi_memopt.cache.wire: how an entry travels to Redis and back.

A record is read by every process that names the same Redis, and anything that can write to
Redis can write one: it must come back as the entry that was stored (its age carried on the
wall clock), and anything else must be refused with :class:`BadRecord`, never acted on, and
never unpickled. The records that are not the encoder's own are built here by hand from the
layout the module documents, so that the test also holds the layout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from wsgi_memopt.cache import wire
from wsgi_memopt.cache.entry import Entry
from wsgi_memopt.cache.policy import CacheKey, key_variables, variant_key

NAMES = key_variables(())
SECRET = b"a secret of sixteen or more"
LANGUAGE = ("HTTP_ACCEPT_LANGUAGE",)


def request_key(path: str, **environ: Any) -> CacheKey:
    """The base key the cache gives a GET of ``path``."""
    built = EnvironBuilder(path, environ_overrides=environ).get_environ()
    return tuple(map(built.get, NAMES))


def text_of(key: CacheKey) -> str:
    return wire.key_text(NAMES, key)


def sample_entry(key: CacheKey | None = None, **options: Any) -> Entry:
    """A stored response with every field a record carries set to something distinct."""
    key = key if key is not None else request_key("/page", QUERY_STRING="q=1")
    options.setdefault("initial_age", 3.0)
    options.setdefault("stale_while_revalidate", 30.0)
    options.setdefault("stale_if_error", 90.0)
    options.setdefault("revalidate_for", 600.0)
    options.setdefault("date", 1_700_000_005.0)
    return Entry(
        key,
        key if type(key[0]) is str else key[0],
        "200 OK",
        (
            ("Content-Type", "text/plain; charset=latin-1"),
            ("X-Name", "caf\xe9 \xff \x80"),  # PEP 3333 header values: latin-1 text
            ("ETag", '"v1"'),
            ("Last-Modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ),
        b"\x00\xff body \xe9\r\n",
        100.0,
        60.0,
        True,
        '"v1"',
        1_700_000_000.0,
        **options,
    )


def frame(meta: bytes, body: bytes = b"", *, version: int = 1) -> bytes:
    """An unsigned record with ``meta`` as its JSON, by the documented layout."""
    return b"WMC" + bytes((version, 0)) + struct.pack(">I", len(meta)) + meta + body


def signed(meta: bytes, body: bytes, key_str: str, secret: bytes) -> bytes:
    """A signed record: the HMAC-SHA256 of the key text and the payload after the flags."""
    payload = struct.pack(">I", len(meta)) + meta + body
    mac = hmac.new(secret, key_str.encode() + b"\0" + payload, hashlib.sha256).digest()
    return b"WMC" + bytes((1, 1)) + mac + payload


def meta_of(record: bytes) -> dict[str, Any]:
    """The JSON of an unsigned record."""
    (length,) = struct.unpack_from(">I", record, 5)
    return dict(json.loads(record[9 : 9 + length]))


# -- round trips


def test_an_entry_comes_back_as_it_was_stored() -> None:
    entry = sample_entry()
    key = entry.key
    record = wire.encode(entry, (), text_of(key), 1_000.0, 104.0, None)
    back, vary = wire.decode(record, key, text_of(key), 1_000.0, 500.0, None)
    assert back is not None
    assert vary == ()
    assert (back.key, back.base_key) == (key, key)
    assert back.status == "200 OK"
    assert back.headers == entry.headers
    assert back.body == entry.body
    assert (back.etag, back.last_modified, back.modified) == ('"v1"', 1_700_000_000.0, 1.7e9)
    assert back.shareable_with_credentials is True
    assert back.must_revalidate is False
    # Dated on the reader's clock, with the age it had when written: 3 s on arrival, and
    # 4 s in the writer's store.
    assert back.created == 500.0
    assert back.initial_age == pytest.approx(7.0)
    assert back.expires == pytest.approx(500.0 + 60.0 - 7.0)
    assert back.swr_until - back.expires == pytest.approx(30.0)
    assert back.sie_until - back.expires == pytest.approx(90.0)
    assert back.keep_until - back.sie_until == pytest.approx(600.0)


def test_age_travels_on_the_wall_clock() -> None:
    entry = sample_entry(initial_age=0.0)
    key = entry.key
    record = wire.encode(entry, (), text_of(key), 1_000.0, 100.0, None)
    # Read 10 s later on the wall clock, whatever the reader's monotonic clock says.
    later, _ = wire.decode(record, key, text_of(key), 1_010.0, 5.0, None)
    assert later is not None
    assert later.initial_age == pytest.approx(10.0)
    assert later.expires == pytest.approx(5.0 + 50.0)
    # A reader whose wall clock is behind the writer's does not make it younger.
    earlier, _ = wire.decode(record, key, text_of(key), 990.0, 5.0, None)
    assert earlier is not None
    assert earlier.initial_age == 0.0


def test_must_revalidate_comes_back_without_stale_windows() -> None:
    entry = sample_entry(must_revalidate=True)
    record = wire.encode(entry, (), text_of(entry.key), 1_000.0, 100.0, None)
    back, _ = wire.decode(record, entry.key, text_of(entry.key), 1_000.0, 0.0, None)
    assert back is not None
    assert back.must_revalidate is True
    assert back.swr_until == back.sie_until == back.expires
    assert back.keep_until == pytest.approx(back.expires + 600.0)


def test_an_entry_without_validators_keeps_no_revalidation_time() -> None:
    key = request_key("/plain")
    entry = Entry(key, key, "200 OK", (), b"", 0.0, 60.0, revalidate_for=600.0)
    record = wire.encode(entry, (), text_of(key), 1_000.0, 0.0, None)
    back, _ = wire.decode(record, key, text_of(key), 1_000.0, 0.0, None)
    assert back is not None
    assert (back.etag, back.last_modified, back.modified) == (None, None, None)
    assert back.keep_until == back.expires == 60.0
    assert back.body == b""


def test_a_variant_comes_back_with_its_base_key_and_vary() -> None:
    base = request_key("/page")
    key = variant_key(base, LANGUAGE, {"HTTP_ACCEPT_LANGUAGE": "fr"})
    entry = sample_entry(key)
    record = wire.encode(entry, LANGUAGE, text_of(key), 1_000.0, 100.0, None)
    back, vary = wire.decode(record, key, text_of(key), 1_000.0, 0.0, None)
    assert back is not None
    assert back.key == key
    assert back.base_key == base
    assert vary == LANGUAGE


def test_a_vary_marker_names_the_request_headers() -> None:
    base = request_key("/page")
    marker = wire.vary_marker(LANGUAGE, text_of(base), None)
    assert wire.decode(marker, base, text_of(base), 0.0, 0.0, None) == (None, LANGUAGE)
    signed_marker = wire.vary_marker(LANGUAGE, text_of(base), SECRET)
    assert wire.decode(signed_marker, base, text_of(base), 0.0, 0.0, SECRET) == (None, LANGUAGE)
    with pytest.raises(wire.BadRecord):
        wire.decode(marker, base, text_of(base), 0.0, 0.0, SECRET)


def test_the_key_text_holds_the_names_of_the_key() -> None:
    key = request_key("/page")
    keyed = key_variables(("X-Tenant",))
    assert wire.key_text(NAMES, key) != wire.key_text(keyed, (*key, None))
    assert json.loads(wire.key_text(NAMES, key)) == [list(NAMES), list(key)]


# -- what is refused


def good_record() -> tuple[bytes, CacheKey, str]:
    """An unsigned record of :func:`sample_entry`, its key and the key's text."""
    entry = sample_entry()
    key_str = text_of(entry.key)
    return wire.encode(entry, (), key_str, 1_000.0, 100.0, None), entry.key, key_str


def with_meta(field: str, value: Any) -> bytes:
    """The good record with one field of its JSON changed (removed when ``value`` is
    :data:`GONE`)."""
    record, _, _ = good_record()
    meta = meta_of(record)
    if value is GONE:
        del meta[field]
    else:
        meta[field] = value
    return frame(json.dumps(meta).encode(), b"body")


GONE = object()

BAD_FRAMES: list[Any] = [
    pytest.param(lambda r: b"", id="empty"),
    pytest.param(lambda r: b"WMC\x01", id="shorter-than-a-header"),
    pytest.param(lambda r: b"XYZ" + r[3:], id="bad-magic"),
    pytest.param(lambda r: r[:3] + b"\x02" + r[4:], id="version-2"),
    pytest.param(lambda r: r[:3] + b"\x00" + r[4:], id="version-0"),
    pytest.param(lambda r: r[:7], id="truncated-length"),
    pytest.param(lambda r: r[:20], id="truncated-meta"),
    pytest.param(lambda r: r[:5] + struct.pack(">I", 1 << 21) + r[9:], id="meta-too-long"),
    pytest.param(lambda r: frame(b"{not json"), id="not-json"),
    pytest.param(lambda r: frame(b'["a list"]'), id="meta-a-list"),
    pytest.param(lambda r: frame(b"\xff\xfe"), id="not-utf8"),
    pytest.param(lambda r: frame(b"[" * 100_000 + b"]" * 100_000), id="nested-too-deep"),
]


@pytest.mark.parametrize("spoil", BAD_FRAMES)
def test_a_bad_frame_is_refused(spoil: Callable[[bytes], bytes]) -> None:
    record, key, key_str = good_record()
    with pytest.raises(wire.BadRecord):
        wire.decode(spoil(record), key, key_str, 1_000.0, 0.0, None)


BAD_FIELDS: list[Any] = [
    pytest.param("status", GONE, id="no-status"),
    pytest.param("age", GONE, id="no-age"),
    pytest.param("status", 200, id="status-a-number"),
    pytest.param("headers", "text", id="headers-text"),
    pytest.param("headers", 5, id="headers-a-number"),
    pytest.param("headers", [["a", "b", "c"]], id="header-of-three"),
    pytest.param("headers", ["ab"], id="header-a-two-letter-string"),
    pytest.param("headers", [["X-A", 5]], id="header-value-a-number"),
    pytest.param("age", "1", id="age-text"),
    pytest.param("age", True, id="age-a-boolean"),
    pytest.param("age", 10**400, id="age-too-large-for-a-float"),
    pytest.param("lifetime", [60], id="lifetime-a-list"),
    pytest.param("etag", 5, id="etag-a-number"),
    pytest.param("last_modified", "yesterday", id="last-modified-text"),
    pytest.param("vary", "HTTP_ACCEPT", id="vary-text"),
    pytest.param("vary", [1], id="vary-of-numbers"),
    *(
        pytest.param(field, value, id=f"{field}-{value}")
        for field in ("age", "written", "lifetime", "swr", "sie", "keep", "modified")
        for value in (math.nan, math.inf, -math.inf)  # JSON's NaN and Infinity, which it reads
    ),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_a_record_with_a_bad_field_is_refused(field: str, value: Any) -> None:
    _, key, key_str = good_record()
    with pytest.raises(wire.BadRecord, match="malformed"):
        wire.decode(with_meta(field, value), key, key_str, 1_000.0, 0.0, None)


def test_a_record_under_another_key_is_refused() -> None:
    record, _, _ = good_record()
    other = request_key("/other")
    # The reason is the first words of the message: what the shared store counts by.
    with pytest.raises(wire.BadRecord, match=r"^a record filed under another key$"):
        wire.decode(record, other, text_of(other), 1_000.0, 0.0, None)
    with pytest.raises(wire.BadRecord, match=r"^a record filed under another key$"):
        wire.decode(with_meta("key", GONE), other, text_of(other), 1_000.0, 0.0, None)


def test_the_same_path_under_other_key_names_is_another_key() -> None:
    record, key, _ = good_record()
    keyed = key_variables(("X-Tenant",))
    with pytest.raises(wire.BadRecord):
        wire.decode(record, key, wire.key_text(keyed, key), 1_000.0, 0.0, None)


# -- signing


def test_a_signed_record_comes_back_with_the_secret() -> None:
    entry = sample_entry()
    key_str = text_of(entry.key)
    record = wire.encode(entry, (), key_str, 1_000.0, 100.0, SECRET)
    assert record[:5] == b"WMC\x01\x01"
    back, _ = wire.decode(record, entry.key, key_str, 1_000.0, 0.0, SECRET)
    assert back is not None
    assert back.body == entry.body
    # The layout holds: the same record built by hand from its parts is the same bytes.
    (length,) = struct.unpack_from(">I", record, 37)
    meta, body = record[41 : 41 + length], record[41 + length :]
    assert signed(meta, body, key_str, SECRET) == record


def test_with_a_secret_an_unsigned_record_is_refused() -> None:
    record, key, key_str = good_record()
    with pytest.raises(wire.BadRecord, match="not signed"):
        wire.decode(record, key, key_str, 1_000.0, 0.0, SECRET)


def test_a_record_signed_with_another_secret_is_refused() -> None:
    entry = sample_entry()
    key_str = text_of(entry.key)
    record = wire.encode(entry, (), key_str, 1_000.0, 100.0, b"another secret, as long")
    with pytest.raises(wire.BadRecord, match="not signed"):
        wire.decode(record, entry.key, key_str, 1_000.0, 0.0, SECRET)


@pytest.mark.parametrize("where", [6, 40, -1], ids=["signature", "length", "body"])
def test_a_signed_record_changed_anywhere_is_refused(where: int) -> None:
    entry = sample_entry()
    key_str = text_of(entry.key)
    record = bytearray(wire.encode(entry, (), key_str, 1_000.0, 100.0, SECRET))
    record[where] ^= 0x01
    with pytest.raises(wire.BadRecord):
        wire.decode(bytes(record), entry.key, key_str, 1_000.0, 0.0, SECRET)


def test_a_signed_record_moved_under_another_key_is_refused() -> None:
    entry = sample_entry()
    record = wire.encode(entry, (), text_of(entry.key), 1_000.0, 100.0, SECRET)
    other = request_key("/other")
    with pytest.raises(wire.BadRecord, match="not signed"):
        wire.decode(record, other, text_of(other), 1_000.0, 0.0, SECRET)
    # Nor can its JSON be changed to name the other key: the signature covers both.
    (length,) = struct.unpack_from(">I", record, 37)
    meta = json.loads(record[41 : 41 + length])
    meta["key"] = text_of(other)
    text = json.dumps(meta).encode()
    forged = record[:37] + struct.pack(">I", len(text)) + text + record[41 + length :]
    with pytest.raises(wire.BadRecord, match="not signed"):
        wire.decode(forged, other, text_of(other), 1_000.0, 0.0, SECRET)


# -- never pickle


class _Trap:
    """Unpickled, it creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_is_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(trap), protocol=protocol)
    key = request_key("/page")
    for record in (payload, frame(payload), frame(b"{}", payload)):
        with pytest.raises(wire.BadRecord):
            wire.decode(record, key, text_of(key), 0.0, 0.0, None)
    assert not trap.exists()


# -- invalidation messages


def test_a_message_is_sent_as_it_is_without_a_secret() -> None:
    text = '{"op":"clear","origin":"a"}'
    assert wire.seal_message(text, None) == text
    assert wire.open_message(text.encode(), None) == text


def test_a_sealed_message_opens_with_the_secret() -> None:
    text = '{"op":"prefix","path":"/caf\u00e9"}'
    sealed = wire.seal_message(text, SECRET)
    assert sealed.endswith(" " + text)
    assert wire.open_message(sealed.encode(), SECRET) == text
    assert wire.open_message(sealed, SECRET) == text


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda sealed: sealed.partition(" ")[2], id="unsigned"),
        pytest.param(lambda sealed: "0" * 64 + " " + sealed.partition(" ")[2], id="zero-mac"),
        pytest.param(lambda sealed: sealed.replace("/a", "/b"), id="body-changed"),
        pytest.param(lambda sealed: sealed[:-1], id="truncated"),
        pytest.param(lambda sealed: "", id="empty"),
        pytest.param(
            lambda sealed: wire.seal_message('{"op":"clear"}', b"another secret, as long"),
            id="another-secret",
        ),
    ],
)
def test_with_a_secret_a_message_not_sealed_with_it_is_refused(spoil: Any) -> None:
    sealed = wire.seal_message('{"op":"prefix","path":"/a"}', SECRET)
    with pytest.raises(wire.BadRecord, match="not signed"):
        wire.open_message(spoil(sealed).encode(), SECRET)
