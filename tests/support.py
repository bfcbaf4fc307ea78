"""Shared test support: constants, canned answers, fakes and small servers on 127.0.0.1.

No test mocks ``requests``: every call crosses a real socket. Retry sleeps and TTL clocks are
injected through ``PersonalizeConfig(sleep=..., clock=...)`` so no test really waits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pytest_httpserver import HTTPServer

APP_ID = "WORKSPACE1"
API_KEY = "s3cr3t-api-key-XYZ"
FUTURE_TIMEOUT = 10  # every Future in a test is awaited with a timeout

CONTEXT = {
    "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
    "experience": "Homepage Banner",
    "moe_locale_id": "0",
    "moe_variation_id": "2",
    "audience_name": "High Intent Users",
    "audience_id": "42D",
    "type": "Web Personalization",
    "experience_type": "API based Experience",
}


def meta_body(*entries: tuple[str, str]) -> dict[str, Any]:
    """A metadata answer listing ``(key, RESTStatus)`` pairs."""
    return {
        "metadata": {
            "count": len(entries),
            "experiences": [
                {"experience_key": k, "experience_name": k.replace("-", " ").title(), "status": s}
                for k, s in entries
            ],
        }
    }


def served(*keys: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fetch answer serving ``keys`` with a simple payload."""
    payload = payload or {"Title": {"value": "Hello", "data_type": "string"}}
    return {
        "experiences": {
            k: {"payload": payload, "experience_context": {**CONTEXT, "experience": k}}
            for k in keys
        }
    }


DEFAULT_META = meta_body(
    ("homepage-banner", "Active"),
    ("cart-upsell", "Active"),
    ("paused-one", "Paused"),
    ("later-one", "Scheduled"),
)


class FakeClock:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps:
    """Records retry sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def requests_to(httpserver: HTTPServer, path: str) -> list[Any]:
    """The requests the server received on ``path``, in order."""
    return [req for req, _ in httpserver.log if req.path == path]


def fetch_bodies(httpserver: HTTPServer) -> list[dict[str, Any]]:
    return [json.loads(r.data) for r in requests_to(httpserver, "/v1/experiences/fetch")]


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._conns:
            conn.close()
        self.sock.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for background work)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
