"""Django: the per-process client from settings, the request helper, and the example view driven
with Django's test client against the local server. Skipped when Django is not installed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from integration_support import WAIT, run  # noqa: E402

from moengage_personalize import MoEngagePersonalize  # noqa: E402
from moengage_personalize.contrib import django as contrib  # noqa: E402
from moengage_personalize.server import PersonalizeServer  # noqa: E402

SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"


@pytest.fixture(scope="module")
def example(examples_dir: Path) -> Any:
    """The example project's module, with Django configured by it (once per process)."""
    import django_view

    django_view.configure(base_url="http://127.0.0.1:9/v1")  # replaced per test below
    return django_view


def server_settings(server: PersonalizeServer, **extra: Any) -> dict[str, Any]:
    return {
        "app_id": server.app_id,
        "api_key": server.api_key,
        "base_url": server.base_url,
        "timeout": 5.0,
        **extra,
    }


@pytest.fixture
def configured(example: Any, personalize_server: PersonalizeServer) -> Iterator[PersonalizeServer]:
    """MOENGAGE_PERSONALIZE points at the local server for the test; the client is reset after."""
    with override_settings(MOENGAGE_PERSONALIZE=server_settings(personalize_server)):
        yield personalize_server
    contrib.reset_client()


# the example view --------------------------------------------------------------------------


def test_the_example_view_renders_and_records_the_impression(
    configured: PersonalizeServer,
) -> None:
    """Django's test client gets the banner the user is targeted with; the view's impression
    reaches the server."""
    client = Client()
    client.cookies["customer_id"] = "user_8821"
    response = client.get("/?utm_source=email")
    assert response.status_code == 200
    assert 'data-experience="homepage-banner"' in response.content.decode()
    assert contrib.get_client().flush(timeout=5.0).completed
    events = configured.events(customer_id="user_8821")
    assert [(e["action"], e["experience_key"]) for e in events] == [(SHOWN, "homepage-banner")]


def test_an_anonymous_visitor_is_tracked_by_a_visitor_id(configured: PersonalizeServer) -> None:
    """Without a login the All Users banner is served and the impression carries the visitor id
    cookie the view set."""
    response = Client().get("/")
    assert response.status_code == 200
    assert 'data-experience="homepage-banner"' in response.content.decode()
    visitor = response.cookies["visitor_id"].value
    assert visitor.startswith("v-")
    contrib.get_client().flush(timeout=5.0)
    assert [e["action"] for e in configured.events(customer_id=visitor)] == [SHOWN]


def test_a_dead_service_still_renders_the_default_page(example: Any) -> None:
    """If the service is unreachable the view renders its default content (no 500)."""
    dead = {"app_id": "W", "api_key": "k", "base_url": "http://127.0.0.1:9/v1", "timeout": 1.0}
    with override_settings(MOENGAGE_PERSONALIZE=dead):
        response = Client().get("/")
    contrib.reset_client(timeout=0.5)
    assert response.status_code == 200
    assert "Welcome!" in response.content.decode()


# one client per process --------------------------------------------------------------------


def test_one_client_per_process_created_once_under_contention(
    configured: PersonalizeServer,
) -> None:
    """Sixteen threads asking at once all get the same client, made from the settings."""
    got: list[MoEngagePersonalize] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait(timeout=WAIT)
        got.append(contrib.get_client())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(got) == 16
    assert len({id(c) for c in got}) == 1
    assert got[0].base_url == configured.base_url
    assert got[0].config.timeout == 5.0


def test_reset_and_changed_settings_replace_the_client(configured: PersonalizeServer) -> None:
    """reset_client() closes the client; changing the setting (override_settings) does too."""
    first = contrib.get_client()
    contrib.reset_client()
    assert first.closed
    second = contrib.get_client()
    assert second is not first
    with override_settings(MOENGAGE_PERSONALIZE=server_settings(configured, timeout=2.0)):
        assert second.closed
        assert contrib.get_client().config.timeout == 2.0
    assert contrib.get_client().config.timeout == 5.0


def test_async_views_share_the_process_client(configured: PersonalizeServer) -> None:
    """get_async_client() is a view of get_client(); it fetches on a real loop."""
    request = RequestFactory().get("/", HTTP_USER_AGENT="Mozilla/5.0 (iPhone)")

    async def view() -> list[str]:
        personalize = contrib.get_async_client()
        assert personalize.sync is contrib.get_client()
        ctx = contrib.request_context(request, customer_id="user_3107")
        result = await personalize.fetch_experience("app-download-strip", **ctx.as_kwargs())
        return [c.experience_key for c in result.experiences]

    assert run(view()) == ["app-download-strip"]
    assert not contrib.get_client().closed


