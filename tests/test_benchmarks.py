"""The benchmarks run, and their own checks hold (smoke tests: no time is asserted).

``benchmarks/cache.py`` checks, before it times anything, that every contender does what its
row says (our cache hits, a pass-through is not stored, Flask-Caching does not call the view,
the bare app answers as the Flask route does): a change that broke one would make the README's
figures wrong without failing any other test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.needs import require_peer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_cache_benchmark_runs_and_its_checks_hold() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cache.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )

    assert done.returncode == 0, done.stderr
    rows = {row["measure"]: row for row in json.loads(done.stdout)["rows"]}
    assert list(rows) == [
        "hit vs Flask-Caching hit",
        "hit vs bare WSGI floor",
        "hit at 100 KB vs hit at 5 B",
        "pass-through: POST",
        "pass-through: GET + Authorization",
        "pass-through: GET, response no-store",
        "miss + store vs unwrapped Flask",
    ]
    assert all(row["ratio"] > 0 and row["verdict"] in ("meets", "misses") for row in rows.values())
    notes = [note for row in rows.values() for note in row["notes"]]
    for yardstick in ("least_hit", "LeastWrapper", "LeastCapture"):
        assert any(yardstick in note for note in notes), yardstick


@pytest.mark.slow
def test_the_real_server_hit_benchmark_runs_and_checks_its_hits() -> None:
    # It starts real gunicorns and loads them with wrk; before timing, it checks that the
    # wrapped server answers from the cache and the bare one does not.
    require_peer("wrk")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "server_hit.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )

    assert done.returncode == 0, done.stderr
    ratio = re.search(r"cache hit / ceiling: (\d+\.\d+)", done.stdout)
    assert ratio is not None, done.stdout
    assert float(ratio.group(1)) > 0


@pytest.mark.slow
def test_the_shared_cache_benchmark_runs_every_part_and_checks_its_contenders() -> None:
    # It starts its own redis-server and real gunicorns (wrk loads them); before timing the
    # in-process hits it checks that each contender calls the app as its row says.
    require_peer("redis-server")
    require_peer("wrk")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "shared.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )

    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    memory = results["memory"]
    assert [run["workers_seen"] for run in memory["runs"]] == [4, 4]
    assert all(run["requests"] > 0 and run["app_calls"] > 0 for run in memory["runs"])
    assert all(run["trouble"] is None for run in memory["runs"])
    load = results["load"]["summary"]["contenders"]
    # Every Redis-backed contender serves the loaded URLs from its cache.
    for name in ("wsgi_memopt, L1 + Redis", "Flask-Caching RedisCache", "Django cache middleware"):
        assert load[name]["requests_per_s"] > 0, name
        assert load[name]["app_calls_loaded"] == 0, name
    rows = {row["contender"]: row for row in results["in_process"]["rows"]}
    assert set(rows) == {
        "wsgi_memopt L2 hit",
        "Flask-Caching RedisCache hit",
        "wsgi_memopt L1 hit",
        "bare Flask route",
    }
    assert all(row["us"] > 0 for row in rows.values())
    fault = results["fault"]
    assert fault["requests"] > 0
    assert fault["killed_at_s"] < fault["back_at_s"] < fault["seconds"]
    assert {b["redis"] for b in fault["bins"]} == {"up", "down", "back"}
