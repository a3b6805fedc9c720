"""Settings of the middleware: one frozen dataclass, parsed from keywords, ini strings or env.

Every setting lives here with its default, its parser and its rule, so that the
dataclass is the one place the README table, the env names and the validation come from::

    Settings(cache_max_mb=10)                         # defaults + what you write
    Settings.from_mapping({"cache_max_mb": "10"})     # ini / PasteDeploy strings
    Settings.from_env(cache_max_mb=10)                # defaults < WSGI_MEMOPT_* < keywords

A bad name or value raises :class:`SettingsError`, a ``ValueError`` that names the setting, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from .backend import MEMORY, RULE, parse_backend, redacted

__all__ = [
    "DEFAULT_API_PREFIX",
    "ENV_PREFIX",
    "FIELD_NAME",
    "MB",
    "SECRET_SETTINGS",
    "SHARED_LOCAL_MAX_MB",
    "Settings",
    "SettingsError",
    "did_you_mean",
    "env_values",
    "shown_value",
]

ENV_PREFIX = "WSGI_MEMOPT_"
DEFAULT_API_PREFIX = "/api/v1/memory"
MB = 1 << 20  # a MiB: the unit of every *_mb setting, and of every MB the package reports
SHARED_LOCAL_MAX_MB = 5.0  # cache_max_mb's default when cache_backend names a shared store

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "null"})
# Sources that are not where a value was written (an env variable, an ini key).
_PLAIN_SOURCES = frozenset({None, "default", "explicit", "mapping", "env"})
_LOOPBACK = ("127.0.0.0/8", "::1/128")
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 §5.1)
# What a client writes in a path without percent-encoding (RFC 3986: unreserved, sub-delims,
# ":" and "@"). PATH_INFO carries the URL's bytes as latin-1, so a prefix of anything else
# ("/mémoire" arrives as "/mÃ©moire") would never be reached.
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]+")


class SettingsError(ValueError):
    """A setting has an unknown name or a value outside what it allows."""

    def __init__(self, setting: str, value: object, allowed: str, origin: str | None = None):
        self.setting = setting
        self.value = value
        self.allowed = allowed
        self.origin = origin
        where = f" (from {origin})" if origin and origin != setting else ""
        shown = shown_value(setting, value)
        super().__init__(f"setting {setting}{where}: {shown!r} is not allowed; {allowed}")


SECRET_SETTINGS = frozenset({"api_token", "cache_redis_secret"})  # never shown


def shown_value(setting: str, value: object) -> object:
    """``value`` as it may be printed or logged: secrets hidden, a URL's password too."""
    if setting in SECRET_SETTINGS and value is not None:
        return "<hidden>"
    if setting == "cache_backend" and isinstance(value, str):
        return redacted(value)
    return value


class _Invalid(Exception):
    """Raised by a parser; turned into a SettingsError that names the setting."""


# -- parsers: each takes a native value or an ini/env string and returns the normalised value


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid("expected a boolean: true/false, yes/no, on/off or 1/0")


def _number(
    kind: type[int] | type[float],
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_means: str = "",
) -> Callable[[object], Any]:
    """A parser for an int or float within [low, high] (or (low, high] when ``low_open``);
    ``high_means`` names the upper bound for people ("a day")."""
    lower = f"> {low:g}" if low_open else f">= {low:g}"
    rule = f"expected {'an integer' if kind is int else 'a number'} {lower} and <= {_plain(high)}"
    if high_means:
        rule += f" ({high_means})"

    def parse(value: object) -> int | float:
        if isinstance(value, bool):
            raise _Invalid(rule)
        try:
            if isinstance(value, str):
                number = kind(_ascii(value.strip()))
            elif isinstance(value, int) or (kind is float and isinstance(value, float)):
                number = kind(value)
            else:
                raise _Invalid(rule)
        except (ValueError, OverflowError):
            raise _Invalid(rule) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise _Invalid(rule + " (finite)")
        if number > high or (number <= low if low_open else number < low):
            raise _Invalid(rule)
        return number

    return parse


def _ascii(text: str) -> str:
    """``text`` if it is ASCII: ``int()`` and ``float()`` also read other scripts' digits
    ('\u0663' is 3), which nobody means to write in a setting."""
    if not text.isascii():
        raise ValueError(text)
    return text


