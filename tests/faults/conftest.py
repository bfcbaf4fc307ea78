"""Fixtures of the fault-injection suite: misbehaving servers, short sleeps, a fake resolver."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fault_servers import FakeResolver, FaultServer, ShortSleeps


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    yield srv
    srv.close()


@pytest.fixture
def short_sleeps() -> ShortSleeps:
    return ShortSleeps()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    """``socket.getaddrinfo`` patched in-process: no test sends a real DNS query."""
    fake = FakeResolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.heal()  # a look-up still hanging ends now
    assert fake.refused == []
