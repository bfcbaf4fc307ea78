"""The WSGI application used directly (as gunicorn or waitress would), without a socket."""

from __future__ import annotations

import base64
import io
import json
import wsgiref.util
import wsgiref.validate
from typing import Any

import pytest

from moengage_personalize.server import PersonalizeApp, sample_definitions


def _environ(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    remote: str = "127.0.0.1",
    query: str = "",
    authenticated: bool = True,
    length: bool = True,
    terminated: bool = False,
) -> dict[str, Any]:
    definitions = sample_definitions()
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    token = base64.b64encode(f"{definitions.workspace_id}:{definitions.api_key}".encode()).decode()
    environ.update(
        {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": remote,
            "wsgi.input": io.BytesIO(body),
            "HTTP_MOE_APPKEY": definitions.workspace_id,
        }
    )
    if length:
        environ["CONTENT_LENGTH"] = str(len(body))
    if terminated:
        environ["wsgi.input_terminated"] = True
    if authenticated:
        environ["HTTP_AUTHORIZATION"] = f"Basic {token}"
    return environ


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], Any]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"] = status
        captured["headers"] = dict(headers)
        return lambda _data: None

    chunks = app(environ, start_response)
    try:
        data = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return captured["status"], captured["headers"], json.loads(data)


@pytest.fixture
def app() -> Any:
    """The sample workspace as a WSGI app, wrapped in wsgiref's PEP 3333 validator."""
    application = PersonalizeApp(sample_definitions())
    yield wsgiref.validate.validator(application)
    application.close()


def test_metadata_through_plain_wsgi(app: Any) -> None:
    """A wsgiref-built environ gets the metadata answer, PEP 3333-valid."""
    status, headers, body = _call(app, _environ("GET", "/v1/experiences/metadata"))
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"
    assert body["metadata"]["count"] == 9


def test_fetch_through_plain_wsgi(app: Any) -> None:
    """A POST body read from wsgi.input is evaluated like over HTTP."""
    request = json.dumps(
        {"identifiers": {"customer_id": "user_8821"}, "experience_key": ["loyalty-points"]}
    ).encode()
    status, _, body = _call(app, _environ("POST", "/v1/experiences/fetch", request))
    assert status == "200 OK"
    assert "loyalty-points" in body["experiences"]


def test_terminated_input_without_length_is_read_up_to_the_limit() -> None:
    """With wsgi.input_terminated and no CONTENT_LENGTH, the body is read to EOF, capped."""
    application = PersonalizeApp(sample_definitions(), max_body_bytes=64)
    small = _environ("POST", "/v1/experiences/fetch", b"{}", length=False, terminated=True)
    big = _environ(
        "POST", "/v1/experiences/fetch", b" " * 65 + b"{}", length=False, terminated=True
    )
    try:
        assert _call(application, small)[0] == "200 OK"
        assert _call(application, big)[0].startswith("413")
    finally:
        application.close()


def test_no_length_and_no_terminated_input_means_an_empty_body(app: Any) -> None:
    """Per PEP 3333 a body without CONTENT_LENGTH is not read: it is an empty (malformed) body."""
    environ = _environ("POST", "/v1/experiences/fetch", b"{}", length=False)
    status, _, body = _call(app, environ)
    assert status.startswith("400")
    assert body["title"] == "Malformed JSON"


def test_local_endpoints_refuse_non_loopback_clients(app: Any) -> None:
    """/_local/* answers 404 to a client that is not on this machine."""
    status, _, _ = _call(app, _environ("GET", "/_local/stats", remote="10.1.2.3"))
    assert status.startswith("404")
    status, _, body = _call(app, _environ("GET", "/_local/stats"))
    assert status == "200 OK"
    assert body == {"stats": []}


def test_local_health_needs_no_credentials(app: Any) -> None:
    """GET /_local/health names the workspace without auth headers."""
    status, _, body = _call(app, _environ("GET", "/_local/health", authenticated=False))
    assert status == "200 OK"
    assert body["workspace_id"] == "LOCALSAMPLE01"


def test_a_bad_limit_parameter_is_a_400(app: Any) -> None:
    """A non-numeric limit on a local endpoint is a 400 envelope, not a crash."""
    status, _, body = _call(app, _environ("GET", "/_local/events", query="limit=ten"))
    assert status.startswith("400")
    assert "limit" in body["description"]


def test_app_refuses_bad_options() -> None:
    """A zero body limit or a non-integer rate limit is refused at construction."""
    with pytest.raises(ValueError, match="max_body_bytes"):
        PersonalizeApp(sample_definitions(), max_body_bytes=0)
    with pytest.raises(ValueError, match="rate_limit"):
        PersonalizeApp(sample_definitions(), rate_limit=1.5)  # type: ignore[arg-type]
