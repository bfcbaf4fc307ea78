"""Loopback stub of the endpoints the peer benchmark talks to, for benchmarks only.

One process, one asyncio event loop, a bare :class:`asyncio.Protocol` (HTTP/1.1 keep-alive, bodies
read by ``Content-Length``, gzip bodies inflated), the same design as ``../_stub_server.py``. Every
answer is valid for the SDK that asks, so no benchmark measures an error path. The fetch answers
carry the same content (the ``homepage-banner`` experience: title, image URL, CTA label and its
campaign context), each in its SDK's shape, so the payloads are about the same size.

Fetch routes (pre-built answers)::

    GET  /v1/experiences/metadata   ours: the experience list (warm-up of the metadata cache)
    POST /v1/experiences/fetch      ours: the ``homepage-banner`` experience (``_stub_server.py``)
    POST /sdk/v2/vardata            amplitude-experiment ``RemoteEvaluationClient.fetch_v2``
    POST /flags/                    posthog remote flags (``/flags/?v=4``)
    POST /api/v1/identities/        flagsmith ``get_identity_flags``

Event routes (the events in each body are counted, by SDK)::

    POST /v1/experiences/events     ours: ``{"elements": [{"actions": [...]}, ...]}`` -> 200
    POST /batch/                    posthog: ``{"batch": [...]}`` -> 200 ``{"status": 1}``
    POST /bulk                      launchdarkly: ``[{"kind": "custom", ...}, ...]`` -> 202
    POST /diagnostic                launchdarkly diagnostics (answered, not counted)

Control::

    GET  /_counts                   ``{"moengage": n, "posthog": n, "launchdarkly": n,
                                      "requests": {"<path>": n, ...}}``

Usage: ``python _peer_stub.py [--port 0]``. The bound port is printed as the first line on stdout
(``PORT <n>``); the process serves until terminated (SIGTERM/SIGINT) or its stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _stub_server import FETCH_ANSWER, _dumps, metadata_answer, response_bytes, serve_protocol

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
KEY = "homepage-banner"
EVENT_NAME = "experience_shown"

_EXPERIENCE = FETCH_ANSWER["experiences"][KEY]
#: the content every fetch answer carries: {"Title": ..., "ImageURL": ..., "CtaLabel": ...}
PAYLOAD = {name: item["value"] for name, item in _EXPERIENCE["payload"].items()}
CONTEXT = dict(_EXPERIENCE["experience_context"])


def amplitude_answer() -> dict[str, Any]:
    """``POST /sdk/v2/vardata``: flag key -> evaluation variant (value, payload, metadata)."""
    return {
        KEY: {
            "key": "variant-2",
            "value": "variant-2",
            "payload": PAYLOAD,
            "metadata": {
                "flagType": "experiment",
                "flagVersion": 7,
                "evaluationId": CONTEXT["cid"],
                "segmentName": CONTEXT["audience_name"],
                "segmentId": CONTEXT["audience_id"],
                "experimentKey": "exp-42D",
                "experience": CONTEXT["experience"],
                "experienceType": CONTEXT["experience_type"],
                "localeId": CONTEXT["moe_locale_id"],
                "variationId": CONTEXT["moe_variation_id"],
                "deployed": True,
                "default": False,
            },
        }
    }


def posthog_answer() -> dict[str, Any]:
    """``POST /flags/?v=4``: one typed record; the payload is a JSON string, as PostHog sends it."""
    return {
        "flags": {
            KEY: {
                "key": KEY,
                "value": "variant-2",
                "enabled": True,
                "variant": "variant-2",
                "failed": False,
                "reason": {
                    "code": "condition_match",
                    "condition_index": 0,
                    "description": "Matched condition set 1",
                },
                "metadata": {
                    "id": 42,
                    "version": 7,
                    "payload": json.dumps(PAYLOAD, separators=(",", ":")),
                    "description": CONTEXT["experience"],
                },
            }
        },
        "errorsWhileComputingFlags": False,
        "requestId": "0f6d2a52-8f3c-4f0e-9d55-2b9f9b0c1f11",
    }


def flagsmith_answer() -> dict[str, Any]:
    """``POST /api/v1/identities/``: the identity's flags (value: the payload as a JSON string)."""
    return {
        "identifier": "user_8821",
        "flags": [
            {
                "id": 42,
                "feature": {
                    "id": 7,
                    "name": KEY,
                    "type": "STANDARD",
                    "description": CONTEXT["experience"],
                    "initial_value": None,
                    "default_enabled": True,
                    "created_date": "2026-03-08T10:15:00.000000Z",
                },
                "feature_state_value": json.dumps(PAYLOAD, separators=(",", ":")),
                "enabled": True,
                "environment": 1,
                "identity": None,
                "feature_segment": None,
            }
        ],
        "traits": [{"trait_key": "current_page", "trait_value": "home"}],
    }


