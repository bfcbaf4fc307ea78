"""Helpers shared by the benchmark scripts (not a benchmark itself).

* statistics of nanosecond samples: :func:`percentile`, :func:`median`, :func:`latency_us`,
  :func:`add_ratios`;
* :func:`run_interleaved` -- warm-up, then rounds of zero-argument calls in a random order per
  round, each call timed with ``perf_counter_ns``;
* :class:`StubServer` -- a stub server script (``_stub_server.py`` or ``peers/_peer_stub.py``) in
  a subprocess on an ephemeral loopback port, stopped at the end, also on errors;
  :func:`first_line` reads a subprocess's first line of stdout, with a timeout;
* :func:`environment`, :func:`print_environment`, :func:`write_json` -- the reporting;
* :func:`auth_headers`, :data:`CONTEXT` and :func:`campaigns_for` -- the request and campaign
  data the tracking benchmarks share.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import platform
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3

import moengage_personalize
from moengage_personalize import DataSource, ExperienceCampaign, User

HERE = Path(__file__).resolve().parent
STUB_SERVER = HERE / "_stub_server.py"
_Server = TypeVar("_Server", bound="StubServer")

#: the campaign context of the tracking benchmarks' ``experience_shown`` calls
CONTEXT = {
    "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
    "experience": "Homepage Banner — Free Shipping",
    "moe_locale_id": "0",
    "moe_variation_id": "2",
    "audience_name": "High Intent Users",
    "audience_id": "42D",
    "type": "Web Personalization",
    "experience_type": "API based Experience",
}


# statistics -------------------------------------------------------------------------------------


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


def latency_us(ordered: list[int]) -> dict[str, float]:
    """``n``, median, p90 and p99 (in microseconds) of sorted nanosecond samples."""
    return {
        "n": len(ordered),
        "median_us": median(ordered) / 1000,
        "p90_us": percentile(ordered, 90) / 1000,
        "p99_us": percentile(ordered, 99) / 1000,
    }


def add_ratios(stats: dict[str, dict[str, float]], baseline: str) -> dict[str, dict[str, float]]:
    """Add each item's ``ratio``: its median over the median of ``baseline``."""
    base = stats[baseline]["median_us"]
    for item in stats.values():
        item["ratio"] = item["median_us"] / base
    return stats


def run_interleaved(
    calls: dict[str, Callable[[], Any]], rounds: int, warmup: int
) -> dict[str, list[int]]:
    """``warmup`` untimed calls of each, then ``rounds`` rounds of one timed call each, in a
    new random order every round (seeded: the same orders every run); the nanoseconds of every
    call by name. A rotating order would keep the cyclic order, so each contender would always
    follow the same one, and a call pays for what the one before it left behind (a garbage
    collection due, a server still busy): 25-45 us on loopback, measured."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    gc.collect()
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    shuffle = random.Random(20261204).shuffle
    order = list(names)
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            call = calls[name]
            start = clock()
            call()
            samples[name].append(clock() - start)
    return samples


# subprocess servers -----------------------------------------------------------------------------


def first_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The first line ``proc`` prints on stdout (stripped); RuntimeError after ``timeout`` s."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"{what} did not start within {timeout} s")
    return proc.stdout.readline().decode("utf-8", "replace").strip()


class StubServer:
    """A stub server script in a subprocess: started on an ephemeral loopback port (it prints
    ``PORT <n>`` first), stopped on exit by closing its stdin (then SIGTERM, SIGKILL)."""

    def __init__(
        self, experiences: int = 20, start_timeout: float = 10.0, script: Path = STUB_SERVER
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(script), "--experiences", str(experiences)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            line = first_line(self.proc, start_timeout, f"the stub server {script.name}")
            if not line.startswith("PORT "):
                raise RuntimeError(f"the stub server did not start (it printed {line!r})")
            self.port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
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
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self: _Server) -> _Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# reporting --------------------------------------------------------------------------------------


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


def print_environment(env: dict[str, Any]) -> None:
    print(f"Python {env['python']}")
    print(
        f"{env['platform']}, {env['cpus']} CPUs; moengage-personalize "
        f"{env['moengage_personalize']}, requests {env['requests']}, urllib3 {env['urllib3']}"
    )


def write_json(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


# request and campaign data ----------------------------------------------------------------------


def auth_headers(app_id: str, api_key: str) -> dict[str, str]:
    token = base64.b64encode(f"{app_id}:{api_key}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}", "MOE-APPKEY": app_id}


def campaigns_for(users: int) -> list[ExperienceCampaign]:
    """One ``homepage-banner`` campaign per user, as a fetch for that user would have returned."""
    return [
        ExperienceCampaign(
            experience_key="homepage-banner",
            payload={},
            experience_context=dict(CONTEXT),
            source=DataSource.NETWORK,
            user=User(customer_id=f"user-{i}"),
        )
        for i in range(users)
    ]
