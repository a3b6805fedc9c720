"""Serve the reverse proxy through ``MemoryOptimizer`` under waitress, a real server that keeps
an app's own ``Date``: the cache under test, as ``conformance/run.py`` starts it.

    python3 conformance/serve.py --origin http://127.0.0.1:8000 --port 8001 [--set NAME=VALUE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import waitress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import ReverseProxy

from wsgi_memopt import MemoryOptimizer, Settings

# The settings the suite runs with: the product's defaults, but for what a shared cache in
# front of a whole origin stores. The product stores only 200s by default (an app's other
# statuses are more often an error page of the moment); the suite tests that every final
# status with explicit freshness (or heuristic, RFC 9110 §15.1) can be stored.
HARNESS_SETTINGS = {
    "cache_statuses": "200,203,204,299,300,301,302,303,307,308,400,404,405,410,414,"
    "499,500,501,502,503,504,599",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin's base URL")
    parser.add_argument("--port", type=int, required=True, help="the port to serve on")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a setting"
    )
    options = parser.parse_args(argv)
    pairs = dict(item.split("=", 1) for item in options.set)
    settings = Settings.from_mapping(
        {**HARNESS_SETTINGS, **pairs}, origins=dict.fromkeys(pairs, "--set")
    )
    app = MemoryOptimizer(ReverseProxy(options.origin), settings)
    # The suite runs 100 tests at once, some of them waiting seconds for a response to go stale.
    waitress.serve(
        app, host="127.0.0.1", port=options.port, threads=128, connection_limit=1000, ident=None
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
