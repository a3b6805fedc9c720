"""``wsgi-memopt settings``: every effective setting and where its value came from.

Also the ``--set NAME=VALUE`` option that ``serve`` shares, and how its values are read::

    wsgi-memopt settings --set cache_ttl_s=60
    WSGI_MEMOPT_CACHE_TTL_S=60 wsgi-memopt settings --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..settings import Settings, shown_value
from .common import UsageError

if TYPE_CHECKING:
    from .common import Commands

_EMPTY = '""'  # how an empty list setting is shown

_EPILOG = """\
Each line reads 'name = value  (source)', the source being 'default', 'env' (a
WSGI_MEMOPT_<NAME> variable) or 'explicit' (--set). Secrets (api_token, cache_redis_secret, a
Redis password) are hidden.

examples:
  wsgi-memopt settings
  WSGI_MEMOPT_CACHE_TTL_S=60 wsgi-memopt settings --set cache_max_mb=10
  wsgi-memopt settings --json
"""


def add_command(commands: Commands) -> None:
    """Add the ``settings`` command to the ``wsgi-memopt`` parser's ``commands``."""
    parser = commands.add_parser(
        "settings",
        help="print every effective setting and where its value came from",
        description="Print every setting of MemoryOptimizer as it would be used: the defaults,\n"
        "overridden by WSGI_MEMOPT_* variables, overridden by --set.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_set_option(parser)
    parser.add_argument(
        "--json", action="store_true", help='print {"name": {"value": ..., "source": ...}}'
    )
    parser.set_defaults(run=run)


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--set NAME=VALUE`` option, collected in ``args.assignments``."""
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting, as in the env or an ini file (repeatable; wins over WSGI_MEMOPT_*)",
    )


def load_settings(assignments: Sequence[str]) -> Settings:
    """The settings from ``NAME=VALUE`` strings over ``WSGI_MEMOPT_*`` over the defaults.

    :raises UsageError: for an assignment without ``=`` or a name.
    :raises SettingsError: for an unknown name (with a suggestion), or a value a setting does
        not allow (here or in the env).
    """
    explicit: dict[str, Any] = {}  # strings, parsed by Settings as env text is
    for assignment in assignments:
        raw_name, equals, value = assignment.partition("=")
        name = raw_name.strip().lower().replace("-", "_")
        if not equals or not name:
            raise UsageError(f"--set expects NAME=VALUE, got {assignment!r}")
        if name not in Settings.NAMES:
            # from_mapping refuses it with Settings' own error and "did you mean". Checked
            # before from_env, whose own parameters ('prefix', 'environ') it would reach.
            Settings.from_mapping({name: value}, origins={name: f"--set {assignment}"})
        explicit[name] = value
    # Settings parses these strings as it parses env and ini text.
    return Settings.from_env(**explicit)


def shown(name: str, value: Any) -> Any:
    """``value`` as it may be printed: a secret setting that is set reads ``<hidden>``, a
    Redis URL's password ``***``."""
    return value if value == "none" else shown_value(name, value)


def run(args: argparse.Namespace) -> int:
    """Print the settings, one aligned line each or as JSON."""
    settings = load_settings(args.assignments)
    if args.json:
        values = {
            name: {
                "value": shown(name, getattr(settings, name)),
                "source": settings.source_of(name),
            }
            for name in Settings.NAMES
        }
        output = json.dumps(values, indent=2) + "\n"
    else:
        texts = settings.as_text()
        width = max(map(len, texts))
        output = "".join(
            f"{name:<{width}} = {shown(name, text) or _EMPTY}  ({settings.source_of(name)})\n"
            for name, text in texts.items()
        )
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0