def fetch_answers() -> dict[str, bytes]:
    """The fetch answers' JSON bodies by contender (the runner prints their sizes)."""
    return {
        "ours": _dumps(FETCH_ANSWER),
        "amplitude": _dumps(amplitude_answer()),
        "posthog": _dumps(posthog_answer()),
        "flagsmith": _dumps(flagsmith_answer()),
    }


def _count_ours(body: Any) -> int:
    return sum(len(element.get("actions", ())) for element in body.get("elements", ()))


def _count_posthog(body: Any) -> int:
    return sum(1 for event in body.get("batch", ()) if event.get("event") == EVENT_NAME)


def _count_launchdarkly(body: Any) -> int:
    return sum(1 for e in body if e.get("kind") == "custom" and e.get("key") == EVENT_NAME)


class Routes:
    def __init__(self, experiences: int) -> None:
        answers = fetch_answers()
        ok = b'{"status":"success","message":"events accepted"}'
        self.fixed = {
            (b"GET", b"/v1/experiences/metadata"): response_bytes(
                "200 OK", _dumps(metadata_answer(experiences))
            ),
            (b"POST", b"/v1/experiences/fetch"): response_bytes("200 OK", answers["ours"]),
            (b"POST", b"/sdk/v2/vardata"): response_bytes("200 OK", answers["amplitude"]),
            (b"POST", b"/flags/"): response_bytes("200 OK", answers["posthog"]),
            (b"POST", b"/api/v1/identities/"): response_bytes("200 OK", answers["flagsmith"]),
            (b"POST", b"/diagnostic"): response_bytes("202 Accepted", b""),
        }
        self.events = {
            (b"POST", b"/v1/experiences/events"): (
                "moengage",
                _count_ours,
                response_bytes("200 OK", ok),
            ),
            (b"POST", b"/batch/"): (
                "posthog",
                _count_posthog,
                response_bytes("200 OK", b'{"status":1}'),
            ),
            (b"POST", b"/bulk"): (
                "launchdarkly",
                _count_launchdarkly,
                response_bytes("202 Accepted", b""),
            ),
        }
        self.counts: Counter[str] = Counter(moengage=0, posthog=0, launchdarkly=0)
        self.requests: Counter[str] = Counter()
        self.not_found = response_bytes("404 Not Found", b'{"title":"not found"}')
        self.bad_request = response_bytes("400 Bad Request", b'{"title":"bad request"}', close=True)

    def answer(self, method: bytes, target: bytes, body: bytes, encoding: bytes) -> bytes:
        path = target.partition(b"?")[0]
        self.requests[f"{method.decode()} {path.decode()}"] += 1
        key = (method, path)
        fixed = self.fixed.get(key)
        if fixed is not None:
            return fixed
        if key == (b"GET", b"/_counts"):
            counts = {**self.counts, "requests": dict(self.requests)}
            return response_bytes("200 OK", _dumps(counts))
        event_route = self.events.get(key)
        if event_route is None:
            return self.not_found
        name, count, ok = event_route
        try:
            if encoding == b"gzip":
                body = gzip.decompress(body)
            self.counts[name] += count(json.loads(body))
        except (ValueError, AttributeError, TypeError, OSError):
            return self.bad_request
        return ok


class StubProtocol(asyncio.Protocol):
    """One connection: a byte buffer, parsed request by request (keep-alive, pipelining)."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def _fail(self, out: list[bytes]) -> None:
        assert self._transport is not None
        out.append(self._routes.bad_request)
        self._transport.write(b"".join(out))
        self._transport.close()

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
                    self._fail(out)
                    return
                break
            lines = bytes(buffer[:end]).split(b"\r\n")
            request_line = lines[0].split(b" ")
            if len(request_line) != 3:
                self._fail(out)
                return
            length = 0
            encoding = b""
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
                elif lname == b"content-encoding":
                    encoding = value.strip().lower()
                elif lname == b"transfer-encoding":
                    length = -1  # no SDK here sends chunked bodies
            if length < 0 or length > MAX_BODY_BYTES:
                self._fail(out)
                return
            total = end + 4 + length
            if len(buffer) < total:
                break  # the body is not complete yet
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            out.append(self._routes.answer(request_line[0], request_line[1], body, encoding))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--experiences", type=int, default=20, help="metadata list size")
    args = parser.parse_args(argv)
    asyncio.run(serve("127.0.0.1", args.port, max(1, args.experiences)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