def _plain(number: float) -> str:
    """A bound as people write it: ``86400``, not ``86400.0`` or ``8.64e+04``."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _optional(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def optional(value: object) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return parse(value)

    return optional


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid(f"expected one of {', '.join(choices)}")

    return parse


def _items(value: object) -> list[object]:
    """Split ``"a, b"`` ini strings; accept any non-string iterable as is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]  # cache_statuses=200 means (200,)
    raise _Invalid("expected a comma-separated list")


def _statuses(value: object) -> tuple[int, ...]:
    rule = "expected status codes from 200 to 599 except 206 and 304, e.g. '200,203,301'"
    codes = []
    for item in _items(value):
        try:
            if isinstance(item, str):
                code = int(_ascii(item))
            elif isinstance(item, int) and not isinstance(item, bool):
                code = item
            else:
                code = 0
        except ValueError:
            raise _Invalid(rule) from None
        # 206 needs range handling and 304 has no body to replay: neither can be stored.
        if not 200 <= code <= 599 or code in (206, 304):
            raise _Invalid(rule)
        codes.append(code)
    if not codes:
        raise _Invalid(rule)
    return tuple(sorted(set(codes)))


def _globs(value: object) -> tuple[str, ...]:
    globs = _items(value)
    if not all(isinstance(glob, str) and glob and not glob.isspace() for glob in globs):
        raise _Invalid("expected glob patterns on the path, e.g. '/static/*, /api/*'")
    return tuple(str(glob) for glob in globs)


def _header_names(value: object) -> tuple[str, ...]:
    names = _items(value)
    if not all(isinstance(name, str) and FIELD_NAME.fullmatch(name) for name in names):
        raise _Invalid("expected HTTP header names, e.g. 'X-Forwarded-Host, Accept-Language'")
    return tuple(sorted({str(name).lower() for name in names}))


def _ordered_header_names(value: object) -> tuple[str, ...]:
    # An empty value is allowed: no header at all.
    names = [] if value in ("", "none") else _items(value)
    if not all(isinstance(name, str) and FIELD_NAME.fullmatch(name) for name in names):
        raise _Invalid("expected HTTP header names in order, e.g. 'CDN-Cache-Control', or none")
    return tuple(dict.fromkeys(str(name).lower() for name in names))


def _gc_threshold(value: object) -> tuple[int, ...]:
    rule = "expected 1 to 3 non-negative integers for gc.set_threshold, e.g. '700,10,10'"
    try:
        numbers = tuple(int(_ascii(str(item))) for item in _items(value))
    except ValueError:
        raise _Invalid(rule) from None
    # gc.set_threshold takes C ints: a larger value would only fail later, at start-up.
    if not 1 <= len(numbers) <= 3 or any(not 0 <= number < 2**31 for number in numbers):
        raise _Invalid(rule)
    return numbers


def _networks(value: object) -> tuple[str, ...]:
    rule = "expected networks such as '127.0.0.0/8, 10.0.0.0/8', 'loopback' or 'none'"
    if isinstance(value, str) and value.strip().lower() in _NONE:
        return ()
    networks: list[str] = []
    for item in _items(value):
        if isinstance(item, str) and item.lower() == "loopback":
            networks.extend(_LOOPBACK)
            continue
        try:
            networks.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise _Invalid(rule) from None
    return tuple(dict.fromkeys(networks))


def _prefix(value: object) -> str:
    rule = (
        f"expected a path such as {DEFAULT_API_PREFIX!r}: starting with '/', not '/', of ASCII "
        "letters, digits and -._~!$&'()*+,;=:@/ (no spaces, no '%')"
    )
    if not isinstance(value, str):
        raise _Invalid(rule)
    prefix = value.strip().rstrip("/")  # so a match ends in something other than "/"
    if not _PATH.fullmatch(prefix):
        raise _Invalid(rule)
    return prefix


def _secret(name: str, what: str, min_length: int) -> Callable[[object], str | None]:
    """A parser for a secret (``api_token``, ``cache_redis_secret``): ``min_length`` or more
    visible ASCII characters, unset by default."""
    pattern = re.compile(f"[!-~]{{{min_length},}}")
    length = f", {min_length} or more" if min_length > 1 else ""
    rule = (
        f"expected {what} of visible ASCII characters (no spaces){length}, not empty or "
        f"'none'; to have none, leave {name} unset"
    )

    def parse(value: object) -> str | None:
        if value is None:
            return None  # the default: unset
        # Explicit text that reads as "nothing" is a mistake (an unset variable in a
        # template, a str(None)), never a way to turn it off: that is leaving it unset.
        if not isinstance(value, str) or not pattern.fullmatch(value) or value.lower() in _NONE:
            raise _Invalid(rule)
        return value

    return parse


