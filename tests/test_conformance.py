"""The conformance harness (``conformance/run.py``): its scoring, on a tiny made-up suite, and
the public HTTP cache test suite itself, which must pass at least the floor recorded in
``conformance/floor.txt``. See docs/conformance.md."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.needs import require_peer

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"


def _load_run() -> ModuleType:
    # conformance/ is a directory of scripts, not a package: load run.py by its path, under a
    # name that cannot clash with another module called ``run``.
    spec = importlib.util.spec_from_file_location("conformance_run", CONFORMANCE / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Test
    spec.loader.exec_module(module)
    return module


run = _load_run()

# A tiny suite, in the shape suite.mjs prints: one test for each way a result is scored.
SUITE = [
    run.Test("base", "Basics", "a first response is stored", "required", []),
    run.Test("on-base", "Basics", "depends on a failure", "required", ["base"]),
    run.Test("on-on-base", "Basics", "depends on a blocked test", "required", ["on-base"]),
    run.Test("fine", "Basics", "passes", "required", []),
    run.Test("on-fine", "Basics", "depends on a pass", "required", ["fine"]),
    run.Test("harness", "Basics", "its set-up went wrong", "required", []),
    run.Test("never-run", "Basics", "has no result", "required", []),
    run.Test("nice", "Extras", "an optimal pass", "optimal", []),
    run.Test("nicer", "Extras", "an optimal failure", "optimal", []),
    run.Test("yes", "Checks", "a check answered yes", "check", []),
    run.Test("no", "Checks", "a check answered no", "check", []),
    run.Test("on-yes", "Checks", "depends on a yes", "optimal", ["yes"]),
    run.Test("on-no", "Checks", "depends on a no", "optimal", ["no"]),
    run.Test("surrogate", run.APART, "counted apart", "required", []),
]
RESULTS: dict[str, Any] = {
    "base": ["Assertion", "Response 2 does not come from cache"],
    "on-base": True,
    "on-on-base": True,
    "fine": True,
    "on-fine": ["Assertion", "Response 2 comes from cache"],
    "harness": ["Setup", "Request 2 should have been conditional, but it was not."],
    "nice": True,
    "nicer": ["Assertion", "Response 2 does not come from cache"],
    "yes": True,
    "no": ["Assertion", "Response 2 does not come from cache"],
    "on-yes": True,
    "on-no": True,
    "surrogate": True,
}


@pytest.mark.parametrize(
    ("test_id", "expected"),
    [
        pytest.param("base", "fail", id="a failed assertion fails"),
        pytest.param("on-base", "blocked", id="a failed dependency blocks a pass"),
        pytest.param("on-on-base", "blocked", id="a blocked dependency blocks too"),
        pytest.param("fine", "pass", id="true passes"),
        pytest.param("on-fine", "fail", id="a passed dependency does not block"),
        pytest.param("harness", "setup", id="a setup error is the harness's"),
        pytest.param("never-run", "untested", id="no result is untested"),
        pytest.param("nice", "pass", id="optimal pass"),
        pytest.param("nicer", "fail", id="optimal fail"),
        pytest.param("yes", "yes", id="a check answers yes"),
        pytest.param("no", "no", id="a check answers no"),
        pytest.param("on-yes", "pass", id="a yes dependency does not block"),
        pytest.param("on-no", "blocked", id="a no dependency blocks"),
    ],
)
def test_outcome(test_id: str, expected: str) -> None:
    by_id = {test.id: test for test in SUITE}

    assert run.outcome(test_id, by_id, RESULTS, {}) == expected


def test_tally_counts_each_kind_and_outcome_and_leaves_surrogate_control_apart() -> None:
    counts = run.tally(SUITE, RESULTS)

    assert dict(counts) == {
        ("required", "fail"): 2,
        ("required", "blocked"): 2,
        ("required", "pass"): 1,
        ("required", "setup"): 1,
        ("required", "untested"): 1,
        ("optimal", "pass"): 2,
        ("optimal", "fail"): 1,
        ("optimal", "blocked"): 1,
        ("check", "yes"): 1,
        ("check", "no"): 1,
    }


def test_the_recorded_floor_is_a_count_of_required_tests() -> None:
    assert run.recorded_floor() > 0


@pytest.mark.slow
def test_the_public_suite_passes_at_least_the_recorded_floor() -> None:
    # Node runs the suite's origin server and client; npm installs the suite (.ci/run installs
    # both). run.py exits 1 below the floor and prints the table and our failures either way.
    require_peer("node")
    require_peer("npm")
    done = subprocess.run(
        [sys.executable, str(CONFORMANCE / "run.py")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
