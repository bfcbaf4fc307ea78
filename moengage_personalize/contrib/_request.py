"""Framework-free request reading shared by the web integrations: client IP, user, attributes."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias, TypedDict
from urllib.parse import parse_qsl

import attrs

from moengage_personalize import User

__all__ = ["FetchKwargs", "RequestContext", "TrustedProxies", "client_ip", "context_from_meta"]

#: ``trusted_proxies``: how many proxies in front of the app append to ``X-Forwarded-For`` (an
#: ``int``), or the addresses / networks of those proxies (``"10.0.0.0/8"``, ``"192.0.2.7"``).
#: ``None`` or ``0`` (the default): ``X-Forwarded-For`` is ignored, the peer address is the client.
TrustedProxies: TypeAlias = int | Iterable[str] | None

_MAX_VALUE = 512  # characters of an attribute value kept
_MAX_UTM = 20  # utm_* parameters kept at most
_MAX_NAME = 64


class FetchKwargs(TypedDict):
    """The keyword arguments of a fetch for a request: ``fetch_experience(key, **kwargs)``."""

    user: User
    attributes: dict[str, str]


@attrs.frozen
class RequestContext:
    """Who a web request is for and its in-session attributes, ready for a fetch.

    ``user`` carries the customer id (if the app knows one), the client IP and the user agent
    (sent as ``USER_IP_ADDRESS`` / ``USER_AGENT``); ``attributes`` holds ``current_path``,
    ``referrer`` and the ``utm_*`` query parameters, plus what the caller added (which wins).
    """

    user: User
    attributes: dict[str, str] = attrs.field(factory=dict)

    def as_kwargs(self) -> FetchKwargs:
        """``{"user": ..., "attributes": ...}`` for ``fetch_experience(key, **ctx.as_kwargs())``."""
        return {"user": self.user, "attributes": dict(self.attributes)}

    def with_attributes(self, attributes: Mapping[str, str]) -> RequestContext:
        """A copy with ``attributes`` added (they win over the ones read from the request)."""
        return attrs.evolve(self, attributes={**self.attributes, **attributes})


def _parse_ip(text: str) -> str | None:
    """An address from a header hop or ``REMOTE_ADDR``: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``,
    ``[::1]:80``; None when it is not an IP address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def _networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The trusted networks, parsed once per distinct rule."""
    out = []
    for item in proxies:
        if not isinstance(item, str):
            raise TypeError(f"trusted_proxies items must be str addresses, not {item!r}")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {item!r} is not an IP address or network") from None
    return tuple(out)


def client_ip(
    remote_addr: str | None,
    forwarded_for: str | None,
    trusted_proxies: TrustedProxies = None,
) -> str | None:
    """The client's IP address.

    By default (``trusted_proxies`` None or 0) the peer address ``remote_addr``: a client can put
    anything in ``X-Forwarded-For``, so it is never trusted unless you say how many proxies (an
    ``int``: the address that many hops from the right of ``forwarded_for``, as werkzeug's
    ``ProxyFix(x_for=n)``; the peer address if the header has fewer hops) or which proxies (a
    collection of addresses or networks: when the peer is one of them, the right-most hop of
    ``forwarded_for`` that is not) stand in front of the app. None when no valid address is known.
    """
    _check_proxies(trusted_proxies)
    peer = _parse_ip(remote_addr) if remote_addr else None
    if trusted_proxies is None or trusted_proxies == 0 or not forwarded_for:
        return peer
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
    if isinstance(trusted_proxies, int):
        if len(hops) < trusted_proxies:
            return peer
        return _parse_ip(hops[-trusted_proxies]) or peer
    networks = _networks(tuple(trusted_proxies))

    def trusted(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in networks)

    if peer is None or not trusted(peer):
        return peer
    nearest = peer
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:  # garbage in the header: stop at the last proxy we trust
            return nearest
        if not trusted(address):
            return address
        nearest = address
    return nearest  # every hop is a trusted proxy: the left-most one


def _check_proxies(trusted_proxies: TrustedProxies) -> None:
    if isinstance(trusted_proxies, bool) or (
        isinstance(trusted_proxies, int) and trusted_proxies < 0
    ):
        raise ValueError(
            f"trusted_proxies must be a count >= 0 or a list of addresses, not {trusted_proxies!r}"
        )
    if isinstance(trusted_proxies, str):
        raise TypeError("trusted_proxies must be a list of addresses, not a single str")


def _clip(value: str) -> str:
    return value[:_MAX_VALUE]


def context_from_meta(
    meta: Mapping[str, Any],
    *,
    path: str | None,
    query_string: str | None = None,
    customer_id: str | None = None,
    user_identifiers: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
    trusted_proxies: TrustedProxies = None,
) -> RequestContext:
    """A :class:`RequestContext` from CGI-style request variables (a WSGI environ, Django's
    ``request.META``): ``REMOTE_ADDR``, ``HTTP_X_FORWARDED_FOR``, ``HTTP_USER_AGENT``,
    ``HTTP_REFERER`` and ``QUERY_STRING`` (or ``query_string``)."""
    ip = client_ip(
        _str_or_none(meta.get("REMOTE_ADDR")),
        _str_or_none(meta.get("HTTP_X_FORWARDED_FOR")),
        trusted_proxies,
    )
    agent = _str_or_none(meta.get("HTTP_USER_AGENT"))
    user = User(
        customer_id=customer_id or None,
        user_identifiers=dict(user_identifiers) if user_identifiers else None,
        ip_address=ip,
        user_agent=_clip(agent) if agent else None,
    )
    found: dict[str, str] = {}
    if path:
        found["current_path"] = _clip(path)
    referrer = _str_or_none(meta.get("HTTP_REFERER"))
    if referrer:
        found["referrer"] = _clip(referrer)
    query = query_string if query_string is not None else _str_or_none(meta.get("QUERY_STRING"))
    if query:
        utm = 0
        for name, value in parse_qsl(query, keep_blank_values=False):
            if (
                name.startswith("utm_")
                and len(name) <= _MAX_NAME
                and name not in found
                and value
                and (name[4:].replace("_", "").isalnum() and name.isascii())
            ):
                found[name] = _clip(value)
                utm += 1
                if utm == _MAX_UTM:
                    break
    if attributes:
        found.update(attributes)
    return RequestContext(user=user, attributes=found)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
