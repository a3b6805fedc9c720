"""Attribute reads through a loaded ``LazyModules`` proxy against a plain module.

Once loaded, the proxy's ``__dict__`` is the module's own, so a read is an instance-dict
lookup; this prints what that costs next to ``module.attr`` on the real module, side by side
in one run (medians of interleaved rounds, see ``_timing``).

    python benchmarks/lazy_proxy.py [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import interleaved, round_ratios

from wsgi_memopt.lazy import LazyModules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import colorsys  # a small stdlib module: its attribute is what is read

    modules = LazyModules()
    proxy = modules.register("colorsys")
    proxy.rgb_to_hls  # noqa: B018 (the first read loads it)
    assert modules.get("colorsys") is colorsys

    def reads(target: object) -> Callable[[int], Callable[[], object]]:
        def prepare(n: int) -> Callable[[], object]:
            loops = range(n // 10)

            def run() -> None:
                module = target
                for _ in loops:  # ten reads per turn: the loop's own cost is shared
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018
                    module.rgb_to_hls  # type: ignore[attr-defined]  # noqa: B018

            return run

        return prepare

    samples = interleaved({"module": reads(colorsys), "proxy": reads(proxy)}, rounds=args.rounds)
    direct_ns = statistics.median(samples["module"]) * 1e3
    proxy_ns = statistics.median(samples["proxy"]) * 1e3
    ratio = statistics.median(round_ratios(samples["proxy"], samples["module"]))
    result = {
        "module_attr_ns": round(direct_ns, 2),
        "proxy_attr_ns": round(proxy_ns, 2),
        "proxy_vs_module": round(ratio, 2),
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"plain module attribute : {direct_ns:6.2f} ns per read")
    print(f"loaded proxy attribute : {proxy_ns:6.2f} ns per read")
    print(f"proxy / module (median of per-round ratios): {ratio:.2f}x")


if __name__ == "__main__":
    main()
