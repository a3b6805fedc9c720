"""The public HTTP cache test suite against the middleware, beside every cache it publishes.

Installs ``http-cache-tests`` (the suite behind cache-tests.fyi) from npm into a cache directory,
starts its origin server on a free loopback port, starts ``conformance/serve.py`` (a reverse
proxy to that origin, wrapped in ``MemoryOptimizer``, under waitress) on another, runs the
suite's client against the proxy, and prints for each kind of test (required, optimal, check)
our counts beside those of every result the package ships; then each test we fail, with the
suite's reason. Exits 1 when fewer required tests pass than the floor recorded in
``conformance/floor.txt``, which CI holds us to (``tests/test_conformance.py``). Needs Node
(>= 14) and npm; docs/conformance.md says how to read the table.

    python3 conformance/run.py                      # the settings of conformance/serve.py
    python3 conformance/run.py --set cache_statuses=200,404
    python3 conformance/run.py --floor 0            # report only, never exit 1
    python3 conformance/run.py --json results.json  # our raw results, as the suite writes them
    python3 conformance/run.py --results results.json  # score a saved run again
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The repository's root, for the benchmarks' server helpers (a free port, a clean environment,
# stopping by PID): one definition for benchmarks, tests and this harness.
sys.path.insert(0, str(HERE.parent))

from benchmarks._servers import HOST, child_env, free_port, stop_process  # noqa: E402

SUITE = "http-cache-tests"
VERSION = "0.4.5"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wsgi-memopt"
# The fewest required passes CI accepts: raised as the cache passes more, never lowered.
FLOOR_FILE = HERE / "floor.txt"
# The suite's own summary counts the tests of its index; Surrogate-Control, which its
# command-line client adds, is counted apart (most published caches do not implement it).
APART = "Surrogate-Control"
_START_S = 30.0
_STOP_S = 10.0
_RUN_S = 600.0


def install(cache: Path) -> Path:
    """The suite's package directory, installed from npm into ``cache`` if not there yet."""
    package = cache / f"{SUITE}-{VERSION}" / "node_modules" / SUITE
    if not (package / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                "npm is not installed: the suite is a Node package (apt-get install npm)"
            )
        prefix = package.parent.parent
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--silent",
                f"{SUITE}@{VERSION}",
            ],
            check=True,
            timeout=300,
        )
    return package


