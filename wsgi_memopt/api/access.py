"""Who may use the memory API, and how often the expensive parts may run (SPEC §8.3).

A request is let in when it carries ``Authorization: Bearer <api_token>`` (compared in constant
time), or when its ``REMOTE_ADDR`` is in ``api_allow_networks`` and it carries no forwarding
header: behind a reverse proxy every client looks like loopback, so a proxied request must bring
the token. Otherwise 401 when a token exists to bring, 403 when none does.

    decision = Access(settings).check(environ)   # None: let in; else (status, message)
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Mapping

from ..settings import Settings

__all__ = ["Access", "RateLimiter"]

# Headers a reverse proxy adds: their presence means REMOTE_ADDR is the proxy, not the client.
_FORWARDING = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


class Access:
    """The access rule of the memory API, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self._token = settings.api_token.encode() if settings.api_token else None
        self._networks = tuple(ipaddress.ip_network(net) for net in settings.api_allow_networks)

    def check(self, environ: Mapping[str, object]) -> tuple[int, str] | None:
        """None when the request may use the API, else ``(401 or 403, why)``."""
        offered = _bearer(environ.get("HTTP_AUTHORIZATION"))
        if self._token is not None and offered is not None:
            if hmac.compare_digest(offered.encode(), self._token):
                return None
            return 401, "the bearer token is not valid"
        if self._from_allowed_network(environ):
            return None
        if self._token is not None:
            return 401, "a bearer token is required (Authorization: Bearer <api_token>)"
        return 403, (
            "the memory API is open only to api_allow_networks without forwarding headers; "
            "set api_token to reach it from elsewhere"
        )

    def _from_allowed_network(self, environ: Mapping[str, object]) -> bool:
        if any(name in environ for name in _FORWARDING):
            return False
        try:
            address = ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")).strip())
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        return any(address in network for network in self._networks)


def _bearer(header: object) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not isinstance(header, str):
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class RateLimiter:
    """Each key may run at most once every ``interval_s`` in this process."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, interval_s: float | None = None) -> int | None:
        """None when ``key`` may run now (and it is counted as run); else seconds to wait."""
        interval = self.interval_s if interval_s is None else interval_s
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < interval:
                return max(1, math.ceil(interval - (now - last)))
            self._last[key] = now
            return None