# the request helper ------------------------------------------------------------------------


def test_request_context_reads_the_request(configured: PersonalizeServer) -> None:
    """User agent, peer IP, path, referrer and utm_* come from the request; X-Forwarded-For is
    ignored by default."""
    request = RequestFactory().get(
        "/cart/",
        {"utm_source": "email", "utm_campaign": "winback-1", "q": "shoes"},
        HTTP_USER_AGENT="Mozilla/5.0 (Linux; Android 13)",
        HTTP_REFERER="https://mail.example.com/",
        HTTP_X_FORWARDED_FOR="203.0.113.9",
        REMOTE_ADDR="10.0.0.5",
    )
    ctx = contrib.request_context(request, customer_id="user_8821")
    assert ctx.user.customer_id == "user_8821"
    assert ctx.user.ip_address == "10.0.0.5"
    assert ctx.user.user_agent == "Mozilla/5.0 (Linux; Android 13)"
    assert ctx.attributes == {
        "current_path": "/cart/",
        "referrer": "https://mail.example.com/",
        "utm_source": "email",
        "utm_campaign": "winback-1",
    }


def test_trusted_proxies_and_the_customer_id_resolver_come_from_settings(
    configured: PersonalizeServer,
) -> None:
    """trusted_proxies and a dotted-path customer_id resolver in the setting are honoured."""
    options = server_settings(
        configured,
        trusted_proxies=["10.0.0.0/8"],
        customer_id="integration_support.customer_id_from_header",
    )
    request = RequestFactory().get(
        "/",
        HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9, 10.0.0.7",
        HTTP_X_CUSTOMER_ID="user_4401",
        REMOTE_ADDR="10.0.0.5",
    )
    with override_settings(MOENGAGE_PERSONALIZE=options):
        ctx = contrib.request_context(request)
        assert ctx.user.ip_address == "203.0.113.9"
        assert ctx.user.customer_id == "user_4401"
        assert contrib.request_context(request, customer_id="x").user.customer_id == "x"
    with override_settings(MOENGAGE_PERSONALIZE=server_settings(configured, trusted_proxies=1)):
        assert contrib.request_context(request).user.ip_address == "10.0.0.7"


# settings ----------------------------------------------------------------------------------


def test_config_options_flat_or_nested(example: Any) -> None:
    """PersonalizeConfig options go flat in the setting or under "config"; flat ones win."""
    parsed = contrib.parse_settings(
        {
            "app_id": "W",
            "api_key": "s3cr3t-django-key",
            "data_center": "02",
            "config": {"timeout": 1.5, "cache_ttl": 30},
            "cache_ttl": 60,
        }
    )
    assert (parsed.config.timeout, parsed.config.cache_ttl) == (1.5, 60.0)
    assert parsed.data_center == "02"
    assert "s3cr3t-django-key" not in repr(parsed)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be a dict"),
        ({"api_key": "k"}, "'app_id' is required"),
        ({"app_id": "W"}, "'api_key' is required"),
        ({"app_id": "W", "api_key": "k", "apikey": "x"}, "unknown keys \\['apikey'\\]"),
        ({"app_id": "W", "api_key": "k", "timeout": -1}, "timeout"),
        ({"app_id": "W", "api_key": "k", "config": 3}, "config must be"),
        ({"app_id": "W", "api_key": "k", "trusted_proxies": ["nope"]}, "not an IP address"),
        ({"app_id": "W", "api_key": "k", "trusted_proxies": "10.0.0.1"}, "not a single str"),
        ({"app_id": "W", "api_key": "k", "customer_id": "no.such.module"}, "no.such"),
        ({"app_id": "W", "api_key": "k", "customer_id": 5}, "customer_id"),
    ],
)
def test_bad_settings_raise_improperly_configured(example: Any, value: Any, message: str) -> None:
    """Every mistake in the setting raises ImproperlyConfigured naming it."""
    with pytest.raises(ImproperlyConfigured, match=message):
        contrib.parse_settings(value)


def test_a_missing_setting_raises_improperly_configured(example: Any) -> None:
    """Without MOENGAGE_PERSONALIZE, get_client() says which setting is missing."""
    contrib.reset_client()
    with override_settings():
        del settings.MOENGAGE_PERSONALIZE
        with pytest.raises(ImproperlyConfigured, match="MOENGAGE_PERSONALIZE"):
            contrib.get_client()
    contrib.reset_client()
