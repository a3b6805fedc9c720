"""Tests of wsgi_memopt.cache.policy: the pure functions behind the caching rules.

Each function is called directly, with well-formed and with malformed input (garbage
``Cache-Control``, non-numeric ``Content-Length``, unparsable dates, a status like ``abc``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from werkzeug.http import http_date, parse_dict_header

from wsgi_memopt.cache import policy
from wsgi_memopt.cache.policy import (
    BYPASS_HEADERS,
    FORWARDED_KEY_HEADERS,
    FORWARDING_HEADERS,
    HEURISTIC_STATUSES,
    ResponseVerdict,
    assess_response,
    cache_directives,
    environ_key,
    has_body,
    is_not_modified,
    normalized_path,
    plan_environ_keys,
    request_directives,
    variant_key,
)

DATE = datetime(2030, 1, 1, tzinfo=timezone.utc)
NOW = DATE.timestamp()
TTL_CAP = 100.0
ITEM_LIMIT = 1000
# What an app sends to mark a response cacheable, for the tests of everything else.
MARKED = [("Cache-Control", "max-age=60")]


def assess(
    headers: list[tuple[str, str]],
    status: str = "200 OK",
    *,
    credentials: bool = False,
    statuses: tuple[int, ...] = (200,),
    default_ttl: float = 0.0,
) -> ResponseVerdict:
    return assess_response(
        status,
        headers,
        credentials=credentials,
        statuses=frozenset(statuses),
        item_limit=ITEM_LIMIT,
        ttl_cap=TTL_CAP,
        now=NOW,
        default_ttl=default_ttl,
    )


# -- assess_response: what is not stored, and why


@pytest.mark.parametrize(
    ("status", "headers", "statuses", "credentials", "reason"),
    [
        ("abc", [], (200,), False, "status"),
        ("", [], (200,), False, "status"),
        ("2xx OK", [], (200,), False, "status"),
        ("404 Not Found", [], (200,), False, "status"),
        ("500 Internal Server Error", [], (200, 404), False, "status"),
        ("200 OK", [("Cache-Control", "no-store")], (200,), False, "no-store"),
        ("200 OK", [("Cache-Control", "public, no-store")], (200,), False, "no-store"),
        ("200 OK", [("Cache-Control", "private")], (200,), False, "private"),
        ("200 OK", [("Cache-Control", 'private="X-User"')], (200,), False, "private"),
        ("200 OK", [("Cache-Control", "max-age=60, private")], (200,), False, "private"),
        ("200 OK", [("Cache-Control", "no-cache")], (200,), False, "no-cache"),
        ("200 OK", [("Cache-Control", 'no-cache="Set-Cookie"')], (200,), False, "no-cache"),
        (
            "200 OK",
            [("Cache-Control", "public"), ("cache-control", "no-store")],
            (200,),
            False,
            "no-store",
        ),
        ("200 OK", [("Set-Cookie", "a=1")], (200,), False, "set-cookie"),
        ("200 OK", [("set-cookie", "a=1")], (200,), False, "set-cookie"),
        ("200 OK", [("Vary", "*")], (200,), False, "vary-star"),
        ("200 OK", [("Vary", "Accept"), ("Vary", " * ")], (200,), False, "vary-star"),
        ("200 OK", [], (200,), True, "credentials"),
        ("200 OK", [("Cache-Control", "max-age=60")], (200,), True, "credentials"),
        ("200 OK", [("Content-Length", "abc")], (200,), False, "content-length"),
        ("200 OK", [("Content-Length", "1e3")], (200,), False, "content-length"),
        ("200 OK", [("Content-Length", "")], (200,), False, "content-length"),
        ("200 OK", [("Content-Length", str(ITEM_LIMIT + 1))], (200,), False, "too-large"),
        ("200 OK", [("Cache-Control", "max-age=0")], (200,), False, "stale"),
        ("200 OK", [("Cache-Control", "max-age=-5")], (200,), False, "stale"),
        ("200 OK", [("Cache-Control", "s-maxage=0, max-age=60")], (200,), False, "stale"),
        ("200 OK", [("Expires", "0")], (200,), False, "stale"),
        ("200 OK", [("Expires", "not a date")], (200,), False, "stale"),
        ("200 OK", [("Expires", http_date(DATE - timedelta(seconds=1)))], (200,), False, "stale"),
        (
            "200 OK",
            [("Date", http_date(DATE)), ("Expires", http_date(DATE))],
            (200,),
            False,
            "stale",
        ),
    ],
    ids=[
        "status-abc",
        "status-empty",
        "status-not-a-number",
        "status-404-default",
        "status-500-not-listed",
        "no-store",
        "no-store-with-public",
        "private",
        "private-qualified",
        "private-with-max-age",
        "no-cache",
        "no-cache-qualified",
        "no-store-in-second-header",
        "set-cookie",
        "set-cookie-lowercase",
        "vary-star",
        "vary-star-second-header",
        "credentials",
        "credentials-max-age",
        "content-length-garbage",
        "content-length-float",
        "content-length-empty",
        "too-large",
        "max-age-0",
        "max-age-negative",
        "s-maxage-0",
        "expires-0",
        "expires-garbage",
        "expires-past",
        "expires-equals-date",
    ],
)
def test_assess_response_refuses(
    status: str,
    headers: list[tuple[str, str]],
    statuses: tuple[int, ...],
    credentials: bool,
    reason: str,
) -> None:
    verdict = assess(headers, status, credentials=credentials, statuses=statuses)

    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("cache_control", "reason"),
    [("Private", "private"), ("NO-STORE", "no-store"), ("No-Cache", "no-cache")],
)
def test_assess_response_directives_are_case_insensitive(cache_control: str, reason: str) -> None:
    assert assess([("Cache-Control", cache_control)]).reason == reason


@pytest.mark.parametrize("cache_control", ["max-age=abc", "max-age=1.5", "max-age", "s-maxage=x"])
def test_assess_response_invalid_freshness_is_stale(cache_control: str) -> None:
    assert assess([("Cache-Control", cache_control)]).reason == "stale"


def test_assess_response_refuses_a_negative_content_length() -> None:
    assert assess([("Content-Length", "-1")]).reason == "content-length"


# -- assess_response: a response that says nothing about its freshness

SAYS_NOTHING = [
    pytest.param([], id="no-header"),
    pytest.param([("Content-Type", "text/plain"), ("Content-Length", "5")], id="plain"),
    pytest.param([("Vary", "Accept")], id="vary"),
    pytest.param([("ETag", '"v1"')], id="etag"),
    pytest.param([("Cache-Control", "public")], id="public"),
    pytest.param([("Cache-Control", "must-revalidate, immutable, x-custom=1")], id="unknown"),
    pytest.param([("Cache-Control", ",,;;=garbage")], id="garbage-cache-control"),
    pytest.param([("Cache-Control", "")], id="empty-cache-control"),
    pytest.param([("Last-Modified", "not a date")], id="last-modified-garbage"),
    pytest.param([("Last-Modified", http_date(DATE + timedelta(days=1)))], id="modified-later"),
]


@pytest.mark.parametrize("headers", SAYS_NOTHING)
def test_a_response_without_freshness_is_not_stored_by_default(
    headers: list[tuple[str, str]],
) -> None:
    # No shared cache in wide use keeps a page that did not ask to be kept (a "database
    # unavailable" page must not outlive the outage by cache_ttl_s).
    assert assess(headers).reason == "no-freshness"


@pytest.mark.parametrize("headers", SAYS_NOTHING)
def test_a_response_without_freshness_lives_cache_default_ttl_s(
    headers: list[tuple[str, str]],
) -> None:
    assert assess(headers, default_ttl=30).lifetime == 30
    assert assess(headers, default_ttl=TTL_CAP * 10).lifetime == TTL_CAP  # capped


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ([("Last-Modified", http_date(DATE - timedelta(seconds=500)))], 50),
        ([("Last-Modified", http_date(DATE - timedelta(days=30)))], TTL_CAP),
        (
            [
                ("Date", http_date(DATE - timedelta(seconds=100))),
                ("Last-Modified", http_date(DATE - timedelta(seconds=300))),
            ],
            20,  # a tenth of Date - Last-Modified, whatever the clock says
        ),
        (
            [("Date", "garbage"), ("Last-Modified", http_date(DATE - timedelta(seconds=300)))],
            30,  # an unparsable Date counts from ``now``
        ),
        ([("Vary", "Accept"), ("Last-Modified", http_date(DATE - timedelta(seconds=90)))], 9),
        (
            [("Cache-Control", "public"), ("Last-Modified", http_date(DATE - timedelta(hours=1)))],
            TTL_CAP,
        ),
    ],
    ids=["tenth-of-age", "capped", "from-date", "garbage-date", "with-vary", "public"],
)
def test_heuristic_freshness_from_last_modified(
    headers: list[tuple[str, str]], lifetime: float
) -> None:
    # RFC 9111 §4.2.2: a tenth of the time since Last-Modified, capped by cache_ttl_s.
    verdict = assess(headers)

    assert (verdict.reason, verdict.lifetime) == (None, pytest.approx(lifetime))


def test_heuristic_freshness_only_for_heuristically_cacheable_statuses() -> None:
    modified = [("Last-Modified", http_date(DATE - timedelta(seconds=500)))]
    every = tuple(range(200, 600))
    for code in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
        assert assess(modified, f"{code} X", statuses=every).lifetime == 50, code
    for code in (201, 202, 302, 303, 307, 400, 403, 500, 503):
        assert assess(modified, f"{code} X", statuses=every).reason == "no-freshness", code
    # The setting still decides what may be stored at all.
    assert assess(modified, "404 Not Found").reason == "status"
    assert {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501} == HEURISTIC_STATUSES


def test_the_longer_of_heuristic_and_default_freshness_wins() -> None:
    modified = [("Last-Modified", http_date(DATE - timedelta(seconds=500)))]  # heuristic: 50

    assert assess(modified, default_ttl=20).lifetime == 50
    assert assess(modified, default_ttl=80).lifetime == 80


def test_explicit_freshness_beats_heuristic_and_default() -> None:
    modified = ("Last-Modified", http_date(DATE - timedelta(days=30)))

    assert assess([("Cache-Control", "max-age=5"), modified], default_ttl=80).lifetime == 5
    # Stale on arrival, but with a validator: kept to be revalidated, never served as it is.
    stale = assess([("Cache-Control", "max-age=0"), modified], default_ttl=80)
    assert (stale.reason, stale.lifetime) == (None, 0.0)
    assert assess([("Cache-Control", "max-age=0")], default_ttl=80).reason == "stale"
    expired = ("Expires", http_date(DATE - timedelta(seconds=1)))
    assert assess([expired], default_ttl=80).reason == "stale"
    assert (assess([expired, modified], default_ttl=80).reason, stale.lifetime) == (None, 0.0)


# -- assess_response: what is stored, and what the store learns


def test_assess_response_defaults() -> None:
    assert assess([("Content-Type", "text/plain"), *MARKED]) == ResponseVerdict(None, lifetime=60)


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ([("Cache-Control", "max-age=60")], 60),
        ([("Cache-Control", "max-age=60, s-maxage=30")], 30),
        ([("Cache-Control", "max-age=10, s-maxage=30")], 30),
        ([("Cache-Control", "public"), ("Cache-Control", "max-age=5")], 5),
        ([("Cache-Control", "max-age=5000")], TTL_CAP),
        ([("Cache-Control", "s-maxage=5000")], TTL_CAP),
        ([("Cache-Control", "max-age=60"), ("Expires", "0")], 60),
        (
            [("Cache-Control", "max-age=60"), ("Expires", http_date(DATE + timedelta(seconds=5)))],
            60,
        ),
        ([("Date", http_date(DATE)), ("Expires", http_date(DATE + timedelta(seconds=45)))], 45),
        ([("Expires", http_date(DATE + timedelta(seconds=45)))], 45),  # from ``now``
        (
            [("Date", "garbage"), ("Expires", http_date(DATE + timedelta(seconds=45)))],
            45,  # an unparsable Date counts from ``now``
        ),
        (
            [
                ("Date", http_date(DATE - timedelta(hours=1))),
                ("Expires", http_date(DATE - timedelta(hours=1) + timedelta(seconds=20))),
            ],
            20,  # Expires - Date, whatever the clock says
        ),
        ([("Expires", http_date(DATE + timedelta(days=1)))], TTL_CAP),
        ([("Cache-Control", "must-revalidate, immutable, x-custom=1, max-age=7")], 7),
    ],
    ids=[
        "max-age",
        "s-maxage-beats-max-age",
        "s-maxage-beats-shorter-max-age",
        "two-headers",
        "max-age-capped",
        "s-maxage-capped",
        "max-age-beats-invalid-expires",
        "max-age-beats-expires",
        "expires-minus-date",
        "expires-minus-now",
        "expires-garbage-date",
        "expires-old-date",
        "expires-capped",
        "unknown-directives",
    ],
)
def test_assess_response_lifetime(headers: list[tuple[str, str]], lifetime: float) -> None:
    verdict = assess(headers)

    assert verdict.reason is None
    assert verdict.lifetime == lifetime


@pytest.mark.parametrize(
    ("cache_control", "shareable"),
    [
        ("max-age=60", False),
        ("public", True),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ("max-age=60, s-maxage=60", True),
    ],
)
def test_assess_response_shareable_with_credentials(cache_control: str, shareable: bool) -> None:
    # "public" alone gives no lifetime: cache_default_ttl_s gives it one here.
    anonymous = assess([("Cache-Control", cache_control)], default_ttl=30)

    assert anonymous.reason is None
    assert anonymous.shareable_with_credentials is shareable
    with_credentials = assess([("Cache-Control", cache_control)], credentials=True, default_ttl=30)
    assert with_credentials.reason == (None if shareable else "credentials")


@pytest.mark.parametrize(
    ("vary_headers", "keys"),
    [
        ([("Vary", "Accept-Language")], ("HTTP_ACCEPT_LANGUAGE",)),
        (
            [("Vary", "accept-language, Accept-Encoding")],
            ("HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT_LANGUAGE"),
        ),
        (
            [("Vary", "Accept-Language"), ("vary", "ACCEPT-LANGUAGE, X-Tenant")],
            ("HTTP_ACCEPT_LANGUAGE", "HTTP_X_TENANT"),
        ),
        ([("Vary", "Content-Type")], ("CONTENT_TYPE",)),
        ([("Vary", " , ,")], ()),
        ([("Vary", "")], ()),
    ],
    ids=["one", "two-sorted", "two-headers-deduplicated", "content-type", "only-commas", "empty"],
)
def test_assess_response_vary(vary_headers: list[tuple[str, str]], keys: tuple[str, ...]) -> None:
    verdict = assess([*vary_headers, *MARKED])

    assert verdict.reason is None
    assert verdict.vary == keys


@pytest.mark.parametrize(
    ("value", "length"),
    [("0", 0), ("12", 12), (" 12 ", 12), (str(ITEM_LIMIT), ITEM_LIMIT)],
    ids=["zero", "twelve", "spaces", "at-limit"],
)
def test_assess_response_content_length(value: str, length: int) -> None:
    verdict = assess([("content-length", value), *MARKED])

    assert (verdict.reason, verdict.content_length) == (None, length)


@pytest.mark.parametrize(
    ("last_modified", "timestamp"),
    [
        (http_date(DATE), NOW),
        ("Sunday, 06-Nov-94 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=timezone.utc)),
        ("not a date", None),
        ("", None),
    ],
    ids=["imf-fixdate", "rfc850", "garbage", "empty"],
)
def test_assess_response_validators(last_modified: str, timestamp: Any) -> None:
    if isinstance(timestamp, datetime):
        timestamp = timestamp.timestamp()
    verdict = assess([("ETag", 'W/"v1"'), ("Last-Modified", last_modified), *MARKED])

    assert verdict.reason is None
    assert verdict.etag == 'W/"v1"'
    assert verdict.last_modified == timestamp


def test_assess_response_status_codes_from_settings() -> None:
    assert assess(MARKED, "404 Not Found", statuses=(200, 404)).reason is None
    assert assess(MARKED, "203 Non-Authoritative Information", statuses=(200, 203)).reason is None
    assert assess(MARKED, "200 OK", statuses=(404,)).reason == "status"


@pytest.mark.parametrize("status", ["OK", "2x0 OK", "", "abc 200"], ids=repr)
def test_assess_response_refuses_a_status_line_without_a_code(status: str) -> None:
    assert assess([], status).reason == "status"


def test_assess_response_without_now_uses_the_wall_clock() -> None:
    expires = http_date(datetime.now(timezone.utc) + timedelta(seconds=50))

    verdict = assess_response(
        "200 OK",
        [("Expires", expires)],
        credentials=False,
        statuses=frozenset({200}),
        item_limit=ITEM_LIMIT,
        ttl_cap=TTL_CAP,
    )

    assert verdict.reason is None
    assert 40 <= verdict.lifetime <= 50  # whole seconds of an HTTP date, not a timing check


# -- request_directives


@pytest.mark.parametrize(
    ("environ", "directives"),
    [
        ({"HTTP_CACHE_CONTROL": "no-store"}, (True, False)),
        ({"HTTP_CACHE_CONTROL": "no-cache"}, (False, True)),
        ({"HTTP_CACHE_CONTROL": "max-age=0"}, (False, True)),
        ({"HTTP_CACHE_CONTROL": "no-store, no-cache"}, (True, True)),
        ({"HTTP_CACHE_CONTROL": "max-age=60"}, (False, False)),
        ({"HTTP_CACHE_CONTROL": "max-age=abc"}, (False, False)),
        ({"HTTP_CACHE_CONTROL": "max-age"}, (False, False)),
        ({"HTTP_CACHE_CONTROL": "only-if-cached, max-stale=10"}, (False, False)),
        ({"HTTP_CACHE_CONTROL": ",,;;=garbage=\x7f"}, (False, False)),
        ({"HTTP_CACHE_CONTROL": ""}, (False, False)),
        ({"HTTP_PRAGMA": "no-cache"}, (False, True)),
        ({"HTTP_PRAGMA": "No-Cache"}, (False, True)),
        ({"HTTP_PRAGMA": "x-other, no-cache"}, (False, True)),
        ({"HTTP_PRAGMA": "x-other"}, (False, False)),
        ({"HTTP_PRAGMA": ""}, (False, False)),
        ({"HTTP_PRAGMA": "no-cache", "HTTP_CACHE_CONTROL": "max-age=60"}, (False, False)),
        ({"HTTP_PRAGMA": "no-cache", "HTTP_CACHE_CONTROL": ""}, (False, False)),
        ({"HTTP_PRAGMA": "no-cache", "HTTP_CACHE_CONTROL": "no-store"}, (True, False)),
    ],
    ids=[
        "no-store",
        "no-cache",
        "max-age-0",
        "no-store-and-no-cache",
        "max-age-60",
        "max-age-garbage",
        "max-age-no-value",
        "other-directives",
        "garbage",
        "empty",
        "pragma",
        "pragma-case",
        "pragma-list",
        "pragma-other",
        "pragma-empty",
        "pragma-ignored-with-cache-control",
        "pragma-ignored-with-empty-cache-control",
        "pragma-ignored-with-no-store",
    ],
)
def test_request_directives(environ: dict[str, str], directives: tuple[bool, bool]) -> None:
    assert request_directives(environ) == directives


@pytest.mark.parametrize(
    ("cache_control", "directives"),
    [("No-Store", (True, False)), ("NO-CACHE", (False, True)), ("Max-Age=0", (False, True))],
    ids=["No-Store", "NO-CACHE", "Max-Age=0"],
)
def test_request_directives_are_case_insensitive(
    cache_control: str, directives: tuple[bool, bool]
) -> None:
    assert request_directives({"HTTP_CACHE_CONTROL": cache_control}) == directives


# -- is_not_modified

LAST_MODIFIED = NOW


@pytest.mark.parametrize(
    ("environ", "etag", "not_modified"),
    [
        ({"HTTP_IF_NONE_MATCH": '"v1"'}, '"v1"', True),
        ({"HTTP_IF_NONE_MATCH": 'W/"v1"'}, '"v1"', True),
        ({"HTTP_IF_NONE_MATCH": '"v1"'}, 'W/"v1"', True),
        ({"HTTP_IF_NONE_MATCH": 'W/"v1"'}, 'W/"v1"', True),
        ({"HTTP_IF_NONE_MATCH": '"a", "v1" , W/"b"'}, '"v1"', True),
        ({"HTTP_IF_NONE_MATCH": "*"}, '"v1"', True),
        ({"HTTP_IF_NONE_MATCH": '"v2"'}, '"v1"', False),
        ({"HTTP_IF_NONE_MATCH": '"V1"'}, '"v1"', False),
        ({"HTTP_IF_NONE_MATCH": ""}, '"v1"', False),
        ({"HTTP_IF_NONE_MATCH": ',,;;"'}, '"v1"', False),
        ({"HTTP_IF_NONE_MATCH": '"v1"'}, None, False),
        ({"HTTP_IF_NONE_MATCH": "*"}, None, False),
        ({"HTTP_IF_MODIFIED_SINCE": http_date(DATE)}, '"v1"', True),
        ({"HTTP_IF_MODIFIED_SINCE": http_date(DATE + timedelta(seconds=1))}, '"v1"', True),
        ({"HTTP_IF_MODIFIED_SINCE": http_date(DATE - timedelta(seconds=1))}, '"v1"', False),
        ({"HTTP_IF_MODIFIED_SINCE": "garbage"}, '"v1"', False),
        ({"HTTP_IF_MODIFIED_SINCE": ""}, '"v1"', False),
        (
            {"HTTP_IF_NONE_MATCH": '"v2"', "HTTP_IF_MODIFIED_SINCE": http_date(DATE)},
            '"v1"',
            False,
        ),
        (
            {
                "HTTP_IF_NONE_MATCH": '"v1"',
                "HTTP_IF_MODIFIED_SINCE": http_date(DATE - timedelta(days=1)),
            },
            '"v1"',
            True,
        ),
        (
            {"HTTP_IF_NONE_MATCH": '"v1"', "HTTP_IF_MODIFIED_SINCE": http_date(DATE)},
            None,
            False,
        ),
        ({}, '"v1"', False),
    ],
    ids=[
        "inm-strong",
        "inm-weak-request",
        "inm-weak-stored",
        "inm-weak-both",
        "inm-list",
        "inm-star",
        "inm-other",
        "inm-case-sensitive",
        "inm-empty",
        "inm-garbage",
        "inm-no-stored-etag",
        "inm-star-no-stored-etag",
        "ims-equal",
        "ims-after",
        "ims-before",
        "ims-garbage",
        "ims-empty",
        "inm-miss-beats-ims-hit",
        "inm-hit-beats-ims-miss",
        "inm-without-etag-beats-ims",
        "no-condition",
    ],
)
def test_is_not_modified(environ: dict[str, str], etag: str | None, not_modified: bool) -> None:
    assert is_not_modified(environ, etag, LAST_MODIFIED) is not_modified


@pytest.mark.parametrize(
    "environ",
    [{"HTTP_IF_MODIFIED_SINCE": http_date(DATE)}, {}],
    ids=["ims", "no-condition"],
)
def test_is_not_modified_without_last_modified(environ: dict[str, str]) -> None:
    assert is_not_modified(environ, None, None) is False


def test_is_not_modified_answers_the_same_from_remembered_and_long_validators() -> None:
    # Short validators are parsed once and remembered; a long list (the client's to make as
    # long as it likes) is parsed every time and not kept.
    short = {"HTTP_IF_NONE_MATCH": '"v1"'}
    long_list = ", ".join(f'"tag-{n}"' for n in range(60)) + ', "v1"'
    assert len(long_list) > 256
    kept = policy._remembered_etags.cache_info().currsize

    answers = [is_not_modified(short, '"v1"', None) for _ in range(3)]
    answers.append(is_not_modified({"HTTP_IF_NONE_MATCH": long_list}, '"v1"', None))
    answers.append(is_not_modified({"HTTP_IF_NONE_MATCH": long_list}, '"v2"', None))

    assert answers == [True, True, True, True, False]
    assert policy._remembered_etags.cache_info().currsize <= kept + 1  # only the short one
    since = {"HTTP_IF_MODIFIED_SINCE": http_date(DATE) + " " * 300}  # long, still a date
    assert is_not_modified(since, None, LAST_MODIFIED) is True


# -- variant_key and environ_key

BASE = ("http", "localhost", "/", "")


@pytest.mark.parametrize(
    ("keys", "environ", "values"),
    [
        ((), {"HTTP_ACCEPT_LANGUAGE": "en"}, ()),
        (("HTTP_ACCEPT_LANGUAGE",), {"HTTP_ACCEPT_LANGUAGE": "en"}, ("en",)),
        (("HTTP_ACCEPT_LANGUAGE",), {}, (None,)),
        (("HTTP_ACCEPT_LANGUAGE",), {"HTTP_ACCEPT_LANGUAGE": ""}, ("",)),
        (
            ("HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT_LANGUAGE"),
            {"HTTP_ACCEPT_LANGUAGE": "en", "HTTP_ACCEPT_ENCODING": "gzip"},
            ("gzip", "en"),
        ),
        (("HTTP_A", "HTTP_B"), {"HTTP_B": "x"}, (None, "x")),
    ],
    ids=["no-keys", "value", "absent", "empty", "two-in-order", "one-absent"],
)
def test_variant_key(keys: tuple[str, ...], environ: dict[str, str], values: tuple[object]) -> None:
    assert variant_key(BASE, keys, environ) == (BASE, keys, values)


def test_variant_key_holds_the_vary_names_not_only_their_values() -> None:
    # A page that varied on Accept-Encoding, then on X-Flag: a client sending X-Flag: gzip
    # and no Accept-Encoding must not select the gzip variant.
    gzip = variant_key(BASE, ("HTTP_ACCEPT_ENCODING",), {"HTTP_ACCEPT_ENCODING": "gzip"})
    flag = variant_key(BASE, ("HTTP_X_FLAG",), {"HTTP_X_FLAG": "gzip"})

    assert gzip != flag


def test_variant_key_absent_differs_from_any_header_value() -> None:
    keys = ("HTTP_A",)
    absent = variant_key(BASE, keys, {})

    for value in ("", " ", "None", "-", "\x00"):
        assert variant_key(BASE, keys, {"HTTP_A": value}) != absent


def test_variant_key_keeps_two_headers_apart() -> None:
    keys = ("HTTP_A", "HTTP_B")

    assert variant_key(BASE, keys, {"HTTP_A": "x", "HTTP_B": ""}) != variant_key(
        BASE, keys, {"HTTP_A": "", "HTTP_B": "x"}
    )


def test_variant_key_never_equals_a_base_key() -> None:
    # A crafted value cannot make a variant spell another request's base key.
    assert variant_key(BASE, ("HTTP_A",), {"HTTP_A": "/"}) != ("http", "localhost", "/", "/")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Accept-Language", "HTTP_ACCEPT_LANGUAGE"),
        ("accept-language", "HTTP_ACCEPT_LANGUAGE"),
        (" X-Tenant ", "HTTP_X_TENANT"),
        ("X-Forwarded-Proto", "HTTP_X_FORWARDED_PROTO"),
        ("Content-Type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("Host", "HTTP_HOST"),
    ],
)
def test_environ_key(header: str, key: str) -> None:
    assert environ_key(header) == key


@pytest.mark.parametrize(
    "value",
    ["no-store", "Public, Max-Age=60", 'private="Set-Cookie", max-age=5', "max-age=" + "9" * 300],
    ids=["token", "mixed-case", "quoted", "long-not-remembered"],
)
def test_remembered_directives_are_werkzeugs_parse(value: str) -> None:
    # Response directives are remembered between responses; the result must be werkzeug's
    # own, however often asked.
    expected = parse_dict_header(value.lower())
    assert cache_directives(value) == expected
    assert cache_directives(value) == expected


@pytest.mark.parametrize(
    "length", ["²", "5x", "-1", " "], ids=["superscript", "junk", "minus", "blank"]
)
def test_a_content_length_that_is_no_number_is_refused_by_name(length: str) -> None:
    # "²".isdigit() is True and int("²") raises: the check must refuse it, not fail on it.
    assert assess([("Content-Length", length)]).reason == "content-length"
    assert assess([("Content-Length", length), ("Cache-Control", "max-age=9")]).reason == (
        "content-length"
    )


def test_an_unusual_spelling_of_a_header_name_is_read_all_the_same() -> None:
    assert assess([("cAcHe-CoNtRoL", "no-store")]).reason == "no-store"
    assert assess([("SET-COOKIE", "a=b")]).reason == "set-cookie"
    assert assess([("content-length", "12"), *MARKED]).content_length == 12


# -- the request inputs the key does not hold: forwarding headers, bodies, path spellings


def test_every_forwarding_header_names_who_reads_it() -> None:
    assert all(reader.strip() for reader in FORWARDING_HEADERS.values())
    assert all(name == name.lower() for name in FORWARDING_HEADERS)
    assert set(FORWARDED_KEY_HEADERS) < set(FORWARDING_HEADERS)
    assert set(BYPASS_HEADERS) == set(FORWARDING_HEADERS) - set(FORWARDED_KEY_HEADERS)
    # Set by a TLS proxy on every request, and only REMOTE_ADDR follows it: never bypassed.
    assert "x-forwarded-for" not in FORWARDING_HEADERS


@pytest.mark.parametrize(
    "header",
    [
        "X-Forwarded-Host",
        "X-Forwarded-Server",
        "X-Forwarded-Scheme",
        "X-Host",
        "X-Original-Host",
        "X-Forwarded-Ssl",
        "X-HTTP-Method-Override",
        "X-Original-URL",
        "Forwarded",
    ],
)
def test_the_plan_keys_hold_every_unkeyed_forwarding_header(header: str) -> None:
    assert environ_key(header) in plan_environ_keys(())
    assert environ_key(header) not in plan_environ_keys((header.lower(),))


def test_the_plan_keys_hold_the_directives_and_a_chunked_body_whatever_is_keyed() -> None:
    everything = plan_environ_keys(FORWARDING_HEADERS)

    assert everything == {"HTTP_CACHE_CONTROL", "HTTP_PRAGMA", "HTTP_TRANSFER_ENCODING"}
    assert not {environ_key(name) for name in FORWARDED_KEY_HEADERS} & plan_environ_keys(())


@pytest.mark.parametrize(
    ("environ", "body"),
    [
        ({}, False),
        ({"CONTENT_LENGTH": ""}, False),
        ({"CONTENT_LENGTH": "0"}, False),
        ({"CONTENT_LENGTH": "12"}, True),
        ({"CONTENT_LENGTH": "00"}, True),  # not one of the spellings of "none": passed through
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, True),
        ({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}, True),
    ],
    ids=["absent", "empty", "zero", "twelve", "zero-zero", "chunked", "chunked-empty-length"],
)
def test_has_body(environ: dict[str, str], body: bool) -> None:
    assert has_body(environ) is body


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("", ""),
        ("/", "/"),
        ("/admin/x", "/admin/x"),
        ("/static/app.css", "/static/app.css"),
        ("/./admin/x", "/admin/x"),
        ("/static/../admin/x", "/admin/x"),
        ("/static/../../../admin/x", "/admin/x"),
        ("//admin//x", "/admin/x"),
        ("/admin/.", "/admin/"),
        ("/admin/x/..", "/admin/"),
        ("/admin/", "/admin/"),
        ("/..", "/"),
        ("/a/.../b", "/a/.../b"),  # three dots are a name
        ("/a/..b/c", "/a/..b/c"),
    ],
)
def test_normalized_path(path: str, normalized: str) -> None:
    assert normalized_path(path) == normalized
