"""The parts of one middleware, built once and handed to whoever needs them.

The middleware builds them; the memory API, the metrics collector and the profile read what
they expose and call their public actions. Handing the parts over, rather than the
middleware, keeps the data flowing one way: nothing here or in ``api/`` imports the
middleware::

    parts = Parts(settings, store, governor, cleanups, lazy)
    api = MemoryAPI(parts)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .lazy import LazyModules
    from .memory.cleanups import Cleanups
    from .memory.governor import Governor
    from .settings import Settings

__all__ = ["CacheView", "Parts"]


class CacheView(Protocol):
    """What the memory API uses of the response store: its figures and its two actions."""

    @property
    def bytes(self) -> int:
        """Bytes held, as the store accounts them."""

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, JSON-ready (items, bytes, size_mb, hits, misses, ...)."""

    def clear(self) -> tuple[int, int]:
        """Drop every entry; ``(items, bytes)`` dropped."""

    def invalidate(self, path_prefix: str) -> int:
        """Drop the entries at ``path_prefix`` and below it; how many."""

    def entries(self) -> Sequence[object]:
        """The stored entries, for inspection."""

    def __len__(self) -> int:
        """Entries held."""


@dataclass(frozen=True)
class Parts:
    """One middleware's parts (see the module docstring).

    :param settings: the :class:`~wsgi_memopt.Settings` everything was built from.
    :param cache: the response store, seen through :class:`CacheView`.
    :param governor: the :class:`~wsgi_memopt.memory.governor.Governor`: samples, actions,
        history, the requests in flight.
    :param cleanups: the registry of app-level caches an emergency clears.
    :param lazy: the :class:`~wsgi_memopt.lazy.LazyModules` registry reported on, or None.
    """

    settings: Settings
    cache: CacheView
    governor: Governor
    cleanups: Cleanups
    lazy: LazyModules | None = None
