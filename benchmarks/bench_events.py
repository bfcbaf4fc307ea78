"""Benchmark: the caller's cost of ``experience_shown`` and the delivery rate of a burst (issue #4).

The client talks to the project's own local Personalize server, started in another process
(``python -m moengage_personalize serve --port 0 --db <temp file>``, see ``_local_server.py``),
which validates each events request, stores every action in SQLite and de-duplicates by
``moe_event_uuid``. Two measurements, alternated round by round:

* **caller cost** -- ``client.experience_shown(campaign)`` for ``--calls`` calls (default 20,000)
  spread over ``--users`` users (default 100), each call timed on the calling thread with
  ``time.perf_counter_ns``; the dispatcher thread runs (serializes, sends) concurrently, as it
  would in an app. Then ``flush()``; the server must have stored exactly the calls made.
  Issue #4 target: median < 5 us and p99 < 200 us.
* **burst delivery** -- ``--burst`` events (default 50,000; ``event_queue_size`` sized to hold
  them) as fast as the caller can make them, then ``flush()``: the time from the first call to
  ``flush()`` reporting everything delivered gives events/s; the server's count of stored events
  (``/_local/health``, unique uuids) and its SQLite file (rows vs distinct uuids) must grow by
  exactly the burst. Issue #4 target: >= 50,000 events/s, none lost.

Also reported: CPU seconds of the server process, of this process and of the client's dispatcher
thread during each burst, and (``--no-ceiling`` skips it) the rate of the server alone in each
round: the same number of events in pre-built bodies of the same shape POSTed with bare urllib3
over one connection (and once over two at the end), i.e. the best any client could do against
this server at that moment (which side is the bottleneck).

Run: ``python benchmarks/bench_events.py [--rounds 3] [--calls 20000] [--burst 50000]
[--json out.json]``. The exit status is non-zero only on errors, never because a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import urllib3
from _common import (
    CONTEXT,
    auth_headers,
    campaigns_for,
    environment,
    latency_us,
    median,
    percentile,
    print_environment,
    write_json,
)
from _local_server import LocalServer, process_cpu_seconds, thread_cpu_seconds

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

TARGET_MEDIAN_US = 5.0
TARGET_P99_US = 200.0
TARGET_EVENTS_PER_S = 50_000.0
PEERS = {
    "PostHog capture": "34 us median / 1.3 ms p99; 20,000 delivered in 1.3 s",
    "Amplitude track": "35 us / 0.4 ms; 1.1 s (sometimes 11 s)",
    "LaunchDarkly": "1.6 us, but half of the burst lost on its defaults",
}
DISPATCHER_THREAD = "moengage-personalize-events"


def dispatcher_native_id() -> int | None:
    for thread in threading.enumerate():
        if thread.name == DISPATCHER_THREAD:
            return thread.native_id
    return None


class Bench:
    def __init__(self, server: LocalServer, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.campaigns = campaigns_for(args.users)
        self.expected_stored = 0  # events this run should have made the server store
        config = PersonalizeConfig(event_queue_size=args.queue_size)
        self.client = MoEngagePersonalize(
            server.workspace_id, api_key=server.api_key, base_url=server.base_url, config=config
        )
        self._warm()

    def _warm(self) -> None:
        """Start the dispatcher and open the connection: one-time costs, not measured."""
        self._calls(self.args.warmup)
        self._flush_or_fail("warm-up")
        self.check_stored("warm-up")

    def _calls(self, n: int) -> None:
        shown = self.client.experience_shown
        campaigns = self.campaigns
        users = len(campaigns)
        for i in range(n):
            shown(campaigns[i % users])
        self.expected_stored += n

    def _flush_or_fail(self, what: str) -> Any:
        report = self.client.flush(timeout=self.args.flush_timeout)
        if not report.completed:
            raise RuntimeError(f"{what}: flush did not complete: {report!r}")
        return report

    def check_stored(self, what: str) -> int:
        stored = self.server.stored_events()
        if stored != self.expected_stored:
            print(
                f"  !! {what}: the server stored {stored} events, expected {self.expected_stored}"
            )
        return stored

    def latency_round(self) -> dict[str, Any]:
        n = self.args.calls
        samples = [0] * n
        shown = self.client.experience_shown
        campaigns = self.campaigns
        users = len(campaigns)
        clock = time.perf_counter_ns
        dropped_before = sum(self.client.stats().events_dropped.values())
        gc.collect()
        began = clock()
        for i in range(n):
            campaign = campaigns[i % users]
            start = clock()
            shown(campaign)
            samples[i] = clock() - start
        calls_ns = clock() - began
        self.expected_stored += n
        report = self._flush_or_fail("caller-cost round")
        drained_ns = clock() - began
        dropped = sum(self.client.stats().events_dropped.values()) - dropped_before
        stored = self.check_stored("caller-cost round")
        return {
            "samples": samples,
            "calls_s": calls_ns / 1e9,
            "all_delivered_s": drained_ns / 1e9,
            "dropped": dropped,
            "stored_total": stored,
            "stored_ok": stored == self.expected_stored,
            "flush_report": repr(report),
        }

    def burst_round(self) -> dict[str, Any]:
        n = self.args.burst
        stats0 = self.client.stats()
        stored0 = self.server.stored_events()
        tid = dispatcher_native_id()
        cpu_server0 = self.server.cpu_seconds()
        cpu_self0 = time.process_time()
        cpu_disp0 = thread_cpu_seconds(tid)
        gc.collect()
        began = time.perf_counter()
        self._calls(n)
        calls_done = time.perf_counter()
        report = self.client.flush(timeout=self.args.flush_timeout)
        ended = time.perf_counter()
        cpu_server = self.server.cpu_seconds() - cpu_server0
        cpu_self = time.process_time() - cpu_self0
        cpu_disp = thread_cpu_seconds(tid) - cpu_disp0
        stats1 = self.client.stats()
        stored1 = self.server.stored_events()
        rows, unique = self.server.db_counts()
        elapsed = ended - began
        delivered = stats1.events_sent - stats0.events_sent
        dropped = sum(stats1.events_dropped.values()) - sum(stats0.events_dropped.values())
        return {
            "events": n,
            "completed": report.completed,
            "seconds": elapsed,
            "calls_seconds": calls_done - began,
            "events_per_s": delivered / elapsed if report.completed else 0.0,
            "delivered": delivered,
            "dropped": dropped,
            "failed": stats1.events_failed - stats0.events_failed,
            "retried": stats1.events_retried - stats0.events_retried,
            "server_stored": stored1 - stored0,
            "db_rows": rows,
            "db_unique_uuids": unique,
            "lost": n - (stored1 - stored0),
            "cpu_server_s": cpu_server,
            "cpu_client_process_s": cpu_self,
            "cpu_dispatcher_s": cpu_disp,
        }

    def close(self) -> None:
        self.client.close(timeout=self.args.flush_timeout)


def ceiling(server: LocalServer, events: int, connections: int) -> dict[str, Any]:
    """The server alone: ``events`` in pre-built 1,000-action bodies (100 users x 10 actions,
    the SDK's wire shape, fresh uuids), POSTed over ``connections`` keep-alive connections in
    parallel. No SDK code runs: the rate the local server can take at best."""
    now = int(time.time())
    bodies: list[bytes] = []
    for start in range(0, events, 1000):
        count = min(1000, events - start)
        users: dict[str, list[dict[str, Any]]] = {}
        for i in range(start, start + count):
            users.setdefault(f"user-{i % 100}", []).append(
                {
                    "action": "MOE_PERSONALIZATION_MESSAGE_SHOWN",
                    "moe_event_uuid": str(uuid.uuid4()),
                    "event_time": now,
                    "platform": "web",
                    "attributes": CONTEXT,
                }
            )
        body = {"elements": [{"customer_id": c, "actions": a} for c, a in users.items()]}
        bodies.append(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    headers = {
        **auth_headers(server.workspace_id, server.api_key),
        "Content-Type": "application/json",
    }
    url = urlsplit(server.base_url)
    pool = urllib3.HTTPConnectionPool(url.hostname, url.port, maxsize=connections, block=True)
    path = f"{url.path}/experiences/events"
    failures: list[str] = []

    def post_all(share: list[bytes]) -> None:
        for body in share:
            resp = pool.urlopen("POST", path, body=body, headers=headers, retries=False)
            if resp.status != 200:
                failures.append(f"HTTP {resp.status}: {resp.data[:200]!r}")

    stored0 = server.stored_events()
    cpu0 = server.cpu_seconds()
    threads = [
        threading.Thread(target=post_all, args=(bodies[k::connections],), daemon=True)
        for k in range(connections)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - began
    cpu = server.cpu_seconds() - cpu0
    pool.close()
    stored = server.stored_events() - stored0
    if failures:
        raise RuntimeError(f"the server refused pre-built bodies: {failures[:3]}")
    return {
        "events": events,
        "connections": connections,
        "seconds": elapsed,
        "events_per_s": stored / elapsed,
        "stored": stored,
        "server_cpu_pct": 100 * cpu / elapsed,
    }


def latency_stats(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        **latency_us(ordered),
        "p999_us": percentile(ordered, 99.9) / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": sum(ordered) / len(ordered) / 1000,
        "over_200us": sum(1 for s in ordered if s > 200_000),
    }


def clock_overhead_ns(n: int = 20_000) -> float:
    clock = time.perf_counter_ns
    values = []
    for _ in range(n):
        start = clock()
        values.append(clock() - start)
    return median(sorted(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per round")
    parser.add_argument("--users", type=int, default=100, help="distinct users")
    parser.add_argument("--burst", type=int, default=50_000, help="events per burst")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls first")
    parser.add_argument(
        "--queue-size", type=int, default=60_000, help="config.event_queue_size (default 60,000)"
    )
    parser.add_argument("--flush-timeout", type=float, default=60.0, help="seconds per flush")
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the server-alone reference (pre-built bodies POSTed without the SDK)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if min(args.rounds, args.calls, args.users, args.burst) < 1 or args.warmup < 0:
        parser.error("--rounds, --calls, --users and --burst must be >= 1, --warmup >= 0")
    if args.queue_size < max(args.burst, args.calls):
        parser.error("--queue-size must hold a whole burst (>= --burst and --calls)")

    env = environment()
    print_environment(env)
    started = time.perf_counter()
    overhead = clock_overhead_ns()
    latency: list[dict[str, Any]] = []
    bursts: list[dict[str, Any]] = []
    with LocalServer() as server:
        print(
            f"local server pid {server.pid} on {server.base_url} (db {server.db}); "
            f"{args.rounds} rounds of {args.calls} timed calls for {args.users} users and a "
            f"burst of {args.burst}; queue {args.queue_size}"
        )
        bench = Bench(server, args)
        try:
            for r in range(args.rounds):
                lat = bench.latency_round()
                lat["stats"] = latency_stats(lat["samples"])
                latency.append(lat)
                if args.no_ceiling:
                    burst = bench.burst_round()
                elif r % 2 == 0:  # alternate: both see the database grow alike
                    burst = bench.burst_round()
                    burst["server_alone"] = ceiling(server, args.burst, 1)
                else:
                    alone = ceiling(server, args.burst, 1)
                    burst = bench.burst_round()
                    burst["server_alone"] = alone
                if "server_alone" in burst:
                    bench.expected_stored += args.burst
                bursts.append(burst)
                s = lat["stats"]
                print(
                    f"  round {r + 1}: caller median {s['median_us']:.2f} us, p99 "
                    f"{s['p99_us']:.1f} us; burst {burst['events_per_s']:,.0f} events/s, "
                    f"lost {burst['lost']}"
                )
        finally:
            bench.close()
        ceilings = []
        if not args.no_ceiling:  # and once over two connections, at the end
            ceilings.append(ceiling(server, args.burst, 2))
            bench.expected_stored += args.burst
        final_stored = server.stored_events()
        final_rows, final_unique = server.db_counts()
        expected_total = bench.expected_stored
        server_cpu_total = process_cpu_seconds(server.pid)
        server_log = server.stderr()
    elapsed = time.perf_counter() - started

    pooled = latency_stats([v for lat in latency for v in lat["samples"]])
    print()
    print("caller cost of experience_shown(campaign), microseconds")
    print(
        f"{'round':<8} {'median':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9} "
        f"{'>200us':>7} {'dropped':>8} {'delivered in':>13}"
    )
    rows = [(f"{i + 1}", lat["stats"], lat) for i, lat in enumerate(latency)]
    rows.append(("pooled", pooled, None))
    for name, s, lat in rows:
        tail = "" if lat is None else f"{lat['dropped']:>8} {lat['all_delivered_s']:>11.2f} s"
        print(
            f"{name:<8} {s['median_us']:>8.2f} {s['p90_us']:>8.2f} {s['p99_us']:>8.1f} "
            f"{s['p999_us']:>8.1f} {s['max_us']:>9.1f} {s['over_200us']:>7} {tail}"
        )
    print(f"(timer overhead, included: {overhead / 1000:.2f} us)")
    print()
    print(f"burst of {args.burst:,} events: first call -> flush() reports all delivered")
    print(
        f"{'round':<6} {'calls s':>8} {'total s':>8} {'events/s':>10} {'stored':>7} "
        f"{'lost':>5} {'dropped':>7} {'retried':>7} {'cpu srv':>8} {'cpu cli':>8} "
        f"{'cpu disp':>8} {'srv alone/s':>11}"
    )
    for i, b in enumerate(bursts):
        alone = b.get("server_alone")
        print(
            f"{i + 1:<6} {b['calls_seconds']:>8.3f} {b['seconds']:>8.3f} "
            f"{b['events_per_s']:>10,.0f} {b['server_stored']:>7} {b['lost']:>5} "
            f"{b['dropped']:>7} {b['retried']:>7} {b['cpu_server_s']:>8.2f} "
            f"{b['cpu_client_process_s']:>8.2f} {b['cpu_dispatcher_s']:>8.2f} "
            f"{alone['events_per_s'] if alone else float('nan'):>11,.0f}"
        )
    print(
        "(cpu: seconds during the burst; srv alone/s: the same number of events in pre-built "
        "bodies POSTed without the SDK over one connection, in the same round)"
    )
    for c in ceilings:
        print(
            f"server alone over {c['connections']} connections, at the end: "
            f"{c['events_per_s']:,.0f} events/s, server CPU {c['server_cpu_pct']:.0f}% of a core"
        )
    rates = sorted(b["events_per_s"] for b in bursts)
    print(
        f"server totals: {final_stored} stored, SQLite {final_rows} rows / {final_unique} unique "
        f"uuids, expected {expected_total}; server CPU {server_cpu_total:.1f} s in all"
    )

    median_met = pooled["median_us"] < TARGET_MEDIAN_US
    p99_met = pooled["p99_us"] < TARGET_P99_US
    lost_total = sum(b["lost"] for b in bursts)
    rate_met = rates[0] >= TARGET_EVENTS_PER_S
    none_lost = (
        lost_total == 0
        and final_stored == expected_total
        and final_rows == final_unique == expected_total
        and all(lat["stored_ok"] for lat in latency)
    )
    print()
    print(
        f"target: caller median < {TARGET_MEDIAN_US:g} us: {pooled['median_us']:.2f} us -> "
        f"{'MET' if median_met else 'NOT MET'}"
    )
    print(
        f"target: caller p99 < {TARGET_P99_US:g} us: {pooled['p99_us']:.1f} us -> "
        f"{'MET' if p99_met else 'NOT MET'}"
    )
    print(
        f"target: burst >= {TARGET_EVENTS_PER_S:,.0f} events/s (slowest round): "
        f"{rates[0]:,.0f} (best {rates[-1]:,.0f}) -> {'MET' if rate_met else 'NOT MET'}"
    )
    print(f"target: none lost: {'MET' if none_lost else 'NOT MET'}")
    print("peers: " + "; ".join(f"{k} {v}" for k, v in PEERS.items()))
    print(f"wall time {elapsed:.1f} s")
    if "Traceback" in server_log:
        print("the server logged a traceback:\n" + server_log)

    if args.json:
        for lat in latency:
            del lat["samples"]
        result = {
            "environment": env,
            "params": vars(args),
            "timer_overhead_us": overhead / 1000,
            "latency_rounds": latency,
            "latency_pooled": pooled,
            "bursts": bursts,
            "server_alone": ceilings,
            "server": {
                "stored": final_stored,
                "db_rows": final_rows,
                "db_unique_uuids": final_unique,
                "expected": expected_total,
                "cpu_s": server_cpu_total,
            },
            "targets": {
                "median_us": TARGET_MEDIAN_US,
                "p99_us": TARGET_P99_US,
                "events_per_s": TARGET_EVENTS_PER_S,
            },
            "met": {
                "median": median_met,
                "p99": p99_met,
                "events_per_s": rate_met,
                "none_lost": none_lost,
            },
            "peers": PEERS,
            "wall_time_s": elapsed,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
