"""schemathesis against the memory API through its WSGI interface (its OpenAPI document).

Every operation of ``openapi.json`` is called with generated inputs; each response must be no
server error and must conform to the document (status code, content type, body schema).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from wsgi_memopt import MemoryOptimizer


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


# Generated calls come with no REMOTE_ADDR: give them the loopback address a local monitor has,
# and open the API to it, so that the endpoints themselves are what is tested.
_optimizer = MemoryOptimizer(
    _app,
    monitor_interval_s=0,
    gc_freeze=False,
    api_min_interval_s=0,
    api_allow_networks="127.0.0.1/32",
)


def _from_loopback(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    environ.setdefault("REMOTE_ADDR", "127.0.0.1")
    return _optimizer(environ, start_response)


schema = schemathesis.openapi.from_wsgi("/api/v1/memory/openapi.json", _from_loopback)
# Loading the document was this process's first request: it started the GC schedule, at
# collection time, for every test after. The API's answers do not need it.
_optimizer.governor.stop()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_and_never_fails(case: Any) -> None:
    case.call_and_validate()
