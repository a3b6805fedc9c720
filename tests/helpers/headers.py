"""Reading the ``Cache-Status`` response header (RFC 9211) strictly."""

from __future__ import annotations

import re
from typing import Protocol

from werkzeug.datastructures import Headers

HeaderList = list[tuple[str, str]]


class _Response(Protocol):
    """A werkzeug test response, or a real server's :class:`~helpers.servers.Reply`."""

    @property
    def headers(self) -> Headers: ...


# Cache-Status is an RFC 8941 list: the value is matched whole before its parameters are read.
_TOKEN = r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*"
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_BARE_ITEM = (
    rf'(?:-?\d{{1,15}}(?:\.\d{{1,3}})?|"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"|{_TOKEN}'
    r"|\?[01]|:[A-Za-z0-9+/=]*:)"
)
_PARAM = rf";[ ]*(?P<key>{_KEY})(?:=(?P<value>{_BARE_ITEM}))?"
_MEMBER = rf"(?:{_TOKEN}|\"[^\"]*\")(?:;[ ]*{_KEY}(?:={_BARE_ITEM})?)*"
_SF_LIST = re.compile(rf"{_MEMBER}(?:[ \t]*,[ \t]*{_MEMBER})*")
_PARAM_RE = re.compile(_PARAM)


def cache_status(response: _Response | HeaderList) -> dict[str, str | bool]:
    """The parameters of the one ``wsgi-memopt`` member of ``Cache-Status``, checked valid.

    ``response`` is anything with werkzeug ``Headers`` (a test response, a real server's
    reply), or a WSGI header list. A parameter without a value maps to ``True``.
    """
    if isinstance(response, list):
        values = [value for name, value in response if name.lower() == "cache-status"]
    else:
        values = response.headers.getlist("Cache-Status")
    assert len(values) == 1, values
    value = values[0]
    assert _SF_LIST.fullmatch(value), f"not an RFC 8941 list: {value!r}"
    name, _, rest = value.partition(";")
    assert name == "wsgi-memopt"
    parsed: dict[str, str | bool] = {}
    position, rest = 0, ";" + rest
    while position < len(rest):  # the full match above makes every step succeed
        param = _PARAM_RE.match(rest, position)
        assert param is not None, value
        parsed[param["key"]] = param["value"] or True
        position = param.end()
    return parsed
