"""Who may use the memory API, and how often the expensive parts may run.

The API is closed until the operator opens it. A request is let in when:

- it carries ``Authorization: Bearer <api_token>`` (compared in constant time; never a cookie
  or a query parameter, which a browser or a log would hand on), from anywhere; or
- the operator set ``api_allow_networks``, its ``REMOTE_ADDR`` is in one of them, it carries
  no client-address header of any kind, and its ``Host`` is an IP address or ``localhost``.
  A reverse proxy on the same host makes every client look like loopback (a stock nginx
  ``proxy_pass`` adds no header to tell); a DNS-rebinding page (``evil.example`` resolved to
  127.0.0.1 in the operator's browser) sends its own name as ``Host``, never an address.

Otherwise 401 when a token is configured (bring it), 403 when only networks are; with neither
setting, 403 naming both.

Separately, :func:`cross_site` tells a request a browser made for another site's page
(``Sec-Fetch-Site``, ``Origin``): no endpoint that reads or changes anything answers one.

    decision = Access(settings).check(environ)   # None: let in; else (status, message)
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping

from ..settings import Settings

__all__ = ["Access", "RateLimiter", "client_address_header", "cross_site"]

# Headers a proxy, load balancer or CDN adds to name the client (or to say it passed one):
# Forwarded, Via, X-Forwarded-*, X-Real-IP, X-Client-IP, True-Client-IP, CF-Connecting-IP,
# X-Cluster-Client-IP, Client-IP, Fastly-Client-IP, X-Azure-ClientIP, X-Remote-Addr,
# X-Envoy-External-Address... Each vendor names its own, so a pattern rather than a list;
# one that matches too much only makes a request bring the token.
_CLIENT_ADDRESS = re.compile(r"HTTP_(?:VIA|\w*FORWARDED\w*|\w*_IP|\w*CLIENTIP|\w*_ADDR(?:ESS)?)")
# What a browser says of a request its user made (none) or the page's own origin made.
_SAME_SITE = frozenset({"same-origin", "none"})
_CLOSED = (
    "the memory API is closed: set api_token (and send Authorization: Bearer <api_token>) or "
    "api_allow_networks to open it; only /health answers without them"
)


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
        if self._token is None and not self._networks:
            return 403, _CLOSED
        refused = self._network_refusal(environ)
        if refused is None:
            return None
        if self._token is not None:
            return 401, "a bearer token is required (Authorization: Bearer <api_token>)"
        return 403, (
            f"api_allow_networks does not let this request in: {refused}; set api_token to "
            "reach the API from elsewhere"
        )

    def _network_refusal(self, environ: Mapping[str, object]) -> str | None:
        """Why ``api_allow_networks`` does not let the request in; None when it does."""
        if not self._networks:
            return "it is empty"
        header = client_address_header(environ)
        if header is not None:
            return f"it carries {header}, so it came through a proxy"
        host = environ.get("HTTP_HOST")
        if isinstance(host, str) and not _names_an_address(host):
            return "its Host is a name, not an IP address or localhost"
        try:
            address = ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")).strip())
        except ValueError:
            return "its client address is unknown"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        if not any(address in network for network in self._networks):
            return "its client address is not in any of the networks"
        return None


def client_address_header(environ: Mapping[str, object]) -> str | None:
    """The first client-address header the request carries (``X-Forwarded-For``), or None."""
    for key in environ:
        if _CLIENT_ADDRESS.fullmatch(key):
            return "-".join(part.capitalize() for part in key[5:].split("_"))
    return None


def cross_site(environ: Mapping[str, object]) -> bool:
    """Whether a browser made this request for a page of another site.

    ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (the user's own navigation), or
    an ``Origin`` whose host and port are not the request's ``Host`` (the scheme is left out:
    a TLS proxy in front changes it). Clients that are not browsers send neither.
    """
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site not in _SAME_SITE:
        return True
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return False
    host = environ.get("HTTP_HOST")
    return not (isinstance(origin, str) and isinstance(host, str) and _same_host(origin, host))


def _same_host(origin: str, host: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (a sandboxed frame, a file) and anything else
    default = 443 if parts.scheme == "https" else 80
    name, port = _split_host(host)
    return name.lower() == parts.hostname and (port or str(default)) == str(origin_port or default)


def _names_an_address(host: str) -> bool:
    """Whether a ``Host`` value is an IP address or ``localhost``, with or without a port."""
    name, _ = _split_host(host)
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _split_host(host: str) -> tuple[str, str]:
    """``(name, port)`` of a ``Host`` value (``[::1]:80`` -> ``("::1", "80")``); port may be ''."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, colon, port = host.rpartition(":")
    return (name, port) if colon and port.isdigit() else (host, "")


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
