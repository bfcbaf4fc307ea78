"""Every example in ``examples/`` runs to exit status 0 against the local server (each starts
the embedded one when no base URL is given), in a subprocess with a timeout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from integration_support import EXAMPLES

from moengage_personalize.server import PersonalizeServer

TIMEOUT = 60  # seconds per example; each takes about half a second


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MOENGAGE_", "DJANGO_SETTINGS_MODULE"))
    }
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed"
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["script.py"], id="script"),
        pytest.param(["asyncio_script.py"], id="asyncio"),
        pytest.param(["flask_app.py", "--check"], id="flask", marks=needs("flask")),
        pytest.param(["django_view.py", "check-page"], id="django", marks=needs("django")),
    ],
)
def test_example_runs(command: list[str]) -> None:
    """The example exits 0 and reports delivered events."""
    done = run_example(*command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "events sent: " in done.stdout
    assert "events sent: 0" not in done.stdout


def test_script_talks_to_a_given_server(personalize_server: PersonalizeServer) -> None:
    """With --base-url the script uses that server: its events land there."""
    done = run_example(
        "script.py",
        "--base-url",
        personalize_server.base_url,
        env={
            "MOENGAGE_WORKSPACE_ID": personalize_server.app_id,
            "MOENGAGE_PERSONALIZE_API_KEY": personalize_server.api_key,
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "homepage-banner: {" in done.stdout
    actions = [e["action"] for e in personalize_server.events(customer_id="user_8821")]
    assert actions.count("MOE_PERSONALIZATION_MESSAGE_CLICKED") == 1


def test_asyncio_example_uses_the_env_base_url(personalize_server: PersonalizeServer) -> None:
    """MOENGAGE_PERSONALIZE_BASE_URL points the asyncio example at a running server."""
    done = run_example(
        "asyncio_script.py",
        env={
            "MOENGAGE_PERSONALIZE_BASE_URL": personalize_server.base_url,
            "MOENGAGE_WORKSPACE_ID": personalize_server.app_id,
            "MOENGAGE_PERSONALIZE_API_KEY": personalize_server.api_key,
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {e["customer_id"] for e in personalize_server.events()} >= {"user_8821", "user_4401"}
