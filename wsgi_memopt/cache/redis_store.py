"""The shared level of the cache: entries in Redis, for every process and machine that names it.

Each entry is one record (:mod:`wsgi_memopt.cache.wire`) under ``<prefix>e:<digest of its
key>``, with the entry's remaining life as its Redis TTL. A page that varies keeps a small
marker under its base key naming the ``Vary`` request headers, and each variant under its own
key. Each URI has a sorted set of its records, scored by their ends (``<prefix>u:<path>
<digest>``), so that an unsafe method drops them all, and a path prefix finds them with SCAN;
it is touched with each read, so that Redis never evicts it before them. Single flight across
processes takes ``<prefix>l:<digest>`` (SET NX with an expiry). Invalidations are published on
``<prefix>invalidate`` for every process's own copies.

Nothing here raises to the request: every call is bounded by ``cache_redis_timeout_s``, a
failure counts as an error and answers as if Redis held nothing, and after repeated failures
the :class:`~wsgi_memopt.cache.breaker.Breaker` stops asking for ``cache_redis_retry_s``;
an invalidation Redis missed is sent once it answers again. redis-py is imported when a
:class:`RedisStore` is built (only with a Redis ``cache_backend``), before any fork.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..backend import BackendAddress, redacted
from ..counting import Tally, read_count
from . import wire
from .breaker import Breaker
from .entry import Entry
from .policy import CacheKey, key_host, key_path, key_query, variant_key

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore", "Unavailable", "connect"]

T = TypeVar("T")

log = logging.getLogger("wsgi_memopt")

# Failures in a row that open the breaker: one lost packet is not an outage.
_BREAKER_THRESHOLD = 3
# SCAN's batch, and how many SCAN calls (on each node) one report makes at most: a Redis
# shared with others may hold millions of keys, and /health reads the report.
_SCAN_COUNT = 1000
_SCAN_BATCHES = 100
_SET_BATCH = 10_000  # members of a URI's set taken at once: about a megabyte in a worker
# How often a refusal (a bad record, a message not ours) is logged: whoever writes them could
# otherwise have every worker log a line per request or message; the stats count them all.
_REFUSALS_LOGGED_EVERY_S = 60.0
_FIGURES_EVERY_S = 5.0  # how long what Redis said of itself (INFO, keys) is reported as is
_PENDING_MAX = 1000  # invalidations kept while Redis is out of reach; past it, a clear
_RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def connect(address: BackendAddress, timeout_s: float) -> redis.Redis | Any:
    """A redis-py client for ``address`` that fails fast: every wait bounded by
    ``timeout_s``, no retry of its own (the breaker decides when to ask again)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "username": address.username,
        "password": address.password,
        "retry": Retry(NoBackoff(), 0),
    }
    if address.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        if int(redis.__version__.split(".")[0]) < 6:
            # Before redis-py 6 the cluster retried on its own count (later: ``retry``'s).
            common["cluster_error_retry_attempts"] = 1
        nodes = [ClusterNode(host, port) for host, port in address.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, ssl=address.tls, **common)
    if address.kind == "sentinel":
        from redis.sentinel import Sentinel

        sentinel = Sentinel(
            list(address.nodes),
            sentinel_kwargs={
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
                "retry": Retry(NoBackoff(), 0),  # not inherited from the primary's settings
            },
            **common,
        )
        return sentinel.master_for(address.service or "", db=address.db, ssl=address.tls)
    return redis.Redis.from_url(address.url, **common)


