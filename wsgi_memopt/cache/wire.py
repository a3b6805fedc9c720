"""How an entry travels to a shared store and back: a versioned layout, never pickle.

Whoever can write to the shared store must not get code run in the workers that read it, so
an entry is plain data: JSON for the status, headers, key and cache metadata, then the body's
bytes as they are. The key is there as a digest: its text holds the values of the request
headers it is made of (a session cookie a page varies on), which whoever reads Redis must
not learn. With a secret, each record carries an HMAC-SHA256 of its key and content;
a reader with the secret refuses every record without a valid one (written by anything else,
or moved under another key). Invalidation messages are signed the same way.

    record = encode(entry, vary, key_text, wall_clock(), now, secret)
    entry = decode(record, key, key_text, wall_clock(), now, secret)   # raises BadRecord

Layout: ``WMC`` + version (1 byte) + flags (1 byte: 1 = signed) + [32-byte HMAC] + the JSON's
length (4 bytes, big-endian) + JSON + body. Ages travel in seconds, with the writer's wall
clock, since each process's monotonic clock is its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from ..settings import FIELD_NAME
from .entry import Entry
from .policy import CacheKey

__all__ = [
    "OVERHEAD",
    "VERSION",
    "BadRecord",
    "decode",
    "encode",
    "key_id",
    "key_text",
    "open_message",
    "seal_message",
    "vary_marker",
]

VERSION = 1
_MAGIC = b"WMC"
_SIGNED = 1
_DIGEST = 32
_LENGTH = struct.Struct(">I")
_META_MAX = 1 << 20  # headers and key: a larger record is not one of ours
# What a server may send (RFC 9110 §5.1, §5.5; RFC 9112 §4): a record read back is held to
# it, as the app's response was, so that no line break in it splits the response.
_STATUS = re.compile(r"[1-9][0-9]{2} [\t\x20-\x7e\x80-\xff]*")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# More header fields (or Vary names) than any response has: within the metadata's bound a
# crafted record could list a hundred thousand, each request building them all.
_FIELDS_MAX = 1000
# The most a record holds beside its body: a reader refuses anything longer unread.
OVERHEAD = len(_MAGIC) + 2 + _DIGEST + _LENGTH.size + _META_MAX


class BadRecord(ValueError):
    """A record that is not a valid entry of this version (or not signed with our secret)."""


def key_text(names: tuple[str, ...], key: CacheKey) -> str:
    """A key as text: the environ names it is made of, then its values (the same values
    under another ``cache_key_headers`` are another key)."""
    return json.dumps([names, key], ensure_ascii=False, separators=(",", ":"), default=repr)


def key_id(key: str) -> str:
    """The digest that names a key (its :func:`key_text`) in a record, a message and Redis."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def encode(
    entry: Entry,
    vary: tuple[str, ...],
    key: str,
    wall_now: float,
    now: float,
    secret: bytes | None,
) -> bytes:
    """The record of ``entry`` stored under ``key`` (its :func:`key_text`) at ``now`` on the
    store's monotonic clock, ``wall_now`` on the wall clock."""
    meta = {
        "key": key_id(key),
        "status": entry.status,
        "headers": entry.headers,
        "vary": vary,
        "age": entry.initial_age + max(now - entry.created, 0.0),
        "written": wall_now,
        "lifetime": entry.expires - entry.created + entry.initial_age,
        "swr": entry.swr_until - entry.expires,
        "sie": entry.sie_until - entry.expires,
        "keep": entry.keep_until - max(entry.swr_until, entry.sie_until),
        "must_revalidate": entry.must_revalidate,
        "shared_with_credentials": entry.shareable_with_credentials,
        "etag": entry.etag,
        "last_modified": entry.last_modified,
        "modified": entry.modified,
    }
    return _frame(json.dumps(meta, separators=(",", ":")).encode(), entry.body, key, secret)


def vary_marker(names: tuple[str, ...], key: str, secret: bytes | None) -> bytes:
    """The record under a base key whose page varies: the environ keys its ``Vary`` names."""
    meta = json.dumps({"key": key_id(key), "vary_on": names}, separators=(",", ":")).encode()
    return _frame(meta, b"", key, secret)


