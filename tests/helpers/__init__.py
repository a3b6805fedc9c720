"""Helpers shared by the test modules: one definition of each, imported as ``helpers.<module>``.

pytest puts ``tests/`` on ``sys.path`` (its default "prepend" import mode, and ``tests/`` has
no ``__init__.py``), so this package imports as ``helpers``.
"""

import sys
from pathlib import Path

# The benchmarks' server helpers (a free port, gunicorn's flags, a clean environment) and the
# leaking-pool harness serve the tests that start real servers too.
_BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)
