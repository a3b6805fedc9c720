"""The in-process HTTP response cache: policy (what and how long), store (where), capture (how)."""

from __future__ import annotations

from .store import Entry, ResponseStore

__all__ = ["Entry", "ResponseStore"]
