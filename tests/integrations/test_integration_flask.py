"""Flask: the example app driven with Flask's test client against the local server, and the
WSGI request helper on Flask's ``request.environ``. Skipped when Flask is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from moengage_personalize import MoEngagePersonalize  # noqa: E402
from moengage_personalize.contrib.wsgi import context_from_environ  # noqa: E402
from moengage_personalize.server import PersonalizeServer  # noqa: E402

SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"


@pytest.fixture(scope="module")
def flask_app(examples_dir: Path) -> Any:
    """The example's module."""
    import flask_app

    return flask_app


@pytest.fixture
def app(flask_app: Any, sync_client: MoEngagePersonalize) -> Any:
    app = flask_app.create_app(sync_client)
    app.config["TESTING"] = True
    return app


def test_the_example_app_renders_and_records_the_impression(
    app: Any, sync_client: MoEngagePersonalize, personalize_server: PersonalizeServer
) -> None:
    """Flask's test client gets the user's banner; the impression reaches the server."""
    client = app.test_client()
    client.set_cookie("customer_id", "user_8821")
    response = client.get("/")
    assert response.status_code == 200
    assert 'data-experience="homepage-banner"' in response.get_data(as_text=True)
    assert sync_client.flush(timeout=5.0).completed
    events = personalize_server.events(customer_id="user_8821")
    assert [(e["action"], e["experience_key"]) for e in events] == [(SHOWN, "homepage-banner")]


def test_an_anonymous_visitor_gets_a_visitor_id(
    app: Any, sync_client: MoEngagePersonalize, personalize_server: PersonalizeServer
) -> None:
    """Without a customer id the All Users banner is served and tracked under the visitor id."""
    response = app.test_client().get("/")
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    visitor = cookie.split(";", 1)[0].split("=", 1)[1]
    sync_client.flush(timeout=5.0)
    assert [e["action"] for e in personalize_server.events(customer_id=visitor)] == [SHOWN]


def test_the_helper_reads_flasks_environ(flask_app: Any) -> None:
    """context_from_environ(request.environ) sees what Flask parsed: path, utm_*, user agent,
    and the forwarded client IP only with a trusted-proxy rule."""
    app = flask.Flask("helper")
    seen: dict[str, Any] = {}

    @app.get("/shop/<item>")
    def shop(item: str) -> str:
        env = flask.request.environ
        seen["plain"] = context_from_environ(env, customer_id="user_1002")
        seen["proxied"] = context_from_environ(env, trusted_proxies=1)
        return item

    response = app.test_client().get(
        "/shop/shoes?utm_medium=cpc&x=1",
        headers={"User-Agent": "UA/1.0", "X-Forwarded-For": "203.0.113.9"},
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
    )
    assert response.status_code == 200
    plain, proxied = seen["plain"], seen["proxied"]
    assert plain.user.customer_id == "user_1002"
    assert plain.user.ip_address == "10.0.0.5"
    assert plain.user.user_agent == "UA/1.0"
    assert plain.attributes == {"current_path": "/shop/shoes", "utm_medium": "cpc"}
    assert proxied.user.ip_address == "203.0.113.9"
