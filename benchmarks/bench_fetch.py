"""Benchmark: ``fetch_experience(...).result()`` against a naive ``requests`` call and bare urllib3.

The three contenders send the same request (same JSON body, same auth headers) to the same stub
server, which runs in a subprocess bound to 127.0.0.1 on an ephemeral port (``_stub_server.py``):

* ``requests`` -- one ``requests.Session()`` with default settings, reused:
  ``session.post(url, json=body, headers=...).json()``. The baseline (ratio 1.00).
* ``urllib3``  -- one bare ``urllib3.PoolManager()``:
  ``json.loads(pool.request("POST", url, body=json.dumps(body).encode(), headers=...).data)``.
* ``sdk``      -- ``MoEngagePersonalize(...).fetch_experience(...).result()`` with warm metadata
  (the Future, the worker thread, the deadline bookkeeping, retries wrapper, parsing, models).

Each contender is warmed up, then every round runs each once, in a new random order every round,
timed with ``time.perf_counter_ns``. Reported: median and p99 in microseconds, and each median as
a ratio of the ``requests`` median. Issue #2's target: ``sdk`` median <= 0.6 x ``requests``.

Run: ``python benchmarks/bench_fetch.py [--rounds 3000] [--warmup 300] [--json out.json]``.
The exit status is non-zero only on errors, never because the target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import requests
import urllib3
from _common import (
    StubServer,
    add_ratios,
    auth_headers,
    environment,
    latency_us,
    print_environment,
    run_interleaved,
    write_json,
)

from moengage_personalize import MoEngagePersonalize

APP_ID = "bench-workspace"
API_KEY = "bench-key"
KEY = "homepage-banner"
CUSTOMER_ID = "user_8821"
ATTRIBUTES = {"current_page": "home"}
EXPECTED_TITLE = "Free shipping on orders over 999"
TARGET_RATIO = 0.6
PEERS = {
    "PostHog remote flags": 1.17,
    "Flagsmith": 1.05,
    "Amplitude (http.client)": 0.41,
    "bare urllib3 (peer measurement)": 0.45,
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# the contenders ---------------------------------------------------------------------------------


def sdk_body(keys: list[str], attributes: dict[str, str], customer_id: str) -> dict[str, Any]:
    """The ``POST /experiences/fetch`` body the SDK sends: derived attributes, then the caller's."""
    now = dt.datetime.now(dt.timezone.utc)
    body: dict[str, Any] = {
        "identifiers": {"customer_id": customer_id},
        "experience_key": list(keys),
        "DAY_OF_THE_WEEK": _WEEKDAYS[now.weekday()],
        "TIME_OF_THE_DAY": f"{now.hour:02d}",
    }
    body.update(attributes)
    return body


def check_body_matches_sdk(body: dict[str, Any]) -> str:
    """Compare our hand-built body with the SDK's own builder (a private helper; best effort)."""
    try:
        from moengage_personalize._config import User
        from moengage_personalize._core import Core

        theirs = Core.fetch_body([KEY], ATTRIBUTES, User(customer_id=CUSTOMER_ID))
    except Exception as exc:  # the private helper moved: not an error of the benchmark
        return f"not checked ({type(exc).__name__}: {exc})"
    if theirs != body:
        raise RuntimeError(f"the baseline body {body!r} differs from the SDK's {theirs!r}")
    return "identical to the SDK's"


class Contenders:
    """The three ways of making the call, all against ``base``; ``close()`` releases them."""

    def __init__(self, base: str) -> None:
        self.fetch_url = f"{base}/v1/experiences/fetch"
        self.body = sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID)
        self.headers = auth_headers(APP_ID, API_KEY)
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.session = requests.Session()
        self.pool = urllib3.PoolManager()
        self.client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=f"{base}/v1")
        try:  # warm the metadata cache: the benchmark measures fetches with warm metadata
            meta = self.client.fetch_experiences_meta().result(timeout=5)
            if not any(m.experience_key == KEY for m in meta.experiences):
                raise RuntimeError(f"the metadata does not list {KEY!r}: {meta!r}")
        except BaseException:
            self.close()
            raise

    def requests_call(self) -> Any:
        return self.session.post(self.fetch_url, json=self.body, headers=self.headers).json()

    def urllib3_call(self) -> Any:
        data = json.dumps(self.body).encode()
        resp = self.pool.request("POST", self.fetch_url, body=data, headers=self.json_headers)
        return json.loads(resp.data)

    def sdk_call(self) -> Any:
        return self.client.fetch_experience(KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID).result(
            timeout=5
        )

    def all(self) -> dict[str, Callable[[], Any]]:
        return {
            "requests": self.requests_call,
            "urllib3": self.urllib3_call,
            "sdk": self.sdk_call,
        }

    def verify(self) -> None:
        """Each contender really got the experience (so nothing fast-fails into the numbers)."""
        for name in ("requests", "urllib3"):
            answer = self.all()[name]()
            title = answer["experiences"][KEY]["payload"]["Title"]["value"]
            if title != EXPECTED_TITLE:
                raise RuntimeError(f"{name}: unexpected answer {answer!r}")
        result = self.sdk_call()
        campaign = result.get(KEY)
        if campaign is None or campaign.payload.get("Title") != EXPECTED_TITLE:
            raise RuntimeError(f"sdk: unexpected result {result!r}")

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.session.close()
            self.pool.clear()


# measuring --------------------------------------------------------------------------------------


def summarize(samples: dict[str, list[int]], baseline: str) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ordered = sorted(values)
        stats[name] = {
            **latency_us(ordered),
            "min_us": ordered[0] / 1000,
            "mean_us": sum(ordered) / len(ordered) / 1000,
        }
    return add_ratios(stats, baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="measured rounds (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up calls per contender")
    parser.add_argument("--experiences", type=int, default=20, help="metadata list size")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")

    env = environment()
    print_environment(env)
    started = time.perf_counter()
    with StubServer(experiences=args.experiences) as server:
        contenders = Contenders(server.base)
        try:
            body_check = check_body_matches_sdk(contenders.body)
            contenders.verify()
            print(
                f"stub server pid {server.proc.pid} on {server.base}; body {body_check}; "
                f"{args.rounds} rounds after {args.warmup} warm-up calls each"
            )
            samples = run_interleaved(contenders.all(), args.rounds, args.warmup)
        finally:
            contenders.close()
    elapsed = time.perf_counter() - started

    stats = summarize(samples, baseline="requests")
    labels = {
        "requests": "(a) requests.Session().post().json()",
        "urllib3": "(b) urllib3.PoolManager().request()",
        "sdk": "sdk fetch_experience().result()",
    }
    print()
    print(f"{'contender':<40} {'median us':>10} {'p99 us':>10} {'ratio':>7}")
    for name in stats:
        s = stats[name]
        row = f"{s['median_us']:>10.1f} {s['p99_us']:>10.1f} {s['ratio']:>6.2f}x"
        print(f"{labels.get(name, name):<40} {row}")
    ratio = stats["sdk"]["ratio"]
    met = ratio <= TARGET_RATIO
    print()
    print(
        f"target: sdk median <= {TARGET_RATIO}x of (a): {ratio:.2f}x -> "
        f"{'MET' if met else 'NOT MET'}"
    )
    print("peers (median / (a)): " + ", ".join(f"{k} {v:.2f}x" for k, v in PEERS.items()))
    print(f"wall time {elapsed:.1f} s")

    if args.json:
        result = {
            "environment": env,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "baseline": "requests",
            "stats": stats,
            "target_ratio": TARGET_RATIO,
            "target_met": met,
            "peers": PEERS,
            "wall_time_s": elapsed,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
