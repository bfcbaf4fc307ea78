"""Fixtures of the integration tests: the real local server (the package's pytest plugin) and a
client pointed at it. Django and Flask tests skip themselves when those are not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import EXAMPLES

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig
from moengage_personalize.server import PersonalizeServer


@pytest.fixture
def sync_client(personalize_server: PersonalizeServer) -> Iterator[MoEngagePersonalize]:
    """A client on the local server (sample experiences), closed at the end of the test."""
    with MoEngagePersonalize(
        personalize_server.app_id,
        api_key=personalize_server.api_key,
        base_url=personalize_server.base_url,
        config=PersonalizeConfig(timeout=5.0),
    ) as client:
        yield client


@pytest.fixture(scope="module")
def examples_dir() -> Iterator[Path]:
    """``examples/`` importable (``import flask_app``) for the length of the test module."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield EXAMPLES
    finally:
        sys.path.remove(str(EXAMPLES))
