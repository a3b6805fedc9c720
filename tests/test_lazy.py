"""``wsgi_memopt.lazy``: deferred, thread-safe imports and honest unloading.

Every test that imports or unloads runs its scenario in a fresh interpreter, so this process's
``sys.modules`` stays as it was. The scenario prints one JSON line that the test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.needs import require_module

from wsgi_memopt.lazy import DEFAULT_PRIORITIES, LazyModules

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lazy_pkg"


def run(code: str, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter with the fixtures importable; its JSON result."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_MEMOPT_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(FIXTURES), environ.get("PYTHONPATH")])
    )
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def require_numpy() -> None:
    """Skip without numpy, but fail under CI, whose test extra installs it."""
    require_module("numpy")


# -- loading


def test_register_imports_nothing_and_first_access_imports_once(tmp_path: Path) -> None:
    counter = tmp_path / "imports"
    result = run(
        """
        import json, sys
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        pkg = modules.register("lazy_fixture", priority=5)
        before = "lazy_fixture" in sys.modules
        state = modules.stats()["modules"]["lazy_fixture"]["state"]
        values = [pkg.f(1), pkg.READY, pkg.shout("a"), pkg.Thing().size()]
        same = modules.get("lazy_fixture") is sys.modules["lazy_fixture"]
        stats = modules.stats()
        print(json.dumps({"before": before, "state": state, "values": values, "same": same,
                          "stats": stats}))
        """,
        LAZY_PKG_IMPORTS_FILE=str(counter),
    )
    assert result["before"] is False
    assert result["state"] == "registered"
    assert counter.read_text().count("imported") == 1
    assert result["values"] == [4001, True, "A!", 2000]
    assert result["same"] is True
    entry = result["stats"]["modules"]["lazy_fixture"]
    assert entry["state"] == "loaded"
    assert entry["loads"] == 1
    assert entry["import_ms"] > 0
    assert entry["last_used"] is not None
    assert result["stats"]["loaded"] == 1


def test_sixteen_threads_see_one_complete_import(tmp_path: Path) -> None:
    counter = tmp_path / "imports"
    result = run(
        """
        import json, threading
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        pkg = modules.register("lazy_fixture")
        barrier = threading.Barrier(16)
        seen, errors = [], []
        def touch():
            barrier.wait()
            try:
                seen.append((pkg.READY, len(pkg.TABLE), pkg.f(0)))
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=touch) for _ in range(16)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        print(json.dumps({"seen": seen, "errors": errors}))
        """,
        LAZY_PKG_IMPORTS_FILE=str(counter),
        LAZY_PKG_SLEEP_S="0.3",
    )
    assert result["errors"] == []
    assert result["seen"] == [[True, 4000, 4000]] * 16
    assert counter.read_text().count("imported") == 1


def test_a_missing_module_fails_at_first_use_with_its_import_error() -> None:
    modules = LazyModules()
    proxy = modules.register("wsgi_memopt_no_such_module", priority=1)  # imports nothing
    with pytest.raises(ModuleNotFoundError, match="wsgi_memopt_no_such_module"):
        proxy.anything  # noqa: B018
    entry = modules.stats()["modules"]["wsgi_memopt_no_such_module"]
    assert entry["state"] == "registered"
    assert "ModuleNotFoundError" in entry["error"]


@pytest.mark.parametrize(
    "how", [pytest.param({"eager": True}, id="keyword"), pytest.param({}, id="env")]
)
def test_eager_fails_at_register(how: dict[str, bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_MEMOPT_LAZY_EAGER", "1")
    with pytest.raises(ModuleNotFoundError):
        LazyModules(**how).register("wsgi_memopt_no_such_module")


def test_priority_must_be_0_to_10() -> None:
    with pytest.raises(ValueError, match=r"0\.\.10"):
        LazyModules().register("json", priority=11)


def test_preload_imports_highest_priority_first() -> None:
    result = run(
        """
        import json, sys
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        order = []
        sys.meta_path.insert(0, type("Spy", (), {"find_spec": staticmethod(
            lambda name, path=None, target=None: order.append(name) if name.startswith(
                ("lazy_", "colorsys", "wsgi_memopt_no")) else None)})())
        modules.register("colorsys", priority=1)
        modules.register("lazy_fixture", priority=9)
        modules.register("lazy_signal_pkg", priority=4)
        modules.register("wsgi_memopt_no_such", priority=8)
        loaded = modules.preload(min_priority=2)
        stats = modules.stats()["modules"]
        print(json.dumps({"loaded": loaded, "order": [n for n in order if "." not in n],
                          "colorsys": stats["colorsys"]["state"],
                          "missing": stats["wsgi_memopt_no_such"]["error"]}))
        """
    )
    assert result["loaded"] == ["lazy_fixture", "lazy_signal_pkg"]
    assert result["order"] == ["lazy_fixture", "wsgi_memopt_no_such", "lazy_signal_pkg"]
    assert result["colorsys"] == "registered"
    assert "ModuleNotFoundError" in result["missing"]


def test_register_defaults_skips_what_is_not_installed() -> None:
    result = run(
        """
        import json, importlib.util, sys
        from wsgi_memopt.lazy import LazyModules, DEFAULT_PRIORITIES
        modules = LazyModules()
        proxies = modules.register_defaults()
        installed = [n for n in DEFAULT_PRIORITIES if importlib.util.find_spec(n)]
        stats = modules.stats()["modules"]
        print(json.dumps({"registered": sorted(proxies), "installed": sorted(installed),
                          "priorities": {n: e["priority"] for n, e in stats.items()},
                          "imported": [n for n in DEFAULT_PRIORITIES if n in sys.modules]}))
        """
    )
    assert result["registered"] == result["installed"]
    assert result["imported"] == []
    assert all(DEFAULT_PRIORITIES[n] == p for n, p in result["priorities"].items())


# -- unloading


def test_numpy_is_refused_and_keeps_working() -> None:
    require_numpy()
    result = run(
        """
        import json, importlib
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        np = modules.register("numpy", priority=7)
        total = int(np.arange(10).sum())
        outcome = modules.unload("numpy")
        idle = modules.unload_idle(0) + modules.unload_idle(0)
        again = importlib.import_module("numpy")
        print(json.dumps({"total": total, "outcome": outcome, "idle": idle,
                          "same": again is modules.get("numpy"),
                          "after": int(np.ones(4).sum() + again.zeros(2).size),
                          "state": modules.stats()["modules"]["numpy"]["state"]}))
        """
    )
    assert result["total"] == 45
    assert result["outcome"]["unloaded"] is False
    assert result["outcome"]["state"] == "refused"
    assert "C extension" in result["outcome"]["reason"]
    assert result["idle"] == []  # refused modules are not tried again
    assert result["same"] is True
    assert result["after"] == 6
    assert result["state"] == "refused"


def test_modules_imported_before_the_registry_and_registries_are_refused() -> None:
    result = run(
        """
        import json, colorsys, logging
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        modules.register("colorsys").rgb_to_hsv
        modules.register("logging").getLogger
        modules.register("wsgi_memopt.settings").Settings
        print(json.dumps([modules.unload(n)["reason"]
                          for n in ("colorsys", "logging", "wsgi_memopt.settings")]))
        """
    )
    assert "before the registry" in result[0]
    assert "registry or server" in result[1]
    assert "registry or server" in result[2]


def test_five_unload_cycles_free_the_package() -> None:
    result = run(
        """
        import gc, json, sys, tracemalloc, weakref
        tracemalloc.start()
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        pkg = modules.register("lazy_fixture")
        cycles = []
        for _ in range(5):
            probes = [weakref.ref(o) for o in (pkg.f, pkg.Thing, pkg.Widget, pkg.shout,
                                               modules.get("lazy_fixture"), pkg.helpers)]
            assert pkg.Thing().size() == 2000
            outcome = modules.unload("lazy_fixture")
            gc.collect()
            cycles.append({"outcome": outcome,
                           "imported": modules.stats()["modules"]["lazy_fixture"][
                               "import_traced_bytes"],
                           "alive": sum(p() is not None for p in probes),
                           "left": [n for n in sys.modules if n.startswith("lazy_fixture")],
                           "traced": tracemalloc.get_traced_memory()[0]})
        print(json.dumps(cycles))
        """
    )
    for number, cycle in enumerate(result, 1):
        assert cycle["outcome"]["unloaded"] is True, cycle["outcome"]
        assert cycle["alive"] == 0
        assert cycle["left"] == []
        freed, imported = cycle["outcome"]["freed_traced_bytes"], cycle["imported"]
        print(f"cycle {number}: import traced {imported} B, freed {freed} B")
        if number >= 2:
            assert freed >= 0.9 * imported
    assert imported > 200_000  # a few hundred KB: the measurement means something
    growth = result[-1]["traced"] - result[1]["traced"]
    assert growth < 0.05 * imported, f"traced memory grew {growth} B over cycles 2-5"


def test_a_held_function_pins_the_package_and_names_the_holder() -> None:
    result = run(
        """
        import json, importlib, sys, types
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        pkg = modules.register("lazy_fixture")
        consumer = types.ModuleType("consumer")
        sys.modules["consumer"] = consumer
        exec("from lazy_fixture import f", vars(consumer))
        original = modules.get("lazy_fixture")
        outcome = modules.unload("lazy_fixture")
        print(json.dumps({"outcome": outcome,
                          "same": importlib.import_module("lazy_fixture") is original,
                          "works": pkg.f(0) + consumer.f(0),
                          "pinned": modules.stats()["pinned"]}))
        """
    )
    outcome = result["outcome"]
    assert outcome["unloaded"] is False
    assert outcome["state"] == "pinned"
    assert any("consumer" in holder and "lazy_fixture.f" in holder for holder in outcome["holders"])
    assert result["same"] is True
    assert result["works"] == 8000
    assert result["pinned"] == 1


def test_decimal_holding_an_instance_pins_the_module() -> None:
    result = run(
        """
        import json, decimal, importlib
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        proxy = modules.register("lazy_decimal_pkg")
        cls = proxy.Context
        del cls
        outcome = modules.unload("lazy_decimal_pkg")
        print(json.dumps({"outcome": outcome,
                          "same": type(decimal.getcontext())
                                  is importlib.import_module("lazy_decimal_pkg").Context}))
        """
    )
    assert result["outcome"]["unloaded"] is False
    assert result["outcome"]["state"] == "pinned"
    assert "freed_traced_bytes" not in result["outcome"]
    assert result["same"] is True


def test_a_function_held_from_c_is_caught_after_the_unload() -> None:
    result = run(
        """
        import json, importlib, signal
        from wsgi_memopt.lazy import LazyModules
        modules = LazyModules()
        proxy = modules.register("lazy_signal_pkg")
        proxy.handler
        outcome = modules.unload("lazy_signal_pkg")
        again = modules.unload("lazy_signal_pkg")
        print(json.dumps({"outcome": outcome, "again": again,
                          "same": signal.getsignal(signal.SIGUSR1)
                                  is importlib.import_module("lazy_signal_pkg").handler,
                          "proxy": signal.getsignal(signal.SIGUSR1) is proxy.handler,
                          "state": modules.stats()["modules"]["lazy_signal_pkg"]["state"]}))
        """
    )
    outcome = result["outcome"]
    assert outcome["unloaded"] is False
    assert outcome["state"] == "pinned"
    assert "survived" in outcome["reason"]
    assert any("lazy_signal_pkg.handler" in holder for holder in outcome["holders"])
    assert "freed_traced_bytes" not in outcome
    assert result["again"]["unloaded"] is False  # pinned for good: not tried again
    assert result["same"] is True  # no second copy of the module after the failed unload
    assert result["proxy"] is True
    assert result["state"] == "pinned"


def test_unload_idle_waits_a_whole_window_without_use() -> None:
    result = run(
        """
        import json
        from wsgi_memopt.lazy import LazyModules
        now = [0.0]
        modules = LazyModules(clock=lambda: now[0])
        pkg = modules.register("lazy_fixture")
        pkg.READY
        rounds = [modules.unload_idle(60)]          # starts watching: nothing unloaded
        now[0] = 100.0
        pkg.READY                                   # a use while watched
        rounds.append(modules.unload_idle(60))      # used within the window: kept
        now[0] = 130.0
        rounds.append(modules.unload_idle(60))      # watched since 100: 30 s only
        now[0] = 161.0
        rounds.append(modules.unload_idle(60))      # 61 s without use: unloaded
        state = modules.stats()["modules"]["lazy_fixture"]["state"]
        value = pkg.f(1)                            # the proxy imports it again
        print(json.dumps({"rounds": rounds, "state": state, "value": value,
                          "after": modules.stats()["modules"]["lazy_fixture"]["loads"]}))
        """
    )
    rounds = result["rounds"]
    assert rounds[:3] == [[], [], []]
    assert [r["module"] for r in rounds[3]] == ["lazy_fixture"]
    assert rounds[3][0]["unloaded"] is True
    assert result["state"] == "unloaded"
    assert result["value"] == 4001
    assert result["after"] == 2


def test_unload_idle_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = LazyModules()
    assert modules.register("json").dumps  # json is already imported here: refused, nothing touched
    modules.unload_idle(0)

    def broken(name: str) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(modules, "unload", broken)
    results = modules.unload_idle(0)
    assert results == [{"module": "json", "unloaded": False, "error": "RuntimeError('boom')"}]


def test_stats_are_json_ready_with_totals() -> None:
    modules = LazyModules()
    assert modules.register("json", priority=3).dumps
    modules.register("wsgi_memopt_no_such_module")
    stats = json.loads(json.dumps(modules.stats()))
    assert stats["loaded"] == 1
    assert stats["registered"] == 1
    assert stats["unloaded"] == stats["pinned"] == stats["refused"] == 0
    assert stats["modules"]["json"]["priority"] == 3


def test_proxy_of_a_module_with_its_own_getattr_resolves_its_names() -> None:
    result = run(
        """
        import json
        from wsgi_memopt.lazy import LazyModule, LazyModules
        modules = LazyModules()
        futures = modules.register("concurrent.futures")  # its __getattr__ loads the pools
        fast = modules.register("lazy_fixture")
        fast.READY
        print(json.dumps({"pool": futures.ProcessPoolExecutor.__name__,
                          "proxies": isinstance(futures, LazyModule)
                                     and isinstance(fast, LazyModule),
                          "rebound": (setattr(modules.get("lazy_fixture"), "READY", 7),
                                      fast.READY)[1]}))
        """
    )
    assert result == {"pool": "ProcessPoolExecutor", "proxies": True, "rebound": 7}


def test_the_governors_emergency_unloads_idle_lazy_modules() -> None:
    result = run(
        """
        import json
        from wsgi_memopt import MemoryOptimizer
        from wsgi_memopt.lazy import LazyModules
        now = [0.0]
        modules = LazyModules(clock=lambda: now[0])
        pkg = modules.register("lazy_fixture")
        pkg.READY

        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", "0")])
            return []

        optimizer = MemoryOptimizer(app, lazy=modules, monitor_interval_s=0, gc_freeze=False)
        first = optimizer.governor.emergency()["actions"]["modules"]   # starts watching
        now[0] = 1000.0                                                # idle past 300 s
        second = optimizer.governor.emergency()["actions"]["modules"]
        print(json.dumps({"first": first, "second": second, "same": optimizer.lazy is modules,
                          "state": modules.stats()["modules"]["lazy_fixture"]["state"]}))
        """
    )
    assert result["same"] is True
    assert result["first"] == []
    assert [entry["module"] for entry in result["second"]] == ["lazy_fixture"]
    assert result["state"] == "unloaded"