def decode(
    record: bytes,
    key: CacheKey,
    key_str: str,
    wall_now: float,
    now: float,
    secret: bytes | None,
) -> tuple[Entry | None, tuple[str, ...]]:
    """The entry ``record`` holds, made for this process (``key`` its own key tuple), and the
    environ keys of its ``Vary``; for a :func:`vary_marker`, None and the keys it names.
    Raises :class:`BadRecord`."""
    meta, body = _unframe(record, key_str, secret)
    if meta.get("key") != key_id(key_str):  # before the try: its reason is not "malformed"
        raise BadRecord("a record filed under another key")
    try:
        if "vary_on" in meta:
            return None, _names(meta["vary_on"])
        headers = tuple(map(_header, _bounded(meta["headers"])))
        age = _number(meta["age"]) + max(wall_now - _number(meta["written"]), 0.0)
        lifetime, keep = _number(meta["lifetime"]), _number(meta["keep"])
        etag, last_modified = _optional_text(meta["etag"]), _optional_number(meta["last_modified"])
        entry = Entry(
            key,
            key if type(key[0]) is str else key[0],
            _status(meta["status"]),
            headers,
            body,
            now,
            lifetime,
            bool(meta["shared_with_credentials"]),
            etag,
            last_modified,
            initial_age=age,
            must_revalidate=bool(meta["must_revalidate"]),
            stale_while_revalidate=_number(meta["swr"]),
            stale_if_error=_number(meta["sie"]),
            revalidate_for=keep if etag is not None or last_modified is not None else 0.0,
            date=_optional_number(meta["modified"]),
        )
        # Each number finite, their sums maybe not (an age of -1e308 with a lifetime of 1e308).
        if not (math.isfinite(entry.expires) and math.isfinite(entry.keep_until)):
            raise ValueError("times past a float's range")
        return entry, _names(meta["vary"])
    except (KeyError, TypeError, ValueError, OverflowError) as error:  # an int past any float
        raise BadRecord(f"a malformed record: {error}") from None


def seal_message(text: str, secret: bytes | None) -> str:
    """An invalidation message as published: with a secret, its HMAC first."""
    if secret is None:
        return text
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest() + " " + text


def open_message(data: bytes | str, secret: bytes | None) -> str:
    """The text of a published message; :class:`BadRecord` when a secret is set and the
    message does not carry its HMAC."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if secret is None:
        return text
    mac, _, body = text.partition(" ")
    expected = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise BadRecord("a message not signed with this cache's secret")
    return body


def _frame(meta: bytes, body: bytes, key: str, secret: bytes | None) -> bytes:
    payload = _LENGTH.pack(len(meta)) + meta + body
    if secret is None:
        return _MAGIC + bytes((VERSION, 0)) + payload
    return _MAGIC + bytes((VERSION, _SIGNED)) + _signature(secret, key, payload) + payload


def _unframe(record: bytes, key: str, secret: bytes | None) -> tuple[dict[str, Any], bytes]:
    if len(record) < 5 or record[:3] != _MAGIC:
        raise BadRecord("not a wsgi_memopt record")
    if record[3] != VERSION:
        raise BadRecord(f"a record of version {record[3]}, not {VERSION}")
    signed, start = record[4] & _SIGNED, 5
    if signed:
        start += _DIGEST
    if secret is not None and not (
        signed and hmac.compare_digest(record[5:start], _signature(secret, key, record[start:]))
    ):
        raise BadRecord("a record not signed with this cache's secret")
    if len(record) < start + _LENGTH.size:
        raise BadRecord("a truncated record")
    (length,) = _LENGTH.unpack_from(record, start)
    start += _LENGTH.size
    if length > _META_MAX or len(record) < start + length:
        raise BadRecord("a truncated record")
    try:
        meta = json.loads(record[start : start + length])
    except (ValueError, RecursionError):  # RecursionError: arrays nested past the stack
        raise BadRecord("a record whose metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise BadRecord("a record whose metadata is not an object")
    return meta, record[start + length :]


def _signature(secret: bytes, key: str, payload: bytes) -> bytes:
    # The key is signed with the content: a record copied under another key is refused.
    mac = hmac.new(secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
    mac.update(b"\0")
    mac.update(payload)
    return mac.digest()


def _text(value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _matching(pattern: re.Pattern[str], refusal: str) -> Callable[[object], str]:
    """A reader of text that ``pattern`` matches whole; ``refusal`` says what else is."""

    def read(value: object) -> str:
        text = _text(value)
        if not pattern.fullmatch(text):
            raise ValueError(refusal)
        return text

    return read


_status = _matching(_STATUS, "a status that is not a code and a reason")
_token = _matching(FIELD_NAME, "a header name that is not a token")
_field_value = _matching(_FIELD_VALUE, "a header value with a control character")


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _number(value: object) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise TypeError(f"expected a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _optional_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _header(pair: object) -> tuple[str, str]:
    if not isinstance(pair, list) or len(pair) != 2:
        raise TypeError("expected a [name, value] pair")
    return _token(pair[0]), _field_value(pair[1])


def _bounded(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    if len(value) > _FIELDS_MAX:
        raise ValueError(f"a list of {len(value)} fields")
    return value


def _names(value: object) -> tuple[str, ...]:
    return tuple(_text(name) for name in _bounded(value))