def wait_until_up(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``url`` until it answers anything (bounded); raise if ``process`` dies first."""
    deadline = time.monotonic() + _START_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # an answer all the same
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def run_suite(package: Path, settings: list[str], scratch: Path) -> dict[str, Any]:
    """Our results: origin and proxy started, the suite's client run, both stopped by PID."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed (apt-get install nodejs)")
    origin_port, proxy_port = free_port(), free_port()
    origin_env = {
        **child_env(),
        "npm_config_port": str(origin_port),
        "npm_config_protocol": "http",
        "npm_config_pidfile": str(scratch / "origin.pid"),
    }
    origin = subprocess.Popen(
        [node, "server/server.mjs"], cwd=package, env=origin_env, stdout=subprocess.DEVNULL
    )
    proxy = None
    try:
        wait_until_up(f"http://{HOST}:{origin_port}/", origin, "the suite's origin server")
        command = [
            sys.executable,
            str(HERE / "serve.py"),
            f"--origin=http://{HOST}:{origin_port}",
            f"--port={proxy_port}",
            *(f"--set={item}" for item in settings),
        ]
        proxy = subprocess.Popen(command, env=child_env())
        wait_until_up(f"http://{HOST}:{proxy_port}/", proxy, "the proxy under test")
        # Run by hand, not by npm: the client reads its options from npm's variables.
        client_env = {
            **child_env(),
            "npm_config_base": f"http://{HOST}:{proxy_port}",
            "npm_config_id": "",
            "npm_package_config_id": "",
        }
        done = subprocess.run(
            [node, "--no-warnings", "cli.mjs"],
            cwd=package,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=_RUN_S,
            check=True,
        )
        return json.loads(done.stdout)  # type: ignore[no-any-return]
    finally:
        if proxy is not None:
            stop_process(proxy, _STOP_S)
        stop_process(origin, _STOP_S)


@dataclass
class Test:
    """One test of the suite, as its client runs it against a reverse proxy."""

    id: str
    suite: str
    name: str
    kind: str
    depends_on: list[str]


def load_tests(package: Path) -> list[Test]:
    """The suite's tests (browser-only ones left out), read by ``conformance/suite.mjs``."""
    node = shutil.which("node") or "node"
    listed = subprocess.run(
        [node, str(HERE / "suite.mjs"), str(package)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [Test(**item) for item in json.loads(listed)]


def outcome(
    test_id: str, tests: dict[str, Test], results: dict[str, Any], seen: dict[str, str]
) -> str:
    """What the suite's own display calls a result: pass / fail (required, optimal), yes / no
    (check), blocked (a test it depends on did not pass), setup (a step the test needs before
    its own check, such as a response being stored, did not go as it expects), or untested."""
    if test_id in seen:
        return seen[test_id]
    test, result = tests[test_id], results.get(test_id)
    if result is None:
        verdict = "untested"
    elif any(outcome(d, tests, results, seen) not in ("pass", "yes") for d in test.depends_on):
        verdict = "blocked"
    elif isinstance(result, list) and result and result[0] == "Setup":
        verdict = "setup"
    elif test.kind == "check":
        verdict = "yes" if result is True else "no"
    else:
        verdict = "pass" if result is True else "fail"
    seen[test_id] = verdict
    return verdict


def tally(tests: list[Test], results: dict[str, Any]) -> collections.Counter[tuple[str, str]]:
    """``(kind, outcome)`` counts over the suite's index (Surrogate-Control apart)."""
    by_id = {test.id: test for test in tests}
    seen: dict[str, str] = {}
    return collections.Counter(
        (test.kind, outcome(test.id, by_id, results, seen)) for test in tests if test.suite != APART
    )


def published(package: Path) -> dict[str, dict[str, Any]]:
    """The results the package ships, by file name (squid, nginx, ...)."""
    return {
        path.stem: json.loads(path.read_text())
        for path in sorted((package / "results").glob("*.json"))
    }


def recorded_floor() -> int:
    """The floor recorded in ``conformance/floor.txt``."""
    return int(FLOOR_FILE.read_text(encoding="utf-8"))


def print_table(tests: list[Test], ours: dict[str, Any], others: dict[str, dict[str, Any]]) -> None:
    """Our counts beside every published result's, the most required passes first."""
    rows = {"wsgi_memopt": tally(tests, ours)} | {
        name: tally(tests, r) for name, r in others.items()
    }
    total = collections.Counter(test.kind for test in tests if test.suite != APART)
    print(
        f"{SUITE} {VERSION}: {total['required']} required, {total['optimal']} optimal, "
        f"{total['check']} check tests ({APART} apart)"
    )
    print()
    print("cache          | required pass | fail | setup | blocked | optimal pass | check yes")
    print("---------------+---------------+------+-------+---------+--------------+----------")
    for name, counts in sorted(rows.items(), key=lambda row: -row[1][("required", "pass")]):
        print(
            f"{name:14s} | {counts['required', 'pass']:13d} | {counts['required', 'fail']:4d} "
            f"| {counts['required', 'setup']:5d} | {counts['required', 'blocked']:7d} "
            f"| {counts['optimal', 'pass']:12d} | {counts['check', 'yes']:9d}"
        )


def print_failures(tests: list[Test], ours: dict[str, Any]) -> None:
    """Each required or optimal test we do not pass (blocked ones aside): its outcome and the
    suite's reason. Surrogate-Control's come last, as ``suite.mjs`` lists them."""
    by_id = {test.id: test for test in tests}
    seen: dict[str, str] = {}
    for kind in ("required", "optimal"):
        failing = [
            (test, verdict)
            for test in tests
            if test.kind == kind
            and (verdict := outcome(test.id, by_id, ours, seen)) in ("fail", "setup", "untested")
        ]
        apart = sum(test.suite == APART for test, _ in failing)
        print()
        print(f"{kind} tests we do not pass ({len(failing) - apart}, and {apart} {APART}):")
        for test, verdict in failing:
            result = ours.get(test.id)
            reason = result[1] if isinstance(result, list) and len(result) > 1 else result
            print(f"- {test.id} [{test.suite}] {verdict}: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the middleware under test (default: the product's)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the suite is installed (default {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--floor",
        type=int,
        default=recorded_floor(),
        help="exit 1 when fewer required tests pass than this (default: conformance/floor.txt)",
    )
    parser.add_argument("--json", type=Path, help="write our raw results here")
    parser.add_argument("--results", type=Path, help="score these raw results instead of running")
    options = parser.parse_args(argv)
    package = install(options.cache)
    tests = load_tests(package)
    if options.results is not None:
        ours = json.loads(options.results.read_text())
    else:
        with tempfile.TemporaryDirectory() as scratch:
            ours = run_suite(package, options.set, Path(scratch))
    if options.json is not None:
        options.json.write_text(json.dumps(ours, indent=2, sort_keys=True) + "\n")
    print_table(tests, ours, published(package))
    print_failures(tests, ours)
    passed = tally(tests, ours)["required", "pass"]
    if passed < options.floor:
        print(f"\n{passed} required tests pass, below the floor of {options.floor}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
