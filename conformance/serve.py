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

from proxy import ReverseProxy  # noqa: E402

from wsgi_memopt import MemoryOptimizer, Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin's base URL")
    parser.add_argument("--port", type=int, required=True, help="the port to serve on")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a setting"
    )
    options = parser.parse_args(argv)
    pairs = dict(item.split("=", 1) for item in options.set)
    settings = Settings.from_mapping(pairs, origins={name: "--set" for name in pairs})
    app = MemoryOptimizer(ReverseProxy(options.origin), settings)
    # The suite runs 100 tests at once, some of them waiting seconds for a response to go stale.
    waitress.serve(
        app, host="127.0.0.1", port=options.port, threads=128, connection_limit=1000, ident=None
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
