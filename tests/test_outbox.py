"""The durable outbox (config.event_store), interpreter-exit flush, and a killed process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

from support import API_KEY, APP_ID, CONTEXT, Sleeps
from test_events import EVENTS, Recorder, campaign


@pytest.fixture
def recorder(httpserver: HTTPServer) -> Recorder:
    rec = Recorder()
    httpserver.expect_request(EVENTS, method="POST").respond_with_handler(rec)
    return rec


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


def stored_uuids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT action FROM outbox ORDER BY id").fetchall()
    return [json.loads(r[0])["moe_event_uuid"] for r in rows]


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def closed_port_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


def test_outbox_delivers_and_empties(
    base_url: str, store: Path, sleeps: Sleeps, recorder: Recorder
) -> None:
    """With an outbox, events are delivered and deleted from the store once accepted."""
    config = PersonalizeConfig(sleep=sleeps, event_store=str(store), event_flush_interval=0.05)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        for _ in range(20):
            client.experience_shown(campaign())
        report = client.flush(timeout=5)
        assert (report.sent, report.pending) == (20, 0)
    assert len(recorder.delivered()) == 20
    assert stored_uuids(store) == []


def test_outbox_survives_an_outage(
    base_url: str, store: Path, sleeps: Sleeps, recorder: Recorder
) -> None:
    """A long run of 503s loses nothing: the stored events go out once the service is back."""
    recorder.script = [(503, {})] * 12
    config = PersonalizeConfig(sleep=sleeps, event_store=str(store), event_flush_interval=0.05)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        for i in range(30):
            client.experience_clicked(campaign(), b_id=str(i))
        assert client.flush(timeout=10).sent == 30
    delivered = [a["attributes"]["b_id"] for _, a in recorder.delivered()]
    assert sorted(delivered, key=int) == [str(i) for i in range(30)]


def test_one_live_client_per_store(base_url: str, store: Path) -> None:
    """A second client on the same outbox file is refused with a clear error while the first lives."""
    config = PersonalizeConfig(event_store=str(store))
    first = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    try:
        with pytest.raises(ValueError, match="in use by another live client"):
            MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    finally:
        first.close(timeout=1)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config):
        pass


def test_closing_during_an_outage_keeps_events_in_the_store(store: Path) -> None:
    """close() while the service is unreachable keeps the events in the store for the next client."""
    config = PersonalizeConfig(event_store=str(store), event_flush_interval=0.05)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=closed_port_url(), config=config)
    for _ in range(5):
        client.experience_shown(campaign())
    client.close(timeout=0.5)
    assert len(stored_uuids(store)) == 5


def test_sigkill_then_restart_delivers_everything_once(
    base_url: str, store: Path, sleeps: Sleeps, recorder: Recorder
) -> None:
    """A process killed with SIGKILL after tracking: the next client on the file sends every
    event, with the uuids it was given, exactly once."""
    child = run_child(
        f"""
        import os, signal, sqlite3, time
        from moengage_personalize import *
        c = ExperienceCampaign(experience_key="k", payload={{}}, experience_context={CONTEXT!r},
                               source=DataSource.NETWORK, user=User(customer_id="u1"))
        cfg = PersonalizeConfig(event_store={str(store)!r}, event_flush_interval=60)
        client = MoEngagePersonalize("W", api_key="k", base_url={closed_port_url()!r}, config=cfg)
        for i in range(500):
            client.experience_clicked(c, b_id=str(i))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            n = sqlite3.connect({str(store)!r}).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if n == 500:
                break
            time.sleep(0.01)
        print(n, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert child.returncode == -9, child.stderr
    assert child.stdout.strip() == "500"
    before = stored_uuids(store)
    assert len(set(before)) == 500
    config = PersonalizeConfig(sleep=sleeps, event_store=str(store), event_flush_interval=0.05)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        report = client.flush(timeout=10)
        assert (report.sent, report.pending) == (500, 0)
    actions = [a for _, a in recorder.delivered()]
    assert sorted(a["moe_event_uuid"] for a in actions) == sorted(before)
    assert sorted(int(a["attributes"]["b_id"]) for a in actions) == list(range(500))


def test_interpreter_exit_flushes_queued_events(base_url: str, recorder: Recorder) -> None:
    """A script that tracks and exits without close() still delivers its events, cleanly."""
    child = run_child(
        f"""
        from moengage_personalize import *
        c = ExperienceCampaign(experience_key="k", payload={{}}, experience_context={CONTEXT!r},
                               source=DataSource.NETWORK, user=User(customer_id="u1"))
        cfg = PersonalizeConfig(event_flush_interval=60)
        client = MoEngagePersonalize("W", api_key="k", base_url={base_url!r}, config=cfg)
        for i in range(25):
            client.experience_shown(c)
        """
    )
    assert child.returncode == 0, child.stderr
    assert "cannot schedule new futures" not in child.stderr
    assert "Traceback" not in child.stderr
    assert len(recorder.delivered()) == 25


def test_interpreter_exit_flush_is_bounded(tmp_path: Path) -> None:
    """With the service unreachable, exit waits at most about exit_flush_timeout."""
    child = run_child(
        f"""
        import time
        from moengage_personalize import *
        c = ExperienceCampaign(experience_key="k", payload={{}}, experience_context={CONTEXT!r},
                               source=DataSource.NETWORK, user=User(customer_id="u1"))
        cfg = PersonalizeConfig(exit_flush_timeout=0.5)
        client = MoEngagePersonalize("W", api_key="k", base_url={closed_port_url()!r}, config=cfg)
        client.experience_shown(c)
        print(time.monotonic(), flush=True)
        """
    )
    ended = time.monotonic()
    assert child.returncode == 0, child.stderr
    # CLOCK_MONOTONIC is system-wide on Linux: from the last line of the script to the exit
    assert ended - float(child.stdout) < 0.5 + 1.0
    assert "1 events not delivered" in child.stderr  # the warning reaches stderr (last resort)
