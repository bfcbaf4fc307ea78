"""A minimal HTTP/1.1 keep-alive stub of the Personalize API, for benchmarks only.

Runs in its own process so that the client's overhead, not the server's, is what a benchmark in
the parent process measures. One asyncio event loop with a bare :class:`asyncio.Protocol` (no
streams, no framework): it parses the request line and headers, reads the body fully by
``Content-Length`` and answers from pre-built byte strings. It serves any number of concurrent
keep-alive connections (and pipelined requests on one connection, in order).

Routes::

    GET  /v1/experiences/metadata   {"metadata": {"count": N, "experiences": [...]}}
    POST /v1/experiences/fetch      a small "homepage-banner" experience
    anything else                   404

Usage: ``python _stub_server.py [--host 127.0.0.1] [--port 0] [--experiences N]``. The bound port
is printed as the first line on stdout (``PORT <n>``); the process serves until it is terminated
(SIGTERM/SIGINT) or its stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

FETCH_ANSWER: dict[str, Any] = {
    "experiences": {
        "homepage-banner": {
            "payload": {
                "Title": {"value": "Free shipping on orders over 999", "data_type": "string"},
                "ImageURL": {"value": "https://cdn.example.com/b.jpg", "data_type": "string"},
                "CtaLabel": {"value": "Shop Now", "data_type": "string"},
            },
            "experience_context": {
                "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
                "experience": "Homepage Banner",
                "moe_locale_id": "0",
                "moe_variation_id": "2",
                "audience_name": "High Intent Users",
                "audience_id": "42D",
                "type": "Web Personalization",
                "experience_type": "API based Experience",
            },
        }
    }
}


def metadata_answer(count: int) -> dict[str, Any]:
    """The metadata body: ``homepage-banner`` first, then ``count - 1`` filler experiences."""
    experiences = [
        {
            "experience_key": "homepage-banner",
            "experience_name": "Homepage Banner",
            "status": "Active",
        }
    ]
    statuses = ("Active", "Paused", "Scheduled")
    experiences.extend(
        {
            "experience_key": f"experience-{i}",
            "experience_name": f"Experience {i}",
            "status": statuses[i % 3],
        }
        for i in range(1, count)
    )
    return {"metadata": {"count": len(experiences), "experiences": experiences}}


def response_bytes(status: str, body: bytes, *, close: bool = False) -> bytes:
    """A complete HTTP/1.1 response with ``Content-Length``."""
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Routes:
    """Pre-built answers keyed by (method, path)."""

    def __init__(self, experiences: int) -> None:
        self.answers = {
            (b"GET", b"/v1/experiences/metadata"): response_bytes(
                "200 OK", _dumps(metadata_answer(experiences))
            ),
            (b"POST", b"/v1/experiences/fetch"): response_bytes("200 OK", _dumps(FETCH_ANSWER)),
        }
        self.not_found = response_bytes("404 Not Found", b'{"title":"not found"}')
        self.bad_request = response_bytes("400 Bad Request", b'{"title":"bad request"}', close=True)


class StubProtocol(asyncio.Protocol):
    """One connection: a byte buffer, parsed request by request (keep-alive, pipelining)."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        transport = self._transport
        assert transport is not None
        out: list[bytes] = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    out.append(self._routes.bad_request)
                    transport.write(b"".join(out))
                    transport.close()
                    return
                break
            head = bytes(buffer[:end])
            lines = head.split(b"\r\n")
            request_line = lines[0].split(b" ")
            if len(request_line) != 3:
                out.append(self._routes.bad_request)
                transport.write(b"".join(out))
                transport.close()
                return
            length = 0
            close = request_line[2] == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        length = -1
                elif lname == b"connection":
                    close = value.strip().lower() == b"close"
                elif lname == b"transfer-encoding":
                    length = -1  # chunked bodies are not needed by the benchmarks
            if length < 0 or length > MAX_BODY_BYTES:
                out.append(self._routes.bad_request)
                transport.write(b"".join(out))
                transport.close()
                return
            total = end + 4 + length
            if len(buffer) < total:
                break  # the body is not complete yet: wait for more data
            del buffer[:total]
            method, target = request_line[0], request_line[1].partition(b"?")[0]
            out.append(self._routes.answers.get((method, target), self._routes.not_found))
            if close:
                transport.write(b"".join(out))
                transport.close()
                return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, experiences: int) -> None:
    routes = Routes(experiences)
    await serve_protocol(host, port, lambda: StubProtocol(routes))


async def serve_protocol(
    host: str, port: int, protocol_factory: Callable[[], asyncio.Protocol]
) -> None:
    """Serve ``protocol_factory``'s connections on ``host:port``, print ``PORT <n>``, and run
    until SIGTERM/SIGINT or until stdin is closed (shared with ``peers/_peer_stub.py``)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, host, port, reuse_address=True, backlog=128)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    # The parent closing our stdin (or dying) also stops us. A daemon thread, so that it never
    # holds up the interpreter's exit.
    def watch_stdin() -> None:
        # os.read on the raw descriptor: a buffered sys.stdin read would hold the reader's lock
        # and make a daemon thread abort the interpreter's shutdown.
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(stop.set)

    fd = sys.stdin.fileno()
    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--experiences", type=int, default=20, help="metadata list size")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the stub server binds to loopback only")
    asyncio.run(serve(args.host, args.port, max(1, args.experiences)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
