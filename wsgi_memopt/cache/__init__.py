"""The HTTP response cache: policy (the rules), decision (what a request gets), store (where
responses are kept), capture (how a fetched response is copied), flight (one fetch per key)."""

from __future__ import annotations

from .decision import Decision, ResponseCache, Route
from .store import Entry, ResponseStore

__all__ = ["Decision", "Entry", "ResponseCache", "ResponseStore", "Route"]
