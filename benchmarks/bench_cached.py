"""Cached ``fetch_experience(...).result()``: the in-process cost of an experience-cache hit.

Issue 5 target: median under 20 us. The stub server (``_stub_server.py``, another process on
127.0.0.1) answers the first fetch; every measured call after it is a cache hit that completes
its Future on the calling thread, so the figure is the SDK's own cost: argument checks, the cache
look-up and building the result. Reports median and p99 in microseconds over many calls.

    python benchmarks/bench_cached.py [--calls 50000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from _common import StubServer, median, percentile

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with StubServer() as server:
        config = PersonalizeConfig(cache_ttl=3600)
        with MoEngagePersonalize(
            "bench-workspace", api_key="bench-key", base_url=f"{server.base}/v1", config=config
        ) as client:

            def call() -> object:
                return client.fetch_experience(
                    "homepage-banner", attributes={"current_page": "home"}, user="user_8821"
                ).result(5)

            call()  # the miss that fills the cache
            for _ in range(1000):
                call()
            samples: list[int] = []
            for _ in range(args.calls):
                start = time.perf_counter_ns()
                call()
                samples.append(time.perf_counter_ns() - start)
            stats = client.stats()
    samples.sort()
    result = {
        "python": platform.python_version(),
        "calls": args.calls,
        "median_us": median(samples) / 1000,
        "p99_us": percentile(samples, 99) / 1000,
        "cache_hits": stats.cache_hits,
        "cache_misses": stats.cache_misses,
        "target_median_us": 20.0,
    }
    print(f"Python {sys.version.split()[0]}; {args.calls} cached calls")
    print(
        f"cached fetch_experience().result(): median {result['median_us']:.1f} us, "
        f"p99 {result['p99_us']:.1f} us (target: median < 20 us -> "
        f"{'MET' if result['median_us'] < 20 else 'NOT MET'})"
    )
    print(f"cache hits {stats.cache_hits}, misses {stats.cache_misses}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