class RedisStore:
    """Entries in Redis under ``prefix``; every method is safe to call when Redis is down."""

    def __init__(
        self,
        address: BackendAddress,
        *,
        prefix: str,
        timeout_s: float,
        retry_s: float,
        secret: str | None,
        key_names: tuple[str, ...],
        client: Any = None,
    ) -> None:
        self.address = address
        self.prefix = prefix
        self.channel = prefix + "invalidate"
        self.timeout_s = timeout_s
        self.secret = secret.encode() if secret is not None else None
        self.key_names = key_names
        self.breaker = Breaker(_BREAKER_THRESHOLD, retry_s)
        self._client = client
        self._client_lock = threading.Lock()
        if client is None:
            _import_redis_py(address)
        self._made_client = client is None  # ours to make again in a forked child
        # The largest body a record may carry (the process's item limit, set by its
        # SharedStore): a longer value is not read past that.
        self.body_max_bytes = 2 << 20
        self.hits = itertools.count()
        self.misses = itertools.count()
        self.stores = itertools.count()
        self.errors = Tally()
        self.refused = Tally()  # records read and not used: bad format, bad signature
        self._next_refusal_log = -math.inf
        self._figures: dict[str, Any] | None = None  # what Redis said of itself, and when
        self._figures_until = -math.inf
        # Invalidations Redis could not take, sent before anything else once it answers
        # again (else the old page would be served from Redis for the rest of its life);
        # past the bound, everything under the prefix goes instead.
        self._pending: list[Callable[[], object]] = []
        self._pending_overflowed = False
        self._pending_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The redis-py client, made on first use (redis-py imported then)."""
        if self._client is None:
            # Once: the listener's thread asks too, and a second client would close the
            # first one's connections when it is collected, under a request using them.
            with self._client_lock:
                if self._client is None:
                    self._client = connect(self.address, self.timeout_s)
        return self._client

    # -- keys

    def key_text(self, key: CacheKey) -> str:
        """``key`` as the text its record is filed and signed under."""
        return wire.key_text(self.key_names, key)

    def key_id(self, key: CacheKey) -> str:
        """The digest that names ``key`` in Redis and in the messages (never its text: it
        holds the values of the request headers the key is made of)."""
        return wire.key_id(self.key_text(key))

    def record_key(self, key_str: str) -> str:
        return self.prefix + "e:" + _digest(key_str)

    def uri_key(self, host: str, path: str, query: str) -> str:
        # The path readable (percent-encoded: no SCAN pattern character survives), so that a
        # path prefix finds its URIs; host and query digested.
        return f"{self.prefix}u:{_quoted(path)} {_digest(json.dumps([host, query]))}"

    # -- the request path

    def get(
        self, base_key: CacheKey, environ: Mapping[str, object], now: float, count: bool = True
    ) -> tuple[CacheKey, Entry | None, tuple[str, ...]]:
        """The key of this request's variant, the entry Redis holds under it (None when it
        holds none, or cannot be asked) and its ``Vary`` environ keys; counted as a hit or a
        miss unless ``count`` is False (a request looking again)."""

        def ask() -> tuple[CacheKey, Entry | None, tuple[str, ...]]:
            key_str = self.key_text(base_key)
            # The URI's set is touched with every read: Redis evicting least recently used
            # keys must not evict it before its records, or a POST would miss them.
            uri = self.uri_key(key_host(base_key) or "", key_path(base_key), key_query(base_key))
            record = self._read(self.record_key(key_str), touch=uri)
            if record is None:
                return base_key, None, ()
            entry, vary = self._decode(record, base_key, key_str, now)
            if entry is not None or not vary:
                return base_key, entry, vary
            key = variant_key(base_key, vary, environ)
            key_str = self.key_text(key)
            record = self._read(self.record_key(key_str))
            if record is None:
                return key, None, ()
            return (key, *self._decode(record, key, key_str, now))

        found = self._ask("get", ask)
        if found is None:
            return base_key, None, ()
        if count:
            next(self.hits if found[1] is not None else self.misses)
        return found

    def _read(self, name: str, touch: str | None = None) -> bytes | None:
        """The record under ``name``, or None: none there, or longer than any of ours (the
        name of a page's record is no secret: whoever can write to Redis could make every
        worker that asks read a huge value whole). ``touch``: a key to mark used, in the
        same round trip."""
        limit = self.body_max_bytes + wire.OVERHEAD
        if touch is None:
            record: bytes = self.client.getrange(name, 0, limit)  # at most limit + 1 bytes
        else:
            pipe = self.client.pipeline(transaction=False)
            pipe.getrange(name, 0, limit)
            pipe.touch(touch)
            record = pipe.execute()[0]
        if not record:
            return None  # no key (or an empty value, not a record either)
        if len(record) > limit:
            self.refuse("a record larger than any entry", f"a record over {limit} bytes")
            return None
        return record

    def _decode(
        self, record: bytes, key: CacheKey, key_str: str, now: float
    ) -> tuple[Entry | None, tuple[str, ...]]:
        try:
            return wire.decode(record, key, key_str, time.time(), now, self.secret)
        except wire.BadRecord as error:
            self.refuse(str(error).partition(":")[0], f"a shared record: {error}")
            return None, ()

    def put(self, entry: Entry, vary: tuple[str, ...], now: float) -> bool:
        """Write ``entry`` for the rest of its life (its ``keep_until``); False when Redis
        could not take it."""
        ttl_ms = math.ceil((entry.keep_until - now) * 1000)
        if ttl_ms <= 0:
            return False

        def ask() -> bool:
            key_str = self.key_text(entry.key)
            record = wire.encode(entry, vary, key_str, time.time(), now, self.secret)
            own_key = self.record_key(key_str)
            host = key_host(entry.base_key) or ""
            uri = self.uri_key(host, entry.path, key_query(entry.base_key))
            # The URI's records, each scored by when it ends: the ended ones go at each store,
            # so a page varying on a header clients choose freely keeps only its live names.
            wall_ms = time.time() * 1000
            ends = {own_key: wall_ms + ttl_ms}
            pipe = self.client.pipeline(transaction=False)
            pipe.set(own_key, record, px=ttl_ms)
            if vary:
                base_str = self.key_text(entry.base_key)
                base_record = self.record_key(base_str)
                pipe.set(base_record, wire.vary_marker(vary, base_str, self.secret), keepttl=True)
                _extend(pipe, base_record, ttl_ms)
                ends[base_record] = wall_ms + ttl_ms
            pipe.zadd(uri, ends, gt=True)
            pipe.zadd(uri, ends, nx=True)
            pipe.zremrangebyscore(uri, "-inf", wall_ms)
            _extend(pipe, uri, ttl_ms)
            pipe.execute()
            next(self.stores)
            return True

        return bool(self._ask("put", ask))

    def delete(self, key: CacheKey) -> None:
        """Drop the record under ``key``."""
        name = self.record_key(self.key_text(key))
        self._ask("delete", lambda: self.client.unlink(name), invalidation=True)

    def claim(self, key: CacheKey, ttl_s: float) -> str | None:
        """Take the fill lock of ``key`` for at most ``ttl_s``: its token, or None when
        another process holds it. Raises :class:`Unavailable` when Redis cannot be asked."""
        token = secrets.token_hex(8)
        ttl_ms = max(math.ceil(ttl_s * 1000), 1)
        taken = self._ask(
            "lock", lambda: bool(self.client.set(self._lock_key(key), token, nx=True, px=ttl_ms))
        )
        if taken is None:
            raise Unavailable
        return token if taken else None

    def claimed(self, key: CacheKey, ttl_s: float) -> bool:
        """Whether a process still holds ``key``'s fill lock, taken for at most ``ttl_s``
        (False when unknown). A lock without expiry, or with a longer one, was not taken by
        a process of this cache: nobody waits for it."""
        most_ms = max(math.ceil(ttl_s * 1000), 1)
        left_ms = self._ask("lock", lambda: self.client.pttl(self._lock_key(key)))
        return left_ms is not None and 0 < left_ms <= most_ms

    def release(self, key: CacheKey, token: str) -> None:
        """Let go of ``key``'s fill lock if it is still ours."""
        self._ask("lock", lambda: self.client.eval(_RELEASE_SCRIPT, 1, self._lock_key(key), token))

    def _lock_key(self, key: CacheKey) -> str:
        return self.prefix + "l:" + _digest(self.key_text(key))

    # -- invalidation

    def invalidate_uri(self, host: str, path: str, query: str, key: CacheKey | None = None) -> int:
        """Drop the records of one URI, and the record under ``key`` (the request's own
        base key: with it goes a page's Vary marker, and its variants with it, should the
        URI's set have been evicted); how many."""
        uri = self.uri_key(host, path, query)
        own = [] if key is None else [self.record_key(self.key_text(key))]

        def ask() -> int:
            return self._drop_uris([uri]) + (self.client.unlink(*own) if own else 0)

        return self._ask("invalidate", ask, invalidation=True) or 0

    def invalidate(self, path_prefix: str) -> int:
        """Drop the records at ``path_prefix`` and below (whole segments); how many."""
        below = path_prefix if path_prefix.endswith("/") else path_prefix + "/"

        def ask() -> int:
            pattern = f"{self.prefix}u:{_quoted(path_prefix)}*"
            dropped = 0
            for names in self._scan(pattern):
                uris = []
                for uri in names:
                    path = _unquoted_path(uri, self.prefix)
                    if path == path_prefix or path.startswith(below):
                        uris.append(uri)
                dropped += self._drop_uris(uris)
            return dropped

        return self._ask("invalidate", ask, invalidation=True) or 0

    def clear(self) -> int:
        """Drop every record and URI set under the prefix; how many keys."""
        return self._ask("clear", self._drop_everything, invalidation=True) or 0

    def _drop_everything(self) -> int:
        dropped = 0
        for names in self._scan(self.prefix + "[eu]:*"):
            dropped += self.client.unlink(*names)
        return dropped

    def _drop_uris(self, uris: list[str]) -> int:
        # A URI's set may be large (whoever can write to Redis can fill it): taken in batches,
        # never whole, every URI's at once. ZPOPMIN also empties it (an empty set is no key),
        # and shares the work with a concurrent invalidation.
        records = self.prefix + "e:"
        dropped = 0
        for _ in range(_SCAN_BATCHES):
            if not uris:
                return dropped
            each = max(_SET_BATCH // len(uris), 1)
            pipe = self.client.pipeline(transaction=False)
            for uri in uris:
                pipe.zpopmin(uri, each)
            # A key of another type planted there is passed over, not a stop to the others.
            replies = pipe.execute(raise_on_error=False)
            batches = [batch if isinstance(batch, list) else [] for batch in replies]
            # Only our records: a name written there by anyone else is not deleted.
            names = [
                name for batch in batches for name, _ in batch if _text(name).startswith(records)
            ]
            if names:
                dropped += self.client.unlink(*names)
            uris = [uri for uri, batch in zip(uris, batches, strict=True) if len(batch) >= each]
        # Still full after all those batches: someone keeps filling it. It goes whole (its
        # records, if any are ours, end with their TTL) rather than hold the request.
        if uris:
            self.client.unlink(*uris)
            log.warning(
                "[CACHE] dropped %d URI sets still full after %d batches", len(uris), _SCAN_BATCHES
            )
        return dropped

    def publish(self, message: Mapping[str, Any]) -> None:
        """Tell every process's listener (see :mod:`wsgi_memopt.cache.listener`); signed
        like the records when there is a secret."""
        text = wire.seal_message(json.dumps(message, separators=(",", ":")), self.secret)
        self._ask("publish", lambda: self.client.publish(self.channel, text))

    def read_message(self, data: bytes | str) -> dict[str, Any] | None:
        """A published message, or None (counted) when it is not one of ours: not JSON, or
        not signed with the secret."""
        try:
            message = json.loads(wire.open_message(data, self.secret))
        except (wire.BadRecord, ValueError, RecursionError) as error:
            self.refuse("message", f"an invalidation message: {error}")
            return None
        if not isinstance(message, dict):
            self.refuse("message", "an invalidation message that is not an object")
            return None
        return message

    def refuse(self, kind: str, what: str) -> None:
        """Count a record or message not used, by ``kind``; log ``what`` at most once per
        interval."""
        self.refused.add(kind)
        now = time.monotonic()
        if now >= self._next_refusal_log:
            self._next_refusal_log = now + _REFUSALS_LOGGED_EVERY_S
            log.warning(
                "[CACHE] refused %s (those in the next %g s are counted in refused_records, "
                "not logged)",
                what,
                _REFUSALS_LOGGED_EVERY_S,
            )

    def _scan(self, pattern: str) -> Iterator[list[str]]:
        """Every name matching ``pattern``, in batches (what is dropped must all go)."""
        batch = []
        for name in self.client.scan_iter(match=pattern, count=_SCAN_COUNT):
            batch.append(_text(name))
            if len(batch) >= _SCAN_COUNT:
                yield batch
                batch = []
        if batch:
            yield batch

    def _count(self, pattern: str) -> int | None:
        """How many names match ``pattern``; None when :data:`_SCAN_BATCHES` SCAN calls on a
        node did not go through its keys."""
        nodes = self.client.get_primaries() if self.address.kind == "cluster" else [None]
        found = 0
        for node in nodes:
            client = self.client if node is None else self.client.get_redis_connection(node)
            cursor = 0
            for _ in range(_SCAN_BATCHES):
                cursor, names = client.scan(cursor, match=pattern, count=_SCAN_COUNT)
                found += len(names)
                if not cursor:
                    break
            else:
                return None
        return found

    # -- faults

    def _ask(self, what: str, call: Callable[[], T], invalidation: bool = False) -> T | None:
        """``call()``'s result; None when the breaker is open or Redis failed (counted by
        kind). Never raises a Redis error: a request goes on without Redis. An
        ``invalidation`` that fails is kept, and sent before the next call that gets through."""
        if not self.breaker.allows():
            self.errors.add("skipped")  # not Redis's error: a request that did not ask
            if invalidation:
                self._keep_pending([call])
            return None
        try:
            if self._pending or self._pending_overflowed:
                self._send_pending()
            result = call()
        except Exception as error:  # redis-py's, and a socket's, whatever their class
            kind = _error_kind(error)
            self.errors.add(kind)
            if kind in ("timeout", "connection"):
                self.breaker.failed()
            else:
                self.breaker.succeeded()  # Redis answered, with an error: up (a probe ends)
            log.warning("[CACHE] Redis %s failed (%s): %s", what, kind, error)
            if invalidation:
                self._keep_pending([call])
            return None
        self.breaker.succeeded()
        return result

    def _keep_pending(self, calls: list[Callable[[], object]], overflowed: bool = False) -> None:
        with self._pending_lock:
            self._pending[:0] = calls  # the older ones first
            if overflowed or len(self._pending) > _PENDING_MAX:
                self._pending_overflowed = True
                self._pending.clear()

    def _send_pending(self) -> None:
        """The invalidations Redis missed, oldest first (raises what the first failure
        raised, keeping those not sent)."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
            overflowed, self._pending_overflowed = self._pending_overflowed, False
        try:
            if overflowed:
                self._drop_everything()
            else:
                while pending:
                    pending[0]()
                    pending.pop(0)
        except Exception:
            self._keep_pending(pending, overflowed)
            raise
        log.info("[CACHE] Redis answers again: sent the invalidations it missed")

    # -- reports

    def stats(self) -> dict[str, Any]:
        """Its state, its own counts and, when Redis answers, what Redis holds."""
        hits, misses = read_count(self.hits), read_count(self.misses)
        errors = self.errors.snapshot()
        skipped = errors.pop("skipped", 0)
        report: dict[str, Any] = {
            "backend": redacted(self.address.url),
            "kind": self.address.kind,
            "prefix": self.prefix,
            "state": self.breaker.state,
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
            "stores": read_count(self.stores),
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
            "skipped": skipped,
            "refused_records": self.refused.snapshot(),
            "breaker_opened": self.breaker.opened,
            # Invalidations waiting for Redis to answer again (None: so many that everything
            # under the prefix will go).
            "pending_invalidations": None if self._pending_overflowed else len(self._pending),
            "read_at": None,
            "used_memory_bytes": None,
            "maxmemory_bytes": None,
            "keys": None,
        }
        now = time.monotonic()
        if now >= self._figures_until:
            # At most one INFO and SCAN per interval, however often the stats are polled.
            self._figures = self._ask("stats", self._redis_figures)
            self._figures_until = now + _FIGURES_EVERY_S
        if self._figures is not None:
            report.update(self._figures)
        return report

    def _redis_figures(self) -> dict[str, Any]:
        # A cluster client asks one node unless told: the store's memory is every primary's.
        nodes = {"target_nodes": "primaries"} if self.address.kind == "cluster" else {}
        used, most = _memory(self.client.info("memory", **nodes))
        return {
            "read_at": round(time.time(), 3),
            "used_memory_bytes": used,
            "maxmemory_bytes": most,
            # Past the SCAN's bound, more than one report would be spent counting: unknown.
            "keys": self._count(self.prefix + "e:*"),
        }

    def after_fork(self) -> None:
        """In a forked child: new locks, and a client of its own (the parent's sockets are
        the parent's: two processes reading one connection read each other's replies)."""
        if self._made_client:
            self._client = None
        self._client_lock = threading.Lock()
        self.breaker.after_fork()
        self.errors = Tally()._adopt(self.errors)
        self.refused = Tally()._adopt(self.refused)


def _import_redis_py(address: BackendAddress) -> None:
    """Import redis-py now, not at the first request: built before the fork (gunicorn
    --preload), every worker shares its pages instead of a copy each. Without it, the one
    clear error a setting gets."""
    try:
        import redis.cluster
        import redis.sentinel  # noqa: F401
    except ImportError:
        from ..settings import SettingsError

        raise SettingsError(
            "cache_backend",
            address.url,
            "a Redis backend needs redis-py: pip install 'wsgi-memopt[redis]'",
        ) from None


class Unavailable(Exception):
    """Redis could not be asked (down, slow, or the breaker is open)."""


def _extend(pipe: Any, name: str, ttl_ms: int) -> None:
    """Make ``name`` live at least ``ttl_ms`` more: set when it has no expiry, raised when
    shorter (a page's variants and URI sets live as long as their longest member)."""
    pipe.pexpire(name, ttl_ms, nx=True)
    pipe.pexpire(name, ttl_ms, gt=True)


def _text(name: bytes | str) -> str:
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def _digest(text: str) -> str:
    return wire.key_id(text)


def _quoted(path: str) -> str:
    return urllib.parse.quote(path.encode("utf-8", "surrogatepass"), safe="/")


def _unquoted_path(uri_key: str, prefix: str) -> str:
    quoted = uri_key[len(prefix) + 2 :].rpartition(" ")[0]
    return urllib.parse.unquote(quoted, errors="surrogatepass")


def _error_kind(error: Exception) -> str:
    import redis

    if isinstance(error, redis.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, redis.ConnectionError | ConnectionError | OSError):
        return "connection"
    if isinstance(error, redis.exceptions.OutOfMemoryError):  # its message has lost "OOM"
        return "out-of-memory"
    if isinstance(error, redis.RedisError):
        return "redis"
    return "other"


def _memory(info: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``used_memory`` and ``maxmemory`` from INFO memory: one server's, or a cluster's
    summed over its nodes (redis-py returns one mapping per node)."""
    if "used_memory" in info:
        return int(info["used_memory"]), int(info.get("maxmemory", 0)) or None
    nodes = [value for value in info.values() if isinstance(value, Mapping)]
    if not nodes:
        return None, None
    used = sum(int(node.get("used_memory", 0)) for node in nodes)
    most = sum(int(node.get("maxmemory", 0)) for node in nodes)
    return used, most or None
