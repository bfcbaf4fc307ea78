"""Integrations with web frameworks; none of them is a dependency of the package.

- :mod:`moengage_personalize.contrib.django`: one client per process from
  ``settings.MOENGAGE_PERSONALIZE``, and a request helper (imports Django only when used);
- :mod:`moengage_personalize.contrib.wsgi`: the same request helper for Flask or any WSGI app.

Both helpers return a :class:`RequestContext` (a :class:`~moengage_personalize.User` with the
client IP and user agent, plus ``current_path``, ``referrer`` and ``utm_*`` attributes), so a view
needs two lines::

    ctx = request_context(request, customer_id=...)
    result = client.fetch_experience("homepage-banner", **ctx.as_kwargs()).result()
"""

from ._request import FetchKwargs, RequestContext, TrustedProxies, client_ip

__all__ = ["FetchKwargs", "RequestContext", "TrustedProxies", "client_ip"]
