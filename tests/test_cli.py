"""The moengage-personalize command: demo, serve, meta, fetch, stats; errors as one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from moengage_personalize import cli
from moengage_personalize.server import PersonalizeServer

TIMEOUT = 60


@pytest.fixture
def local() -> Iterator[PersonalizeServer]:
    """A sample server on a free port for the client commands."""
    with PersonalizeServer(port=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.ENV_WORKSPACE, raising=False)
    monkeypatch.delenv(cli.ENV_API_KEY, raising=False)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "moengage_personalize", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=full_env,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- demo --------------------------------------------------------------------------------------


def test_demo_runs_as_a_module_and_exits_0() -> None:
    """`python -m moengage_personalize demo` exits 0 and reports every scenario."""
    completed = _run("demo")
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "Metadata: 9 experiences" in out
    assert "cart-free-delivery: variation 1 (audience 'Big Carts')" in out  # contextual rule
    assert "the server knows why: USER_IN_CAMPAIGN_CONTROL_GROUP" in out  # control group
    assert "no-such-experience: SDK says INVALID_EXPERIENCE_KEY" in out  # invalid key
    assert "offering off_101: Trail Running Shoes" in out  # an offering
    assert "Impressions and clicks: the SDK sent 17 events" in out  # tracked, counted
    assert "Client closed; server stopped." in out


def test_demo_in_process_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """cli.main(["demo"]) returns 0 and prints the report."""
    assert cli.main(["demo"]) == 0
    assert "USER_NOT_IN_SEGMENT" in capsys.readouterr().out


def test_demo_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --json prints the report as JSON, the control-group miss explained by the server."""
    assert cli.main(["demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    misses = [m for v in report["visits"] for m in v["not_served"]]
    control = [m for m in misses if m["server"]["outcome"] == "USER_IN_CAMPAIGN_CONTROL_GROUP"]
    assert control
    assert control[0]["sdk_reason"] == "USER_NOT_IN_SEGMENT"
    assert report["events"]["completed"] is True
    clicks = {r["experience_key"]: r["clicks"] for r in report["stats"] if r["clicks"]}
    assert clicks == {"homepage-banner": 1, "email-welcome-back": 1, "product-recommendations": 1}


# --- serve -------------------------------------------------------------------------------------


def test_serve_prints_its_address_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """serve --json prints the URL and sample credentials, serves, and exits 0 on SIGINT."""
    db = tmp_path / "events.sqlite3"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moengage_personalize",
            "serve",
            "--port",
            "0",
            "--json",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["workspace_id"] == "LOCALSAMPLE01"
        assert info["api_key"] == "local-sample-personalize-key"
        response = requests.get(
            info["base_url"] + "/experiences/metadata",
            headers={"MOE-APPKEY": info["workspace_id"]},
            auth=(info["workspace_id"], info["api_key"]),
            timeout=10,
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert db.exists()


def test_serve_does_not_print_the_key_of_a_custom_file(tmp_path: Path) -> None:
    """With --experiences, serve does not print that file's api key."""
    document = {"workspace_id": "MINE", "api_key": "my-own-key-123", "experiences": []}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(document))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moengage_personalize",
            "serve",
            "--port",
            "0",
            "--experiences",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = "".join(process.stdout.readline() for _ in range(8))
        process.send_signal(signal.SIGINT)
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert "MINE" in banner
    assert "my-own-key-123" not in banner


def test_serve_refuses_a_malformed_definitions_file(tmp_path: Path) -> None:
    """A bad definitions file: exit 1 with one line naming the place, no traceback."""
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "workspace_id": "W",
                "api_key": "k",
                "experiences": [
                    {
                        "key": "e",
                        "name": "E",
                        "audiences": [
                            {
                                "id": "A",
                                "all_users": True,
                                "variations": [{"weight": "x", "payload": {}}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    completed = _run("serve", "--port", "0", "--experiences", str(path))
    assert completed.returncode == 1
    line = _one_error_line(completed.stderr)
    assert "experiences[0].audiences[0].variations[0].weight: must be a number" in line


def test_serve_on_a_busy_port_is_one_clear_line(local: PersonalizeServer) -> None:
    """A port already in use: exit 1 with a one-line hint, no traceback."""
    completed = _run("serve", "--port", str(local.port))
    assert completed.returncode == 1
    assert "cannot listen on" in _one_error_line(completed.stderr)


def test_serve_with_a_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    """--experiences naming no file: exit 1, one line."""
    completed = _run("serve", "--experiences", str(tmp_path / "nope.json"))
    assert completed.returncode == 1
    assert "nope.json" in _one_error_line(completed.stderr)


# --- meta / fetch ------------------------------------------------------------------------------


def test_meta_lists_experiences(
    local: PersonalizeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """meta against a local server lists keys with statuses (sample credentials by default)."""
    assert cli.main(["meta", "--base-url", local.base_url]) == 0
    out = capsys.readouterr().out
    assert "9 experience(s)" in out
    assert "christmas-sale-strip" in out


def test_meta_json_with_status_filter(
    local: PersonalizeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """meta --status paused --json prints only the paused experience as JSON."""
    assert cli.main(["meta", "--base-url", local.base_url, "--status", "paused", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["experience_key"] for e in data["experiences"]] == ["cart-upsell"]
    assert data["experiences"][0]["status"] == "paused"


def test_fetch_with_user_and_attributes(
    local: PersonalizeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch KEY --user ID --attr k=v sends the context and prints what was served."""
    argv = [
        "fetch",
        "cart-free-delivery",
        "nope",
        "--user",
        "user_8821",
        "--attr",
        "current_page=cart",
        "--attr",
        "cart_value=640",
        "--base-url",
        local.base_url,
        "--json",
    ]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["experiences"][0]["payload"]["Threshold"] == 500
    assert data["failures"] == [{"reason": "INVALID_EXPERIENCE_KEY", "experience_keys": ["nope"]}]


def test_fetch_human_output_names_variation_and_misses(
    local: PersonalizeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The human output shows the variation, the payload and each failure reason."""
    argv = ["fetch", "homepage-banner", "cart-upsell", "--base-url", local.base_url]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "homepage-banner: variation 3 of audience 'All Users'" in out
    assert "not served (EXPERIENCE_NOT_ACTIVE): cart-upsell" in out


def test_fetch_with_a_malformed_attribute_is_a_usage_error() -> None:
    """--attr without '=' is refused by the argument parser (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["fetch", "k", "--attr", "novalue"])
    assert caught.value.code == 2


def test_meta_without_a_server_is_one_line_with_a_hint() -> None:
    """No server listening: exit 1, one line suggesting `serve`, no traceback."""
    completed = _run("meta", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--timeout", "2")
    assert completed.returncode == 1
    assert "serve` running?" in _one_error_line(completed.stderr)


def test_wrong_credentials_are_one_line_without_the_key(local: PersonalizeServer) -> None:
    """A 401 prints one line naming the error, never the api key."""
    completed = _run(
        "meta",
        "--base-url",
        local.base_url,
        env={cli.ENV_WORKSPACE: local.workspace_id, cli.ENV_API_KEY: "the-wrong-secret"},
    )
    assert completed.returncode == 1
    line = _one_error_line(completed.stderr)
    assert "401" in line
    assert "the-wrong-secret" not in completed.stderr + completed.stdout


def test_data_center_needs_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    """--data-center without the environment variables: exit 1 naming them."""
    assert cli.main(["meta", "--data-center", "01"]) == 1
    err = capsys.readouterr().err
    assert cli.ENV_WORKSPACE in err
    assert cli.ENV_API_KEY in err


def test_a_remote_base_url_needs_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    """A non-loopback --base-url does not get the local sample credentials."""
    assert cli.main(["meta", "--base-url", "https://sdk-01.moengage.com/v1"]) == 1
    assert "is not a local server" in capsys.readouterr().err


# --- stats -------------------------------------------------------------------------------------


def _send_events(server: PersonalizeServer) -> None:
    context = {
        "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
        "experience": "Homepage Banner",
        "moe_locale_id": "0",
        "moe_variation_id": "2",
        "audience_name": "High Intent Users",
        "audience_id": "42D",
    }
    actions = [
        {
            "action": "MOE_PERSONALIZATION_MESSAGE_SHOWN",
            "moe_event_uuid": "s1",
            "attributes": context,
        },
        {
            "action": "MOE_PERSONALIZATION_MESSAGE_SHOWN",
            "moe_event_uuid": "s2",
            "attributes": context,
        },
        {
            "action": "MOE_PERSONALIZATION_MESSAGE_CLICKED",
            "moe_event_uuid": "c1",
            "attributes": context,
        },
    ]
    response = requests.post(
        server.base_url + "/experiences/events",
        json={"elements": [{"customer_id": "user_8821", "actions": actions}]},
        headers={"MOE-APPKEY": server.workspace_id},
        auth=(server.workspace_id, server.api_key),
        timeout=10,
    )
    assert response.status_code == 200


def test_stats_reads_a_running_local_server(
    local: PersonalizeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --base-url prints impressions, clicks and CTR per variation."""
    _send_events(local)
    assert cli.main(["stats", "--base-url", local.base_url]) == 0
    out = capsys.readouterr().out
    assert "homepage-banner" in out
    assert "50.0%" in out


def test_stats_reads_a_database_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stats --db FILE --json reads a stopped server's events file."""
    db = tmp_path / "events.sqlite3"
    with PersonalizeServer(port=0, db=db) as server:
        _send_events(server)
    assert cli.main(["stats", "--db", str(db), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["stats"]
    assert (row["impressions"], row["clicks"], row["ctr"]) == (2, 1, 0.5)


def test_stats_with_a_missing_database_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --db naming no file fails with one line (and creates nothing)."""
    missing = tmp_path / "none.sqlite3"
    assert cli.main(["stats", "--db", str(missing)]) == 1
    assert "no such database file" in capsys.readouterr().err
    assert not missing.exists()


def test_stats_refuses_a_remote_server(capsys: pytest.CaptureFixture[str]) -> None:
    """stats is local-only: a non-loopback --base-url is refused."""
    assert cli.main(["stats", "--base-url", "https://sdk-01.moengage.com/v1"]) == 1
    assert "local server only" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command the usage goes to stderr and the status is 2."""
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_an_unexpected_failure_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug inside a command prints one line naming it and exits 1, no traceback."""

    def broken() -> dict[str, object]:
        raise KeyError("boom")

    monkeypatch.setattr(cli, "run_demo", broken)
    monkeypatch.delenv(cli.ENV_DEBUG, raising=False)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "unexpected error" in err
    assert "KeyError" in err
    assert "Traceback" not in err
