"""``wsgi-memopt status``: a running server's memory status, read from its memory API::

    wsgi-memopt status http://127.0.0.1:8000
    wsgi-memopt status http://10.0.0.5:8000 --token T --json

It exits with 0 (excellent/good), 1 (warning), 2 (critical, or a restart needed) or 3 (the
status could not be read: a usage error, no connection, an HTTP error), as monitoring plugins
(Nagios, Icinga) do, so that scripts and cron can act on it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..settings import DEFAULT_API_PREFIX, ENV_PREFIX, MB, Settings, SettingsError
from .common import PROG, CommandError

if TYPE_CHECKING:
    from .common import Commands

STATUS_OK = 0  # excellent or good
STATUS_WARNING = 1
STATUS_CRITICAL = 2  # critical, or the worker needs a restart (health answered 503)
STATUS_UNKNOWN = 3  # the status could not be read: usage, connection, HTTP or response errors
_STATUS_EXIT = {
    "excellent": STATUS_OK,
    "good": STATUS_OK,
    "warning": STATUS_WARNING,
    "critical": STATUS_CRITICAL,
    "restart-needed": STATUS_CRITICAL,
}
TOKEN_ENV = ENV_PREFIX + "API_TOKEN"  # the server's own api_token variable
_MAX_BODY_BYTES = 16 * MB  # an answer larger than this is not the memory API's

_EPILOG = f"""\
URL is the server's address (http://127.0.0.1:8000, or the path the app is mounted at), or
the memory API's own URL (ending with the prefix, {DEFAULT_API_PREFIX} unless --prefix says
otherwise). The command GETs <api>/health and <api>/stats and prints a summary: the status
band and memory percent, RSS, cache, GC, the governor's last actions, the restart reason
and the recommendations. The token is --token, else ${TOKEN_ENV}; without
one, the server must allow this address (api_allow_networks).

exit status:
  0  excellent or good
  1  warning
  2  critical, or the worker needs a restart (health answered 503)
  3  the status could not be read: bad usage, no connection, a timeout, an HTTP error
     (401/403: token missing or refused), an answer that is not the memory API's

examples:
  wsgi-memopt status http://127.0.0.1:8000
  wsgi-memopt status http://127.0.0.1:8000/api/v1/memory --json
  {TOKEN_ENV}=s3cret wsgi-memopt status http://10.0.0.5:8000 --timeout 5
  wsgi-memopt status http://127.0.0.1:8000 --prefix /_mem --token s3cret
  */5 * * * *  wsgi-memopt status http://127.0.0.1:8000 >/dev/null || alert-oncall
"""


class StatusUnknown(CommandError):
    """The server's status could not be read (exit status 3)."""

    status = STATUS_UNKNOWN


def add_command(commands: Commands) -> None:
    """Add the ``status`` command to the ``wsgi-memopt`` parser's ``commands``."""
    parser = commands.add_parser(
        "status",
        help="print a running server's memory status; the exit status says its band",
        description="Read the memory API of a running server (health and stats) and print a\n"
        "summary; exit with 0, 1 or 2 by its status band, 3 when it cannot be read.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage_status=STATUS_UNKNOWN,  # 2, a usage error elsewhere, means "critical" here
    )
    parser.add_argument("url", metavar="URL", help="the server's base URL or its API's URL")
    parser.add_argument(
        "--token",
        metavar="T",
        help=f"the api_token, sent as 'Authorization: Bearer T' (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--prefix",
        type=_api_prefix,
        default=DEFAULT_API_PREFIX,
        metavar="PATH",
        help="the server's api_prefix (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"health": ..., "stats": ...} as received'
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=10.0,
        metavar="S",
        help="seconds to wait for each answer (default: %(default)g)",
    )
    parser.set_defaults(run=run)


def _api_prefix(text: str) -> str:
    """A prefix the server's ``api_prefix`` setting would accept; the leading '/' optional."""
    try:
        return Settings.from_mapping({"api_prefix": "/" + text.strip().lstrip("/")}).api_prefix
    except SettingsError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error.allowed}") from None


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds above 0 (at most 3600), got {text!r}")
    return seconds


