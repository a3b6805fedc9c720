"""``python -m wsgi_memopt``: the ``wsgi-memopt`` command (see :mod:`wsgi_memopt.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
