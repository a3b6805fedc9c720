"""The middleware's own weight: RSS and modules of a fresh process at each step of using it.

Each case runs in a fresh interpreter (``python -c``) that does its step, collects, prints its
``sys.modules`` and waits; this process then reads the child's RSS with psutil, so the child
never imports psutil to be measured. Every case is run once to warm up, then ``--runs``
times; the table shows the median RSS and the difference above the case's baseline:
werkzeug + psutil (what the middleware cannot do without) or, for the Flask rows, Flask +
psutil.

The children import from bytecode, as an installed package does: they write and read it in
a private ``PYTHONPYCACHEPREFIX`` (the warm-up run writes it), whatever
``PYTHONDONTWRITEBYTECODE`` says. Compiling from source would add the compiler's own
leftovers to every row.

The target: constructing ``MemoryOptimizer`` costs at most 6 MB of RSS above werkzeug +
psutil, and neither construction nor a stored and a cached request imports what only a deep
look needs (:data:`LAZY_ONLY`: pympler, prometheus_client, tracemalloc and the API's profile,
dashboard, OpenAPI and metrics modules).

    python benchmarks/footprint.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from _servers import child_env

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 6.0  # constructing the middleware, above werkzeug + psutil
TIMEOUT_S = 60.0
# Loaded only when something asks for them (a deep profile, a scrape, the dashboard).
LAZY_ONLY = (
    "pympler",
    "prometheus_client",
    "tracemalloc",
    "wsgi_memopt.api.profile",
    "wsgi_memopt.api.dashboard",
    "wsgi_memopt.api.openapi",
    "wsgi_memopt.api.metrics",
)

_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")])
    return [b"hello"]
"""
_FLASK_APP = """
flask_app = flask.Flask("footprint")

@flask_app.get("/")
def index():
    return "hello", 200, {"Cache-Control": "max-age=60"}

app = flask_app.wsgi_app
"""
_BUILD = "optimizer = MemoryOptimizer(app, monitor_interval_s=0)\n"
# The first request is stored, the second served from the cache.
_SERVE = """
from werkzeug.test import Client
client = Client(optimizer)
assert client.get("/", buffered=True).headers["X-Cache"] == "MISS"
assert client.get("/", buffered=True).headers["X-Cache"] == "HIT"
"""
_WERKZEUG = "import werkzeug, psutil\n"
_FLASK = "import flask, psutil\n"
_MIDDLEWARE = "from wsgi_memopt import MemoryOptimizer\n"


@dataclass(frozen=True)
class Case:
    """One step: the code a fresh interpreter runs, and the case it is compared with."""

    name: str
    code: str
    baseline: str | None


CASES = (
    Case("bare python", "", None),
    Case("werkzeug + psutil", _WERKZEUG, None),
    Case("+ import wsgi_memopt", _WERKZEUG + "import wsgi_memopt\n", "werkzeug + psutil"),
    Case("+ import MemoryOptimizer", _WERKZEUG + _MIDDLEWARE, "werkzeug + psutil"),
    Case("+ MemoryOptimizer(app)", _WERKZEUG + _MIDDLEWARE + _APP + _BUILD, "werkzeug + psutil"),
    Case(
        "+ a stored and a cached request",
        _WERKZEUG + _MIDDLEWARE + _APP + _BUILD + _SERVE,
        "werkzeug + psutil",
    ),
    Case("flask + psutil", _FLASK, None),
    Case(
        "flask + MemoryOptimizer(app)", _FLASK + _MIDDLEWARE + _FLASK_APP + _BUILD, "flask + psutil"
    ),
    Case(
        "flask + a stored and a cached request",
        _FLASK + _MIDDLEWARE + _FLASK_APP + _BUILD + _SERVE,
        "flask + psutil",
    ),
)
CONSTRUCTED = "+ MemoryOptimizer(app)"
SERVED = "+ a stored and a cached request"

