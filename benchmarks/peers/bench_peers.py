"""Benchmark against peer SDKs (issue #6): fetch, threads, cold start, tracking, import time.

Everything talks to one stub server (``_peer_stub.py``) that this script starts in a subprocess
on an ephemeral port of 127.0.0.1 and stops at the end, also on errors. The stub serves each
SDK's own endpoint with an answer valid for that SDK, carrying the same content (so the payloads
are about the same size); every contender's answer is checked before measuring, so nobody is
timed on an error path. Every peer SDK's base URL is pointed at the stub: no name is resolved,
nothing leaves the machine, and telemetry, polling and streaming are off where the SDK allows.

1. **fetch** -- interleaved rounds (a random order per round), each call timed with
   ``perf_counter_ns``:

   * ``requests``   -- the naive way: one reused ``requests.Session().post(url, json=body)
     .json()`` with our request (ratio 1.00);
   * ``http.client`` -- a floor: one reused ``http.client.HTTPConnection``, the same body
     (``json.dumps`` per call) and headers, ``json.loads`` of the answer;
   * ``urllib3``    -- a floor: one bare ``urllib3.HTTPConnectionPool``, the same request,
     ``json.loads(resp.data)``;
   * ``moengage``   -- ``fetch_experience(key, attributes=..., user=...).result()``, warm metadata;
   * ``amplitude``  -- ``RemoteEvaluationClient.fetch_v2(User(...))`` (``POST /sdk/v2/vardata``);
   * ``posthog``    -- ``get_all_flags_and_payloads(distinct_id, person_properties=...,
     flag_keys_to_evaluate=[key])`` with local evaluation off (``POST /flags/?v=4``);
   * ``flagsmith``  -- ``get_identity_flags(identifier, traits=...)`` then
     ``get_feature_value(key)`` (``POST /api/v1/identities/``).

2. **threads** -- ``--threads`` threads (default 16) share ONE client per contender and call it
   back to back for ``--thread-seconds`` (default 3) per round, ``--thread-rounds`` rounds
   (default 3) in a rotating order, after an untimed ``--thread-warmup`` phase each. Every call
   is for a user of its own (``r<round>-u<thread>-<i>``), so no SDK can coalesce or cache
   identical calls. Contenders: naive ``requests`` (one shared ``Session``), bare urllib3
   (``HTTPConnectionPool(maxsize=threads)``), ``amplitude`` ``fetch_v2`` (one client, its
   connection pool sized to the threads: its default of 1 would serialize them), ``moengage``
   ``fetch_experience(...).result()`` (default config). Reported: calls/s (median over rounds)
   and its ratio to naive ``requests``, p50/p99 latency over all calls, min/max calls per thread
   over the rounds (starvation), failures, CPU of the stub and of this process. Answers are
   checked before, after, and each thread's last answer of every round.

3. **cold** -- cold start, one fresh ``python -I`` subprocess per sample (``--cold-runs``,
   default 7, interleaved, after one untimed run each): the time from the interpreter's start to
   the snippet's first line (``startup``), the import, the client's construction, the first fetch
   (checked), and the total from the spawn to the end of the first fetch; medians. The spawn and
   the snippet's marks are read from ``time.monotonic_ns`` (``CLOCK_MONOTONIC``: one clock for
   every process on Linux). ``requests`` is a reference row.

4. **tracking** -- per SDK and round: ``--events`` calls (default 20,000) spread over ``--users``
   users (default 100), each call timed on the caller's thread (the SDK's background sender runs
   meanwhile), then the SDK's flush; delivery time runs from the first call until the stub has
   counted all the events of that round (it counts the events in each body it receives, by
   SDK). Contenders: ``moengage`` ``experience_shown(campaign)``; ``posthog``
   ``capture(event, distinct_id=..., properties=context)`` (``POST /batch/``); ``launchdarkly``
   ``track(event, context, data=context)`` (``POST /bulk``). Every SDK's event queue is sized to
   hold a round (``--events``; each default is 10,000), so what is compared is speed, not loss on
   a full queue (``--default-queues`` keeps the defaults: then a count that stops moving for 3 s
   short of the total is reported as delivered/expected). Rounds rotate the order of the SDKs.

5. **import time** -- ``python -I -X importtime -c "import X"`` in a fresh subprocess,
   ``--import-runs`` times each (interleaved), median of the top-level module's cumulative time.

Subprocesses run with ``-I`` (isolated), so they import the installed packages, never a copy in
the current directory. A peer whose package is missing is skipped with a note. Run with the
interpreter of a venv that has the peers (see ``README.md`` here): ``/tmp/peers-venv/bin/python
benchmarks/peers/bench_peers.py [--json out.json]``. Default run time: about 2-3 minutes. Exit
status non-zero only on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import importlib.metadata
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import requests  # noqa: E402
import urllib3  # noqa: E402
from _common import (  # noqa: E402
    StubServer,
    add_ratios,
    auth_headers,
    latency_us,
    percentile,
    run_interleaved,
    write_json,
)
from _local_server import process_cpu_seconds  # noqa: E402
from _peer_stub import CONTEXT, EVENT_NAME, KEY, PAYLOAD, fetch_answers  # noqa: E402
from bench_fetch import (  # noqa: E402
    API_KEY,
    APP_ID,
    ATTRIBUTES,
    CUSTOMER_ID,
    EXPECTED_TITLE,
    sdk_body,
)

import moengage_personalize  # noqa: E402
from moengage_personalize import (  # noqa: E402
    DataSource,
    ExperienceCampaign,
    MoEngagePersonalize,
    PersonalizeConfig,
    User,
)

STUB = HERE / "_peer_stub.py"
KNOWN_ROUTES = {
    "GET /v1/experiences/metadata",
    "POST /v1/experiences/fetch",
    "POST /sdk/v2/vardata",
    "POST /flags/",
    "POST /api/v1/identities/",
    "POST /v1/experiences/events",
    "POST /batch/",
    "POST /bulk",
    "POST /diagnostic",
    "GET /_counts",
}
PEER_PACKAGES = {  # contender -> (distribution, import name)
    "amplitude": ("amplitude-experiment", "amplitude_experiment"),
    "posthog": ("posthog", "posthog"),
    "flagsmith": ("flagsmith", "flagsmith"),
    "launchdarkly": ("launchdarkly-server-sdk", "ldclient"),
}
IMPORTS = {  # label -> import name
    "moengage-personalize": "moengage_personalize",
    "requests (reference)": "requests",
    "amplitude-experiment": "amplitude_experiment",
    "posthog": "posthog",
    "flagsmith": "flagsmith",
    "launchdarkly-server-sdk": "ldclient",
}


def available(contender: str) -> bool:
    if contender not in PEER_PACKAGES:
        return True
    try:
        importlib.metadata.version(PEER_PACKAGES[contender][0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def versions() -> dict[str, str]:
    out = {"moengage-personalize": moengage_personalize.__version__}
    for dist in ("requests", "urllib3", *(d for d, _ in PEER_PACKAGES.values())):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def environment() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.replace("\n", " "),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "versions": versions(),
        "moengage_personalize_file": moengage_personalize.__file__,  # which copy is measured
    }


# the stub server --------------------------------------------------------------------------------


class Stub(StubServer):
    """``_peer_stub.py`` in a subprocess on an ephemeral loopback port; ``stop()`` ends it."""

    def __init__(self) -> None:
        super().__init__(script=STUB)
        # the control channel: no proxies, its own connection (urllib opens one per call)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def counts(self) -> dict[str, Any]:
        with self._opener.open(f"{self.base}/_counts", timeout=5) as resp:
            return json.loads(resp.read())

    def requests_served(self) -> int:
        """Every request the stub has answered, less those of this control channel."""
        served = self.counts()["requests"]
        return sum(n for route, n in served.items() if route != "GET /_counts")


# statistics -------------------------------------------------------------------------------------


def summarize(values_ns: list[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    return {**latency_us(ordered), "max_us": ordered[-1] / 1000}


# fetch ------------------------------------------------------------------------------------------


def our_answer_ok(answer: Any) -> bool:
    """A raw JSON answer of ``POST /v1/experiences/fetch`` carries the expected experience."""
    return bool(answer["experiences"][KEY]["payload"]["Title"]["value"] == EXPECTED_TITLE)


class Fetchers:
    """The fetch contenders against the stub; ``calls`` maps a name to a zero-argument call."""

    def __init__(self, base: str, notes: list[str]) -> None:
        self.calls: dict[str, Callable[[], Any]] = {}
        self.checks: dict[str, Callable[[Any], bool]] = {}
        self._closers: list[Callable[[], Any]] = []
        try:
            self._ours_and_floor(base)
            for name, setup in (
                ("amplitude", self._amplitude),
                ("posthog", self._posthog),
                ("flagsmith", self._flagsmith),
            ):
                if not available(name):
                    notes.append(f"fetch: {name} skipped ({PEER_PACKAGES[name][0]} not installed)")
                    continue
                setup(base)
        except BaseException:
            self.close()
            raise

    def _ours_and_floor(self, base: str) -> None:
        session = requests.Session()
        self._closers.append(session.close)
        url, body, headers = (
            f"{base}/v1/experiences/fetch",
            sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID),
            auth_headers(APP_ID, API_KEY),
        )
        self.calls["requests"] = lambda: session.post(url, json=body, headers=headers).json()
        self.checks["requests"] = our_answer_ok

        # the floors: the same body (encoded per call, as requests does) and headers
        parts = urllib.parse.urlsplit(url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port, parts.path
        json_headers = {**headers, "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(host, port, timeout=10)
        self._closers.append(conn.close)

        def http_client_call() -> Any:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=json_headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"http.client: HTTP {resp.status}")
            return json.loads(data)

        self.calls["http.client"] = http_client_call
        self.checks["http.client"] = our_answer_ok

        pool = urllib3.HTTPConnectionPool(host, port, maxsize=1, timeout=10)
        self._closers.append(pool.close)

        def urllib3_call() -> Any:
            resp = pool.request("POST", path, body=json.dumps(body).encode(), headers=json_headers)
            if resp.status != 200:
                raise RuntimeError(f"urllib3: HTTP {resp.status}")
            return json.loads(resp.data)

        self.calls["urllib3"] = urllib3_call
        self.checks["urllib3"] = our_answer_ok

        client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=f"{base}/v1")
        self._closers.append(client.close)
        client.fetch_experiences_meta().result(timeout=5)  # warm metadata
        self.calls["moengage"] = lambda: client.fetch_experience(
            KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID
        ).result(timeout=5)
        self.checks["moengage"] = lambda r: r.get(KEY).payload["Title"] == EXPECTED_TITLE

    def _amplitude(self, base: str) -> None:
        from amplitude_experiment import RemoteEvaluationClient, RemoteEvaluationConfig
        from amplitude_experiment import User as AmpUser

        logging.getLogger("Amplitude").setLevel(logging.ERROR)
        client = RemoteEvaluationClient("bench-key", RemoteEvaluationConfig(server_url=base))
        self._closers.append(client.close)
        self.calls["amplitude"] = lambda: client.fetch_v2(
            AmpUser(user_id=CUSTOMER_ID, user_properties=dict(ATTRIBUTES))
        )
        self.checks["amplitude"] = lambda r: (
            r[KEY].value == "variant-2" and r[KEY].payload["Title"] == EXPECTED_TITLE
        )

    def _posthog(self, base: str) -> None:
        from posthog import Posthog

        client = Posthog(
            "phc_bench",
            host=base,
            enable_local_evaluation=False,  # remote evaluation: every call asks /flags
            feature_flags_request_max_retries=0,
            send=False,  # this client captures nothing; the tracking one is separate
        )
        self._closers.append(client.shutdown)
        self.calls["posthog"] = lambda: client.get_all_flags_and_payloads(
            CUSTOMER_ID, person_properties=dict(ATTRIBUTES), flag_keys_to_evaluate=[KEY]
        )
        self.checks["posthog"] = lambda r: (
            r["featureFlags"][KEY] == "variant-2"
            and json.loads(r["featureFlagPayloads"][KEY])["Title"] == EXPECTED_TITLE
        )

    def _flagsmith(self, base: str) -> None:
        from flagsmith import Flagsmith

        client = Flagsmith(environment_key="bench-env", api_url=f"{base}/api/v1/")
        self._closers.append(client.session.close)
        self.calls["flagsmith"] = lambda: client.get_identity_flags(
            CUSTOMER_ID, traits=dict(ATTRIBUTES)
        ).get_feature_value(KEY)
        self.checks["flagsmith"] = lambda r: json.loads(r)["Title"] == EXPECTED_TITLE

    def verify(self) -> None:
        for name, call in self.calls.items():
            result = call()
            try:
                ok = self.checks[name](result)
            except (KeyError, TypeError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise RuntimeError(f"fetch {name}: unexpected answer {result!r}")

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()


def bench_fetch(
    stub: Stub, rounds: int, warmup: int, notes: list[str]
) -> dict[str, dict[str, float]]:
    fetchers = Fetchers(stub.base, notes)
    try:
        fetchers.verify()
        samples = run_interleaved(fetchers.calls, rounds, warmup)
        fetchers.verify()  # still answering correctly at the end
    finally:
        fetchers.close()
    return add_ratios({name: summarize(values) for name, values in samples.items()}, "requests")


# threads ----------------------------------------------------------------------------------------


class ThreadFetchers:
    """The contenders of the threads section: each ONE client shared by every thread; ``calls``
    maps a name to a call of one argument, the user id (a new one for every call)."""

    def __init__(self, base: str, threads: int, notes: list[str]) -> None:
        self.calls: dict[str, Callable[[str], Any]] = {}
        self.checks: dict[str, Callable[[Any], bool]] = {}
        self._closers: list[Callable[[], Any]] = []
        try:
            self._setup(base, threads, notes)
        except BaseException:
            self.close()
            raise

    def _setup(self, base: str, threads: int, notes: list[str]) -> None:
        url = f"{base}/v1/experiences/fetch"
        headers = auth_headers(APP_ID, API_KEY)
        json_headers = {**headers, "Content-Type": "application/json"}
        template = sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID)

        def body_for(user: str) -> dict[str, Any]:
            return {**template, "identifiers": {"customer_id": user}}

        session = requests.Session()
        self._closers.append(session.close)

        def naive(user: str) -> Any:
            response = session.post(url, json=body_for(user), headers=headers, timeout=10)
            response.raise_for_status()
            return response.json()

        self.calls["requests"] = naive
        self.checks["requests"] = our_answer_ok

        parts = urllib.parse.urlsplit(url)
        pool = urllib3.HTTPConnectionPool(
            parts.hostname or "127.0.0.1", parts.port, maxsize=threads, timeout=10
        )
        self._closers.append(pool.close)
        path = parts.path

        def bare_urllib3(user: str) -> Any:
            data = json.dumps(body_for(user)).encode()
            resp = pool.request("POST", path, body=data, headers=json_headers)
            if resp.status != 200:
                raise RuntimeError(f"urllib3: HTTP {resp.status}")
            return json.loads(resp.data)

        self.calls["urllib3"] = bare_urllib3
        self.checks["urllib3"] = our_answer_ok

        if available("amplitude"):
            from amplitude_experiment import RemoteEvaluationClient, RemoteEvaluationConfig
            from amplitude_experiment import User as AmpUser

            logging.getLogger("Amplitude").setLevel(logging.ERROR)
            amp_config = RemoteEvaluationConfig(
                server_url=base,
                connection_pool_max_size=threads,  # its default, 1, would serialize the threads
                fetch_pool_acquire_timeout_millis=10_000,
            )
            amp = RemoteEvaluationClient("bench-key", amp_config)
            self._closers.append(amp.close)
            properties = dict(ATTRIBUTES)
            self.calls["amplitude"] = lambda user: amp.fetch_v2(
                AmpUser(user_id=user, user_properties=properties)
            )
            self.checks["amplitude"] = lambda r: (
                r[KEY].value == "variant-2" and r[KEY].payload["Title"] == EXPECTED_TITLE
            )
        else:
            notes.append("threads: amplitude skipped (amplitude-experiment not installed)")

        client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=f"{base}/v1")
        self._closers.append(client.close)
        client.fetch_experiences_meta().result(timeout=10)  # warm metadata
        fetch = client.fetch_experience
        self.calls["moengage"] = lambda user: fetch(KEY, attributes=ATTRIBUTES, user=user).result(
            timeout=10
        )
        self.checks["moengage"] = lambda r: r.get(KEY).payload["Title"] == EXPECTED_TITLE

    def check(self, name: str, answer: Any) -> bool:
        try:
            return bool(self.checks[name](answer))
        except (KeyError, TypeError, ValueError, AttributeError):
            return False

    def verify(self, tag: str) -> None:
        for name, call in self.calls.items():
            result = call(f"{tag}-{name}")
            if not self.check(name, result):
                raise RuntimeError(f"threads {name}: unexpected answer {result!r}")

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()


def run_threads(
    call: Callable[[str], Any], threads: int, seconds: float, tag: str, stub_pid: int
) -> dict[str, Any]:
    """``threads`` threads call ``call`` back to back for ``seconds``, each call for a new user
    (``<tag>-u<thread>-<i>``); every call is timed. Bounded: the loops stop by themselves at the
    end time (each call has a timeout of its own), and a thread still alive 60 s later is an
    error."""
    counts = [0] * threads
    failures = [0] * threads
    latencies: list[list[int]] = [[] for _ in range(threads)]
    last: list[Any] = [None] * threads
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)
    end = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        stop_at = end[0]
        monotonic = time.monotonic
        clock = time.perf_counter_ns
        samples = latencies[index]
        prefix = f"{tag}-u{index}-"
        i = 0
        result = None
        while monotonic() < stop_at:
            user = prefix + str(i)
            i += 1
            start = clock()
            try:
                result = call(user)
            except Exception as exc:
                failures[index] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            samples.append(clock() - start)
        counts[index] = len(samples)
        last[index] = result

    pool = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    gc.collect()
    cpu_stub0 = process_cpu_seconds(stub_pid)
    cpu_self0 = time.process_time()
    began = time.monotonic()
    end[0] = began + seconds
    barrier.wait()
    for thread in pool:
        thread.join(max(0.0, began + seconds + 60 - time.monotonic()))
    elapsed = time.monotonic() - began
    if any(thread.is_alive() for thread in pool):
        raise RuntimeError("threads: a benchmark thread did not stop within 60 s of its end")
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
        "stub_cpu_pct": 100 * (process_cpu_seconds(stub_pid) - cpu_stub0) / elapsed,
        "client_cpu_pct": 100 * (time.process_time() - cpu_self0) / elapsed,
        "_latencies": [x for samples in latencies for x in samples],
        "_last": last,
    }


def bench_threads(stub: Stub, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    threads, seconds, rounds = args.threads, args.thread_seconds, args.thread_rounds
    fetchers = ThreadFetchers(stub.base, threads, notes)
    pid = stub.proc.pid
    try:
        fetchers.verify("check-before")
        names = list(fetchers.calls)
        for name in names:  # open the connections, start the workers: one-time costs
            if args.thread_warmup > 0:
                run_threads(fetchers.calls[name], threads, args.thread_warmup, f"w-{name}", pid)
        per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        latencies: dict[str, list[int]] = {name: [] for name in names}
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                before = stub.requests_served()
                result = run_threads(fetchers.calls[name], threads, seconds, f"r{r}", pid)
                result["stub_requests"] = stub.requests_served() - before
                latencies[name].extend(result.pop("_latencies"))
                for index, answer in enumerate(result.pop("_last")):
                    if answer is not None and not fetchers.check(name, answer):
                        raise RuntimeError(
                            f"threads {name}: round {r + 1}, thread {index}: unexpected answer "
                            f"{answer!r}"
                        )
                if result["failures"]:
                    notes.append(
                        f"threads: {name} round {r + 1}: {result['failures']} failed calls "
                        f"({'; '.join(result['errors'])})"
                    )
                per_round[name].append(result)
        fetchers.verify("check-after")  # still answering correctly at the end
    finally:
        fetchers.close()
    summary: dict[str, Any] = {}
    for name, results in per_round.items():
        ordered = sorted(latencies[name])
        summary[name] = {
            "calls_per_s": statistics.median(x["calls_per_s"] for x in results),
            "calls_per_s_rounds": [x["calls_per_s"] for x in results],
            "p50_ms": percentile(ordered, 50) / 1e6 if ordered else float("nan"),
            "p99_ms": percentile(ordered, 99) / 1e6 if ordered else float("nan"),
            "calls": len(ordered),
            "failures": sum(x["failures"] for x in results),
            # HTTP requests the stub answered per call (1.00: nothing coalesced or cached)
            "requests_per_call": sum(x["stub_requests"] for x in results)
            / max(1, sum(x["calls"] + x["failures"] for x in results)),
            "per_thread_min": min(x["per_thread_min"] for x in results),
            "per_thread_max": max(x["per_thread_max"] for x in results),
            "stub_cpu_pct": statistics.median(x["stub_cpu_pct"] for x in results),
            "client_cpu_pct": statistics.median(x["client_cpu_pct"] for x in results),
            "rounds": [{k: v for k, v in x.items() if k != "errors"} for x in results],
        }
    base = summary["requests"]["calls_per_s"]
    for item in summary.values():
        item["ratio"] = item["calls_per_s"] / base if base > 0 else float("nan")
    return summary


# cold start -------------------------------------------------------------------------------------

#: each contender's snippet: (import, construct, first fetch -> ``r``, check of ``r``, close);
#: ``BASE`` is the stub's URL, the other names are filled in by :func:`cold_script`
COLD_SNIPPETS: dict[str, tuple[str, str, str, str, str]] = {
    "requests": (
        "import requests",
        "c = requests.Session()",
        "r = c.post(BASE + '/v1/experiences/fetch', json=BODY, headers=HEADERS).json()",
        "r['experiences'][KEY]['payload']['Title']['value'] == TITLE",
        "c.close()",
    ),
    "moengage": (
        "from moengage_personalize import MoEngagePersonalize",
        "c = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=BASE + '/v1')",
        "r = c.fetch_experience(KEY, attributes=ATTRIBUTES, user=CUSTOMER_ID).result(timeout=10)",
        "r.get(KEY).payload['Title'] == TITLE",
        "c.close()",
    ),
    "amplitude": (
        "from amplitude_experiment import RemoteEvaluationClient, RemoteEvaluationConfig, User",
        "c = RemoteEvaluationClient('bench-key', RemoteEvaluationConfig(server_url=BASE))",
        "r = c.fetch_v2(User(user_id=CUSTOMER_ID, user_properties=dict(ATTRIBUTES)))",
        "r[KEY].value == 'variant-2' and r[KEY].payload['Title'] == TITLE",
        "c.close()",
    ),
    "posthog": (
        "from posthog import Posthog",
        "c = Posthog('phc_bench', host=BASE, enable_local_evaluation=False, "
        "feature_flags_request_max_retries=0, send=False)",
        "r = c.get_all_flags_and_payloads(CUSTOMER_ID, person_properties=dict(ATTRIBUTES), "
        "flag_keys_to_evaluate=[KEY])",
        "r['featureFlags'][KEY] == 'variant-2' and "
        "__import__('json').loads(r['featureFlagPayloads'][KEY])['Title'] == TITLE",
        "c.shutdown()",
    ),
    "flagsmith": (
        "from flagsmith import Flagsmith",
        "c = Flagsmith(environment_key='bench-env', api_url=BASE + '/api/v1/')",
        "r = c.get_identity_flags(CUSTOMER_ID, traits=dict(ATTRIBUTES)).get_feature_value(KEY)",
        "__import__('json').loads(r)['Title'] == TITLE",
        "c.session.close()",
    ),
}
COLD_PHASES = ("startup_ms", "import_ms", "construct_ms", "fetch_ms", "total_ms", "process_ms")


def cold_script(name: str, base: str) -> str:
    """The ``-c`` program of one cold sample: it prints its four ``monotonic_ns`` marks and
    whether the first answer was the expected one. Its constants are literals, so nothing but
    ``sys`` and ``time`` (both loaded with the interpreter) runs before the first mark."""
    imports, construct, fetch, check, close = COLD_SNIPPETS[name]
    constants = {
        "BASE": base,
        "KEY": KEY,
        "TITLE": EXPECTED_TITLE,
        "APP_ID": APP_ID,
        "API_KEY": API_KEY,
        "CUSTOMER_ID": CUSTOMER_ID,
        "ATTRIBUTES": dict(ATTRIBUTES),
        "BODY": sdk_body([KEY], ATTRIBUTES, CUSTOMER_ID),
        "HEADERS": auth_headers(APP_ID, API_KEY),
    }
    lines = [
        "import sys, time",
        "t0 = time.monotonic_ns()",
        imports,
        "t1 = time.monotonic_ns()",
        *(f"{k} = {v!r}" for k, v in constants.items()),
        construct,
        "t2 = time.monotonic_ns()",
        fetch,
        "t3 = time.monotonic_ns()",
        "try:",
        f"    ok = bool({check})",
        "except Exception:",
        "    ok = False",
        "print('COLD', t0, t1, t2, t3, ok, flush=True)",
        close,
    ]
    return "\n".join(lines)


def cold_sample(name: str, base: str) -> dict[str, float]:
    """One cold start of ``name`` in a fresh interpreter; the phases in milliseconds."""
    code = cold_script(name, base)
    spawn = time.monotonic_ns()
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exited = time.monotonic_ns()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("COLD ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cold {name}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    _, *marks, ok = line.split()
    t0, t1, t2, t3 = (int(x) for x in marks)
    if ok != "True":
        raise RuntimeError(f"cold {name}: unexpected first answer ({proc.stderr.strip()[-500:]})")
    return {
        "startup_ms": (t0 - spawn) / 1e6,
        "import_ms": (t1 - t0) / 1e6,
        "construct_ms": (t2 - t1) / 1e6,
        "fetch_ms": (t3 - t2) / 1e6,
        "total_ms": (t3 - spawn) / 1e6,
        "process_ms": (exited - spawn) / 1e6,  # until the process has exited (and was reaped)
    }


def bench_cold(stub: Stub, runs: int, notes: list[str]) -> dict[str, dict[str, float]]:
    names = []
    for name in COLD_SNIPPETS:
        if available(name):
            names.append(name)
        else:
            notes.append(f"cold: {name} skipped ({PEER_PACKAGES[name][0]} not installed)")
    for name in names:  # untimed: page cache, bytecode caches
        cold_sample(name, stub.base)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(runs):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cold_sample(name, stub.base))
    return {
        name: {
            **{phase: statistics.median(x[phase] for x in values) for phase in COLD_PHASES},
            "total_min_ms": min(x["total_ms"] for x in values),
            "total_max_ms": max(x["total_ms"] for x in values),
            "runs": len(values),
        }
        for name, values in samples.items()
    }


# tracking ---------------------------------------------------------------------------------------


class Tracker:
    """One SDK's tracking call and flush; ``counter`` is its key in the stub's counts."""

    def __init__(
        self,
        name: str,
        call: Callable[[int], None],
        flush: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self.name = name
        self.call = call  # call(i): the i-th event of a round (user i % users)
        self.flush = flush
        self.close = close


def make_trackers(
    base: str, events: int, users: int, notes: list[str], default_queues: bool
) -> list[Tracker]:
    trackers: list[Tracker] = []
    queue = 10_000 if default_queues else max(events, 10_000)  # 10,000: every SDK's default
    try:
        config = PersonalizeConfig(event_queue_size=queue)
        client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=f"{base}/v1", config=config)
        campaigns = [
            ExperienceCampaign(
                experience_key=KEY,
                payload=dict(PAYLOAD),
                experience_context=dict(CONTEXT),
                source=DataSource.NETWORK,
                user=User(customer_id=f"user-{i}"),
            )
            for i in range(users)
        ]
        shown = client.experience_shown

        def flush_ours() -> None:
            report = client.flush(timeout=60)
            if not report.completed:
                raise RuntimeError(f"moengage: flush did not complete: {report!r}")

        trackers.append(
            Tracker("moengage", lambda i: shown(campaigns[i % users]), flush_ours, client.close)
        )

        if available("posthog"):
            from posthog import Posthog

            ph = Posthog(
                "phc_bench",
                host=base,
                enable_local_evaluation=False,
                max_queue_size=queue,
            )
            capture = ph.capture
            ids = [f"user-{i}" for i in range(users)]
            trackers.append(
                Tracker(
                    "posthog",
                    lambda i: capture(EVENT_NAME, distinct_id=ids[i % users], properties=CONTEXT),
                    lambda: ph.flush(timeout_seconds=60),
                    ph.shutdown,
                )
            )
        else:
            notes.append("tracking: posthog skipped (posthog not installed)")

        if available("launchdarkly"):
            import ldclient
            from ldclient import Context
            from ldclient.config import Config

            ld_config = Config(
                "sdk-bench",
                base_uri=base,
                events_uri=base,
                stream_uri=base,
                use_ldd=True,  # no streaming or polling: flags would come from a store (unused)
                diagnostic_opt_out=True,
                events_max_pending=queue,
            )
            logging.getLogger("ldclient").setLevel(logging.ERROR)
            ld = ldclient.LDClient(config=ld_config)
            contexts = [Context.create(f"user-{i}") for i in range(users)]
            track = ld.track
            trackers.append(
                Tracker(
                    "launchdarkly",
                    lambda i: track(EVENT_NAME, contexts[i % users], CONTEXT),
                    ld.flush,
                    ld.close,
                )
            )
        else:
            notes.append("tracking: launchdarkly skipped (launchdarkly-server-sdk not installed)")
    except BaseException:
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.close()
        raise
    return trackers


def wait_delivered(
    stub: Stub, name: str, target: int, deadline: float, settle: float = 3.0
) -> tuple[int, int]:
    """Poll the stub until it counted ``target`` events of ``name``, or its count has not moved
    for ``settle`` seconds (the rest were lost), or ``deadline`` (``time.monotonic``) passes.

    Returns the count and the ``perf_counter_ns`` at which it was first seen.
    """
    last, seen = -1, time.perf_counter_ns()
    while True:
        count = stub.counts()[name]
        now = time.perf_counter_ns()
        if count != last:
            last, seen = count, now
        if count >= target:
            return count, now
        if (now - seen) / 1e9 > settle or time.monotonic() > deadline:
            return count, seen
        time.sleep(0.002)


def track_round(stub: Stub, tracker: Tracker, events: int, timeout: float) -> dict[str, Any]:
    before = stub.counts()[tracker.name]
    samples = [0] * events
    call = tracker.call
    clock = time.perf_counter_ns
    gc.collect()
    first = clock()
    for i in range(events):
        start = clock()
        call(i)
        samples[i] = clock() - start
    calls_done = clock()
    tracker.flush()
    count, done = wait_delivered(stub, tracker.name, before + events, time.monotonic() + timeout)
    delivered = count - before
    seconds = (done - first) / 1e9
    return {
        "caller": summarize(samples),
        "calls_s": (calls_done - first) / 1e9,
        "delivered": delivered,
        "expected": events,
        "delivery_s": seconds,  # until the last event counted (all of them, or fewer: lost)
        "events_per_s": delivered / seconds if seconds > 0 else 0.0,
    }


def bench_tracking(stub: Stub, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    events, rounds, timeout = args.events, args.track_rounds, args.delivery_timeout
    trackers = make_trackers(stub.base, events, args.users, notes, args.default_queues)
    try:
        for tracker in trackers:  # start threads, open connections: one-time costs
            track_round(stub, tracker, args.track_warmup, timeout)
        results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in trackers}
        for r in range(rounds):
            shift = r % len(trackers)
            for tracker in trackers[shift:] + trackers[:shift]:
                result = track_round(stub, tracker, events, timeout)
                results[tracker.name].append(result)
                if result["delivered"] != events:
                    notes.append(
                        f"tracking: {tracker.name} round {r + 1}: the stub counted "
                        f"{result['delivered']} of {events} events (its count stopped moving; "
                        f"the rest were dropped or not delivered)"
                    )
    finally:
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.close()
    summary: dict[str, Any] = {}
    for name, per_round in results.items():
        samples_median = [x["caller"]["median_us"] for x in per_round]
        summary[name] = {
            "rounds": per_round,
            "caller_median_us": statistics.median(samples_median),
            "caller_p99_us": statistics.median(x["caller"]["p99_us"] for x in per_round),
            "delivery_s": statistics.median(x["delivery_s"] for x in per_round),
            "events_per_s": statistics.median(x["events_per_s"] for x in per_round),
            "delivered": sum(x["delivered"] for x in per_round),
            "expected": sum(x["expected"] for x in per_round),
        }
    return summary


# import time ------------------------------------------------------------------------------------

_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def import_time_us(module: str) -> int:
    """Cumulative import time of ``module`` in a fresh interpreter (``-X importtime``; ``-I``:
    the installed package, not one in the current directory)."""
    proc = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"import {module} failed: {proc.stderr.strip()[-500:]}")
    for line in proc.stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match and match.group(4) == module and len(match.group(3)) == 1:
            return int(match.group(2))
    raise RuntimeError(f"no importtime line for {module}")


def bench_imports(runs: int, notes: list[str]) -> dict[str, dict[str, float]]:
    modules = {}
    for label, module in IMPORTS.items():
        dist = next((d for d, m in PEER_PACKAGES.values() if m == module), None)
        if dist is not None and not available(
            next(k for k, (d, _) in PEER_PACKAGES.items() if d == dist)
        ):
            notes.append(f"import: {label} skipped (not installed)")
            continue
        modules[label] = module
    samples: dict[str, list[int]] = {label: [] for label in modules}
    for r in range(runs):
        labels = list(modules)
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            samples[label].append(import_time_us(modules[label]))
    return {
        label: {
            "median_ms": statistics.median(values) / 1000,
            "min_ms": min(values) / 1000,
            "max_ms": max(values) / 1000,
            "runs": len(values),
        }
        for label, values in samples.items()
    }


# report -----------------------------------------------------------------------------------------

FETCH_LABELS = {
    "requests": "naive requests.Session().post().json()",
    "http.client": "http.client.HTTPConnection + json (floor)",
    "urllib3": "urllib3.HTTPConnectionPool + json (floor)",
    "moengage": "moengage fetch_experience().result()",
    "amplitude": "amplitude-experiment fetch_v2()",
    "posthog": "posthog get_all_flags_and_payloads() (remote)",
    "flagsmith": "flagsmith get_identity_flags()",
}
THREAD_LABELS = {
    "requests": "naive requests, one shared Session",
    "urllib3": "bare urllib3.HTTPConnectionPool(maxsize=N)",
    "amplitude": "amplitude-experiment fetch_v2() (pool N)",
    "moengage": "moengage fetch_experience().result()",
}
COLD_LABELS = {
    "requests": "requests Session().post() (reference)",
    "moengage": "moengage-personalize",
    "amplitude": "amplitude-experiment",
    "posthog": "posthog",
    "flagsmith": "flagsmith",
}
TRACK_LABELS = {
    "moengage": "moengage experience_shown()",
    "posthog": "posthog capture()",
    "launchdarkly": "launchdarkly track()",
}


def print_report(result: dict[str, Any]) -> None:
    if "fetch" in result:
        sizes = result["fetch_answer_bytes"]
        print()
        print(
            "FETCH (ratio: median / naive requests median; answer bytes: "
            + ", ".join(f"{k} {v}" for k, v in sizes.items())
            + ")"
        )
        print(f"{'contender':<48} {'median us':>10} {'p99 us':>10} {'ratio':>7}")
        for name, s in result["fetch"].items():
            print(
                f"{FETCH_LABELS[name]:<48} {s['median_us']:>10.1f} {s['p99_us']:>10.1f} "
                f"{s['ratio']:>6.2f}x"
            )
    if "threads" in result:
        cfg = result["threads_config"]
        print()
        print(
            f"THREADS ({cfg['threads']} threads sharing one client each, a new user per call; "
            f"{cfg['rounds']} rounds of {cfg['seconds']:g} s; calls/s: median over rounds)"
        )
        print(
            f"{'contender':<44} {'calls/s':>8} {'ratio':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'min/thr':>7} {'max/thr':>7} {'fail':>5} {'req/call':>8} {'stub cpu':>8} "
            f"{'own cpu':>8}"
        )
        for name, s in result["threads"].items():
            print(
                f"{THREAD_LABELS[name]:<44} {s['calls_per_s']:>8,.0f} {s['ratio']:>6.2f}x "
                f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['per_thread_min']:>7} "
                f"{s['per_thread_max']:>7} {s['failures']:>5} {s['requests_per_call']:>8.2f} "
                f"{s['stub_cpu_pct']:>7.0f}% {s['client_cpu_pct']:>7.0f}%"
            )
    if "cold" in result:
        print()
        print(
            f"COLD START (fresh python -I per sample, {result['cold_runs']} runs each, medians; "
            "total: spawn to the end of the first fetch)"
        )
        print(
            f"{'contender':<38} {'startup':>8} {'import':>8} {'construct':>9} {'1st fetch':>9} "
            f"{'total ms':>9} {'exited ms':>9}"
        )
        for name, s in result["cold"].items():
            print(
                f"{COLD_LABELS[name]:<38} {s['startup_ms']:>8.1f} {s['import_ms']:>8.1f} "
                f"{s['construct_ms']:>9.2f} {s['fetch_ms']:>9.1f} {s['total_ms']:>9.1f} "
                f"{s['process_ms']:>9.1f}"
            )
    if "tracking" in result:
        print()
        print(
            f"TRACKING ({result['events']:,} events for {result['users']} users per round, "
            f"{result['track_rounds']} rounds; queues {result['queues']}; medians over rounds)"
        )
        print(
            f"{'contender':<32} {'caller med us':>13} {'caller p99 us':>13} "
            f"{'delivery s':>10} {'events/s':>10} {'delivered':>16}"
        )
        for name, s in result["tracking"].items():
            print(
                f"{TRACK_LABELS[name]:<32} {s['caller_median_us']:>13.2f} "
                f"{s['caller_p99_us']:>13.1f} {s['delivery_s']:>10.3f} "
                f"{s['events_per_s']:>10,.0f} {s['delivered']:>7,}/{s['expected']:<8,}"
            )
    if "imports" in result:
        print()
        print(f"IMPORT TIME (python -I -X importtime, {result['import_runs']} runs each)")
        print(f"{'module':<28} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
        for label, s in result["imports"].items():
            print(f"{label:<28} {s['median_ms']:>10.1f} {s['min_ms']:>8.1f} {s['max_ms']:>8.1f}")


PARTS = ("fetch", "threads", "cold", "tracking", "imports")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="fetch rounds (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="fetch warm-up calls each")
    parser.add_argument("--events", type=int, default=20_000, help="events per tracking round")
    parser.add_argument("--users", type=int, default=100, help="distinct users")
    parser.add_argument("--track-rounds", type=int, default=3, help="tracking rounds per SDK")
    parser.add_argument("--track-warmup", type=int, default=500, help="untimed events first")
    parser.add_argument(
        "--delivery-timeout", type=float, default=30.0, help="seconds to wait per round"
    )
    parser.add_argument(
        "--default-queues",
        action="store_true",
        help="leave every SDK's event queue at its default (10,000), not sized to a round",
    )
    parser.add_argument("--threads", type=int, default=16, help="threads section: threads")
    parser.add_argument(
        "--thread-seconds", type=float, default=3.0, help="threads section: seconds per round"
    )
    parser.add_argument("--thread-rounds", type=int, default=3, help="threads section: rounds")
    parser.add_argument(
        "--thread-warmup", type=float, default=0.5, help="threads section: untimed s each"
    )
    parser.add_argument("--cold-runs", type=int, default=7, help="cold starts per contender")
    parser.add_argument("--import-runs", type=int, default=7, help="fresh imports per module")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.thread_rounds < 1 or args.cold_runs < 1 or args.import_runs < 1:
        parser.error("--threads, --thread-rounds, --cold-runs and --import-runs must be >= 1")
    parts = set(args.only or PARTS)

    env = environment()
    print(f"Python {env['python']} ({env['executable']})")
    print(f"{env['platform']}, {env['cpus']} CPUs, load average {env['loadavg_at_start']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"moengage_personalize from {env['moengage_personalize_file']}")
    notes: list[str] = []
    result: dict[str, Any] = {"environment": env, "notes": notes}
    started = time.perf_counter()
    with Stub() as stub:
        print(f"stub pid {stub.proc.pid} on {stub.base}")
        if "fetch" in parts:
            result["fetch_answer_bytes"] = {k: len(v) for k, v in fetch_answers().items()}
            result["fetch"] = bench_fetch(stub, args.rounds, args.warmup, notes)
            result["fetch_rounds"] = args.rounds
        if "threads" in parts:
            result["threads"] = bench_threads(stub, args, notes)
            result["threads_config"] = {
                "threads": args.threads,
                "seconds": args.thread_seconds,
                "rounds": args.thread_rounds,
                "warmup_s": args.thread_warmup,
            }
        if "cold" in parts:
            result["cold"] = bench_cold(stub, args.cold_runs, notes)
            result["cold_runs"] = args.cold_runs
        if "tracking" in parts:
            result["tracking"] = bench_tracking(stub, args, notes)
            result.update(
                events=args.events,
                users=args.users,
                track_rounds=args.track_rounds,
                queues="defaults (10,000)" if args.default_queues else "sized to a round",
            )
        result["stub_requests"] = stub.counts()["requests"]
    print("stub answered: " + ", ".join(f"{k} x{v}" for k, v in result["stub_requests"].items()))
    unknown = set(result["stub_requests"]) - KNOWN_ROUTES
    if unknown:
        notes.append(f"the stub was asked for unknown routes (404): {sorted(unknown)}")
    if "imports" in parts:
        result["imports"] = bench_imports(args.import_runs, notes)
        result["import_runs"] = args.import_runs
    result["wall_time_s"] = time.perf_counter() - started
    result["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    print_report(result)
    print()
    for note in notes:
        print(f"note: {note}")
    print(
        f"wall time {result['wall_time_s']:.1f} s; load average at end {result['loadavg_at_end']}"
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
