"""The framework-free request helper: client IP under each trusted-proxy rule, and a WSGI
environ turned into a User and in-session attributes."""

from __future__ import annotations

from typing import Any

import pytest
from integration_support import WAIT

from moengage_personalize import MoEngagePersonalize, User
from moengage_personalize.contrib import RequestContext, client_ip
from moengage_personalize.contrib.wsgi import context_from_environ, request_path
from moengage_personalize.server import PersonalizeServer


def environ(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/cart/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "10.0.0.5",
        "HTTP_USER_AGENT": "Mozilla/5.0 (Linux; Android 13)",
    }
    base.update(extra)
    return base


# client_ip ---------------------------------------------------------------------------------


def test_forwarded_for_is_ignored_by_default() -> None:
    """Without a trusted-proxy rule the peer address is the client, whatever the header says."""
    assert client_ip("10.0.0.5", "203.0.113.9") == "10.0.0.5"
    assert client_ip("10.0.0.5", "203.0.113.9", 0) == "10.0.0.5"


def test_a_proxy_count_takes_that_many_hops_from_the_right() -> None:
    """trusted_proxies=n takes the n-th address from the right of X-Forwarded-For; a header with
    fewer hops than n is ignored (a client cannot pad it to choose its address)."""
    header = "198.51.100.1, 203.0.113.9"  # spoofed by the client, then appended by our proxy
    assert client_ip("10.0.0.5", header, 1) == "203.0.113.9"
    assert client_ip("10.0.0.5", header, 2) == "198.51.100.1"
    assert client_ip("10.0.0.5", header, 3) == "10.0.0.5"


def test_trusted_addresses_skip_our_proxies_only() -> None:
    """With trusted addresses/networks, the right-most hop that is not one of ours is the
    client; a peer that is not trusted is the client itself."""
    trusted = ["10.0.0.0/8", "192.0.2.7"]
    header = "198.51.100.1, 203.0.113.9, 192.0.2.7"
    assert client_ip("10.0.0.5", header, trusted) == "203.0.113.9"
    assert client_ip("203.0.113.50", header, trusted) == "203.0.113.50"
    assert client_ip("10.0.0.5", "192.0.2.7, 10.1.1.1", trusted) == "192.0.2.7"


def test_garbage_in_the_header_stops_at_the_last_trusted_hop() -> None:
    """A hop that is not an IP address is never returned."""
    assert client_ip("10.0.0.5", "<script>, 10.0.0.9", ["10.0.0.0/8"]) == "10.0.0.9"
    assert client_ip("10.0.0.5", "not-an-ip", 1) == "10.0.0.5"


def test_addresses_with_ports_and_ipv6_are_normalised() -> None:
    """Ports and IPv6 brackets are stripped; the address comes back in canonical form."""
    assert client_ip("[2001:DB8::1]:443", None) == "2001:db8::1"
    assert client_ip("10.0.0.5", "203.0.113.9:5133", 1) == "203.0.113.9"
    assert client_ip("::1", "2001:db8::7", ["::1"]) == "2001:db8::7"
    assert client_ip(None, None) is None


def test_bad_rules_are_refused() -> None:
    """A negative count, a bool, a single string or a bad network raise at once."""
    with pytest.raises(ValueError, match="trusted_proxies"):
        client_ip("10.0.0.5", "1.2.3.4", -1)
    with pytest.raises(ValueError, match="trusted_proxies"):
        client_ip("10.0.0.5", "1.2.3.4", True)
    with pytest.raises(TypeError, match="trusted_proxies"):
        client_ip("10.0.0.5", "1.2.3.4", "10.0.0.1")
    with pytest.raises(ValueError, match="not an IP address"):
        client_ip("10.0.0.5", "1.2.3.4", ["10.0.0.300"])


# context_from_environ ----------------------------------------------------------------------


def test_environ_becomes_a_user_and_attributes() -> None:
    """User agent and peer IP go on the User; path, referrer and utm_* become attributes."""
    ctx = context_from_environ(
        environ(
            QUERY_STRING="utm_source=email&utm_campaign=winback-spring&page=2&utm_term=",
            HTTP_REFERER="https://mail.example.com/",
        ),
        customer_id="user_8821",
    )
    assert ctx.user == User(
        customer_id="user_8821",
        ip_address="10.0.0.5",
        user_agent="Mozilla/5.0 (Linux; Android 13)",
    )
    assert ctx.attributes == {
        "current_path": "/cart/",
        "referrer": "https://mail.example.com/",
        "utm_source": "email",
        "utm_campaign": "winback-spring",
    }


def test_caller_attributes_win_and_kwargs_fit_a_fetch() -> None:
    """attributes= and with_attributes() override what was read; as_kwargs() is user +
    attributes."""
    ctx = context_from_environ(
        environ(QUERY_STRING="utm_source=ads"), attributes={"utm_source": "email"}
    )
    ctx = ctx.with_attributes({"current_page": "cart"})
    assert ctx.attributes["utm_source"] == "email"
    assert ctx.as_kwargs() == {"user": ctx.user, "attributes": ctx.attributes}
    assert ctx.user.is_anonymous


def test_forwarded_for_needs_a_rule() -> None:
    """X-Forwarded-For changes the IP only with trusted_proxies."""
    env = environ(HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert context_from_environ(env).user.ip_address == "10.0.0.5"
    assert context_from_environ(env, trusted_proxies=1).user.ip_address == "203.0.113.9"


def test_path_is_utf8_and_values_are_bounded() -> None:
    """PATH_INFO arrives latin-1 encoded (PEP 3333) and is decoded; long values are cut, odd
    utm names and too many utm parameters are left out."""
    path_info = "/caf\u00e9/".encode().decode("latin-1")
    many = "&".join(f"utm_p{i}=v" for i in range(40))
    ctx = context_from_environ(
        environ(
            SCRIPT_NAME="/shop",
            PATH_INFO=path_info,
            QUERY_STRING=f"utm_source={'x' * 2000}&utm_%3Cb%3E=1&{many}",
            HTTP_USER_AGENT="A" * 5000,
        )
    )
    assert request_path(environ(SCRIPT_NAME="/shop", PATH_INFO=path_info)) == "/shop/caf\u00e9/"
    assert ctx.attributes["current_path"] == "/shop/caf\u00e9/"
    assert len(ctx.attributes["utm_source"]) == 512
    assert "utm_<b>" not in ctx.attributes
    assert sum(name.startswith("utm_") for name in ctx.attributes) == 20
    assert ctx.user.user_agent is not None
    assert len(ctx.user.user_agent) == 512


def test_a_context_drives_a_real_fetch(
    personalize_server: PersonalizeServer, sync_client: MoEngagePersonalize
) -> None:
    """The utm attributes read from the query reach targeting: the sample's win-back email
    experience is served to a visitor who came from the win-back email."""
    ctx = context_from_environ(
        environ(QUERY_STRING="utm_source=Email&utm_campaign=winback-spring"),
        customer_id="user_1002",
    )
    assert isinstance(ctx, RequestContext)
    result = sync_client.fetch_experience("email-welcome-back", **ctx.as_kwargs()).result(WAIT)
    assert [c.experience_key for c in result.experiences] == ["email-welcome-back"]
    plain = context_from_environ(environ(), customer_id="user_1002")
    result = sync_client.fetch_experience("email-welcome-back", **plain.as_kwargs()).result(WAIT)
    assert result.experiences == []
