"""Bad input raises TypeError/ValueError at the call, naming the argument; nothing is sent."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig, RetryPolicy, User

from support import API_KEY, APP_ID


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.fetch_experiences([]), ValueError, "experience_keys must not be empty"),
        (lambda c: c.fetch_experiences("home"), TypeError, "experience_keys must be a list"),
        (lambda c: c.fetch_experiences(None), TypeError, "experience_keys"),
        (lambda c: c.fetch_experiences(["a", 3]), TypeError, r"experience_keys\[1\]"),
        (lambda c: c.fetch_experiences(["a", ""]), ValueError, r"experience_keys\[1\]"),
        (lambda c: c.fetch_experiences([" a"]), ValueError, r"experience_keys\[0\]"),
        (lambda c: c.fetch_experience(None), TypeError, "experience_key must be a str"),
        (lambda c: c.fetch_experience(""), ValueError, "experience_key"),
        (lambda c: c.fetch_experience("a", attributes=["x"]), TypeError, "attributes must be"),
        (
            lambda c: c.fetch_experience("a", attributes={"cart": 5}),
            TypeError,
            r"attributes\['cart'\]",
        ),
        (
            lambda c: c.fetch_experience("a", attributes={"x": None}),
            TypeError,
            r"attributes\['x'\]",
        ),
        (lambda c: c.fetch_experience("a", attributes={"": "v"}), TypeError, "attributes keys"),
        (lambda c: c.fetch_experience("a", attributes={1: "v"}), TypeError, "attributes keys"),
        (
            lambda c: c.fetch_experience("a", attributes={"identifiers": "x"}),
            ValueError,
            r"attributes\['identifiers'\] is reserved",
        ),
        (
            lambda c: c.fetch_experience("a", attributes={"experience_key": "x"}),
            ValueError,
            "reserved",
        ),
        (
            lambda c: c.fetch_experience("a", attributes={"DAY_OF_THE_WEEK": "funday"}),
            ValueError,
            "DAY_OF_THE_WEEK",
        ),
        (
            lambda c: c.fetch_experience("a", attributes={"TIME_OF_THE_DAY": "7"}),
            ValueError,
            "TIME_OF_THE_DAY",
        ),
        (lambda c: c.fetch_experience("a", user=42), TypeError, "user must be"),
        (lambda c: c.fetch_experience("a", user=""), ValueError, "user must not be an empty"),
        (lambda c: c.fetch_experiences_meta("active"), TypeError, "statuses must be a list"),
        (lambda c: c.fetch_experiences_meta(["bogus"]), ValueError, "statuses items"),
        (lambda c: c.fetch_experiences_meta([]), ValueError, "statuses must not be empty"),
        (lambda c: c.close(timeout=-1), ValueError, "timeout"),
        (lambda c: c.close(timeout="5"), TypeError, "timeout"),
    ],
)
def test_bad_call_arguments_raise_at_once_and_send_nothing(
    httpserver: HTTPServer, client: MoEngagePersonalize, call: Any, error: type, match: str
) -> None:
    """Each bad argument raises the right error naming it, and no request reaches the server."""
    with pytest.raises(error, match=match):
        call(client)
    assert httpserver.log == []
    assert not client.closed


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"customer_id": 5}, TypeError, "user.customer_id"),
        ({"customer_id": ""}, ValueError, "user.customer_id"),
        ({"user_identifiers": ["x"]}, TypeError, "user.user_identifiers"),
        ({"user_identifiers": {"u_em": 1}}, TypeError, r"user.user_identifiers\['u_em'\]"),
        ({"timezone_offset": 60_000}, ValueError, "user.timezone_offset"),
        ({"timezone_offset": 1.5}, TypeError, "user.timezone_offset"),
        ({"timezone_offset": dt.timedelta(seconds=0.5)}, ValueError, "whole seconds"),
        ({"ip_address": 127}, TypeError, "user.ip_address"),
    ],
)
def test_bad_user_fields_raise(kwargs: dict[str, Any], error: type, match: str) -> None:
    """User validates each field at construction."""
    with pytest.raises(error, match=match):
        User(**kwargs)


def test_user_converts_timedelta_offset_and_copies_identifiers() -> None:
    """A timedelta offset becomes whole seconds; identifiers are copied from the caller's dict."""
    ids = {"u_em": "a@b.c"}
    user = User(
        customer_id="u", user_identifiers=ids, timezone_offset=dt.timedelta(hours=5, minutes=30)
    )
    ids["u_em"] = "changed"
    assert user.timezone_offset == 19800
    assert user.user_identifiers == {"u_em": "a@b.c"}
    assert not user.is_anonymous
    assert User().is_anonymous


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "3"}, TypeError, "timeout"),
        ({"meta_ttl": -5}, ValueError, "meta_ttl"),
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": 2.5}, TypeError, "max_workers"),
        ({"retry": {"max_attempts": 2}}, TypeError, "retry must be a RetryPolicy"),
        ({"max_response_bytes": 0}, ValueError, "max_response_bytes"),
        ({"enabled": "yes"}, TypeError, "enabled"),
        ({"sleep": 3}, TypeError, "sleep"),
    ],
)
def test_bad_config_raises_naming_the_option(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    """PersonalizeConfig refuses bad options naming them."""
    with pytest.raises(error, match=match):
        PersonalizeConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_attempts": 0}, ValueError, "retry.max_attempts"),
        ({"initial_backoff": -0.1}, ValueError, "retry.initial_backoff"),
        ({"max_retry_after": dt.timedelta(seconds=-1)}, ValueError, "retry.max_retry_after"),
        ({"jitter": 1}, TypeError, "retry.jitter"),
    ],
)
def test_bad_retry_policy_raises(kwargs: dict[str, Any], error: type, match: str) -> None:
    """RetryPolicy refuses bad options naming them."""
    with pytest.raises(error, match=match):
        RetryPolicy(**kwargs)