def _backend(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(RULE)
    try:
        address = parse_backend(value)
    except ValueError:
        raise _Invalid(RULE) from None
    return MEMORY if address is None else address.url


def _redis_prefix(value: object) -> str:
    # Printable, and free of what SCAN's MATCH reads as a pattern, so that the prefix matches
    # only itself.
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"[!-~]{1,64}", value)
        or re.search(r"[*?\[\]\\]", value)
    ):
        raise _Invalid("expected 1 to 64 visible ASCII characters without * ? [ ] \\")
    return value


def _setting(default: Any, parse: Callable[[object], Any], doc: str) -> Any:
    """A dataclass field carrying its parser and its one-line documentation."""
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


# Upper bounds: far beyond any sane value, and low enough that nothing derived from them
# overflows (bytes as an int, a deadline as a float, a thread's wait).
_DAY = 86_400.0
_YEAR = 365 * _DAY
_MAX_MB = float(16 * MB)  # 16 TiB, in MiB
_percent = _number(float, 0, 100, low_open=True)
_seconds = _number(float, 0, _YEAR, high_means="a year")
_positive = _number(float, 0, _YEAR, low_open=True, high_means="a year")
# A thread waits this long at a time (threading refuses waits beyond TIMEOUT_MAX).
_wait_seconds = _number(float, 0, _DAY, high_means="a day")
_megabytes = _number(float, 0, _MAX_MB, low_open=True, high_means="16 TiB")
_megabytes_or_zero = _number(float, 0, _MAX_MB, high_means="16 TiB")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of the middleware, validated on construction.

    Build it with keywords, :meth:`from_mapping` (ini strings) or :meth:`from_env`.
    """

    cache_enabled: bool = _setting(True, _bool, "response cache on/off")
    cache_max_items: int = _setting(500, _number(int, 1, 10**9), "entries held at most")
    cache_max_mb: float = _setting(
        25.0,
        _megabytes,
        "bytes held by the cache at most, measured (body + headers + entry); in each process "
        f"when cache_backend is shared, where it defaults to {SHARED_LOCAL_MAX_MB:g}",
    )
    cache_item_max_mb: float = _setting(
        2.0, _megabytes, "a larger response is never stored (it still streams to the client)"
    )
    cache_ttl_s: float = _setting(
        1800.0, _positive, "longest life of an entry; a shorter max-age/s-maxage/Expires wins"
    )
    cache_default_ttl_s: float = _setting(
        0.0,
        _seconds,
        "lifetime of a response without max-age, s-maxage or Expires, when longer than its "
        "Last-Modified heuristic (0: none; such a response is not stored)",
    )
    cache_evict_fraction: float = _setting(
        0.3,
        _number(float, 0, 1, low_open=True),
        "share of entries dropped, least recently used first, when a cap is hit",
    )
    cache_cleanup_interval_s: float = _setting(
        120.0, _seconds, "expired entries are swept at most this often, between requests"
    )
    cache_statuses: tuple[int, ...] = _setting((200,), _statuses, "status codes that may be stored")
    cache_paths: tuple[str, ...] = _setting(
        (), _globs, "glob patterns on the path that may be cached (empty: all)"
    )
    cache_exclude_paths: tuple[str, ...] = _setting(
        (), _globs, "glob patterns on the path that are never cached"
    )
    cache_key_headers: tuple[str, ...] = _setting(
        (),
        _header_names,
        "request headers added to every cache key; a forwarding header named here stops "
        "bypassing the cache",
    )
    cache_targeted_fields: tuple[str, ...] = _setting(
        ("wsgi-memopt-cache-control", "cdn-cache-control"),
        _ordered_header_names,
        "targeted cache-control fields obeyed before Cache-Control (RFC 9213), first found "
        "wins; none: Cache-Control only",
    )
    cache_lock_timeout_s: float = _setting(
        5.0,
        _wait_seconds,
        "concurrent misses of one key wait this long for the first one's response (0: no wait)",
    )
    cache_backend: str = _setting(
        MEMORY,
        _backend,
        "memory: each process keeps its own cache; a Redis URL (redis://, rediss://, unix://, "
        "redis+cluster://, redis+sentinel://): a cache shared by every process and machine "
        "that names it, behind each process's own",
    )
    cache_redis_prefix: str = _setting(
        "wsgi-memopt:", _redis_prefix, "namespace of every Redis key and channel the cache uses"
    )
    cache_redis_timeout_s: float = _setting(
        0.25,
        _number(float, 0, 60, low_open=True),
        "longest wait for Redis to connect or answer one command; then the request goes on "
        "without it",
    )
    cache_redis_retry_s: float = _setting(
        2.0,
        _number(float, 0, 3600, low_open=True),
        "after repeated Redis errors, how long the cache stops asking it before one probe",
    )
    cache_redis_secret: str | None = _setting(
        None,
        _secret("cache_redis_secret", "a secret", 16),
        "sign shared entries with HMAC-SHA256 and refuse any not signed with it (set the same "
        "secret on every process)",
    )
    cache_local_ttl_s: float = _setting(
        5.0,
        _number(float, 0, _DAY, low_open=True, high_means="a day"),
        "with a shared backend: the longest a process keeps its own copy of a shared entry (a "
        "lost invalidation heals within it)",
    )
    max_memory_percent: float = _setting(
        65.0, _percent, "above it, optimize between requests (trim cache, collect)"
    )
    critical_percent: float = _setting(
        85.0, _percent, "above it, emergency cleanup between requests"
    )
    restart_percent: float = _setting(
        90.0, _percent, "sustained above it for restart_after_s: recycle the worker gracefully"
    )
    restart_after_s: float = _setting(
        300.0, _seconds, "how long memory must stay above restart_percent before a recycle"
    )
    forecast_lead_s: float = _setting(
        10.0,
        _seconds,
        "recycle at once when the limit is forecast closer than this, at the measured rate of "
        "approach (0: off)",
    )
    forecast_window_s: float = _setting(
        10.0, _positive, "the recent samples the rate of approach to the limit is fitted over"
    )
    pressure_source: str = _setting(
        "auto",
        _choice("auto", "host", "container", "process"),
        "auto (container limit if set, else host), host, container or process",
    )
    process_limit_mb: float | None = _setting(
        None, _optional(_megabytes), "with pressure_source=process: the RSS that counts as 100%"
    )
    sample_interval_s: float = _setting(
        0.5, _seconds, "between requests, memory is measured at most this often"
    )
    monitor_interval_s: float = _setting(
        10.0, _wait_seconds, "background sampling while idle; 0 turns the thread off"
    )
    gc_threshold: tuple[int, ...] | None = _setting(
        None, _optional(_gc_threshold), "gc.set_threshold values, e.g. 700,10,10 (none: unchanged)"
    )
    gc_freeze: bool = _setting(True, _bool, "collect, then gc.freeze() the startup heap once")
    gc_mode: str = _setting(
        "between",
        _choice("between", "auto"),
        "between (full collections between requests, young ones in a request past a budget) "
        "or auto (CPython's own)",
    )
    trim_threshold_mb: float = _setting(
        32.0, _megabytes_or_zero, "RSS growth that triggers malloc_trim between requests (0: off)"
    )
    min_worker_lifetime_s: float = _setting(
        60.0, _seconds, "no recycle before this age, unless the limit is forecast to come first"
    )
    tracemalloc_frames: int = _setting(
        0, _number(int, 0, 65535), "0 = off (it slows allocation-heavy code); N = trace N frames"
    )
    api_enabled: bool = _setting(True, _bool, "the memory API on/off")
    api_prefix: str = _setting(DEFAULT_API_PREFIX, _prefix, "where the memory API is mounted")
    api_token: str | None = _setting(
        None,
        _secret("api_token", "a token", 1),
        "requests that send it as Authorization: Bearer may use the API from anywhere (none: "
        "only /health answers, unless api_allow_networks is set)",
    )
    api_allow_networks: tuple[str, ...] = _setting(
        (),
        _networks,
        "networks let in without a token, only with no client-address header and a Host that is "
        "an IP address or localhost (empty: none; 'loopback' names both loopback networks)",
    )
    api_min_interval_s: float = _setting(
        1.0, _seconds, "mutating and expensive endpoints run at most this often per process"
    )
    api_quiet_wait_s: float = _setting(
        2.0,
        _number(float, 0, 60),
        "POST optimize, optimize/force and gc/force wait this long for the other requests in "
        "flight to end, then answer 202 and run at the next moment none is",
    )

    _sources: dict[str, str] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    NAMES: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.init:
                value = _parse(field, getattr(self, field.name), field.name)
                object.__setattr__(self, field.name, value)
                if field.name not in self._sources:
                    self._sources[field.name] = "default" if value == field.default else "explicit"
        if self.cache_backend != MEMORY and self._sources["cache_max_mb"] == "default":
            # Each process's own copies are only the hottest of what the shared store holds.
            object.__setattr__(self, "cache_max_mb", SHARED_LOCAL_MAX_MB)
        self._check_together()

    def _check_together(self) -> None:
        if self.cache_default_ttl_s > self.cache_ttl_s:
            self._fail_together(
                ["cache_default_ttl_s", "cache_ttl_s"],
                f"expected cache_default_ttl_s at most cache_ttl_s ({self.cache_ttl_s:g}), the "
                "longest life of any entry",
            )
        percents = ("max_memory_percent", "critical_percent", "restart_percent")
        out_of_order = [
            (low, high)
            for low, high in itertools.combinations(percents, 2)
            if getattr(self, low) > getattr(self, high)
        ]
        if out_of_order:
            self._fail_together(
                [name for pair in out_of_order for name in pair],
                "expected max_memory_percent <= critical_percent <= restart_percent, got "
                f"{self.max_memory_percent:g} / {self.critical_percent:g} / "
                f"{self.restart_percent:g}",
            )
        if self.pressure_source == "process" and self.process_limit_mb is None:
            self._fail_together(
                ["process_limit_mb", "pressure_source"],
                "pressure_source=process needs process_limit_mb, the RSS that counts as 100%",
            )
        shortest_window = max(4 * self.sample_interval_s, 2.0)
        if self.forecast_lead_s > 0 and self.forecast_window_s < shortest_window:
            self._fail_together(
                ["forecast_window_s", "sample_interval_s", "forecast_lead_s"],
                "the forecast fits at least 4 samples over at least a second: expected "
                f"forecast_window_s >= 2 and >= 4 x sample_interval_s ({shortest_window:g}), "
                "or forecast_lead_s=0",
            )

    def _fail_together(self, involved: list[str], allowed: str) -> None:
        """Raise for a rule across settings, naming the first of ``involved`` the user gave
        (the others kept their defaults), and where it came from."""
        given = [name for name in involved if self._sources.get(name, "default") != "default"]
        name = (given or involved)[0]
        origin = self._sources.get(name)
        raise SettingsError(
            name, getattr(self, name), allowed, origin if origin not in _PLAIN_SOURCES else None
        )

    # -- construction from strings

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, object],
        *,
        origins: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> Settings:
        """Parse ini/env style values (``{"cache_max_mb": "25"}``); keywords override them.

        ``origins`` maps a setting name to where its value came from (an env variable, an ini
        key), so that an error names what the user actually wrote.
        """
        parsed: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for raw_name, value in values.items():
            origin = (origins or {}).get(raw_name, raw_name)
            name = _known_name(raw_name.strip().lower(), origin, value)
            parsed[name] = _parse(_FIELDS[name], value, name, origin)
            sources[name] = origin if origins else "mapping"
        for name, value in explicit.items():
            _known_name(name, name, value)
            parsed[name] = value
            sources[name] = "explicit"
        return cls._with_sources(parsed, sources)

    @classmethod
    def from_env(
        cls, prefix: str = ENV_PREFIX, environ: Mapping[str, str] | None = None, **explicit: Any
    ) -> Settings:
        """Read ``WSGI_MEMOPT_<NAME>`` variables; keywords override them, they override defaults.

        A variable with the prefix whose name is not a setting is an error, so a typo in a
        deployment does not go unnoticed.
        """
        environ = os.environ if environ is None else environ
        found, origins = env_values(environ, prefix)
        settings = cls.from_mapping(found, origins=origins, **explicit)
        settings._sources.update(
            {
                name: "env"
                for name, origin in settings._sources.items()
                if origin in origins.values()
            }
        )
        return settings

    @classmethod
    def _with_sources(cls, values: dict[str, Any], sources: dict[str, str]) -> Settings:
        settings = cls.__new__(cls)
        object.__setattr__(settings, "_sources", dict(sources))
        for field in dataclasses.fields(cls):
            if field.init:
                object.__setattr__(settings, field.name, values.get(field.name, field.default))
        for field in dataclasses.fields(cls):
            if field.init and field.name not in sources:
                settings._sources[field.name] = "default"
        settings.__post_init__()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied as explicit values, validated like the constructor."""
        for name, value in changes.items():
            _known_name(name, name, value)
        # Defaults stay defaults: one may depend on another setting that changes here.
        values = {
            name: getattr(self, name) for name in self.NAMES if self.source_of(name) != "default"
        }
        values.update(changes)
        sources = dict(self._sources)
        sources.update(dict.fromkeys(changes, "explicit"))
        return self._with_sources(values, sources)

    def __repr__(self) -> str:
        # What a traceback with locals or a debug log shows: secrets hidden, as everywhere.
        shown = ", ".join(
            f"{name}={shown_value(name, getattr(self, name))!r}" for name in self.NAMES
        )
        return f"Settings({shown})"

    def source_of(self, name: str) -> str:
        """Where a setting's value came from: ``default``, ``env``, ``explicit`` or an origin."""
        _known_name(name, name, None)
        return self._sources.get(name, "default")

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """``(name, env variable, default as ini text, meaning)`` for every setting."""
        rows = []
        for field in dataclasses.fields(cls):
            if field.init:
                rows.append(
                    (
                        field.name,
                        ENV_PREFIX + field.name.upper(),
                        _as_text(field.default),
                        field.metadata["doc"],
                    )
                )
        return rows

    @classmethod
    def markdown_table(cls) -> str:
        """The README's settings table, generated here so the two cannot drift apart."""
        lines = ["| setting | env variable | default | meaning |", "|---|---|---|---|"]
        for name, env, default, doc in cls.describe():
            shown = f"`{default}`" if default else "*(empty)*"
            if _FIELDS[name].default is None and not _parses(name, default):
                shown = "*(not set)*"  # no text means "unset" (a secret): it is left out
            lines.append(f"| `{name}` | `{env}` | {shown} | {doc} |")
        return "\n".join(lines)

    def as_text(self) -> dict[str, str]:
        """Every setting as the ini/env text that parses back to the same value; but an unset
        secret reads ``none``, and is written by leaving it out (no text turns it off)."""
        return {name: _as_text(getattr(self, name)) for name in self.NAMES}


