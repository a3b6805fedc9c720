"""Tests of wsgi_memopt.settings: documented defaults, parsing, validation, sources, round trips."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import pytest
from helpers.wsgi import run_threads
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.settings import (
    DEFAULT_API_PREFIX,
    ENV_PREFIX,
    SECRET_SETTINGS,
    Settings,
    SettingsError,
    did_you_mean,
    shown_value,
)

BOUND_S = 10.0  # no test waits longer; a bug fails, never hangs

LOOPBACK = ("127.0.0.0/8", "::1/128")

# A Settings far from the defaults, touching every kind of parser.
NON_DEFAULT: dict[str, Any] = {
    "cache_enabled": False,
    "cache_max_items": 42,
    "cache_max_mb": 10.5,
    "cache_item_max_mb": 0.25,
    "cache_ttl_s": 60,
    "cache_default_ttl_s": 45,
    "cache_evict_fraction": 0.5,
    "cache_cleanup_interval_s": 0,
    "cache_statuses": (200, 203, 301, 404),
    "cache_paths": ("/static/*", "/api/*"),
    "cache_exclude_paths": ("/api/private/*",),
    "cache_key_headers": ("accept-language", "x-forwarded-host"),
    "cache_targeted_fields": ("cdn-cache-control",),
    "cache_lock_timeout_s": 0.1,
    "cache_backend": "redis://127.0.0.1:1/3",
    "cache_redis_prefix": "shop:",
    "cache_redis_timeout_s": 0.05,
    "cache_redis_retry_s": 0.5,
    "cache_redis_secret": "0123456789abcdef-secret",
    "cache_local_ttl_s": 1.5,
    "max_memory_percent": 50,
    "critical_percent": 70.5,
    "restart_percent": 95,
    "restart_after_s": 30,
    "forecast_lead_s": 5,
    "forecast_window_s": 20,
    "pressure_source": "process",
    "process_limit_mb": 512,
    "sample_interval_s": 0.05,
    "monitor_interval_s": 0,
    "gc_threshold": (700, 10, 10),
    "gc_freeze": False,
    "gc_mode": "auto",
    "trim_threshold_mb": 0,
    "min_worker_lifetime_s": 1e-3,
    "tracemalloc_frames": 25,
    "api_enabled": False,
    "api_prefix": "/internal/mem",
    "api_token": "s3cr3t-t0ken",
    "api_allow_networks": ("10.0.0.0/8", "fd00::/8"),
    "api_min_interval_s": 2.5,
    "api_quiet_wait_s": 0.5,
}


def _raises_settings_error(**values: Any) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        Settings(**values)
    return info.value


# -- the defaults people rely on (the documented settings table)

DOCUMENTED_DEFAULTS = [
    ("cache_enabled", True),
    ("cache_max_items", 500),
    ("cache_max_mb", 25),
    ("cache_item_max_mb", 2),
    ("cache_ttl_s", 1800),
    ("cache_default_ttl_s", 0),
    ("cache_evict_fraction", 0.3),
    ("cache_cleanup_interval_s", 120),
    ("cache_statuses", (200,)),
    ("cache_paths", ()),
    ("cache_exclude_paths", ()),
    ("max_memory_percent", 65),
    ("critical_percent", 85),
    ("restart_percent", 90),
    ("restart_after_s", 300),
    ("forecast_lead_s", 10),
    ("forecast_window_s", 10),
    ("pressure_source", "auto"),
    ("process_limit_mb", None),
    ("sample_interval_s", 0.5),
    ("monitor_interval_s", 10),
    ("gc_threshold", None),
    ("gc_freeze", True),
    ("gc_mode", "between"),
    ("trim_threshold_mb", 32),
    ("min_worker_lifetime_s", 60),
    ("tracemalloc_frames", 0),
    ("api_enabled", True),
    ("api_prefix", "/api/v1/memory"),
    ("api_token", None),
    ("api_allow_networks", ()),  # closed until the operator opens it
    ("api_min_interval_s", 1.0),
    ("api_quiet_wait_s", 2.0),
]


@pytest.mark.parametrize(
    ("name", "expected"), DOCUMENTED_DEFAULTS, ids=[n for n, _ in DOCUMENTED_DEFAULTS]
)
def test_default_matches_the_documented_table(name: str, expected: object) -> None:
    settings = Settings()
    assert getattr(settings, name) == expected
    assert settings.source_of(name) == "default"


def test_every_documented_default_is_a_field() -> None:
    assert {name for name, _ in DOCUMENTED_DEFAULTS} <= set(Settings.NAMES)


def test_names_are_the_init_fields_in_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Settings) if f.init) == Settings.NAMES
    assert "_sources" not in Settings.NAMES


def test_integer_settings_stay_integers() -> None:
    settings = Settings.from_mapping({"cache_max_items": "25", "tracemalloc_frames": "3"})
    assert type(settings.cache_max_items) is int
    assert type(settings.tracemalloc_frames) is int
    assert type(Settings().cache_max_items) is int


def test_number_settings_become_floats() -> None:
    settings = Settings(cache_max_mb=10, process_limit_mb=256, pressure_source="process")
    assert type(settings.cache_max_mb) is float
    assert type(settings.process_limit_mb) is float


def test_equal_settings_compare_and_hash_equal() -> None:
    assert Settings() == Settings()
    assert hash(Settings()) == hash(Settings.from_mapping({}))
    assert Settings(cache_max_mb=1) != Settings()


# -- parsing ini / env strings through from_mapping

GOOD_STRINGS = [
    pytest.param("cache_max_mb", "25", 25.0, id="mb-integer-text"),
    pytest.param("cache_max_mb", " 10.5 ", 10.5, id="mb-float-text-padded"),
    pytest.param("cache_max_items", "25", 25, id="items-integer"),
    pytest.param("cache_max_items", "1_000", 1000, id="items-underscore"),
    pytest.param("cache_enabled", "true", True, id="bool-true"),
    pytest.param("cache_enabled", "False", False, id="bool-False"),
    pytest.param("cache_enabled", "yes", True, id="bool-yes"),
    pytest.param("cache_enabled", "0", False, id="bool-0"),
    pytest.param("gc_freeze", "1", True, id="bool-1"),
    pytest.param("gc_freeze", "no", False, id="bool-no"),
    pytest.param("api_enabled", " ON ", True, id="bool-ON-padded"),
    pytest.param("api_enabled", "off", False, id="bool-off"),
    pytest.param("cache_statuses", "200,203", (200, 203), id="statuses-pair"),
    pytest.param("cache_statuses", " 404 , 200,200 ", (200, 404), id="statuses-sorted-dedup"),
    pytest.param("cache_statuses", "599", (599,), id="statuses-599"),
    pytest.param("cache_evict_fraction", "0.3", 0.3, id="evict-0.3"),
    pytest.param("cache_evict_fraction", "1", 1.0, id="evict-1"),
    pytest.param("cache_cleanup_interval_s", "0", 0.0, id="cleanup-zero"),
    pytest.param("process_limit_mb", "none", None, id="optional-none"),
    pytest.param("process_limit_mb", "None", None, id="optional-None"),
    pytest.param("process_limit_mb", "null", None, id="optional-null"),
    pytest.param("process_limit_mb", "", None, id="optional-empty"),
    pytest.param("process_limit_mb", "512", 512.0, id="optional-number"),
    pytest.param("api_token", "abc.DEF-123", "abc.DEF-123", id="token-value"),
    pytest.param("api_token", "!#$%&'*+-./0~", "!#$%&'*+-./0~", id="token-punctuation"),
    pytest.param("gc_threshold", "none", None, id="gc-threshold-none"),
    pytest.param("gc_threshold", "700,10,10", (700, 10, 10), id="gc-threshold-three"),
    pytest.param("gc_threshold", "1000", (1000,), id="gc-threshold-one"),
    pytest.param("gc_threshold", "0, 0", (0, 0), id="gc-threshold-zeros"),
    pytest.param(
        "api_allow_networks",
        "loopback, 10.0.0.0/8",
        (*LOOPBACK, "10.0.0.0/8"),
        id="networks-loopback-plus",
    ),
    pytest.param("api_allow_networks", "LOOPBACK", LOOPBACK, id="networks-loopback-upper"),
    pytest.param("api_allow_networks", "none", (), id="networks-none"),
    pytest.param("api_allow_networks", "10.1.2.3/8", ("10.0.0.0/8",), id="networks-host-bits"),
    pytest.param("api_allow_networks", "192.168.1.7", ("192.168.1.7/32",), id="networks-address"),
    pytest.param(
        "api_allow_networks", "10.0.0.0/8,10.0.0.0/8", ("10.0.0.0/8",), id="networks-dedup"
    ),
    pytest.param("api_allow_networks", "fd00::/8", ("fd00::/8",), id="networks-ipv6"),
    pytest.param("api_prefix", "/api/v1/memory/", "/api/v1/memory", id="prefix-trailing-slash"),
    pytest.param("api_prefix", " /mem// ", "/mem", id="prefix-slashes-padded"),
    pytest.param(
        "api_prefix",
        "/a-b_c.d~/e:f@g!$&'()*+,;=",
        "/a-b_c.d~/e:f@g!$&'()*+,;=",
        id="prefix-unreserved-and-sub-delims",
    ),
    pytest.param("pressure_source", "HOST", "host", id="choice-upper"),
    pytest.param("pressure_source", " Container ", "container", id="choice-mixed-padded"),
    pytest.param("gc_mode", "AUTO", "auto", id="gc-mode-upper"),
    pytest.param("gc_mode", "Between", "between", id="gc-mode-title"),
    pytest.param(
        "cache_key_headers",
        "X-Forwarded-Host, Accept-Language",
        ("accept-language", "x-forwarded-host"),
        id="headers-lowercased-sorted",
    ),
    pytest.param("cache_key_headers", "X-A,x-a", ("x-a",), id="headers-dedup"),
    pytest.param("cache_key_headers", "", (), id="headers-empty"),
    pytest.param(
        "cache_targeted_fields",
        "My-Cache-Control, CDN-Cache-Control, my-cache-control",
        ("my-cache-control", "cdn-cache-control"),
        id="targeted-in-order-lowercased-dedup",
    ),
    pytest.param("cache_targeted_fields", "none", (), id="targeted-none"),
    pytest.param("cache_paths", "/static/*, /api/*", ("/static/*", "/api/*"), id="globs"),
    pytest.param("cache_exclude_paths", "", (), id="globs-empty"),
    pytest.param("tracemalloc_frames", "25", 25, id="tracemalloc-frames"),
    pytest.param("tracemalloc_frames", "65535", 65535, id="tracemalloc-max"),
    pytest.param("monitor_interval_s", "0", 0.0, id="monitor-off"),
    pytest.param("max_memory_percent", "0.5", 0.5, id="percent-small"),
    pytest.param("restart_percent", "100", 100.0, id="percent-100"),
    pytest.param("cache_max_mb", "16777216", 16777216.0, id="mb-at-its-bound"),
    pytest.param("cache_lock_timeout_s", "86400", 86400.0, id="wait-at-its-bound"),
    pytest.param("cache_ttl_s", "31536000", 31536000.0, id="duration-at-its-bound"),
]


@pytest.mark.parametrize(("name", "text", "expected"), GOOD_STRINGS)
def test_from_mapping_parses_string(name: str, text: str, expected: object) -> None:
    settings = Settings.from_mapping({name: text})
    assert getattr(settings, name) == expected
    assert settings.source_of(name) == "mapping"


@pytest.mark.parametrize(("name", "text", "expected"), GOOD_STRINGS)
def test_keyword_accepts_the_same_string(name: str, text: str, expected: object) -> None:
    assert getattr(Settings(**{name: text}), name) == expected


NATIVE_VALUES = [
    pytest.param("cache_statuses", [404, "200"], (200, 404), id="statuses-list"),
    pytest.param("cache_paths", ["/a/*"], ("/a/*",), id="globs-list"),
    pytest.param("cache_key_headers", ("X-B", "X-A"), ("x-a", "x-b"), id="headers-tuple"),
    pytest.param("gc_threshold", [700, 10], (700, 10), id="gc-threshold-list"),
    pytest.param("api_allow_networks", ["loopback"], LOOPBACK, id="networks-list"),
    pytest.param("api_allow_networks", [], (), id="networks-empty-list"),
    pytest.param("cache_enabled", False, False, id="bool-native"),
    pytest.param("cache_max_items", 7, 7, id="int-native"),
    pytest.param("cache_max_mb", 3, 3.0, id="int-for-float"),
    pytest.param("api_token", None, None, id="token-None"),
]


@pytest.mark.parametrize(("name", "value", "expected"), NATIVE_VALUES)
def test_keyword_accepts_native_value(name: str, value: object, expected: object) -> None:
    assert getattr(Settings(**{name: value}), name) == expected


def test_from_mapping_normalises_key_case_and_spaces() -> None:
    settings = Settings.from_mapping({" CACHE_MAX_MB ": "3", "Gc_Mode": "auto"})
    assert settings.cache_max_mb == 3.0
    assert settings.gc_mode == "auto"


def test_from_mapping_keywords_override_mapping() -> None:
    settings = Settings.from_mapping({"cache_max_mb": "3"}, cache_max_mb=7)
    assert settings.cache_max_mb == 7.0
    assert settings.source_of("cache_max_mb") == "explicit"


def test_from_mapping_empty_is_defaults() -> None:
    settings = Settings.from_mapping({})
    assert settings == Settings()
    assert all(settings.source_of(name) == "default" for name in Settings.NAMES)


# -- bad values: a SettingsError naming the setting, the value and the rule

NUMBER = "expected a number"
INTEGER = "expected an integer"
BOOLEAN = "expected a boolean"
STATUS = "status codes from 200 to 599 except 206 and 304"
GLOBS = "expected glob patterns"
HEADERS = "expected HTTP header names"
GC_RULE = "1 to 3 non-negative integers"
NETWORKS = "expected networks"
PREFIX = "starting with '/'"
TOKEN = "expected a token of visible ASCII characters"
BACKEND = "expected 'memory', or a Redis URL"
PREFIX_CHARS = "visible ASCII characters without"
SECRET = "expected a secret of visible ASCII characters (no spaces), 16 or more"
LIST = "expected a comma-separated list"

BAD_VALUES = [
    pytest.param("cache_enabled", "maybe", BOOLEAN, id="cache_enabled-maybe"),
    pytest.param("cache_enabled", "2", BOOLEAN, id="cache_enabled-2"),
    pytest.param("cache_max_items", "0", ">= 1", id="cache_max_items-zero"),
    pytest.param("cache_max_items", "-5", ">= 1", id="cache_max_items-negative"),
    pytest.param("cache_max_items", "abc", INTEGER, id="cache_max_items-abc"),
    pytest.param("cache_max_items", "1.5", INTEGER, id="cache_max_items-fraction-text"),
    pytest.param("cache_max_items", 2.5, INTEGER, id="cache_max_items-float"),
    pytest.param("cache_max_items", True, INTEGER, id="cache_max_items-bool"),
    pytest.param("cache_max_items", "\u0663", INTEGER, id="cache_max_items-arabic-digit"),
    pytest.param("cache_max_items", "\uff13", INTEGER, id="cache_max_items-fullwidth-digit"),
    pytest.param("cache_max_mb", "-1", "> 0", id="cache_max_mb-negative"),
    pytest.param("cache_max_mb", "0", "> 0", id="cache_max_mb-zero"),
    pytest.param("cache_max_mb", "nan", NUMBER, id="cache_max_mb-nan-text"),
    pytest.param("cache_max_mb", math.nan, NUMBER, id="cache_max_mb-nan-float"),
    pytest.param("cache_max_mb", "-inf", NUMBER, id="cache_max_mb-minus-inf"),
    pytest.param("cache_max_mb", "abc", NUMBER, id="cache_max_mb-abc"),
    pytest.param("cache_max_mb", "", NUMBER, id="cache_max_mb-empty"),
    pytest.param("cache_max_mb", True, NUMBER, id="cache_max_mb-True"),
    pytest.param("cache_max_mb", False, NUMBER, id="cache_max_mb-False"),
    pytest.param("cache_max_mb", None, NUMBER, id="cache_max_mb-None"),
    pytest.param("cache_max_mb", [25], NUMBER, id="cache_max_mb-list"),
    pytest.param("cache_max_mb", "1.7e302", "<= 16777216 (16 TiB)", id="cache_max_mb-overflow"),
    pytest.param("cache_max_mb", 1e300, "<= 16777216 (16 TiB)", id="cache_max_mb-huge-float"),
    pytest.param("cache_max_mb", "\u0662\u0665", NUMBER, id="cache_max_mb-arabic-digits"),
    pytest.param("cache_item_max_mb", "-2", "> 0", id="cache_item_max_mb-negative"),
    pytest.param("cache_item_max_mb", 0, "> 0", id="cache_item_max_mb-zero"),
    pytest.param("cache_ttl_s", "0", "> 0", id="cache_ttl_s-zero"),
    pytest.param("cache_ttl_s", "-1", "> 0", id="cache_ttl_s-negative"),
    pytest.param("cache_default_ttl_s", "-1", ">= 0", id="cache_default_ttl_s-negative"),
    pytest.param("cache_default_ttl_s", "soon", NUMBER, id="cache_default_ttl_s-text"),
    pytest.param("cache_evict_fraction", "0", "> 0 and <= 1", id="evict-zero"),
    pytest.param("cache_evict_fraction", 0, "> 0 and <= 1", id="evict-zero-int"),
    pytest.param("cache_evict_fraction", "1.5", "> 0 and <= 1", id="evict-1.5"),
    pytest.param("cache_evict_fraction", 1.5, "> 0 and <= 1", id="evict-1.5-float"),
    pytest.param("cache_evict_fraction", "-0.1", "> 0 and <= 1", id="evict-negative"),
    pytest.param("cache_cleanup_interval_s", "-1", ">= 0", id="cleanup-negative"),
    pytest.param("cache_cleanup_interval_s", "abc", NUMBER, id="cleanup-abc"),
    pytest.param("cache_statuses", "206", STATUS, id="statuses-206"),
    pytest.param("cache_statuses", "304", STATUS, id="statuses-304"),
    pytest.param("cache_statuses", "99", STATUS, id="statuses-99"),
    pytest.param("cache_statuses", "600", STATUS, id="statuses-600"),
    pytest.param("cache_statuses", "199", STATUS, id="statuses-199"),
    pytest.param("cache_statuses", "200,206", STATUS, id="statuses-200-and-206"),
    pytest.param("cache_statuses", "", STATUS, id="statuses-empty-text"),
    pytest.param("cache_statuses", " , ", STATUS, id="statuses-only-commas"),
    pytest.param("cache_statuses", [], STATUS, id="statuses-empty-list"),
    pytest.param("cache_statuses", "200,abc", STATUS, id="statuses-abc"),
    pytest.param("cache_statuses", "200.0", STATUS, id="statuses-float-text"),
    pytest.param("cache_statuses", [200.0], STATUS, id="statuses-float"),
    pytest.param("cache_statuses", [True], STATUS, id="statuses-bool"),
    pytest.param("cache_statuses", "\u0662\u0660\u0660", STATUS, id="statuses-arabic-digits"),
    pytest.param("cache_paths", [""], GLOBS, id="cache_paths-empty-glob"),
    pytest.param("cache_paths", ["  "], GLOBS, id="cache_paths-blank-glob"),
    pytest.param("cache_paths", [1], GLOBS, id="cache_paths-int"),
    pytest.param("cache_exclude_paths", [None], GLOBS, id="cache_exclude_paths-None"),
    pytest.param("cache_key_headers", "X Bad", HEADERS, id="headers-space"),
    pytest.param("cache_key_headers", "X:Bad", HEADERS, id="headers-colon"),
    pytest.param("cache_key_headers", "Good, Bad(1)", HEADERS, id="headers-paren"),
    pytest.param("cache_key_headers", [1], HEADERS, id="headers-int"),
    pytest.param("cache_targeted_fields", "CDN Cache", "in order", id="targeted-space"),
    pytest.param("cache_lock_timeout_s", "-1", ">= 0", id="lock-timeout-negative"),
    pytest.param("cache_lock_timeout_s", "1e300", "<= 86400 (a day)", id="lock-timeout-huge"),
    pytest.param("max_memory_percent", "0", "> 0 and <= 100", id="max-percent-zero"),
    pytest.param("max_memory_percent", "101", "> 0 and <= 100", id="max-percent-101"),
    pytest.param("max_memory_percent", "-5", "> 0 and <= 100", id="max-percent-negative"),
    pytest.param("max_memory_percent", "nan", "> 0 and <= 100", id="max-percent-nan"),
    pytest.param("max_memory_percent", True, "> 0 and <= 100", id="max-percent-bool"),
    pytest.param("critical_percent", "150", "> 0 and <= 100", id="critical-150"),
    pytest.param("critical_percent", "abc", "> 0 and <= 100", id="critical-abc"),
    pytest.param("restart_percent", "100.5", "> 0 and <= 100", id="restart-100.5"),
    pytest.param("restart_percent", "inf", "> 0 and <= 100", id="restart-inf"),
    pytest.param("restart_after_s", "-1", ">= 0", id="restart-after-negative"),
    pytest.param("forecast_lead_s", "-1", ">= 0", id="forecast-lead-negative"),
    pytest.param("forecast_lead_s", "soon", NUMBER, id="forecast-lead-word"),
    pytest.param("forecast_window_s", "0", "> 0", id="forecast-window-zero"),
    pytest.param("forecast_window_s", "inf", "> 0", id="forecast-window-inf"),
    pytest.param("pressure_source", "disk", "auto, host, container, process", id="source-disk"),
    pytest.param("pressure_source", 1, "auto, host, container, process", id="source-int"),
    pytest.param("pressure_source", "", "auto, host, container, process", id="source-empty"),
    pytest.param("process_limit_mb", "0", "> 0", id="process-limit-zero"),
    pytest.param("process_limit_mb", "-100", "> 0", id="process-limit-negative"),
    pytest.param("process_limit_mb", "abc", NUMBER, id="process-limit-abc"),
    pytest.param("process_limit_mb", True, NUMBER, id="process-limit-bool"),
    pytest.param("sample_interval_s", "-0.5", ">= 0", id="sample-negative"),
    pytest.param("monitor_interval_s", "-10", ">= 0", id="monitor-negative"),
    pytest.param("monitor_interval_s", True, NUMBER, id="monitor-bool"),
    pytest.param("monitor_interval_s", 1e300, "<= 86400 (a day)", id="monitor-huge"),
    pytest.param("gc_threshold", "700,10,10,10", GC_RULE, id="gc-threshold-four"),
    pytest.param("gc_threshold", "-1", GC_RULE, id="gc-threshold-negative"),
    pytest.param("gc_threshold", "700,-10", GC_RULE, id="gc-threshold-negative-second"),
    pytest.param("gc_threshold", "a,b", GC_RULE, id="gc-threshold-letters"),
    pytest.param("gc_threshold", "7.5", GC_RULE, id="gc-threshold-fraction"),
    pytest.param("gc_threshold", [], GC_RULE, id="gc-threshold-empty-list"),
    pytest.param("gc_threshold", ",", GC_RULE, id="gc-threshold-only-comma"),
    pytest.param("gc_threshold", "\u0667\u0660\u0660", GC_RULE, id="gc-threshold-arabic"),
    pytest.param("gc_freeze", "sometimes", BOOLEAN, id="gc-freeze-sometimes"),
    pytest.param("gc_freeze", 1, BOOLEAN, id="gc-freeze-int"),
    pytest.param("gc_mode", "sometimes", "between, auto", id="gc-mode-sometimes"),
    pytest.param("gc_mode", "AUTOMATIC", "between, auto", id="gc-mode-automatic"),
    pytest.param("trim_threshold_mb", "-1", ">= 0", id="trim-negative"),
    pytest.param("min_worker_lifetime_s", "-60", ">= 0", id="lifetime-negative"),
    pytest.param("tracemalloc_frames", "-1", ">= 0 and <= 65535", id="tracemalloc-negative"),
    pytest.param("tracemalloc_frames", "65536", ">= 0 and <= 65535", id="tracemalloc-65536"),
    pytest.param("tracemalloc_frames", "1.5", INTEGER, id="tracemalloc-fraction"),
    pytest.param("tracemalloc_frames", True, INTEGER, id="tracemalloc-bool"),
    pytest.param("tracemalloc_frames", "\u0663", INTEGER, id="tracemalloc-arabic-digit"),
    pytest.param("api_enabled", "enabled", BOOLEAN, id="api-enabled-word"),
    pytest.param("api_prefix", "api", PREFIX, id="prefix-no-slash"),
    pytest.param("api_prefix", "/", PREFIX, id="prefix-root"),
    pytest.param("api_prefix", "///", PREFIX, id="prefix-slashes"),
    pytest.param("api_prefix", "", PREFIX, id="prefix-empty"),
    pytest.param("api_prefix", "/api v1", PREFIX, id="prefix-space"),
    pytest.param("api_prefix", 5, PREFIX, id="prefix-int"),
    pytest.param("api_prefix", "/m\u00e9moire", PREFIX, id="prefix-non-ascii"),
    pytest.param("api_prefix", "/a%20b", PREFIX, id="prefix-percent"),
    pytest.param("api_prefix", "/a?b", PREFIX, id="prefix-query"),
    pytest.param("api_token", " padded ", TOKEN, id="token-padded"),
    pytest.param("api_token", 5, TOKEN, id="token-int"),
    pytest.param("api_token", "", TOKEN, id="token-empty"),
    pytest.param("api_token", "none", TOKEN, id="token-none"),
    pytest.param("api_token", "None", TOKEN, id="token-None-text"),
    pytest.param("api_token", "NULL", TOKEN, id="token-null"),
    pytest.param("api_token", "s3cr\u00e9t", TOKEN, id="token-non-ascii"),
    pytest.param("api_token", "two words", TOKEN, id="token-space"),
    pytest.param("api_token", "tok\x7f", TOKEN, id="token-control"),
    pytest.param("cache_backend", "http://127.0.0.1:6379", BACKEND, id="backend-http"),
    pytest.param("cache_backend", "redis://a:1,b:2/0", BACKEND, id="backend-two-hosts"),
    pytest.param("cache_backend", "redis://h:70000/0", BACKEND, id="backend-bad-port"),
    pytest.param("cache_backend", "redis://h/0/1", BACKEND, id="backend-two-dbs"),
    pytest.param("cache_backend", "redis+cluster://h:7000/1", BACKEND, id="backend-cluster-db"),
    pytest.param("cache_backend", "redis+sentinel://h:26379", BACKEND, id="backend-no-service"),
    pytest.param("cache_backend", "unix://", BACKEND, id="backend-unix-no-path"),
    pytest.param("cache_backend", 6379, BACKEND, id="backend-int"),
    pytest.param("cache_redis_prefix", "", PREFIX_CHARS, id="redis-prefix-empty"),
    pytest.param("cache_redis_prefix", "app*", PREFIX_CHARS, id="redis-prefix-glob"),
    pytest.param("cache_redis_prefix", "my app", PREFIX_CHARS, id="redis-prefix-space"),
    pytest.param("cache_redis_timeout_s", "0", "> 0", id="redis-timeout-zero"),
    pytest.param("cache_redis_timeout_s", "61", "<= 60", id="redis-timeout-61"),
    pytest.param("cache_redis_retry_s", "0", "> 0", id="redis-retry-zero"),
    pytest.param("cache_redis_secret", "short", SECRET, id="redis-secret-short"),
    pytest.param("cache_redis_secret", "sixteen chars with spaces", SECRET, id="redis-secret-space"),
    pytest.param("cache_local_ttl_s", "0", "> 0", id="local-ttl-zero"),
    pytest.param("cache_local_ttl_s", "86401", "<= 86400", id="local-ttl-over-a-day"),
    pytest.param("api_allow_networks", "10.0.0.0/33", NETWORKS, id="networks-bad-mask"),
    pytest.param("api_allow_networks", "not-a-network", NETWORKS, id="networks-word"),
    pytest.param("api_allow_networks", "10.0.0.0/8, bogus", NETWORKS, id="networks-one-bad"),
    pytest.param("api_allow_networks", "300.1.1.1", NETWORKS, id="networks-bad-octet"),
    pytest.param("api_allow_networks", None, LIST, id="networks-None"),
    pytest.param("api_min_interval_s", "-1", ">= 0", id="api-interval-negative"),
    pytest.param("api_min_interval_s", "abc", NUMBER, id="api-interval-abc"),
    pytest.param("api_quiet_wait_s", "-1", ">= 0 and <= 60", id="quiet-wait-negative"),
    pytest.param("api_quiet_wait_s", "61", ">= 0 and <= 60", id="quiet-wait-61"),
    pytest.param("api_quiet_wait_s", "soon", NUMBER, id="quiet-wait-word"),
]


def _check_error(error: SettingsError, name: str, value: object, rule: str) -> None:
    assert isinstance(error, ValueError)
    assert error.setting == name
    message = str(error)
    assert name in message
    assert repr(shown_value(name, value)) in message  # a secret's value is never echoed
    assert rule in message
    assert rule in error.allowed


@pytest.mark.parametrize(("name", "value", "rule"), BAD_VALUES)
def test_bad_value_by_keyword(name: str, value: object, rule: str) -> None:
    error = _raises_settings_error(**{name: value})
    _check_error(error, name, value, rule)
    assert "(from " not in str(error)  # no origin to name for a keyword


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [case for case in BAD_VALUES if isinstance(case.values[1], str)],
)
def test_bad_string_via_from_mapping(name: str, value: str, rule: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping({name: value})
    _check_error(info.value, name, value, rule)


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [case for case in BAD_VALUES if isinstance(case.values[1], str)],
)
def test_bad_value_via_replace(name: str, value: str, rule: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings().replace(**{name: value})
    _check_error(info.value, name, value, rule)


def test_every_setting_has_a_bad_value_case() -> None:
    assert {case.values[0] for case in BAD_VALUES} == set(Settings.NAMES)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)
    error = SettingsError("cache_max_mb", "abc", "expected a number", "WSGI_MEMOPT_CACHE_MAX_MB")
    assert (error.setting, error.value, error.allowed, error.origin) == (
        "cache_max_mb",
        "abc",
        "expected a number",
        "WSGI_MEMOPT_CACHE_MAX_MB",
    )
    assert "WSGI_MEMOPT_CACHE_MAX_MB" in str(error)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("cache_max_items", 10**400, id="int-setting-huge-int"),
        pytest.param("cache_max_items", "1" + "0" * 400, id="int-setting-huge-text"),
        pytest.param("tracemalloc_frames", 10**400, id="bounded-int-huge-int"),
        pytest.param("cache_max_mb", 10**400, id="float-setting-huge-int"),
    ],
)
def test_huge_integer_raises_settings_error(name: str, value: object) -> None:
    with pytest.raises(SettingsError):
        Settings(**{name: value})


# Every number, and the bound beyond which it is refused: nothing the middleware derives from
# it (bytes as an int, a deadline, a thread's wait) may overflow.
UPPER_BOUNDS = {
    "cache_max_items": "1000000000",
    "cache_max_mb": "16777216 (16 TiB)",
    "cache_item_max_mb": "16777216 (16 TiB)",
    "cache_ttl_s": "31536000 (a year)",
    "cache_default_ttl_s": "31536000 (a year)",
    "cache_evict_fraction": "1",
    "cache_cleanup_interval_s": "31536000 (a year)",
    "cache_lock_timeout_s": "86400 (a day)",
    "cache_redis_timeout_s": "60",
    "cache_redis_retry_s": "3600",
    "cache_local_ttl_s": "86400 (a day)",
    "max_memory_percent": "100",
    "critical_percent": "100",
    "restart_percent": "100",
    "restart_after_s": "31536000 (a year)",
    "forecast_lead_s": "31536000 (a year)",
    "forecast_window_s": "31536000 (a year)",
    "process_limit_mb": "16777216 (16 TiB)",
    "sample_interval_s": "31536000 (a year)",
    "monitor_interval_s": "86400 (a day)",
    "trim_threshold_mb": "16777216 (16 TiB)",
    "min_worker_lifetime_s": "31536000 (a year)",
    "tracemalloc_frames": "65535",
    "api_min_interval_s": "31536000 (a year)",
    "api_quiet_wait_s": "60",
}


def test_every_number_setting_has_an_upper_bound() -> None:
    numbers = {
        name
        for name in Settings.NAMES
        if any(
            isinstance(value, (int, float)) and not isinstance(value, bool)
            for value in (getattr(Settings(), name), NON_DEFAULT[name])
        )
    }
    assert numbers == set(UPPER_BOUNDS)


@pytest.mark.parametrize("name", UPPER_BOUNDS)
def test_a_huge_number_is_one_settings_error_naming_its_variable_and_bound(name: str) -> None:
    variable = ENV_PREFIX + name.upper()
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={variable: "1e300"})
    error = info.value
    assert (error.setting, error.origin) == (name, variable)
    assert f"<= {UPPER_BOUNDS[name]}" in error.allowed


def test_the_largest_values_allowed_run_the_middleware() -> None:
    # At their bounds the cache sizes itself, a second miss of a key waits for the first
    # (threading refuses a wait beyond TIMEOUT_MAX) and the monitor thread keeps running.
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        started.set()
        release.wait(BOUND_S)
        headers = [("Content-Type", "text/plain"), ("Content-Length", "2")]
        start_response("200 OK", [*headers, ("Cache-Control", "max-age=60")])
        return [b"ok"]

    optimizer = MemoryOptimizer(
        app,
        cache_max_mb=16777216,
        cache_item_max_mb=16777216,
        cache_lock_timeout_s=86400,
        monitor_interval_s=86400,
        gc_freeze=False,
    )
    bodies: list[bytes] = []

    def request(n: int) -> None:
        if n:
            assert started.wait(BOUND_S)  # the second comes while the first is in the app
            release.set()
        bodies.append(Client(optimizer).get("/k", buffered=True).data)

    try:
        run_threads(2, request, BOUND_S)
        assert (bodies, len(calls)) == ([b"ok", b"ok"], 1)
        assert optimizer.governor._monitor is not None
        assert optimizer.governor._monitor._thread.is_alive()
    finally:
        optimizer.governor.stop()


def test_header_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(SettingsError):
        Settings(cache_key_headers=["X-Foo\n"])


# -- rules across settings


@pytest.mark.parametrize(
    ("max_percent", "critical", "restart"),
    [
        pytest.param(65, 85, 90, id="defaults"),
        pytest.param(70, 70, 70, id="all-equal"),
        pytest.param(1, 50, 100, id="extremes"),
    ],
)
def test_percent_order_accepted(max_percent: float, critical: float, restart: float) -> None:
    settings = Settings(
        max_memory_percent=max_percent, critical_percent=critical, restart_percent=restart
    )
    assert (settings.max_memory_percent, settings.critical_percent) == (max_percent, critical)


@pytest.mark.parametrize(
    ("max_percent", "critical", "restart", "named"),
    [
        pytest.param(90, 85, 95, "max_memory_percent", id="max-above-critical"),
        pytest.param(60, 95, 90, "critical_percent", id="critical-above-restart"),
        pytest.param(95, 85, 90, "max_memory_percent", id="max-above-all"),
        pytest.param(65, 85, 80, "restart_percent", id="restart-lowest"),
    ],
)
def test_percent_order_rejected(
    max_percent: float, critical: float, restart: float, named: str
) -> None:
    # Named: the first of those out of order that differs from its default (a keyword equal
    # to the default cannot be told from the default).
    error = _raises_settings_error(
        max_memory_percent=max_percent, critical_percent=critical, restart_percent=restart
    )
    assert error.setting == named
    message = str(error)
    assert "max_memory_percent <= critical_percent <= restart_percent" in message
    assert f"{max_percent:g} / {critical:g} / {restart:g}" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("max_memory_percent", "95", id="max-above-the-defaults"),
        pytest.param("critical_percent", "50", id="critical-below-max"),
        pytest.param("critical_percent", "95", id="critical-above-restart"),
        pytest.param("restart_percent", "80", id="restart-below-critical"),
    ],
)
def test_percent_order_names_the_one_setting_given(name: str, text: str) -> None:
    # The others kept their defaults: the error is about what the user wrote, and where.
    variable = ENV_PREFIX + name.upper()
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={variable: text})
    assert (info.value.setting, info.value.origin) == (name, variable)
    assert variable in str(info.value)
    with pytest.raises(SettingsError) as info:
        Settings().replace(**{name: text})
    assert info.value.setting == name


@pytest.mark.parametrize(
    ("interval", "window", "shortest"),
    [
        pytest.param(5, 12, "20", id="under-four-intervals"),
        pytest.param(2, 6, "8", id="three-intervals-exactly"),
        pytest.param(0.1, 1, "2", id="under-two-seconds"),
    ],
)
def test_the_forecast_window_must_hold_four_samples_over_a_second(
    interval: float, window: float, shortest: str
) -> None:
    error = _raises_settings_error(sample_interval_s=interval, forecast_window_s=window)
    assert error.setting == "forecast_window_s"
    assert f"forecast_window_s >= 2 and >= 4 x sample_interval_s ({shortest})" in str(error)
    # With the forecast off, the window is not used and not checked.
    assert Settings(sample_interval_s=interval, forecast_window_s=window, forecast_lead_s=0)
    assert Settings(sample_interval_s=interval, forecast_window_s=float(shortest))


def test_a_forecast_window_left_at_its_default_names_the_interval_given() -> None:
    assert _raises_settings_error(sample_interval_s=5).setting == "sample_interval_s"


def test_the_default_ttl_is_capped_by_the_ttl() -> None:
    # cache_ttl_s caps every lifetime: a default above it would be cut short without a word.
    error = _raises_settings_error(cache_default_ttl_s=3600)
    assert error.setting == "cache_default_ttl_s"
    assert "at most cache_ttl_s (1800)" in str(error)
    with pytest.raises(SettingsError, match="cache_default_ttl_s"):
        Settings(cache_default_ttl_s=60).replace(cache_ttl_s=30)
    assert Settings(cache_default_ttl_s=1800).cache_default_ttl_s == 1800.0
    assert Settings(cache_default_ttl_s=300, cache_ttl_s=300).cache_default_ttl_s == 300.0


def test_process_pressure_needs_a_limit() -> None:
    error = _raises_settings_error(pressure_source="process")
    assert error.setting == "pressure_source"  # the one given
    assert "pressure_source=process needs process_limit_mb" in str(error)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        pytest.param(
            {"pressure_source": "process", "process_limit_mb": "none"},
            "process_limit_mb",
            id="limit-none",
        ),
        pytest.param({"pressure_source": "PROCESS"}, "pressure_source", id="no-limit-upper"),
    ],
)
def test_process_pressure_needs_a_limit_from_mapping(values: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping(values)
    assert info.value.setting == named


def test_process_pressure_with_a_limit_is_fine() -> None:
    settings = Settings.from_mapping({"pressure_source": "process", "process_limit_mb": "256"})
    assert (settings.pressure_source, settings.process_limit_mb) == ("process", 256.0)
    with pytest.raises(SettingsError, match="process_limit_mb"):
        settings.replace(process_limit_mb=None)


@pytest.mark.parametrize("source", ["auto", "host", "container"])
def test_other_pressure_sources_need_no_limit(source: str) -> None:
    assert Settings(pressure_source=source).process_limit_mb is None


# -- unknown names


def _unknown_by_keyword(name: str) -> None:
    Settings(**{name: 1})


def _unknown_by_mapping(name: str) -> None:
    Settings.from_mapping({name: "1"})


def _unknown_by_mapping_keyword(name: str) -> None:
    Settings.from_mapping({}, **{name: 1})


def _unknown_by_env(name: str) -> None:
    Settings.from_env(environ={ENV_PREFIX + name.upper(): "1"})


def _unknown_by_env_keyword(name: str) -> None:
    Settings.from_env(environ={}, **{name: 1})


def _unknown_by_replace(name: str) -> None:
    Settings().replace(**{name: 1})


def _unknown_by_source_of(name: str) -> None:
    Settings().source_of(name)


UNKNOWN_ENTRY_POINTS = [
    pytest.param(_unknown_by_keyword, id="keyword"),
    pytest.param(_unknown_by_mapping, id="from_mapping"),
    pytest.param(_unknown_by_mapping_keyword, id="from_mapping-keyword"),
    pytest.param(_unknown_by_env, id="from_env"),
    pytest.param(_unknown_by_env_keyword, id="from_env-keyword"),
    pytest.param(_unknown_by_replace, id="replace"),
    pytest.param(_unknown_by_source_of, id="source_of"),
]


@pytest.mark.parametrize("build", UNKNOWN_ENTRY_POINTS)
def test_misspelt_name_suggests_the_right_one(build: Any) -> None:
    with pytest.raises(SettingsError) as info:
        build("cache_maxmb")
    assert info.value.setting == "cache_maxmb"
    assert "no such setting" in str(info.value)
    assert "did you mean 'cache_max_mb'" in str(info.value)


@pytest.mark.parametrize("build", UNKNOWN_ENTRY_POINTS)
def test_name_without_close_match_is_still_clear(build: Any) -> None:
    with pytest.raises(SettingsError) as info:
        build("zzzzqqq")
    message = str(info.value)
    assert info.value.setting == "zzzzqqq"
    assert "no such setting" in message
    assert "did you mean" not in message
    assert "wsgi-memopt settings" in message


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        pytest.param("cache_maxmb", "did you mean 'cache_max_mb'?", id="close"),
        pytest.param("zzzzqqq", None, id="nothing-close"),
    ],
)
def test_did_you_mean_names_the_closest_choice_or_nothing(name: str, hint: str | None) -> None:
    assert did_you_mean(name, Settings.NAMES) == hint


def test_the_api_prefix_default_is_the_one_constant() -> None:
    assert Settings().api_prefix == DEFAULT_API_PREFIX == "/api/v1/memory"


def test_misspelt_env_variable_is_named() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={"WSGI_MEMOPT_CACHE_MAXMB": "25"})
    assert info.value.origin == "WSGI_MEMOPT_CACHE_MAXMB"
    assert "WSGI_MEMOPT_CACHE_MAXMB" in str(info.value)
    assert "did you mean 'cache_max_mb'" in str(info.value)


def test_unknown_keyword_is_not_a_type_error() -> None:
    # The dataclass __init__ alone would raise TypeError; the wrapper must come first.
    with pytest.raises(SettingsError):
        Settings(cache_max_mb=10, cache_sizee=3)


# -- from_env: explicit keyword > env > default


@pytest.mark.parametrize(
    ("environ", "explicit", "value", "source"),
    [
        pytest.param({}, {}, 25.0, "default", id="default"),
        pytest.param({"WSGI_MEMOPT_CACHE_MAX_MB": "3"}, {}, 3.0, "env", id="env-over-default"),
        pytest.param({}, {"cache_max_mb": 7}, 7.0, "explicit", id="explicit-over-default"),
        pytest.param(
            {"WSGI_MEMOPT_CACHE_MAX_MB": "3"},
            {"cache_max_mb": 7},
            7.0,
            "explicit",
            id="explicit-over-env",
        ),
        pytest.param(
            {"WSGI_MEMOPT_CACHE_MAX_MB": "25"}, {}, 25.0, "env", id="env-equal-to-default"
        ),
        pytest.param(
            {"WSGI_MEMOPT_CACHE_MAX_MB": "3"},
            {"cache_max_mb": 25},
            25.0,
            "explicit",
            id="explicit-equal-to-default-over-env",
        ),
        pytest.param(
            {"WSGI_MEMOPT_CACHE_TTL_S": "9"}, {}, 25.0, "default", id="other-env-variable"
        ),
    ],
)
def test_from_env_precedence(
    environ: dict[str, str], explicit: dict[str, Any], value: float, source: str
) -> None:
    settings = Settings.from_env(environ=environ, **explicit)
    assert settings.cache_max_mb == value
    assert settings.source_of("cache_max_mb") == source


def test_from_env_mixes_sources_per_setting() -> None:
    settings = Settings.from_env(
        environ={"WSGI_MEMOPT_CACHE_MAX_MB": "3", "WSGI_MEMOPT_GC_MODE": "auto"},
        gc_mode="between",
        cache_ttl_s=10,
    )
    assert settings.source_of("cache_max_mb") == "env"
    assert settings.source_of("gc_mode") == "explicit"
    assert settings.gc_mode == "between"
    assert settings.source_of("cache_ttl_s") == "explicit"
    assert settings.source_of("api_prefix") == "default"


def test_from_env_empty_is_defaults() -> None:
    settings = Settings.from_env(environ={})
    assert settings == Settings()
    assert {settings.source_of(name) for name in Settings.NAMES} == {"default"}


def test_from_env_error_names_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={"WSGI_MEMOPT_CACHE_MAX_MB": "abc"})
    error = info.value
    assert error.setting == "cache_max_mb"
    assert error.origin == "WSGI_MEMOPT_CACHE_MAX_MB"
    message = str(error)
    assert "WSGI_MEMOPT_CACHE_MAX_MB" in message
    assert "'abc'" in message
    assert "expected a number > 0" in message


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"WSGI_MEMOPT_LAZY_EAGER": "1"}, id="lazy-eager"),
        pytest.param({"WSGI_MEMOPT_LAZY_EAGER": "not even a bool"}, id="lazy-eager-garbage"),
        pytest.param({"PATH": "/usr/bin", "CACHE_MAX_MB": "abc"}, id="unprefixed"),
        pytest.param({"XWSGI_MEMOPT_CACHE_MAX_MB": "abc"}, id="prefix-not-at-start"),
        pytest.param({"wsgi_memopt_cache_max_mb": "abc"}, id="lowercase-prefix"),
    ],
)
def test_from_env_ignores_foreign_variables(environ: dict[str, str]) -> None:
    assert Settings.from_env(environ=environ) == Settings()


def test_from_env_custom_prefix() -> None:
    environ = {"MYAPP_CACHE_MAX_MB": "4", "WSGI_MEMOPT_CACHE_MAX_MB": "abc"}
    settings = Settings.from_env(prefix="MYAPP_", environ=environ)
    assert settings.cache_max_mb == 4.0
    assert settings.source_of("cache_max_mb") == "env"


def test_from_env_custom_prefix_error_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="MYAPP_GC_MODE"):
        Settings.from_env(prefix="MYAPP_", environ={"MYAPP_GC_MODE": "sometimes"})


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_MEMOPT_CACHE_MAX_ITEMS", "12")
    monkeypatch.setenv("WSGI_MEMOPT_API_ENABLED", "false")
    settings = Settings.from_env()
    assert settings.cache_max_items == 12
    assert settings.api_enabled is False
    assert settings.source_of("cache_max_items") == "env"


def test_from_env_reads_every_setting() -> None:
    expected = Settings(**NON_DEFAULT)
    environ = {ENV_PREFIX + name.upper(): text for name, text in expected.as_text().items()}
    settings = Settings.from_env(environ=environ)
    assert settings == expected
    assert {settings.source_of(name) for name in Settings.NAMES} == {"env"}


def test_explicit_keyword_sources() -> None:
    settings = Settings(cache_max_mb=10)
    assert settings.source_of("cache_max_mb") == "explicit"
    assert settings.source_of("cache_ttl_s") == "default"


# -- frozen, replace


@pytest.mark.parametrize("name", ["cache_max_mb", "api_prefix", "cache_statuses", "api_token"])
def test_settings_are_frozen(name: str) -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, getattr(settings, name))


def test_unknown_attribute_cannot_be_added() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cache_maxmb = 3  # type: ignore[attr-defined]


def test_replace_returns_a_validated_copy() -> None:
    original = Settings()
    changed = original.replace(cache_max_mb="10", gc_mode="AUTO")
    assert changed is not original
    assert (changed.cache_max_mb, changed.gc_mode) == (10.0, "auto")
    assert original.cache_max_mb == 25.0
    assert original.source_of("cache_max_mb") == "default"
    assert changed.source_of("cache_max_mb") == "explicit"
    assert changed.source_of("gc_mode") == "explicit"
    assert changed.source_of("cache_ttl_s") == "default"


def test_replace_with_no_change_is_equal() -> None:
    settings = Settings(**NON_DEFAULT)
    assert settings.replace() == settings


def test_replace_marks_an_unchanged_value_explicit() -> None:
    changed = Settings().replace(cache_max_mb=25)
    assert changed == Settings()
    assert changed.source_of("cache_max_mb") == "explicit"


def test_replace_keeps_env_sources() -> None:
    settings = Settings.from_env(environ={"WSGI_MEMOPT_CACHE_MAX_MB": "3"})
    changed = settings.replace(cache_ttl_s=5)
    assert changed.cache_max_mb == 3.0
    assert changed.source_of("cache_max_mb") == "env"
    assert changed.source_of("cache_ttl_s") == "explicit"
    changed = settings.replace(cache_max_mb=4)
    assert changed.source_of("cache_max_mb") == "explicit"


def test_replace_does_not_share_sources_with_the_original() -> None:
    original = Settings()
    original.replace(cache_max_mb=3)
    assert original.source_of("cache_max_mb") == "default"


# -- as_text and describe

EXAMPLES = [
    pytest.param({}, id="defaults"),
    pytest.param(NON_DEFAULT, id="non-default"),
    pytest.param({"api_allow_networks": "none", "gc_threshold": "1000"}, id="empty-networks"),
    pytest.param({"cache_max_mb": 1e-7, "cache_ttl_s": 3.1e7}, id="tiny-and-huge-floats"),
    pytest.param({"cache_max_mb": 0.1 + 0.2}, id="float-repr"),
]


@pytest.mark.parametrize("values", EXAMPLES)
def test_as_text_round_trips_through_from_mapping(values: dict[str, Any]) -> None:
    settings = Settings(**values)
    text = settings.as_text()
    assert list(text) == list(Settings.NAMES)
    assert all(isinstance(item, str) for item in text.values())
    assert Settings.from_mapping(writable(text)) == settings


def writable(text: dict[str, str]) -> dict[str, str]:
    """``text`` without an unset secret: "none" shows it, but only leaving it out writes it."""
    return {
        name: value
        for name, value in text.items()
        if name not in SECRET_SETTINGS or value != "none"
    }


def test_an_unset_token_is_shown_as_none_and_written_by_leaving_it_out() -> None:
    assert Settings().as_text()["api_token"] == "none"
    assert Settings.from_mapping({}).api_token is None
    with pytest.raises(SettingsError, match="leave api_token unset"):
        Settings.from_mapping({"api_token": "none"})
    assert "| `api_token` | `WSGI_MEMOPT_API_TOKEN` | *(not set)* |" in Settings.markdown_table()


def test_as_text_of_defaults() -> None:
    text = Settings().as_text()
    assert text["cache_max_mb"] == "25"
    assert text["cache_evict_fraction"] == "0.3"
    assert text["cache_statuses"] == "200"
    assert text["gc_freeze"] == "true"
    assert text["api_token"] == "none"
    assert text["gc_threshold"] == "none"
    assert text["api_allow_networks"] == ""


def test_describe_has_one_row_per_setting() -> None:
    rows = Settings.describe()
    assert [row[0] for row in rows] == list(Settings.NAMES)
    for name, env, default_text, doc in rows:
        assert env == f"WSGI_MEMOPT_{name.upper()}"
        assert isinstance(default_text, str)
        assert isinstance(doc, str)
        assert doc.strip()


def test_describe_defaults_parse_back_to_the_defaults() -> None:
    text = {name: default_text for name, _, default_text, _ in Settings.describe()}
    assert text == Settings().as_text()
    assert Settings.from_mapping(writable(text)) == Settings()


def test_describe_env_names_are_read_by_from_env() -> None:
    environ = {
        env: default_text
        for name, env, default_text, _ in Settings.describe()
        if name not in SECRET_SETTINGS or default_text != "none"
    }
    settings = Settings.from_env(environ=environ)
    assert settings == Settings()
    assert {settings.source_of(name) for name in Settings.NAMES} == {"env"} | {"default"}
    assert settings.source_of("api_token") == "default"


# -- property tests


def _outcome(build: Any) -> tuple[Settings | None, SettingsError | None]:
    """Run ``build``; a SettingsError is an outcome, any other exception fails the test."""
    try:
        return build(), None
    except SettingsError as error:
        return None, error


@given(st.one_of(st.floats(), st.integers()))
def test_cache_max_mb_number_parses_or_raises_settings_error(value: float) -> None:
    settings, error = _outcome(lambda: Settings(cache_max_mb=value))
    if error is not None:
        assert error.setting == "cache_max_mb"
        assert not math.isfinite(float(value)) or not 0 < value <= 16 << 20
        return
    assert settings is not None
    assert type(settings.cache_max_mb) is float
    assert settings.cache_max_mb > 0
    assert settings.cache_max_mb == float(value)


@given(st.one_of(st.floats().map(repr), st.integers().map(str)))
def test_cache_max_mb_text_parses_or_raises_settings_error(text: str) -> None:
    settings, error = _outcome(lambda: Settings.from_mapping({"cache_max_mb": text}))
    if error is not None:
        assert error.setting == "cache_max_mb"
        assert not math.isfinite(float(text)) or not 0 < float(text) <= 16 << 20
        return
    assert settings is not None
    assert settings.cache_max_mb > 0
    assert settings.cache_max_mb == float(text)


SETTING_ALPHABET = "0123456789.,-+/: _eEinfaloprsuytxXhv\t\n"


@given(
    name=st.sampled_from(Settings.NAMES),
    text=st.one_of(st.text(), st.text(alphabet=SETTING_ALPHABET, max_size=20)),
)
def test_random_text_parses_or_raises_settings_error(name: str, text: str) -> None:
    settings, error = _outcome(lambda: Settings.from_mapping({name: text}))
    if error is not None:
        assert error.setting in Settings.NAMES
        return
    assert settings is not None
    # Whatever parses comes back unchanged through its own text form.
    assert Settings.from_mapping(writable(settings.as_text())) == settings


@given(name=st.sampled_from(Settings.NAMES), text=st.text(max_size=20))
def test_random_env_text_parses_or_raises_settings_error(name: str, text: str) -> None:
    variable = ENV_PREFIX + name.upper()
    _, error = _outcome(lambda: Settings.from_env(environ={variable: text}))
    if error is not None:
        # One variable given: every error, a rule across settings too, names it.
        assert (error.setting, error.origin) == (name, variable)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("cache_statuses", 200, (200,), id="statuses"),
        pytest.param("gc_threshold", 700, (700,), id="gc-threshold"),
    ],
)
def test_bare_int_for_a_list_setting_is_a_one_item_list(
    name: str, value: int, expected: tuple[int, ...]
) -> None:
    assert getattr(Settings(**{name: value}), name) == expected
