"""Django: one client per process from ``settings.MOENGAGE_PERSONALIZE``, and a request helper.

Django is imported only when these functions run (it is never a dependency of the package)::

    # settings.py
    MOENGAGE_PERSONALIZE = {
        "app_id": "WORKSPACE_ID",
        "api_key": env("MOENGAGE_PERSONALIZE_API_KEY"),
        "data_center": "01",              # or "base_url": "http://127.0.0.1:8181/v1"
        "timeout": 2.0,                   # any PersonalizeConfig option, or "config": {...}
        "trusted_proxies": 1,             # X-Forwarded-For: hops appended by YOUR proxies
        "customer_id": "shop.personalize.customer_id",  # optional: request -> customer id
    }

    # views.py
    from moengage_personalize.contrib.django import get_client, request_context

    def home(request):
        ctx = request_context(request)
        result = get_client().fetch_experience("homepage-banner", **ctx.as_kwargs()).result()
        ...

The client is created on first use (thread-safe), shared by every thread of the process, and
closed at interpreter exit (a bounded flush of queued events). :func:`reset_client` closes it and
forgets it; changing the setting with ``override_settings`` does the same, so tests get a client
for their own settings. Async views use :func:`get_async_client`, a view of the same client.
"""

from __future__ import annotations

import atexit
import importlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig
from moengage_personalize.aio import AsyncMoEngagePersonalize

from ._request import RequestContext, TrustedProxies, _check_proxies, _networks, context_from_meta

__all__ = [
    "SETTING",
    "HttpRequestLike",
    "PersonalizeSettings",
    "get_async_client",
    "get_client",
    "get_settings",
    "parse_settings",
    "request_context",
    "reset_client",
]

SETTING = "MOENGAGE_PERSONALIZE"

_CLIENT_KEYS = frozenset({"app_id", "api_key", "data_center", "base_url", "config"})
_HELPER_KEYS = frozenset({"trusted_proxies", "customer_id"})
_CONFIG_KEYS = frozenset(a.name for a in attrs.fields(PersonalizeConfig))


class HttpRequestLike(Protocol):
    """What the helpers read of a Django ``HttpRequest`` (``WSGIRequest`` or ``ASGIRequest``)."""

    @property
    def META(self) -> Mapping[str, Any]:
        """The CGI-style request variables."""

    @property
    def path(self) -> str:
        """The request path."""


@attrs.frozen
class PersonalizeSettings:
    """``settings.MOENGAGE_PERSONALIZE``, checked: what the client and the helper are built from."""

    app_id: str
    api_key: str = attrs.field(repr=False)
    data_center: str = "01"
    base_url: str | None = None
    config: PersonalizeConfig = attrs.field(factory=PersonalizeConfig)
    trusted_proxies: TrustedProxies = None
    customer_id: Callable[[Any], str | None] | None = None


def _improperly_configured(message: str) -> Exception:
    cls = importlib.import_module("django.core.exceptions").ImproperlyConfigured
    error: Exception = cls(f"{SETTING}: {message}")
    return error