_FIELDS = {field.name: field for field in dataclasses.fields(Settings) if field.init}
Settings.NAMES = tuple(_FIELDS)
_dataclass_init = Settings.__init__


@functools.wraps(_dataclass_init)
def _checked_init(self: Settings, *args: Any, **values: Any) -> None:
    # The generated __init__ would raise a bare TypeError for a misspelt keyword; a user
    # deserves the same SettingsError, with a suggestion, as for a misspelt ini key.
    for name, value in values.items():
        _known_name(name, name, value)
    _dataclass_init(self, *args, **values)


Settings.__init__ = _checked_init  # type: ignore[method-assign]
# Variables that share the prefix but belong to other parts of the package (the lazy modules).
_ENV_IGNORED = frozenset({"lazy_eager"})


def env_values(
    environ: Mapping[str, str], prefix: str = ENV_PREFIX
) -> tuple[dict[str, str], dict[str, str]]:
    """The ``<prefix><NAME>`` variables as ``({name: text}, {name: variable})``, unparsed,
    for callers that merge them with other sources before one :meth:`Settings.from_mapping`."""
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for key, value in environ.items():
        name = key[len(prefix) :].lower()
        if key.startswith(prefix) and name not in _ENV_IGNORED:
            values[name] = value
            origins[name] = key
    return values, origins


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the choice closest to a misspelt ``name``, or None when
    none is close: the one hint every "no such ..." message of the package gives."""
    import difflib  # only for a misspelt name: no process that starts right pays for it

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _known_name(name: str, origin: str, value: object) -> str:
    if name in _FIELDS:
        return name
    hint = did_you_mean(name, _FIELDS) or (
        "the settings are listed in the README and by `wsgi-memopt settings`"
    )
    raise SettingsError(name, value, f"there is no such setting; {hint}", origin)


def _parse(
    field: dataclasses.Field[Any], value: object, name: str, origin: str | None = None
) -> Any:
    try:
        return field.metadata["parse"](value)
    except _Invalid as error:
        raise SettingsError(name, value, str(error), origin) from None


def _parses(name: str, text: str) -> bool:
    """Whether ``text`` is a value setting ``name`` accepts."""
    try:
        _FIELDS[name].metadata["parse"](text)
    except _Invalid:
        return False
    return True


def _as_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
