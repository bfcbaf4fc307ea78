"""moengage_personalize.testing and the pytest plugin: what users' own tests get."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from moengage_personalize import MoEngagePersonalize
from moengage_personalize.server import PersonalizeServer
from moengage_personalize.testing import personalize_server

MINI = {
    "workspace_id": "MINI",
    "api_key": "mini-key",
    "experiences": [
        {
            "key": "only",
            "name": "Only",
            "audiences": [
                {
                    "id": "A",
                    "all_users": True,
                    "variations": [
                        {"payload": {"Greeting": {"value": "hi", "data_type": "string"}}}
                    ],
                }
            ],
        }
    ],
}


def test_context_manager_serves_the_sample_to_the_sdk() -> None:
    """personalize_server() yields base_url (/v1), app_id and api_key the SDK can use."""
    with personalize_server() as server:
        assert server.base_url.endswith("/v1")
        assert server.base_url.startswith("http://127.0.0.1:")
        with MoEngagePersonalize(
            server.app_id, api_key=server.api_key, base_url=server.base_url
        ) as client:
            result = client.fetch_experience("loyalty-points", user="user_8821").result(10)
        assert result.experiences[0].payload["MaxPoints"] in (5000, 3000)


def test_context_manager_takes_a_dict(tmp_path: Path) -> None:
    """Definitions given as a dict replace the sample, credentials included."""
    with personalize_server(MINI) as server:
        assert (server.app_id, server.api_key) == ("MINI", "mini-key")
        assert server.definitions.experience("only") is not None


def test_context_manager_takes_a_file_path(tmp_path: Path) -> None:
    """Definitions given as a file path are loaded from it."""
    import json

    path = tmp_path / "mini.json"
    path.write_text(json.dumps(MINI))
    with personalize_server(str(path)) as server:
        assert server.workspace_id == "MINI"


def test_recorded_events_are_returned(tmp_path: Path) -> None:
    """events() returns what the server stored, with attributes decoded."""
    with personalize_server() as server:
        requests.post(
            server.base_url + "/experiences/events",
            json={
                "elements": [
                    {
                        "customer_id": "c1",
                        "actions": [
                            {
                                "action": "MOE_PERSONALIZATION_MESSAGE_SHOWN",
                                "moe_event_uuid": "e-1",
                                "attributes": {
                                    "cid": "x",
                                    "experience": "X",
                                    "moe_locale_id": "0",
                                    "moe_variation_id": "1",
                                    "audience_name": "All Users",
                                    "audience_id": "5A",
                                },
                            }
                        ],
                    }
                ]
            },
            headers={"MOE-APPKEY": server.app_id},
            auth=(server.app_id, server.api_key),
            timeout=10,
        )
        (event,) = server.events()
    assert event["moe_event_uuid"] == "e-1"
    assert event["attributes"]["audience_id"] == "5A"


def test_context_manager_stops_the_server_and_its_threads() -> None:
    """After the block the port refuses connections and no server thread is left."""
    before = set(threading.enumerate())
    with personalize_server() as server:
        url = server.base_url
        requests.get(server.url + "/_local/health", timeout=10)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/experiences/metadata", timeout=2)
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def test_the_fixture_is_a_running_sample_server(personalize_server: PersonalizeServer) -> None:
    """The plugin's personalize_server fixture is started with the sample workspace."""
    assert personalize_server.workspace_id == "LOCALSAMPLE01"
    response = requests.get(personalize_server.url + "/_local/health", timeout=10)
    assert response.json()["status"] == "ok"


@pytest.mark.personalize_experiences(MINI)
def test_the_marker_chooses_the_definitions(personalize_server: PersonalizeServer) -> None:
    """@pytest.mark.personalize_experiences(...) gives the fixture other definitions."""
    assert personalize_server.workspace_id == "MINI"


def test_the_factory_starts_several_servers(personalize_server_factory: Any) -> None:
    """personalize_server_factory starts independent servers on different ports."""
    first = personalize_server_factory()
    second = personalize_server_factory(MINI, rate_limit=5)
    assert first.port != second.port
    assert second.app.rate_limit == 5


def test_the_plugin_loads_in_a_fresh_pytest_run(tmp_path: Path) -> None:
    """A separate pytest session finds the fixture through the pytest11 entry point."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent("""
        from moengage_personalize import MoEngagePersonalize

        def test_banner(personalize_server):
            with MoEngagePersonalize(personalize_server.app_id,
                                     api_key=personalize_server.api_key,
                                     base_url=personalize_server.base_url) as client:
                meta = client.fetch_experiences_meta().result(10)
            assert any(m.experience_key == "homepage-banner" for m in meta.experiences)
    """)
    )
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout
