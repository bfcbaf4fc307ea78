"""Benchmark: ``fetch_experience(...).result()`` against a naive ``requests`` call and bare urllib3.

The three contenders send the same request (same JSON body, same auth headers) to the same stub
server, which runs in a subprocess bound to 127.0.0.1 on an ephemeral port (``_stub_server.py``):

* ``requests`` -- one ``requests.Session()`` with default settings, reused:
  ``session.post(url, json=body, headers=...).json()``. The baseline (ratio 1.00).
* ``urllib3``  -- one bare ``urllib3.PoolManager()``:
  ``json.loads(pool.request("POST", url, body=json.dumps(body).encode(), headers=...).data)``.
* ``sdk``      -- ``MoEngagePersonalize(...).fetch_experience(...).result()`` with warm metadata
  (the Future, the worker thread, the deadline bookkeeping, retries wrapper, parsing, models).

Each contender is warmed up, then every round runs each once, in an order rotating per round,
timed with ``time.perf_counter_ns``. Reported: median and p99 in microseconds, and each median as
a ratio of the ``requests`` median. Issue #2's target: ``sdk`` median <= 0.6 x ``requests``.

Run: ``python benchmarks/bench_fetch.py [--rounds 3000] [--warmup 300] [--json out.json]``.
The exit status is non-zero only on errors, never because the target is missed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

import moengage_personalize
from moengage_personalize import MoEngagePersonalize

HERE = Path(__file__).resolve().parent
STUB_SERVER = HERE / "_stub_server.py"

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


# the stub server --------------------------------------------------------------------------------


class StubServer:
    """The stub server subprocess: started on an ephemeral loopback port, stopped on exit."""

    def __init__(self, experiences: int = 20, start_timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(STUB_SERVER), "--experiences", str(experiences)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            self.port = self._read_port(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"the stub server did not report its port within {timeout} s")
        line = self.proc.stdout.readline().decode("ascii", "replace").strip()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the stub server did not start (it printed {line!r})")
        return int(line.split()[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the server exits by itself when its stdin closes
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        elif proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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


def auth_headers() -> dict[str, str]:
    token = base64.b64encode(f"{APP_ID}:{API_KEY}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}", "MOE-APPKEY": APP_ID}


class Contenders:
    """The three ways of making the call, all against ``base``; ``close()`` releases them."""

    def __init__(self, base: str) -> None:
        self.fetch_url = f"{base}/v1/experiences/fetch"
        self.body = sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID)
        self.headers = auth_headers()
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


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of already sorted samples."""
    if not sorted_ns:
        raise ValueError("no samples")
    rank = max(1, -(-len(sorted_ns) * q // 100))  # ceil(n * q / 100)
    return float(sorted_ns[int(rank) - 1])


def median(sorted_ns: list[int]) -> float:
    n = len(sorted_ns)
    mid = n // 2
    return float(sorted_ns[mid]) if n % 2 else (sorted_ns[mid - 1] + sorted_ns[mid]) / 2


def run(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, list[int]]:
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    gc.collect()
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            start = clock()
            call()
            samples[name].append(clock() - start)
    return samples


def summarize(samples: dict[str, list[int]], baseline: str) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ordered = sorted(values)
        stats[name] = {
            "n": len(ordered),
            "median_us": median(ordered) / 1000,
            "p90_us": percentile(ordered, 90) / 1000,
            "p99_us": percentile(ordered, 99) / 1000,
            "min_us": ordered[0] / 1000,
            "mean_us": sum(ordered) / len(ordered) / 1000,
        }
    base = stats[baseline]["median_us"]
    for item in stats.values():
        item["ratio"] = item["median_us"] / base
    return stats


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.replace("\n", " "),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "moengage_personalize": moengage_personalize.__version__,
        "requests": requests.__version__,
        "urllib3": urllib3.__version__,
    }


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
    print(f"Python {env['python']}")
    print(
        f"{env['platform']}, {env['cpus']} CPUs; moengage-personalize "
        f"{env['moengage_personalize']}, requests {env['requests']}, urllib3 {env['urllib3']}"
    )
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
            samples = run(contenders.all(), args.rounds, args.warmup)
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
    for name in ("requests", "urllib3", "sdk"):
        s = stats[name]
        row = f"{s['median_us']:>10.1f} {s['p99_us']:>10.1f} {s['ratio']:>6.2f}x"
        print(f"{labels[name]:<40} {row}")
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
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
