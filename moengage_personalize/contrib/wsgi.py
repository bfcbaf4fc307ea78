"""The request helper for Flask and any WSGI application (no Flask import needed).

::

    from flask import request
    from moengage_personalize.contrib.wsgi import context_from_environ

    @app.get("/")
    def home():
        ctx = context_from_environ(request.environ, customer_id=session.get("customer_id"))
        result = personalize.fetch_experience("homepage-banner", **ctx.as_kwargs()).result()
        ...

The client IP is ``REMOTE_ADDR`` unless ``trusted_proxies`` says which proxies stand in front of
the app (see :func:`~moengage_personalize.contrib.client_ip`); ``X-Forwarded-For`` is never
trusted by default. If a middleware such as werkzeug's ``ProxyFix`` already rewrote
``REMOTE_ADDR``, leave ``trusted_proxies`` unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._request import RequestContext, TrustedProxies, context_from_meta

__all__ = ["RequestContext", "context_from_environ", "request_path"]


def request_path(environ: Mapping[str, Any]) -> str:
    """The request's path, ``SCRIPT_NAME`` + ``PATH_INFO``, decoded as UTF-8 (PEP 3333 hands
    them over as latin-1 strings)."""
    raw = str(environ.get("SCRIPT_NAME") or "") + str(environ.get("PATH_INFO") or "")
    try:
        return raw.encode("latin-1").decode("utf-8", "replace") or "/"
    except UnicodeEncodeError:  # a server that already decoded it
        return raw or "/"


def context_from_environ(
    environ: Mapping[str, Any],
    *,
    customer_id: str | None = None,
    user_identifiers: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
    trusted_proxies: TrustedProxies = None,
) -> RequestContext:
    """Who the request is for and its in-session attributes, from a WSGI ``environ``.

    The :class:`~moengage_personalize.User` gets ``customer_id`` / ``user_identifiers`` (omit both
    for an anonymous visitor), the client IP and the ``User-Agent``; the attributes are
    ``current_path``, ``referrer`` (the ``Referer`` header) and every non-empty ``utm_*`` query
    parameter (first value), then ``attributes`` (which win). Values are cut at 512 characters.
    """
    return context_from_meta(
        environ,
        path=request_path(environ),
        customer_id=customer_id,
        user_identifiers=user_identifiers,
        attributes=attributes,
        trusted_proxies=trusted_proxies,
    )
