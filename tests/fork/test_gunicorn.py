"""A client made before gunicorn --preload forks its workers works in every worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from support import API_KEY, APP_ID, requests_to, served

pytest.importorskip("gunicorn")
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gunicorn_preload_workers_use_a_client_made_before_the_fork(
    with_meta: HTTPServer, base_url: str
) -> None:
    """Two preloaded workers each fetch and track through the client the master created."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    with_meta.expect_request("/v1/experiences/events").respond_with_json({"status": "success"})
    port = free_port()
    env = {**os.environ, "APP_ID": APP_ID, "API_KEY": API_KEY, "BASE_URL": base_url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(HERE),
            "wsgi_app:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len({a["pid"] for a in answers}) < 2:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/?user-{len(answers)}", timeout=10
                ) as response:
                    answers.append(json.loads(response.read()))
            except OSError:
                time.sleep(0.1)
        assert len({a["pid"] for a in answers}) == 2, answers
        assert all(a["served"] == ["cart-upsell"] for a in answers)
        assert all(a["events_sent"] >= 1 for a in answers)
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert "Traceback" not in output, output
    assert len(requests_to(with_meta, "/v1/experiences/metadata")) == 1  # loaded once, pre-fork