def _import_string(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not a dotted path")
    return getattr(importlib.import_module(module), name)


def parse_settings(value: object) -> PersonalizeSettings:
    """Check a ``MOENGAGE_PERSONALIZE`` dict; every mistake raises ``ImproperlyConfigured``
    naming the key."""
    if not isinstance(value, Mapping):
        raise _improperly_configured(f"must be a dict, not {type(value).__name__}")
    unknown = sorted(set(value) - _CLIENT_KEYS - _HELPER_KEYS - _CONFIG_KEYS)
    if unknown:
        raise _improperly_configured(f"unknown keys {unknown}")
    for key in ("app_id", "api_key"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise _improperly_configured(f"{key!r} is required (a non-empty str)")
    try:
        config = _config(value)
        proxies = value.get("trusted_proxies")
        _check_proxies(proxies)
        if proxies is not None and not isinstance(proxies, int):
            proxies = tuple(proxies)
            _networks(proxies)  # refuses a bad address now, not at the first request
        resolver = value.get("customer_id")
        if isinstance(resolver, str):
            try:
                resolver = _import_string(resolver)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"customer_id: cannot import {resolver!r}: {exc}") from exc
        if resolver is not None and not callable(resolver):
            raise TypeError(f"customer_id must be a callable or a dotted path, not {resolver!r}")
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        raise _improperly_configured(str(exc)) from exc
    return PersonalizeSettings(
        app_id=value["app_id"],
        api_key=value["api_key"],
        data_center=value.get("data_center", "01"),
        base_url=value.get("base_url"),
        config=config,
        trusted_proxies=proxies,
        customer_id=resolver,
    )


def _config(value: Mapping[str, Any]) -> PersonalizeConfig:
    flat = {k: v for k, v in value.items() if k in _CONFIG_KEYS}
    base = value.get("config")
    if base is None:
        return PersonalizeConfig(**flat)
    if isinstance(base, PersonalizeConfig):
        return attrs.evolve(base, **flat)
    if isinstance(base, Mapping):
        return PersonalizeConfig(**{**base, **flat})
    raise TypeError(f"config must be a PersonalizeConfig or a dict, not {type(base).__name__}")


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: PersonalizeSettings | None = None
        self.client: MoEngagePersonalize | None = None
        self.async_client: AsyncMoEngagePersonalize | None = None
        self.hooked = False


_state = _State()


def get_settings() -> PersonalizeSettings:
    """The checked ``settings.MOENGAGE_PERSONALIZE`` (read once, until :func:`reset_client`)."""
    found = _state.settings
    if found is not None:
        return found
    with _state.lock:
        if _state.settings is None:
            _state.settings = _read_settings()
            _hook_once()
        return _state.settings


def _read_settings() -> PersonalizeSettings:
    settings = importlib.import_module("django.conf").settings
    value = getattr(settings, SETTING, None)
    if value is None:
        raise _improperly_configured("the setting is missing")
    return parse_settings(value)


def get_client() -> MoEngagePersonalize:
    """The process's client, created from the settings on first use (thread-safe)."""
    client = _state.client
    if client is not None:
        return client
    settings = get_settings()
    with _state.lock:
        if _state.client is None:
            _state.client = MoEngagePersonalize(
                settings.app_id,
                api_key=settings.api_key,
                data_center=settings.data_center,
                base_url=settings.base_url,
                config=settings.config,
            )
        return _state.client


def get_async_client() -> AsyncMoEngagePersonalize:
    """An :class:`~moengage_personalize.aio.AsyncMoEngagePersonalize` view of :func:`get_client`
    for async views (same client, threads and caches)."""
    view = _state.async_client
    if view is not None and view.sync is _state.client:
        return view
    view = AsyncMoEngagePersonalize.from_client(get_client())
    _state.async_client = view
    return view


def reset_client(timeout: float = 5.0) -> None:
    """Close the process's client (flushing its events, at most ``timeout`` seconds) and forget
    it and the settings; the next :func:`get_client` builds a new one. For tests and reloads."""
    with _state.lock:
        client, _state.client = _state.client, None
        _state.settings = None
        _state.async_client = None
    if client is not None:
        client.close(timeout)


def request_context(
    request: HttpRequestLike,
    *,
    customer_id: str | None = None,
    user_identifiers: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> RequestContext:
    """Who ``request`` is for and its in-session attributes, for a fetch or tracking call.

    ``customer_id`` defaults to what the settings' ``customer_id`` callable returns for the
    request (none configured: an anonymous visitor). The client IP follows the settings'
    ``trusted_proxies`` (``X-Forwarded-For`` is ignored unless it is set); the user agent comes
    from the request; the attributes are ``current_path``, ``referrer`` and the ``utm_*`` query
    parameters, then ``attributes`` (which win).
    """
    settings = get_settings()
    if customer_id is None and settings.customer_id is not None:
        customer_id = settings.customer_id(request)
    meta = request.META
    return context_from_meta(
        meta,
        path=request.path,
        customer_id=customer_id,
        user_identifiers=user_identifiers,
        attributes=attributes,
        trusted_proxies=settings.trusted_proxies,
    )


def _hook_once() -> None:
    """Called under the lock the first time settings are read: close at exit, reset when the
    setting changes (``override_settings``)."""
    if _state.hooked:
        return
    _state.hooked = True
    atexit.register(_close_at_exit)
    signals = importlib.import_module("django.core.signals")
    signals.setting_changed.connect(
        _on_setting_changed, dispatch_uid="moengage_personalize.contrib.django"
    )


def _on_setting_changed(sender: object, setting: str = "", **kwargs: object) -> None:
    if setting == SETTING:
        reset_client()


def _close_at_exit() -> None:
    client = _state.client
    if client is not None:
        reset_client(timeout=client.config.exit_flush_timeout)


def _after_fork_in_child() -> None:
    _state.lock = threading.Lock()  # the client rebuilds itself (see the README's fork notes)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
