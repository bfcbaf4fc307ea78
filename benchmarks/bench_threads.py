"""Benchmark: 16 threads fetching through one client vs naive ``requests``; memory in an outage.

Issue #5, the parts that need no experience cache:

* **throughput** -- ``--threads`` threads (default 16) call, for ``--duration`` seconds each
  (default 3), either ``client.fetch_experience(KEY, attributes=..., user=...).result()`` through
  ONE client (default config: its own worker pool and connection pool), or the naive way,
  ``session.post(url, json=body, headers=...).json()`` through ONE shared default
  ``requests.Session()`` (same body, same auth headers). Thread ``i`` always calls for its own
  user ``i`` (one the server serves), so no two calls in flight are identical and every SDK call
  is a real request (``req/call`` = 1.00, from ``stats()``). References, in the same rotation:
  bare ``urllib3.PoolManager(maxsize=threads)`` (``--no-reference`` skips it) and the SDK with
  every thread making the SAME call, which the client coalesces into shared requests
  (``--no-same-user`` skips it). The contenders alternate, in a rotating order, for ``--rounds``
  rounds. Reported per contender: calls/s, failures, per-thread call counts
  (min/max: no thread may starve), the CPU used by the server process and by this process.
  Issue #5 target: SDK throughput >= 2x the naive one, every thread completes calls.
  Against ``--server local`` (the project's own ``python -m moengage_personalize serve`` in a
  subprocess), ``--server stub`` (``_stub_server.py``, an asyncio stub with pre-built answers:
  shows the client side when the local server is the bottleneck) or ``both`` (default).
* **memory** -- ``--events`` ``experience_shown`` calls (default 1,000,000; stopped after
  ``--memory-seconds``) while the service is down (the client points at a closed loopback port;
  default queue of 10,000): ``VmRSS`` before/after (and the peak), ``stats()`` (events dropped
  because the queue was full), the calls' duration and how long ``close()`` then takes.
  Issue #5 target: memory stays within the queue bound.

Run: ``python benchmarks/bench_threads.py [--server both] [--duration 3] [--rounds 2]
[--json out.json]``. The exit status is non-zero only on errors, never because a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3
from _common import (
    StubServer,
    auth_headers,
    campaigns_for,
    environment,
    print_environment,
    write_json,
)
from _local_server import (
    LocalServer,
    closed_port,
    process_cpu_seconds,
    reset_peak_rss,
    status_kb,
)
from bench_fetch import sdk_body

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

KEY = "homepage-banner"
CUSTOMER_ID = "user_8821"
ATTRIBUTES = {"current_page": "home", "cart_value": "600"}  # the local server's High Intent rule
STUB_APP_ID = "bench-workspace"
STUB_API_KEY = "bench-key"
TARGET_RATIO = 2.0
PEERS = {
    "bare urllib3": 3.2,
    "Amplitude (16-connection pool)": 3.9,
    "PostHog": 0.94,
    "Flagsmith": 1.06,
}

# throughput -------------------------------------------------------------------------------------


class Contenders:
    """The SDK client and the naive shared session, both against ``base_url``."""

    def __init__(
        self, base_url: str, app_id: str, api_key: str, threads: int, max_workers: int | None
    ) -> None:
        self.url = f"{base_url}/experiences/fetch"
        self.headers = auth_headers(app_id, api_key)
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.session = requests.Session()
        self.pool = urllib3.PoolManager(maxsize=threads)
        config = PersonalizeConfig(max_workers=max_workers)
        self.client = MoEngagePersonalize(app_id, api_key=api_key, base_url=base_url, config=config)
        try:
            self.client.fetch_experiences_meta().result(timeout=10)  # warm metadata
            self.users = self._served_users(threads)
            self.bodies = [sdk_body([KEY], ATTRIBUTES, user) for user in self.users]
            self.verify()
        except BaseException:
            self.close()
            raise

    def _served_users(self, threads: int) -> list[str]:
        """One customer id per thread, each served ``KEY`` (not in a control group), so that no
        two threads ever make identical calls (the SDK would coalesce them)."""
        users: list[str] = []
        for n in range(50 * threads):
            user = f"bench-user-{n}"
            body = sdk_body([KEY], ATTRIBUTES, user)
            answer = self.session.post(self.url, json=body, headers=self.headers).json()
            if KEY in answer.get("experiences", {}):
                users.append(user)
                if len(users) == threads:
                    return users
        raise RuntimeError(f"the server serves {KEY!r} to too few users ({len(users)})")

    # each call takes the index of its thread: thread i always calls for user i

    def naive(self, i: int) -> Any:
        response = self.session.post(self.url, json=self.bodies[i], headers=self.headers)
        response.raise_for_status()
        return response.json()

    def urllib3(self, i: int) -> Any:
        data = json.dumps(self.bodies[i]).encode()
        resp = self.pool.request("POST", self.url, body=data, headers=self.json_headers)
        if resp.status != 200:
            raise RuntimeError(f"urllib3: HTTP {resp.status}")
        return json.loads(resp.data)

    def sdk(self, i: int) -> Any:
        future = self.client.fetch_experience(KEY, attributes=ATTRIBUTES, user=self.users[i])
        return future.result()

    def sdk_same(self, _i: int) -> Any:
        """Every thread the same call: identical calls in flight share one request."""
        future = self.client.fetch_experience(KEY, attributes=ATTRIBUTES, user=self.users[0])
        return future.result()

    def verify(self) -> None:
        for i in range(len(self.users)):
            if KEY not in self.naive(i).get("experiences", {}):
                raise RuntimeError(f"naive: {KEY!r} not served to {self.users[i]!r}")
            if self.sdk(i).get(KEY) is None:
                raise RuntimeError(f"sdk: {KEY!r} not served to {self.users[i]!r}")

    def all(self, reference: bool, same_user: bool) -> dict[str, Callable[[int], Any]]:
        calls = {"sdk": self.sdk, "naive": self.naive}
        if reference:
            calls["urllib3"] = self.urllib3
        if same_user:
            calls["sdk_same"] = self.sdk_same
        return calls

    def sdk_counters(self) -> tuple[int, int]:
        """(requests, coalesced) from ``stats()`` when the client counts them, else (-1, -1)."""
        stats = self.client.stats()
        return getattr(stats, "requests", -1), getattr(stats, "coalesced", -1)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.session.close()
            self.pool.clear()


def run_threads(
    call: Callable[[int], Any], threads: int, duration: float, server_pid: int
) -> dict[str, Any]:
    """``threads`` threads call ``call`` back to back until ``duration`` has passed."""
    counts = [0] * threads
    failures = [0] * threads
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)
    end = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        stop_at = end[0]
        clock = time.monotonic
        done = 0
        while clock() < stop_at:
            try:
                call(index)
            except Exception as exc:
                failures[index] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                done += 1
        counts[index] = done

    pool = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    cpu_server0 = process_cpu_seconds(server_pid)
    cpu_self0 = time.process_time()
    began = time.monotonic()
    end[0] = began + duration
    barrier.wait()
    for thread in pool:
        thread.join(duration + 60)
    elapsed = time.monotonic() - began
    if any(thread.is_alive() for thread in pool):
        raise RuntimeError("a benchmark thread did not stop")
    total = sum(counts)
    return {
        "calls": total,
        "seconds": elapsed,
        "calls_per_s": total / elapsed,
        "failures": sum(failures),
        "errors": errors,
        "per_thread": counts,
        "per_thread_min": min(counts),
        "per_thread_max": max(counts),
        "server_cpu_pct": 100 * (process_cpu_seconds(server_pid) - cpu_server0) / elapsed,
        "client_cpu_pct": 100 * (time.process_time() - cpu_self0) / elapsed,
    }


@contextmanager
def started_server(kind: str) -> Iterator[tuple[str, str, str, int]]:
    """(base_url, app_id, api_key, pid) of a running server of ``kind``; stopped at the end."""
    if kind == "local":
        with LocalServer() as local:
            yield local.base_url, local.workspace_id, local.api_key, local.pid
    else:
        with StubServer() as stub:
            yield f"{stub.base}/v1", STUB_APP_ID, STUB_API_KEY, stub.proc.pid


def throughput(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with started_server(kind) as (base_url, app_id, api_key, pid):
        contenders = Contenders(base_url, app_id, api_key, args.threads, args.max_workers)
        try:
            print(
                f"{kind} server pid {pid} on {base_url}: {args.threads} threads, "
                f"{args.duration:g} s per phase, {args.rounds} rounds"
            )
            calls = contenders.all(not args.no_reference, not args.no_same_user)
            names = list(calls)
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for r in range(args.rounds):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    counters0 = contenders.sdk_counters()
                    res = run_threads(calls[name], args.threads, args.duration, pid)
                    counters1 = contenders.sdk_counters()
                    res["sdk_requests"] = counters1[0] - counters0[0]
                    res["sdk_coalesced"] = counters1[1] - counters0[1]
                    results[name].append(res)
                    print(
                        f"  round {r + 1} {name:<7}: {res['calls_per_s']:8,.0f} calls/s, "
                        f"threads min/max {res['per_thread_min']}/{res['per_thread_max']}, "
                        f"failures {res['failures']}, server CPU {res['server_cpu_pct']:.0f}%, "
                        f"client CPU {res['client_cpu_pct']:.0f}%"
                        + (
                            f", SDK requests {res['sdk_requests']}, coalesced "
                            f"{res['sdk_coalesced']}"
                            if name.startswith("sdk")
                            else ""
                        )
                    )
        finally:
            contenders.close()
    summary: dict[str, Any] = {"server": kind, "phases": results}
    for name, phases in results.items():
        total_calls = sum(p["calls"] for p in phases)
        total_s = sum(p["seconds"] for p in phases)
        summary[name] = {
            "calls_per_s": total_calls / total_s,
            "failures": sum(p["failures"] for p in phases),
            "per_thread_min": min(p["per_thread_min"] for p in phases),
            "per_thread_max": max(p["per_thread_max"] for p in phases),
            "server_cpu_pct": sum(p["server_cpu_pct"] * p["seconds"] for p in phases) / total_s,
            "client_cpu_pct": sum(p["client_cpu_pct"] * p["seconds"] for p in phases) / total_s,
            "requests_per_call": (
                sum(p["sdk_requests"] for p in phases) / max(1, total_calls)
                if name.startswith("sdk") and all(p["sdk_requests"] >= 0 for p in phases)
                else None
            ),
        }
    for item in results:
        summary[item]["ratio"] = summary[item]["calls_per_s"] / summary["naive"]["calls_per_s"]
    summary["contenders"] = list(results)
    summary["ratio"] = summary["sdk"]["ratio"]
    summary["ratio_per_round"] = [
        s["calls_per_s"] / n["calls_per_s"]
        for s, n in zip(results["sdk"], results["naive"], strict=True)
    ]
    return summary


# memory -----------------------------------------------------------------------------------------


def memory(args: argparse.Namespace) -> dict[str, Any]:
    port = closed_port()
    client = MoEngagePersonalize(
        "bench-workspace", api_key="bench-key", base_url=f"http://127.0.0.1:{port}/v1"
    )
    campaigns = campaigns_for(100)
    try:
        client.experience_shown(campaigns[0])  # starts the dispatcher: not part of the growth
        time.sleep(0.05)
        gc.collect()
        rss0 = status_kb("VmRSS")
        peak_reset = reset_peak_rss()
        shown = client.experience_shown
        deadline = time.monotonic() + args.memory_seconds
        began = time.perf_counter()
        made = 0
        for start in range(0, args.events, 10_000):
            for i in range(start, min(start + 10_000, args.events)):
                shown(campaigns[i % 100])
            made = min(start + 10_000, args.events)
            if time.monotonic() > deadline:
                break
        calls_s = time.perf_counter() - began
        gc.collect()
        rss1 = status_kb("VmRSS")
        hwm = status_kb("VmHWM") if peak_reset else -1
        stats = client.stats()
    finally:
        closing = time.perf_counter()
        client.close(timeout=1.0)
        close_s = time.perf_counter() - closing
    after_close = client.stats()
    return {
        "calls": made,
        "calls_seconds": calls_s,
        "us_per_call": calls_s / made * 1e6,
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "rss_growth_kb": rss1 - rss0,
        "peak_rss_kb": hwm,
        "peak_growth_kb": hwm - rss0 if hwm >= 0 else None,
        "queue_size": client.config.event_queue_size,
        "stats": {
            "events_queued": stats.events_queued,
            "events_sent": stats.events_sent,
            "events_retried": stats.events_retried,
            "events_failed": stats.events_failed,
            "events_pending": stats.events_pending,
            "events_dropped": dict(stats.events_dropped),
        },
        "close_seconds": close_s,
        "dropped_after_close": dict(after_close.events_dropped),
        "pending_after_close": after_close.events_pending,
    }


# main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("local", "stub", "both"), default="both")
    parser.add_argument("--threads", type=int, default=16, help="caller threads (default 16)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (sdk, naive)")
    parser.add_argument(
        "--max-workers", type=int, default=None, help="the client's max_workers (default: its own)"
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the bare urllib3 reference contender"
    )
    parser.add_argument(
        "--no-same-user",
        action="store_true",
        help="skip the extra SDK contender where every thread makes the same call (coalesced)",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="memory: tracking calls")
    parser.add_argument(
        "--memory-seconds", type=float, default=30.0, help="memory: stop the calls after this"
    )
    parser.add_argument("--skip-memory", action="store_true", help="only the throughput part")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.duration <= 0 or args.events < 1:
        parser.error("--threads, --rounds, --events must be >= 1 and --duration > 0")
    # 16 threads on one default session (pool of 10) make urllib3 warn "Connection pool is
    # full, discarding connection" for every surplus connection: part of the naive way, not news.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    env = environment()
    print_environment(env)
    started = time.perf_counter()
    mem = None
    if not args.skip_memory:  # first: a fresh process, before the threads' allocations
        mem = memory(args)
    kinds = ["local", "stub"] if args.server == "both" else [args.server]
    summaries = [throughput(kind, args) for kind in kinds]
    elapsed = time.perf_counter() - started

    print()
    print(f"throughput, {args.threads} threads, {args.rounds} x {args.duration:g} s per contender")
    print(
        f"{'server':<6} {'contender':<36} {'calls/s':>9} {'ratio':>6} {'fail':>5} "
        f"{'thr min':>7} {'thr max':>7} {'srv CPU':>7} {'cli CPU':>7} {'req/call':>8}"
    )
    labels = {
        "sdk": "sdk fetch_experience().result()",
        "naive": "requests.Session().post().json()",
        "urllib3": "(ref) urllib3.PoolManager(maxsize=N)",
        "sdk_same": "(extra) sdk, all threads same call",
    }
    for summary in summaries:
        for name in summary["contenders"]:
            s = summary[name]
            ratio = s["ratio"]
            print(
                f"{summary['server']:<6} {labels[name]:<36} {s['calls_per_s']:>9,.0f} "
                f"{ratio:>5.2f}x {s['failures']:>5} {s['per_thread_min']:>7} "
                f"{s['per_thread_max']:>7} {s['server_cpu_pct']:>6.0f}% "
                f"{s['client_cpu_pct']:>6.0f}% "
                + (f"{s['requests_per_call']:>8.2f}" if s["requests_per_call"] is not None else "")
            )
    print(
        "(CPU: percent of one core over the phase; req/call: HTTP requests the SDK made per "
        "completed call, from stats())"
    )
    if mem is not None:
        print()
        print(
            f"memory: {mem['calls']:,} experience_shown calls with the service down "
            f"(closed port), queue {mem['queue_size']:,}"
        )
        peak = (
            f", peak +{mem['peak_growth_kb'] / 1024:.1f} MiB"
            if mem["peak_growth_kb"] is not None
            else ""
        )
        print(
            f"  RSS {mem['rss_before_kb'] / 1024:.1f} -> {mem['rss_after_kb'] / 1024:.1f} MiB "
            f"(+{mem['rss_growth_kb'] / 1024:.1f} MiB{peak}); calls took "
            f"{mem['calls_seconds']:.1f} s ({mem['us_per_call']:.2f} us each); close() "
            f"{mem['close_seconds']:.2f} s"
        )
        print(f"  stats(): {mem['stats']}")
        print(
            f"  after close(timeout=1): dropped {mem['dropped_after_close']}, pending "
            f"{mem['pending_after_close']}"
            + ("  <- negative: a counter bug" if mem["pending_after_close"] < 0 else "")
        )

    print()
    met: dict[str, bool] = {}
    for summary in summaries:
        ratio = summary["ratio"]
        starving = min(summary[n]["per_thread_min"] for n in ("sdk", "naive"))
        met[f"ratio_{summary['server']}"] = ratio >= TARGET_RATIO
        met[f"no_starvation_{summary['server']}"] = summary["sdk"]["per_thread_min"] > 0
        print(
            f"target ({summary['server']} server): sdk >= {TARGET_RATIO:g}x naive: {ratio:.2f}x "
            f"(per round {', '.join(f'{r:.2f}' for r in summary['ratio_per_round'])}) -> "
            f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}; every sdk thread completes calls "
            f"(min {summary['sdk']['per_thread_min']}, naive min {starving}) -> "
            f"{'MET' if summary['sdk']['per_thread_min'] > 0 else 'NOT MET'}"
        )
    if mem is not None:
        bounded = mem["stats"]["events_pending"] <= mem["queue_size"]
        met["memory_bounded"] = bounded
        print(
            f"target: memory within the queue bound: pending {mem['stats']['events_pending']:,} "
            f"<= event_queue_size, RSS +{mem['rss_growth_kb'] / 1024:.1f} MiB -> "
            f"{'MET' if bounded else 'NOT MET'}"
        )
    print("peers (ratio to naive): " + ", ".join(f"{k} {v:.2f}x" for k, v in PEERS.items()))
    print(f"wall time {elapsed:.1f} s")

    if args.json:
        result = {
            "environment": env,
            "params": vars(args),
            "throughput": summaries,
            "memory": mem,
            "target_ratio": TARGET_RATIO,
            "met": met,
            "peers": PEERS,
            "wall_time_s": elapsed,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
