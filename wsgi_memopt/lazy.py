"""``LazyModules``: heavy modules imported on first use, warmed up by priority.

    modules = LazyModules()
    np = modules.register("numpy", priority=7)   # nothing is imported yet
    np.zeros(3)                                  # imported here, exactly once, thread safe

What it promises, and what it does not:

- ``register`` returns a proxy; the first attribute read imports the module with
  ``importlib.import_module`` under a per-name lock (``importlib.util.LazyLoader`` is not
  thread safe before 3.13). After that the proxy reads from the module's own ``__dict__``: an
  attribute costs what a plain module attribute does. ``get(name)`` returns the real module.
- A name that cannot be imported raises its original ``ImportError`` at first use;
  ``eager=True`` (or ``WSGI_MEMOPT_LAZY_EAGER=1``) imports at ``register`` so CI sees it at
  start. ``preload(min_priority)`` imports by priority, highest first (e.g. before a fork).
- ``stats()`` reports what was measured around each import: seconds, RSS, and the
  tracemalloc delta when tracing.
- Unloading is opt-in and honest. A module with C extensions can never be unloaded (CPython
  cannot; numpy refuses a second import), so such packages are ``refused``, as are modules
  imported before the registry, the stdlib's registries and the server's and this package's
  own modules. Before unloading, the garbage collector is asked who else holds the package's
  modules, functions and classes: a holder means ``pinned`` (named), and the module is left
  alone. After unloading, weak references to those functions and classes must be dead; a
  survivor (a holder the collector cannot see, such as a C-level signal handler) marks the
  package ``pinned`` for good and the module is put back, never reported as freed. Freed memory
  is measured before and after, never assumed. Pure-Python packages free little (well under
  1 MiB each, typically); the remedy for C-extension memory is the governor's worker recycle.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil

from .memory.pressure import traced_bytes

__all__ = ["DEFAULT_PRIORITIES", "LazyModule", "LazyModules"]

log = logging.getLogger("wsgi_memopt")

#: The original design's warm-up order (higher loads first), for :meth:`register_defaults`.
DEFAULT_PRIORITIES: dict[str, int] = {
    "torch": 2,
    "tensorflow": 2,
    "cv2": 3,
    "matplotlib": 3,
    "PIL": 4,
    "sklearn": 4,
    "pandas": 6,
    "numpy": 7,
}

# Registries the rest of the process keeps entries in: never unloaded, whatever the state.
_NEVER_UNLOAD = frozenset(
    {
        "logging",
        "warnings",
        "codecs",
        "abc",
        "typing",
        "threading",
        "importlib",
        "wsgi_memopt",
        "gunicorn",
        "uwsgi",
        "uwsgidecorators",
        "werkzeug",
        "waitress",
        "mod_wsgi",
        "paste",
    }
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
_STATES = ("registered", "loaded", "unloaded", "pinned", "refused")


class LazyModule:
    """A stand-in for a module that imports it on first attribute access.

    Its class switches between two subclasses that share this layout: a pending one whose
    ``__getattr__`` imports (or notices a use), and a loaded one without ``__getattr__``,
    whose ``__dict__`` *is* the module's, so CPython specializes the read like a module
    attribute, and a global rebound later is seen at once. A module with its own module-level
    ``__getattr__`` keeps the pending class so names it resolves still work. The proxy is not
    a ``ModuleType``: use ``LazyModules.get`` where the real module object is needed.
    """

    # Only slots here (data descriptors, looked up before the instance dict): nothing else
    # may shadow a module attribute.
    __slots__ = ("__dict__", "__weakref__", "_lazy_entry")
    _lazy_entry: _Entry

    def __dir__(self) -> Iterable[str]:
        return dir(self._lazy_entry.use())

    def __repr__(self) -> str:
        entry = self._lazy_entry
        return f"<lazy module {entry.name!r} ({entry.state})>"


class _Pending(LazyModule):
    """A proxy not loaded (or watched for use): its reads go through ``__getattr__``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        # Reached before the load, after an unload, when the registry stopped watching for
        # use (see LazyModules.unload_idle), or for a name the module's dict lacks.
        module = self._lazy_entry.use()
        return getattr(module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._lazy_entry.use(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._lazy_entry.use(), name)


class _Loaded(LazyModule):
    """A loaded proxy's class: no ``__getattr__``, so CPython's attribute specialization
    applies and a read costs close to a module attribute. (Proxies of modules that define a
    module-level ``__getattr__`` stay :class:`_Pending`, which forwards unknown names.)"""

    __slots__ = ()


def _arm(proxy: object, module: types.ModuleType) -> None:
    """Point ``proxy`` at ``module``'s own namespace (its fast path)."""
    object.__setattr__(proxy, "__dict__", module.__dict__)
    if "__getattr__" not in module.__dict__:
        object.__setattr__(proxy, "__class__", _Loaded)


def _disarm(proxy: object) -> None:
    """Make ``proxy``'s next read go through ``_Pending.__getattr__``."""
    object.__setattr__(proxy, "__class__", _Pending)
    object.__setattr__(proxy, "__dict__", {})


class _Entry:
    """One registered module: its proxy, its lock, and what was measured about it."""

    def __init__(self, name: str, priority: int, clock: Callable[[], float]) -> None:
        self.name = name
        self.priority = priority
        self.lock = threading.Lock()
        self.clock = clock
        self.module: types.ModuleType | None = None
        self.state = "registered"
        self.proxy: LazyModule = _Pending.__new__(_Pending)
        object.__setattr__(self.proxy, "_lazy_entry", self)
        self.preexisting = name in sys.modules  # imported before the registry knew it
        self.watched = False  # the proxy is disarmed: its next read records a use
        self.watched_since = 0.0  # monotonic
        self.last_used: float | None = None  # monotonic
        self.last_used_wall: float | None = None
        self.loaded_at: float | None = None
        self.loads = 0
        self.unloads = 0
        self.import_s: float | None = None
        self.import_rss_bytes: int | None = None
        self.import_traced_bytes: int | None = None
        self.new_modules: tuple[str, ...] = ()  # what the import added to sys.modules
        self.error: str | None = None
        self.reason: str | None = None
        self.holders: list[str] = []
        self.last_unload: dict[str, Any] | None = None
        self.final = False  # pinned or refused for good

    # -- loading

    def use(self) -> types.ModuleType:
        """The module, imported if need be; records a use and arms the proxy's fast path."""
        module = self.module
        if module is None or self.watched:
            with self.lock:
                module = self.module
                if module is None:
                    module = self._import()
                self.watched = False
                _arm(self.proxy, module)
        self.last_used = self.clock()
        self.last_used_wall = time.time()
        return module

    def _import(self) -> types.ModuleType:
        # Called with the lock held: exactly one thread imports; the others wait here and
        # find the module complete.
        before_modules = set(sys.modules)
        rss_before = _rss()
        traced_before = traced_bytes()
        started = time.perf_counter()
        try:
            module = importlib.import_module(self.name)
        except BaseException as error:
            self.error = f"{type(error).__name__}: {error}"
            raise
        self.import_s = time.perf_counter() - started
        traced_after = traced_bytes()
        if traced_before is not None and traced_after is not None:
            self.import_traced_bytes = traced_after - traced_before
        else:
            self.import_traced_bytes = None
        self.import_rss_bytes = _rss() - rss_before
        self.new_modules = tuple(sorted(set(sys.modules) - before_modules))
        self.error = None
        self.module = module
        self.loads += 1
        self.loaded_at = time.time()
        if self.state in ("registered", "unloaded"):
            self.state = "loaded"
        return module

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "priority": self.priority,
            "loads": self.loads,
            "unloads": self.unloads,
            "import_ms": None if self.import_s is None else round(self.import_s * 1000, 3),
            "import_rss_bytes": self.import_rss_bytes,
            "import_traced_bytes": self.import_traced_bytes,
            "loaded_at": self.loaded_at,
            "last_used": self.last_used_wall,
            "error": self.error,
            "reason": self.reason,
            "holders": list(self.holders),
            "last_unload": self.last_unload,
        }