# What the child does after its step: collect, report its modules, wait to be measured.
_REPORT = """
import gc as _gc, json as _json, sys as _sys
_gc.collect()
print(_json.dumps(sorted(_sys.modules)), flush=True)
_sys.stdin.readline()
"""


@dataclass
class Measured:
    """One case's figures: median RSS in MiB, modules, the lazy-only modules it loaded."""

    name: str
    rss_mb: float
    modules: int
    lazy_loaded: list[str]
    baseline: str | None = None
    rss_over_mb: float | None = None
    modules_over: int | None = None


def run_case(case: Case, pycache: str) -> tuple[float, list[str]]:
    """RSS (MiB) and ``sys.modules`` of a fresh interpreter that ran ``case``, its bytecode
    kept in ``pycache``."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache
    code = textwrap.dedent(case.code) + _REPORT
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            _, errors = child.communicate(timeout=TIMEOUT_S)
            raise RuntimeError(f"case {case.name!r} failed:\n{errors}")
        modules: list[str] = json.loads(line)
        rss_mb = psutil.Process(child.pid).memory_info().rss / (1 << 20)
        child.communicate("\n", timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return rss_mb, modules


def measure(case: Case, pycache: str, runs: int = 3) -> Measured:
    """``case`` run once to warm up, then ``runs`` times, in fresh interpreters: the median
    RSS, the modules."""
    run_case(case, pycache)
    results = [run_case(case, pycache) for _ in range(runs)]
    modules = results[0][1]
    return Measured(
        name=case.name,
        rss_mb=round(statistics.median(rss for rss, _ in results), 2),
        modules=len(modules),
        lazy_loaded=[name for name in LAZY_ONLY if name in modules],
        baseline=case.baseline,
    )


def measure_all(cases: tuple[Case, ...] = CASES, runs: int = 3) -> list[Measured]:
    """Every case, with its difference above its baseline."""
    with tempfile.TemporaryDirectory(prefix="footprint-pycache-") as pycache:
        measured = {case.name: measure(case, pycache, runs) for case in cases}
    for row in measured.values():
        if row.baseline is not None:
            base = measured[row.baseline]
            row.rss_over_mb = round(row.rss_mb - base.rss_mb, 2)
            row.modules_over = row.modules - base.modules
    return list(measured.values())


def table(rows: list[Measured]) -> str:
    """The side-by-side table, one row per case."""
    lines = [
        f"{'case':<40} {'RSS MB':>8} {'modules':>8} {'+MB':>7} {'+mods':>6}  lazy-only loaded",
        "-" * 96,
    ]
    for row in rows:
        over = "" if row.rss_over_mb is None else f"{row.rss_over_mb:+.2f}"
        more = "" if row.modules_over is None else f"{row.modules_over:+d}"
        loaded = ", ".join(row.lazy_loaded) or "-"
        lines.append(
            f"{row.name:<40} {row.rss_mb:>8.2f} {row.modules:>8d} {over:>7} {more:>6}  {loaded}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (or JSON); exit 1 when constructing misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = measure_all(runs=args.runs)
    by_name = {row.name: row for row in rows}
    constructed = by_name[CONSTRUCTED]
    meets = (
        constructed.rss_over_mb is not None
        and constructed.rss_over_mb <= TARGET_MB
        and not constructed.lazy_loaded
        and not by_name[SERVED].lazy_loaded
    )
    if args.json:
        print(
            json.dumps(
                {"target_mb": TARGET_MB, "meets": meets, "rows": [asdict(row) for row in rows]}
            )
        )
    else:
        print(table(rows))
        print(
            f"\nconstructing MemoryOptimizer: {constructed.rss_over_mb:+.2f} MB above werkzeug + "
            f"psutil (target <= {TARGET_MB:g} MB): {'meets' if meets else 'misses'}"
        )
    return 0 if meets else 1


if __name__ == "__main__":
    sys.exit(main())
