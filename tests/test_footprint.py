"""What the package weighs and what it loads: the middleware's own memory, measured in fresh
processes by ``benchmarks/footprint.py``, and which of its packages may import which.

These assert memory, not time: constructing ``MemoryOptimizer`` stays within 6 MB of RSS above
werkzeug + psutil, and neither construction nor a stored and a cached request imports what
only a deep look needs (pympler, prometheus_client, tracemalloc, the API's heavier modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import footprint
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsgi_memopt"
CASES = {case.name: case for case in footprint.CASES}


@pytest.fixture(scope="module")
def measured() -> dict[str, footprint.Measured]:
    cases = tuple(
        CASES[name] for name in ("werkzeug + psutil", footprint.CONSTRUCTED, footprint.SERVED)
    )
    return {row.name: row for row in footprint.measure_all(cases, runs=1)}


@pytest.mark.parametrize("case", [footprint.CONSTRUCTED, footprint.SERVED])
def test_the_middleware_loads_nothing_only_a_deep_look_needs(
    measured: dict[str, footprint.Measured], case: str
) -> None:
    assert measured[case].lazy_loaded == []


@pytest.mark.parametrize("case", [footprint.CONSTRUCTED, footprint.SERVED])
def test_the_middleware_weighs_at_most_6_mb_above_werkzeug_and_psutil(
    measured: dict[str, footprint.Measured], case: str
) -> None:
    row = measured[case]
    assert row.baseline == "werkzeug + psutil"
    assert row.rss_over_mb is not None
    assert row.rss_over_mb <= footprint.TARGET_MB, row


def test_the_measurement_sees_a_lazy_module_that_was_loaded(tmp_path: Path) -> None:
    # The check above can fail: a step that asks for the OpenAPI document loads its module.
    case = footprint.Case("asks for the document", "import wsgi_memopt.api.openapi\n", None)
    row = footprint.measure(case, str(tmp_path), runs=1)
    assert row.lazy_loaded == ["wsgi_memopt.api.openapi"]


def _imports(module: Path) -> set[str]:
    """The modules ``module`` imports, relative imports resolved, TYPE_CHECKING ones included."""
    package = ".".join(module.parent.relative_to(PACKAGE.parent).parts)  # where "." points
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(filter(None, [base, node.module]))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        pytest.param("api", "wsgi_memopt.middleware", id="api-not-middleware"),
        pytest.param("memory", "wsgi_memopt.middleware", id="memory-not-middleware"),
        pytest.param("memory", "wsgi_memopt.cache", id="memory-not-cache"),
        pytest.param("cache", "wsgi_memopt.middleware", id="cache-not-middleware"),
        pytest.param("cache", "wsgi_memopt.api", id="cache-not-api"),
    ],
)
def test_the_parts_never_import_what_builds_them(package: str, forbidden: str) -> None:
    for module in sorted((PACKAGE / package).glob("*.py")):
        imported = _imports(module)
        assert not any(
            name == forbidden or name.startswith(forbidden + ".") for name in imported
        ), module.name