def api_url(url: str, prefix: str = DEFAULT_API_PREFIX) -> str:
    """The memory API's URL from a server's ``url``: as is when it ends with ``prefix``, else
    with ``prefix`` appended. ``127.0.0.1:8000`` means ``http://127.0.0.1:8000``.

    :raises StatusUnknown: for a URL that is not an http(s) URL with a host.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        raise StatusUnknown(f"{url!r} is not a valid URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise StatusUnknown(
            f"{url!r} is not an http(s) URL of a server, e.g. 'http://127.0.0.1:8000'"
        )
    if "@" in parts.netloc:
        raise StatusUnknown(f"{url!r}: no user or password in the URL; give --token")
    if parts.query or parts.fragment:
        raise StatusUnknown(f"{url!r}: give the server's URL without a query or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith(prefix):
        path += prefix
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def run(args: argparse.Namespace) -> int:
    """Read health and stats, print them, and return the exit status of the band."""
    api = api_url(args.url, args.prefix)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    token = token.strip() if token else None
    if args.token is not None and not token:
        raise StatusUnknown("--token is empty")
    opener = urllib.request.build_opener(_NoRedirects)
    health_code, health_body = _get_json(opener, f"{api}/health", token, args.timeout, (200, 503))
    _, stats_body = _get_json(opener, f"{api}/stats", token, args.timeout, (200,))
    band = health_body.get("status")
    exit_status = _STATUS_EXIT.get(band) if isinstance(band, str) else None
    if exit_status is None:
        raise StatusUnknown(f"GET {api}/health: unknown status {band!r} in the answer")
    if health_code == 503:
        exit_status = STATUS_CRITICAL  # the worker needs a restart, whatever the band says
    if args.json:
        output = json.dumps({"health": health_body, "stats": stats_body}, indent=2) + "\n"
    else:
        output = "".join(f"{line}\n" for line in _summary(api, health_body, stats_body))
    sys.stdout.write(output)
    sys.stdout.flush()
    return exit_status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: it would carry the bearer token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    token: str | None,
    timeout: float,
    accepted: tuple[int, ...],
) -> tuple[int, dict[str, Any]]:
    """``(status code, JSON object)`` of ``GET url``; StatusUnknown for anything else."""
    headers = {"Accept": "application/json", "User-Agent": f"{PROG}/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        # Nested: reading an error's body can fail as the connection can.
        try:
            with opener.open(request, timeout=timeout) as response:
                code: int = response.status
                raw: bytes = response.read(_MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as error:
            with error:
                code, raw = error.code, error.read(_MAX_BODY_BYTES + 1)
            if code not in accepted:
                raise StatusUnknown(_http_error(url, error, raw, token)) from None
    except urllib.error.URLError as error:
        raise StatusUnknown(f"GET {url}: {_network_reason(error.reason, timeout)}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise StatusUnknown(f"GET {url}: {_network_reason(error, timeout)}") from None
    if len(raw) > _MAX_BODY_BYTES:
        raise StatusUnknown(f"GET {url}: the answer is larger than {_MAX_BODY_BYTES >> 20} MB")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StatusUnknown(
            f"GET {url}: HTTP {code}, but the answer is not a JSON object; is this the memory "
            "API of wsgi_memopt (see --prefix)?"
        )
    return code, body


def _http_error(url: str, error: urllib.error.HTTPError, raw: bytes, token: str | None) -> str:
    """One line for an HTTP error: the code, the server's own message, a hint."""
    message = ""
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = str(body["error"].get("message") or "")
    except ValueError:
        pass
    text = f"GET {url}: HTTP {error.code} {error.reason}".rstrip()
    if message:
        text += f": {message}"
    if error.code == 401 and not token:
        text += f" (give --token or set {TOKEN_ENV})"
    elif error.code == 404 and not message:
        text += " (is it a wsgi_memopt server? is its api_prefix different: --prefix?)"
    elif 300 <= error.code < 400:
        location = error.headers.get("Location")
        text += f"; redirected to {location}, give that URL" if location else "; a redirect"
    elif error.code == 429:
        retry = error.headers.get("Retry-After")
        text += f" (retry after {retry} s)" if retry else ""
    return text


def _network_reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s (--timeout)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running, on this host and port?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)