def test_durations_accept_timedelta() -> None:
    """Durations take seconds or a timedelta."""
    config = PersonalizeConfig(
        timeout=dt.timedelta(milliseconds=1500), meta_ttl=dt.timedelta(hours=1)
    )
    assert (config.timeout, config.meta_ttl) == (1.5, 3600.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"data_center": "07"},
            ValueError,
            "data_center must be one of 01, 02, 03, 04, 05, 06, 101",
        ),
        ({"data_center": 1}, TypeError, "data_center"),
        ({"base_url": "ftp://x/v1"}, ValueError, "base_url"),
        ({"base_url": "http://personalize.example.com/v1"}, ValueError, "allow_insecure_http"),
        ({"base_url": "https://user:pw@example.com/v1"}, ValueError, "credentials"),
        ({"config": {"timeout": 1}}, TypeError, "config must be a PersonalizeConfig"),
        ({"session": object()}, TypeError, "session"),
        ({"executor": object()}, TypeError, "executor"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    """The constructor refuses bad arguments naming them."""
    with pytest.raises(error, match=match):
        MoEngagePersonalize(APP_ID, api_key=API_KEY, **kwargs)


@pytest.mark.parametrize("app_id", ["", "  ", None, "WS1\n", " WS1", "WS\u20131"])
def test_missing_app_id_is_refused(app_id: Any) -> None:
    """The workspace id must be a non-empty str."""
    with pytest.raises(ValueError, match="app_id"):
        MoEngagePersonalize(app_id, api_key=API_KEY)


def test_missing_api_key_is_refused() -> None:
    """The api key must be given, and non-empty."""
    with pytest.raises(ValueError, match="api_key"):
        MoEngagePersonalize(APP_ID, api_key="")


@pytest.mark.parametrize(("dc", "host"), [("01", "sdk-01"), ("02", "sdk-02"), ("101", "sdk-101")])
def test_data_center_builds_the_base_url(dc: str, host: str) -> None:
    """data_center picks https://sdk-{dc}.moengage.com/v1."""
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, data_center=dc) as client:
        assert client.base_url == f"https://{host}.moengage.com/v1"


def test_insecure_http_only_to_loopback_unless_allowed() -> None:
    """Plain http is accepted for loopback, and for other hosts only with allow_insecure_http."""
    for url in ("http://127.0.0.1:8181/v1", "http://localhost:8181/v1/", "http://[::1]:1/v1"):
        with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=url) as client:
            assert client.base_url == url.rstrip("/")
    config = PersonalizeConfig(allow_insecure_http=True)
    with MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url="http://proxy.internal/v1", config=config
    ) as client:
        assert client.base_url == "http://proxy.internal/v1"


def test_api_key_not_in_reprs() -> None:
    """Neither the client's nor the config's repr shows the api key."""
    with MoEngagePersonalize(APP_ID, api_key="very-secret-key") as client:
        assert "very-secret-key" not in repr(client)
        assert "very-secret-key" not in repr(vars(client))
        assert re.search(r"app_id='WORKSPACE1'", repr(client))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.fetch_experience("news\udcff"), "experience_key"),
        (lambda c: c.fetch_experiences(["a", "b\ud800"]), r"experience_keys\[1\]"),
        (
            lambda c: c.fetch_experience("a", attributes={"current_page": "news\udcff"}),
            r"attributes\['current_page'\]",
        ),
        (lambda c: c.fetch_experience("a", attributes={"p\ud800": "x"}), "attributes key"),
        (lambda c: c.fetch_experience("a", user="bad\ud800id"), "user"),
        (lambda c: c.fetch_experience("a", user=User(customer_id="u\udcff")), "customer_id"),
        (
            lambda c: c.fetch_experience("a", user=User(user_identifiers={"u_em": "\udcff"})),
            "user_identifiers",
        ),
        (lambda c: c.fetch_experience("a", user=User(ip_address="1.2.3.4\ud800")), "ip_address"),
        (lambda c: c.fetch_experience("a", user=User(user_agent="UA\udcff")), "user_agent"),
    ],
)
def test_strings_that_cannot_be_sent_are_refused_at_the_call(
    httpserver: HTTPServer, base_url: str, call: Any, match: str
) -> None:
    """A lone surrogate (what os.fsdecode makes of undecodable bytes) cannot be encoded as
    UTF-8: ValueError naming the argument, at the call; nothing is sent."""
    with (
        MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url) as client,
        pytest.raises(ValueError, match=match),
    ):
        call(client)
    assert list(httpserver.log) == []


def test_non_ascii_text_that_can_be_sent_is_accepted() -> None:
    """Only unencodable text is refused: accents, CJK and emoji are fine."""
    user = User(customer_id="zoë-用户-🙂", user_agent="Mozilla/5.0 (ü)")
    assert user.customer_id == "zoë-用户-🙂"
