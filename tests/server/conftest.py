"""Fixtures for the local server's tests: a real server on 127.0.0.1 and an HTTP helper.

Every request crosses a real socket (``requests`` or raw ``socket`` for what ``requests`` cannot
send); every server is stopped at the end of its test.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from moengage_personalize.server import PersonalizeServer, sample_path

WEEKDAYS_MESSAGE = "[Sunday, Monday, Tuesday, Wednesday, Thursday, Friday, Saturday]"


def sample_document() -> dict[str, Any]:
    """A fresh copy of the sample definitions as a dict (tests change it freely)."""
    with open(sample_path(), encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    return copy.deepcopy(document)


def context(**overrides: str) -> dict[str, str]:
    """The six attributes an event needs, as an experience_context carries them."""
    attributes = {
        "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
        "experience": "Homepage Banner — Free Shipping",
        "moe_locale_id": "0",
        "moe_variation_id": "2",
        "audience_name": "High Intent Users",
        "audience_id": "42D",
        "type": "Web Personalization",
    }
    attributes.update(overrides)
    return attributes


def action(
    uuid: str, name: str = "MOE_PERSONALIZATION_MESSAGE_SHOWN", **extra: Any
) -> dict[str, Any]:
    """One event action for ``elements[].actions``."""
    item: dict[str, Any] = {
        "action": name,
        "moe_event_uuid": uuid,
        "event_time": 1725258670,
        "platform": "web",
        "attributes": context(),
    }
    item.update(extra)
    return item


def element(
    *actions: dict[str, Any], customer_id: str = "user_8821", **extra: Any
) -> dict[str, Any]:
    """One ``elements[]`` entry (one user)."""
    return {"customer_id": customer_id, "actions": list(actions), **extra}


def raw_exchange(server: PersonalizeServer, data: bytes, *, shut_write: bool = False) -> bytes:
    """Send ``data`` on a fresh connection and read the answer until the server closes or a
    full response (by Content-Length) arrived."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(rest) >= length:
                    return received
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def status_of(raw: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> Any:
    """The JSON body of a raw HTTP response."""
    return json.loads(raw.partition(b"\r\n\r\n")[2])


class Api:
    """Requests to one server with its credentials (override any of them per call)."""

    def __init__(self, server: PersonalizeServer) -> None:
        self.server = server
        self.session = requests.Session()

    def headers(self, **extra: str) -> dict[str, str]:
        return {"MOE-APPKEY": self.server.workspace_id, **extra}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("auth", (self.server.workspace_id, self.server.api_key))
        return self.session.get(self.server.base_url + path, timeout=10, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("auth", (self.server.workspace_id, self.server.api_key))
        if body is not None:
            kwargs["json"] = body
        return self.session.post(self.server.base_url + path, timeout=10, **kwargs)

    def meta(self, status: str | None = None) -> requests.Response:
        return self.get(
            "/experiences/metadata", params=None if status is None else {"status": status}
        )

    def fetch(self, body: Any) -> requests.Response:
        return self.post("/experiences/fetch", body)

    def served(self, body: Any) -> dict[str, Any]:
        """The ``experiences`` object of a 200 fetch answer."""
        response = self.fetch(body)
        assert response.status_code == 200, response.text
        experiences: dict[str, Any] = response.json()["experiences"]
        return experiences

    def events(self, body: Any) -> requests.Response:
        return self.post("/experiences/events", body)

    def local(self, path: str, **params: str) -> requests.Response:
        return self.session.get(f"{self.server.url}/_local/{path}", params=params, timeout=10)

    def close(self) -> None:
        self.session.close()

    # builders and raw HTTP, here so that tests need not import this module
    context = staticmethod(context)
    action = staticmethod(action)
    element = staticmethod(element)
    status_of = staticmethod(status_of)
    body_of = staticmethod(body_of)

    def raw(self, data: bytes, *, shut_write: bool = False) -> bytes:
        """Send raw bytes on a fresh connection; the raw answer."""
        return raw_exchange(self.server, data, shut_write=shut_write)


@pytest.fixture
def server() -> Iterator[PersonalizeServer]:
    """The sample workspace on a free port."""
    with PersonalizeServer(port=0) as running:
        yield running


@pytest.fixture
def sample_doc() -> dict[str, Any]:
    """A fresh copy of the sample definitions as a dict (change it freely)."""
    return sample_document()


@pytest.fixture
def api(server: PersonalizeServer) -> Iterator[Api]:
    """Authenticated requests to ``server``."""
    helper = Api(server)
    yield helper
    helper.close()
