"""Profile ``fetch_experience(...).result()`` with warm metadata against the stub server.

Two views:

1. ``cProfile`` of the calling thread *and* the client's worker threads (the client is given a
   ``ThreadPoolExecutor`` whose initializer starts one profiler per worker; the merged stats are
   printed by cumulative and by self time, restricted to the SDK and its dependencies).
2. ``--layers``: the median wall time of each layer of the call path, peeled one at a time
   (Future + worker thread, metadata + models, tenacity, PreparedRequest, adapter, urllib3,
   http.client, a raw socket), interleaved like the benchmark, to show what each layer costs
   without profiler overhead. This reaches into private SDK APIs, so it is best
   effort: a layer that cannot be reached is reported as skipped.

Run: ``python benchmarks/profile_fetch.py [--calls 3000] [--top 30] [--layers] [--out FILE]``.
``--out`` writes the merged ``pstats`` file (open it with ``python -m pstats FILE`` or snakeviz).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import StubServer, auth_headers, run_interleaved
from bench_fetch import API_KEY, APP_ID, ATTRIBUTES, CUSTOMER_ID, KEY, sdk_body, summarize

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

FOCUS = (
    "moengage_personalize",
    "requests",
    "urllib3",
    "tenacity",
    "cattrs",
    "concurrent/futures",
    "threading",
    "http/client",
    "json",
    "attr",
)


class _WorkerProfilers:
    """One cProfile per worker thread of ``executor`` (a profiler only sees its own thread).

    ``enable``/``disable`` each submit exactly ``workers`` tasks that meet at a barrier, so that
    every worker thread of the pool (started if needed) runs exactly one of them.
    """

    def __init__(self, executor: ThreadPoolExecutor, workers: int) -> None:
        self._executor = executor
        self._workers = workers
        self._local = threading.local()
        self.profilers: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _on_every_worker(self, fn: Callable[[], None]) -> None:
        barrier = threading.Barrier(self._workers, timeout=10)

        def task() -> None:
            barrier.wait()
            fn()

        for future in [self._executor.submit(task) for _ in range(self._workers)]:
            future.result(timeout=10)

    def enable(self) -> None:
        def start() -> None:
            profiler = cProfile.Profile()
            self._local.profiler = profiler
            with self._lock:
                self.profilers.append(profiler)
            profiler.enable()

        self._on_every_worker(start)

    def disable(self) -> None:
        def stop() -> None:
            self._local.profiler.disable()  # on the worker's own thread

        self._on_every_worker(stop)


def _stats_text(stats: pstats.Stats, sort: str, top: int) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats("|".join(FOCUS), top)
    return out.getvalue()


def profile(base: str, calls: int, warmup: int, top: int, out_file: str | None) -> None:
    config = PersonalizeConfig()
    # The executor the client would build itself, but ours, so that we can reach its threads.
    executor = ThreadPoolExecutor(
        max_workers=config.max_workers, thread_name_prefix="moengage-personalize"
    )
    workers = _WorkerProfilers(executor, config.max_workers)
    client = MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=f"{base}/v1", config=config, executor=executor
    )
    main = cProfile.Profile()
    try:
        client.fetch_experiences_meta().result(timeout=5)
        for _ in range(warmup):
            client.fetch_experience(KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID).result(timeout=5)
        workers.enable()
        start = time.perf_counter()
        main.enable()
        for _ in range(calls):
            client.fetch_experience(KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID).result(timeout=5)
        main.disable()
        elapsed = time.perf_counter() - start
        workers.disable()
    finally:
        client.close()
        executor.shutdown(wait=True)
    stats = pstats.Stats(main)
    for p in workers.profilers:
        stats.add(p)
    print(
        f"profiled {calls} calls in {elapsed:.2f} s ({elapsed / calls * 1e6:.0f} us/call under "
        f"cProfile); calling thread + {len(workers.profilers)} worker thread(s)\n"
    )
    print("=== by cumulative time ===")
    print(_stats_text(stats, "cumulative", top))
    print("=== by self time ===")
    print(_stats_text(stats, "tottime", top))
    if out_file:
        stats.dump_stats(out_file)
        print(f"wrote {out_file}")


# layers -----------------------------------------------------------------------------------------


def layers(base: str, rounds: int, warmup: int) -> None:
    """Median and p99 of each layer of the call path, interleaved like the benchmark."""
    import http.client
    import socket

    import requests
    import urllib3

    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=f"{base}/v1")
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = http.client.HTTPConnection(host, int(port))
    try:
        client.fetch_experiences_meta().result(timeout=5)
        path = "/v1/experiences/fetch"
        url = f"{base}{path}"
        body = sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID)
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {**auth_headers(APP_ID, API_KEY), "Content-Type": "application/json"}
        calls: dict[str, Callable[[], Any]] = {
            "sdk fetch_experience().result()": lambda: client.fetch_experience(
                KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID
            ).result(timeout=5),
        }
        try:
            import attrs

            from moengage_personalize._config import User

            core = client._core
            transport = client._transport
            # Capture the per-call object Transport.request builds, to replay _attempt alone.
            attempt = transport._attempt
            captured: list[Any] = []

            def capture(call: Any) -> Any:
                captured.append(call)
                return attempt(call)

            transport._attempt = capture
            try:
                transport.request(
                    "POST", "/experiences/fetch", body, time.monotonic() + 5, what="fetch"
                )
            finally:
                del transport._attempt
            call = captured[0]
            user = User(customer_id=CUSTOMER_ID)
            adapter = transport._adapter
            pool = adapter.poolmanager.connection_from_url(url)
            sdk_headers = {**transport._post_headers, "Content-Length": str(len(data))}

            def adapter_send() -> Any:
                prepared = requests.PreparedRequest()
                prepared.method = "POST"
                prepared.url = url
                prepared.headers = requests.structures.CaseInsensitiveDict(sdk_headers)
                prepared.body = data
                response = adapter.send(prepared, timeout=(5, 5), **transport._send_kwargs)
                return json.loads(response.content)

            def pool_urlopen() -> Any:
                response = pool.urlopen(
                    "POST",
                    path,
                    body=data,
                    headers=sdk_headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=True,
                    timeout=urllib3.Timeout(connect=5, read=5),
                )
                return json.loads(response.data)

            calls.update(
                {
                    "Core.fetch (no Future/worker thread)": lambda: core.fetch(
                        [KEY], ATTRIBUTES, user, time.monotonic() + 5
                    ),
                    "Transport.request (no metadata/models)": lambda: transport.request(
                        "POST", "/experiences/fetch", body, time.monotonic() + 5, what="fetch"
                    ),
                    "Transport._attempt (no tenacity/dumps)": lambda: attempt(
                        attrs.evolve(call, deadline=time.monotonic() + 5)
                    ),
                    "HTTPAdapter.send + .content": adapter_send,
                    "adapter's urllib3 pool.urlopen": pool_urlopen,
                }
            )
        except (ImportError, AttributeError, TypeError, IndexError) as exc:
            print(f"private layers skipped ({type(exc).__name__}: {exc})")
        for name, fn in list(calls.items()):  # the SDK's internals move: drop what broke
            try:
                fn()
            except Exception as exc:
                print(f"layer {name!r} skipped ({type(exc).__name__}: {exc})")
                del calls[name]

        def http_client() -> Any:
            conn.request("POST", path, body=data, headers=headers)
            return json.loads(conn.getresponse().read())

        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        raw_request = f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data

        def raw_socket() -> Any:
            sock.sendall(raw_request)
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the stub server closed the connection")
                buffer += chunk
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    continue
                length = 0
                for line in buffer[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(buffer) >= end + 4 + length:
                    return json.loads(buffer[end + 4 : end + 4 + length])

        calls["http.client.HTTPConnection (floor)"] = http_client
        calls["raw socket (server + loopback floor)"] = raw_socket
        stats = summarize(run_interleaved(calls, rounds, warmup), baseline=next(iter(calls)))
    finally:
        client.close()
        conn.close()
        sock.close()
    print(f"=== per layer, interleaved, {rounds} rounds (no profiler) ===")
    print(f"{'layer':<42} {'median us':>10} {'p99 us':>10} {'vs sdk':>7}")
    for name, item in stats.items():
        row = f"{item['median_us']:>10.1f} {item['p99_us']:>10.1f} {item['ratio']:>6.2f}x"
        print(f"{name:<42} {row}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    parser.add_argument("--layers", action="store_true", help="also time each layer")
    parser.add_argument("--no-profile", action="store_true", help="skip cProfile")
    parser.add_argument("--out", metavar="FILE", help="write the merged pstats to FILE")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}")
    with StubServer() as server:
        if not args.no_profile:
            profile(server.base, args.calls, args.warmup, args.top, args.out)
        if args.layers:
            layers(server.base, args.calls, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
