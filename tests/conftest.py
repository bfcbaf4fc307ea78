"""Shared fixtures: a real HTTP server on 127.0.0.1 (pytest-httpserver) and a client pointed at it.

No test mocks ``requests``: every call crosses a real socket. Retry sleeps and TTL clocks are
injected through ``PersonalizeConfig(sleep=..., clock=...)`` so no test really waits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

from support import API_KEY, APP_ID, DEFAULT_META, FakeClock, SilentServer, Sleeps


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def config(clock: FakeClock, sleeps: Sleeps) -> PersonalizeConfig:
    return PersonalizeConfig(clock=clock, sleep=sleeps, timeout=5.0)


@pytest.fixture
def base_url(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/v1")


@pytest.fixture
def client(base_url: str, config: PersonalizeConfig) -> Iterator[MoEngagePersonalize]:
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as c:
        yield c


@pytest.fixture
def with_meta(httpserver: HTTPServer) -> HTTPServer:
    """The server answers metadata with DEFAULT_META (any number of times)."""
    httpserver.expect_request("/v1/experiences/metadata", method="GET").respond_with_json(
        DEFAULT_META
    )
    return httpserver


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