class LazyModules:
    """A registry of modules imported on first use (see the module docstring).

    :param eager: import every module as it is registered, so a missing one fails at start;
        by default from ``WSGI_MEMOPT_LAZY_EAGER``.
    :param clock: monotonic seconds, for idleness (tests may pass their own).
    """

    def __init__(
        self, *, eager: bool | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if eager is None:
            eager = os.environ.get("WSGI_MEMOPT_LAZY_EAGER", "").strip().lower() in _TRUE
        self.eager = eager
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # the registry itself; each module has its own lock
        self._unload_lock = threading.Lock()  # one unload at a time

    # -- registering and loading

    def register(self, name: str, priority: int = 0) -> LazyModule:
        """A proxy for ``name``; imports nothing unless ``eager``. Idempotent per name."""
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 10:
            raise ValueError(f"priority for {name!r}: {priority!r} is not an integer 0..10")
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = _Entry(name, priority, self.clock)
            else:
                entry.priority = priority
        if self.eager:
            entry.use()
        return entry.proxy

    def register_defaults(self) -> dict[str, LazyModule]:
        """Register the design's defaults (:data:`DEFAULT_PRIORITIES`) that are installed."""
        proxies = {}
        for name, priority in DEFAULT_PRIORITIES.items():
            if name in sys.modules or importlib.util.find_spec(name) is not None:
                proxies[name] = self.register(name, priority)
        return proxies

    def get(self, name: str) -> types.ModuleType:
        """The real module, imported if need be (``KeyError`` if never registered)."""
        return self._entries[name].use()

    def preload(self, min_priority: int = 0) -> list[str]:
        """Import the modules of at least ``min_priority``, highest first; the names loaded.

        A module that fails to import is logged and skipped (its error is in ``stats()``);
        use ``eager`` to make such failures fatal.
        """
        loaded = []
        entries = sorted(self._entries.values(), key=lambda entry: -entry.priority)
        for entry in entries:
            if entry.priority < min_priority:
                continue
            try:
                entry.use()
            except Exception:
                log.warning("[LAZY] preloading %s failed", entry.name, exc_info=True)
                continue
            loaded.append(entry.name)
        return loaded

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    # -- reporting

    def stats(self) -> dict[str, Any]:
        """Per-module entries and totals per state, JSON-ready."""
        modules = {name: entry.as_dict() for name, entry in list(self._entries.items())}
        totals = dict.fromkeys(_STATES, 0)
        for entry in modules.values():
            totals[entry["state"]] += 1
        return {"modules": modules, **totals}

    # -- unloading

    def unload(self, name: str) -> dict[str, Any]:
        """Try to unload ``name``'s package; what happened, measured (see the module doc)."""
        entry = self._entries[name]
        with self._unload_lock, entry.lock:
            return self._unload(entry)

    def unload_idle(self, older_than_s: float) -> list[dict[str, Any]]:
        """Unload the loaded modules unused for ``older_than_s``; never raises.

        After the load a read through the proxy costs nothing extra, so use is noticed by
        watching: each call disarms the proxies of loaded modules, and the next read through
        one re-arms it and counts as a use. A module is idle when it stayed unread through a
        whole ``older_than_s`` since it was last used (a module is thus never unloaded by the
        first call). Only modules in state ``loaded`` are tried.
        """
        results = []
        now = self.clock()
        for entry in list(self._entries.values()):
            try:
                if entry.state != "loaded" or entry.module is None:
                    continue
                # Watched (disarmed) since then and not read since: no use for that long.
                idle = entry.watched and now - entry.watched_since >= older_than_s
                if idle:
                    results.append(self.unload(entry.name))
                else:
                    self._watch(entry)
            except Exception as error:
                log.warning("[LAZY] unloading %s failed", entry.name, exc_info=True)
                results.append({"module": entry.name, "unloaded": False, "error": repr(error)})
        return results

    def _watch(self, entry: _Entry) -> None:
        with entry.lock:
            if entry.module is not None and not entry.watched:
                entry.watched = True
                entry.watched_since = self.clock()
                _disarm(entry.proxy)

    def _unload(self, entry: _Entry) -> dict[str, Any]:
        result: dict[str, Any] = {"module": entry.name, "unloaded": False}
        if entry.module is None:
            result.update(state=entry.state, reason=f"not loaded ({entry.state})")
            return result
        if entry.final:
            result.update(state=entry.state, reason=entry.reason, holders=entry.holders)
            return result
        refusal = self._refusal(entry)
        if refusal is not None:
            entry.state, entry.reason, entry.final = "refused", refusal, True
            result.update(state="refused", reason=refusal)
            log.info("[LAZY] not unloading %s: %s", entry.name, refusal)
            return result

        names = _package_modules(entry.name)
        modules = [sys.modules[name] for name in names]
        owned = _owned_objects(modules)
        holders = _outside_holders(modules, owned, entry)
        if holders:
            entry.state, entry.holders = "pinned", holders
            entry.reason = "held from outside the package"
            result.update(state="pinned", reason=entry.reason, holders=holders)
            log.info("[LAZY] not unloading %s: held by %s", entry.name, ", ".join(holders))
            return result

        started = time.perf_counter()
        probes = [weakref.ref(obj) for obj in owned if isinstance(obj, (type, types.FunctionType))]
        module_refs = {
            name: weakref.ref(module) for name, module in zip(names, modules, strict=True)
        }
        del owned, modules
        gc.collect()
        rss_before = _rss()
        traced_before = traced_bytes()

        parent_name, _, child = entry.name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None and getattr(parent, child, None) is sys.modules[entry.name]:
            delattr(parent, child)
        for name in names:
            sys.modules.pop(name, None)
        entry.module = None
        entry.watched = False
        _disarm(entry.proxy)
        importlib.invalidate_caches()
        for _ in range(3):
            if not gc.collect():
                break

        survivors = [probe() for probe in probes if probe() is not None]
        if survivors:
            holders = [_describe_survivor(obj) for obj in survivors[:5]]
            self._restore(entry, module_refs, survivors)
            del survivors
            entry.state, entry.holders, entry.final = "pinned", holders, True
            entry.reason = "objects survived the unload (held where the collector cannot see)"
            result.update(state="pinned", reason=entry.reason, holders=holders)
            log.warning("[LAZY] %s is pinned for good: %s", entry.name, ", ".join(holders))
            return result

        rss_after = _rss()
        traced_after = traced_bytes()
        entry.state, entry.reason, entry.holders = "unloaded", None, []
        entry.unloads += 1
        entry.last_unload = {
            "at": time.time(),
            "modules": len(names),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "freed_rss_bytes": max(rss_before - rss_after, 0),
            "freed_traced_bytes": (
                None
                if traced_before is None or traced_after is None
                else max(traced_before - traced_after, 0)
            ),
        }
        result.update(state="unloaded", unloaded=True, **entry.last_unload)
        log.info("[LAZY] unloaded %s: %s", entry.name, entry.last_unload)
        return result

    def _refusal(self, entry: _Entry) -> str | None:
        """Why ``entry`` may never be unloaded, or ``None``."""
        top = entry.name.partition(".")[0]
        if top in _NEVER_UNLOAD or top in sys.builtin_module_names:
            return "a registry or server module other code keeps state in"
        if entry.preexisting:
            return "imported before the registry: others may hold it"
        for name in _package_modules(entry.name):
            if _is_extension(sys.modules.get(name)):
                return f"contains the C extension {name}; CPython cannot unload it"
        stdlib = sys.stdlib_module_names
        for name in entry.new_modules:
            if name.partition(".")[0] not in stdlib and _is_extension(sys.modules.get(name)):
                return f"pulled in the C extension {name}; CPython cannot unload it"
        return None

    def _restore(
        self, entry: _Entry, module_refs: dict[str, weakref.ref[Any]], survivors: list[Any]
    ) -> None:
        """Put a pinned package back, so a later import finds it, not a second copy."""
        for name, ref in module_refs.items():
            module = ref()
            if module is not None:
                sys.modules.setdefault(name, module)
        for name in module_refs:
            if name not in sys.modules:
                # The module object died but its functions live on (their globals with them):
                # a stand-in with the same objects, so no second copy is ever imported.
                stand_in = _stand_in(name, survivors)
                if stand_in is not None:
                    sys.modules[name] = stand_in
        module = sys.modules.get(entry.name)
        if module is not None:
            entry.module = module
            _arm(entry.proxy, module)


# -- helpers


def _rss() -> int:
    try:
        return int(psutil.Process().memory_info().rss)
    except Exception:  # a sandbox without /proc: the RSS figures read 0, said as such
        return 0


def _is_extension(module: object) -> bool:
    if not isinstance(module, types.ModuleType):
        return False
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(module, "__file__", None) or ""
    return isinstance(origin, str) and origin.endswith(_EXTENSION_SUFFIXES)


def _package_modules(name: str) -> list[str]:
    prefix = name + "."
    return [key for key in list(sys.modules) if key == name or key.startswith(prefix)]


def _owned_objects(modules: list[types.ModuleType]) -> list[Any]:
    """Everything reachable from the package's modules that dies with them.

    The walk stops at other modules and at functions and classes defined elsewhere.
    """
    module_names = {module.__name__ for module in modules}
    module_ids = {id(module) for module in modules}
    foreign_dicts = {
        id(vars(module))
        for module in list(sys.modules.values())
        if isinstance(module, types.ModuleType) and id(module) not in module_ids
    }
    seen: set[int] = set()
    owned: list[Any] = []
    stack: list[Any] = [*modules]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        if isinstance(obj, types.ModuleType):
            if id(obj) not in module_ids:
                continue
        elif isinstance(obj, (type, types.FunctionType)):
            if getattr(obj, "__module__", None) not in module_names:
                continue
        elif isinstance(obj, dict):
            if id(obj) in foreign_dicts:
                continue
        elif (
            not isinstance(
                obj,
                (
                    list,
                    tuple,
                    set,
                    frozenset,
                    types.CellType,
                    types.MethodType,
                    property,
                    staticmethod,
                    classmethod,
                    types.GetSetDescriptorType,
                    types.MemberDescriptorType,
                ),
            )
            and type(obj).__module__ not in module_names
        ):
            continue  # an instance of a class from elsewhere: not walked into
        seen.add(id(obj))
        owned.append(obj)
        if gc.is_tracked(obj) or isinstance(obj, types.ModuleType):
            stack.extend(gc.get_referents(obj))
    return owned


def _outside_holders(modules: list[types.ModuleType], owned: list[Any], entry: _Entry) -> list[str]:
    """Who outside the package holds its modules, functions or classes (described)."""
    inside = {id(obj) for obj in owned}
    inside.update((id(sys.modules), id(entry), id(vars(entry)), id(owned), id(modules)))
    this_file = __file__
    module_of_dict = {
        id(vars(module)): name
        for name, module in list(sys.modules.items())
        if isinstance(module, types.ModuleType)
    }
    targets = [
        obj for obj in owned if isinstance(obj, (types.ModuleType, type, types.FunctionType))
    ]
    inside.add(id(targets))
    holders: list[str] = []
    for target in targets:
        for referrer in gc.get_referrers(target):
            if id(referrer) in inside:
                continue
            if isinstance(referrer, types.FrameType) and referrer.f_code.co_filename == this_file:
                continue
            description = _describe_holder(referrer, target, module_of_dict)
            if description not in holders:
                holders.append(description)
            if len(holders) >= 10:
                return holders
    return holders


def _name_of(target: Any) -> str:
    if isinstance(target, types.ModuleType):
        return f"module {target.__name__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _describe_holder(referrer: Any, target: Any, module_of_dict: dict[int, str]) -> str:
    held = _name_of(target)
    if isinstance(referrer, dict):
        module = module_of_dict.get(id(referrer))
        if module is not None:
            keys = [key for key, value in referrer.items() if value is target][:1]
            where = f"{module}.{keys[0]}" if keys else module
            return f"{held} held by module {module} (as {where})"
        return f"{held} held by a dict"
    if isinstance(referrer, types.FrameType):
        code = referrer.f_code
        return f"{held} held by a running frame of {code.co_name} ({code.co_filename})"
    if isinstance(referrer, types.FunctionType):
        return f"{held} held by function {referrer.__module__}.{referrer.__qualname__}"
    kind = type(referrer)
    return f"{held} held by a {kind.__module__}.{kind.__qualname__} object"


def _describe_survivor(obj: Any) -> str:
    # The collector's view of who holds it; a holder it cannot see is named as such.
    own_globals = getattr(obj, "__globals__", None)
    visible = [
        type(ref).__qualname__
        for ref in gc.get_referrers(obj)
        if ref is not own_globals and not isinstance(ref, (list, types.FrameType))
    ]
    where = ", ".join(sorted(set(visible))) if visible else "a holder the collector cannot see"
    return f"{_name_of(obj)} survived (held by {where}; refcount {sys.getrefcount(obj) - 2})"


def _stand_in(name: str, survivors: list[Any]) -> types.ModuleType | None:
    for obj in survivors:
        functions = [obj] if isinstance(obj, types.FunctionType) else []
        if isinstance(obj, type):
            functions = [f for f in vars(obj).values() if isinstance(f, types.FunctionType)]
        for function in functions:
            if function.__globals__.get("__name__") == name:
                module = types.ModuleType(name)
                vars(module).update(function.__globals__)
                return module
    return None