def _summary(api: str, health: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    """The readable summary: one labelled line per part, then the lists."""
    memory = _dict(stats.get("memory"))
    lines = [
        f"memory API:  {api}",
        f"status:      {_status_line(health, memory)}",
        f"rss:         {_rss_line(memory, _dict(stats.get('process')))}",
        f"cache:       {_cache_line(_dict(stats.get('cache')))}",
    ]
    shared = _dict(stats.get("cache")).get("shared")
    if isinstance(shared, dict):
        lines.append(f"shared:      {_shared_line(shared)}")
    lines.append(f"gc:          {_gc_line(_dict(stats.get('gc')))}")
    modules = stats.get("modules")
    if isinstance(modules, dict):
        lines.append(
            "modules:     " + ", ".join(f"{_fmt(_number(v), 'd')} {k}" for k, v in modules.items())
        )
    workers = stats.get("workers")
    if isinstance(workers, dict):
        pool = _list(workers.get("workers"))
        lines.append(
            f"workers:     {len(pool)} under {_text(workers.get('server'))} master "
            f"{_text(workers.get('master_pid'))}, {_mb(workers.get('total_rss_mb'))} RSS in all"
        )
    governor = _dict(stats.get("governor"))
    reason = health.get("restart_reason") or governor.get("restart_reason")
    lines.append(f"restart:     {'needed: ' + _text(reason) if reason else 'not needed'}")
    alert = health.get("alert")
    if isinstance(alert, dict):
        lines.append(f"alert:       {_text(alert.get('level'))}: {_text(alert.get('message'))}")

    actions = [_dict(action) for action in _list(governor.get("last_actions"))]
    lines.append(f"last actions: {len(actions) or 'none'}")
    lines.extend(f"  - {_action_line(action)}" for action in actions)
    advice = [_dict(item) for item in _list(health.get("recommendations"))]
    lines.append(f"recommendations: {len(advice) or 'none'}")
    lines.extend(f"  - {_advice_line(item)}" for item in advice)
    return lines


def _status_line(health: dict[str, Any], memory: dict[str, Any]) -> str:
    percent = _number(health.get("memory_percent"), memory.get("percent"))
    source = _text(health.get("source") or memory.get("source"))
    line = f"{_text(health.get('status'))}, memory {_fmt(percent, '.1f')}% of {source}"
    if memory.get("limit_mb") is not None:
        line += (
            f" (used {_mb(memory.get('used_mb'))} of {_mb(memory.get('limit_mb'))}, "
            f"{_mb(memory.get('available_mb'))} available)"
        )
    return line


def _rss_line(memory: dict[str, Any], process: dict[str, Any]) -> str:
    line = _mb(memory.get("rss_mb"))
    if process:
        line += f" (pid {_text(process.get('pid'))}, up {_duration(process.get('uptime_s'))})"
    return line


def _cache_line(cache: dict[str, Any]) -> str:
    hits, misses = _number(cache.get("hits")), _number(cache.get("misses"))
    hit_rate = _fmt(_number(cache.get("hit_rate")), ".0%")
    return (
        f"{_fmt(_number(cache.get('items')), 'd')} items, {_mb(cache.get('size_mb'), '.3g')}"
        f" of {_mb(cache.get('max_mb'), 'g')}, hit rate {hit_rate}"
        f" ({_fmt(hits, 'd')} hits, {_fmt(misses, 'd')} misses), "
        f"{_fmt(_number(cache.get('evictions')), 'd')} evictions"
    )


def _shared_line(shared: dict[str, Any]) -> str:
    """The store every worker shares: where, its state, what Redis holds, this worker's
    hits and misses there, and its errors."""
    used = _number(shared.get("used_memory_bytes"))
    keys = _number(shared.get("keys"))
    held = "Redis not read" if used is None else f"Redis {used / (1 << 20):.1f} MB used"
    if keys is not None:
        held += f", {keys:.0f} entries under {_text(shared.get('prefix'))}"
    hit_rate = _fmt(_number(shared.get("hit_rate")), ".0%")
    return (
        f"{_text(shared.get('backend'))} {_text(shared.get('state'))}; {held}; "
        f"hit rate {hit_rate} ({_fmt(_number(shared.get('hits')), 'd')} hits, "
        f"{_fmt(_number(shared.get('misses')), 'd')} misses), "
        f"{_fmt(_number(shared.get('errors')), 'd')} errors"
    )


def _gc_line(gc_stats: dict[str, Any]) -> str:
    generations = _list(gc_stats.get("generations"))
    counts = [_fmt(_number(_dict(gen).get("collections")), "d") for gen in generations]
    line = "collections " + (
        ", ".join(f"gen{i} {count}" for i, count in enumerate(counts)) if counts else "?"
    )
    if gc_stats.get("mode") is not None:
        line += f"; mode {_text(gc_stats.get('mode'))}"
        scheduled = _list(gc_stats.get("collections"))
        if scheduled:
            line += f" ({sum(_number(n) or 0 for n in scheduled):g} run by wsgi_memopt)"
    return line


def _action_line(action: dict[str, Any]) -> str:
    at = _number(action.get("at"))
    when = time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else "?"
    freed = _mb(_dict(action.get("improvement")).get("mb_freed"))
    duration = _fmt(_number(action.get("duration_ms")), ".0f")
    return (
        f"{when} {_text(action.get('kind'))} ({_text(action.get('reason'))}): "
        f"freed {freed} in {duration} ms"
    )


def _advice_line(item: dict[str, Any]) -> str:
    where = item.get("setting") or item.get("endpoint")
    return f"{_text(item.get('finding'))}: {_text(item.get('action'))}" + (
        f" [{_text(where)}]" if where else ""
    )


# Tolerant readers: the answer comes from a server, maybe of another version; a missing or
# odd figure shows as '?' rather than stopping the summary.


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(*values: object) -> float | None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "?"
    if spec == "d":
        return str(round(value))
    return format(value, spec)


def _mb(value: object, spec: str = ".1f") -> str:
    return f"{_fmt(_number(value), spec)} MB"


def _duration(value: object) -> str:
    seconds = _number(value)
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _text(value: object) -> str:
    """A value from the answer on one line (a message must not break the summary's lines)."""
    if value is None:
        return "?"
    return re.sub(r"\s+", " ", str(value)).strip()
