"""wsgi_memopt: a WSGI middleware that keeps a web backend's memory under control."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from .middleware import MemoryOptimizer

__version__ = "0.1.0"

__all__ = ["MemoryOptimizer", "Settings", "SettingsError", "__version__"]


def __getattr__(name: str) -> object:
    # The middleware pulls in werkzeug; keep `import wsgi_memopt.settings` light for tools.
    if name == "MemoryOptimizer":
        from .middleware import MemoryOptimizer

        return MemoryOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
