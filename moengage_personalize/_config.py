"""Configuration value objects: frozen, keyword-only, validated at construction.

Copy with changes through :func:`attrs.evolve`. Durations accept seconds (``int``/``float``) or a
:class:`datetime.timedelta`; negative or non-finite durations are refused naming the option.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .exceptions import PersonalizeError

__all__ = ["CircuitBreakerPolicy", "PersonalizeConfig", "RetryPolicy", "User"]

_MAX_TZ_OFFSET = 54_000  # seconds; the events API's documented bound


def _duration(value: float | dt.timedelta, name: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds (int or float) or a timedelta, not {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite duration {bound} seconds, got {value!r}")
    return seconds


def _duration_field(name: str, default: float, *, allow_zero: bool = True) -> Any:
    return attrs.field(
        default=default,
        converter=lambda v: _duration(v, name, allow_zero=allow_zero),
    )


def _positive_int(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")

    return check


def _optional_positive_int(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if value is not None:
            _positive_int(name)(_inst, _attr, value)

    return check


def _bool(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {value!r}")

    return check


def _default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed requests are retried: connection errors, timeouts, 429 and 5xx; never other 4xx.

    Backoff is exponential from ``initial_backoff`` up to ``max_backoff``, with jitter. The
    service's ``Retry-After`` (or ``x-ratelimit-reset``) lengthens a wait, never shortens it below
    the back-off. A fetch fails at once rather than wait longer than ``max_retry_after`` or past its
    deadline; events wait at most ``max_retry_after``. ``max_attempts=None``: no limit but the
    deadline (fetches) or the client closing (events).
    """

    max_attempts: int | None = attrs.field(
        default=3, validator=_optional_positive_int("retry.max_attempts")
    )
    initial_backoff: float = _duration_field("retry.initial_backoff", 0.1)
    max_backoff: float = _duration_field("retry.max_backoff", 1.0)
    jitter: bool = attrs.field(default=True, validator=_bool("retry.jitter"))
    max_retry_after: float = _duration_field("retry.max_retry_after", 30.0)


@attrs.frozen(kw_only=True)
class CircuitBreakerPolicy:
    """When the fetch path stops calling a failing service and fails fast instead.

    The circuit opens after ``failure_threshold`` consecutive failures (network errors, 5xx, 429,
    unparsable answers), or at once on a 401 when ``open_on_401``; while open, fetches fail at once
    with the error that opened it; after ``cool_down`` one trial call goes through and closes it
    again if it succeeds. The event pipeline has its own back-off and is not affected.
    """

    failure_threshold: int = attrs.field(
        default=5, validator=_positive_int("circuit_breaker.failure_threshold")
    )
    cool_down: float = _duration_field("circuit_breaker.cool_down", 30.0)
    open_on_401: bool = attrs.field(default=True, validator=_bool("circuit_breaker.open_on_401"))


def _breaker_policy(value: Any) -> CircuitBreakerPolicy | None:
    if value is not None and not isinstance(value, CircuitBreakerPolicy):
        raise TypeError(f"circuit_breaker must be a CircuitBreakerPolicy or None, not {value!r}")
    return value


def _optional_callable(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, not {value!r}")

    return check


def _retry_policy(value: Any, name: str = "retry") -> RetryPolicy:
    if not isinstance(value, RetryPolicy):
        raise TypeError(f"{name} must be a RetryPolicy, not {value!r}")
    return value


def _event_retry_policy(value: Any) -> RetryPolicy:
    return _retry_policy(value, "event_retry")


def _default_event_retry() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=None, initial_backoff=0.25, max_backoff=60.0, max_retry_after=60.0
    )


def _workers(value: Any) -> int:
    if value is None:
        return _default_workers()
    _positive_int("max_workers")(None, None, value)
    return int(value)


def _callable(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if not callable(value):
            raise TypeError(f"{name} must be callable, not {value!r}")

    return check


def check_text(value: str, name: str) -> str:
    """``value`` if it can be sent as UTF-8; a lone surrogate (``"\\udcff"``, what
    ``os.fsdecode`` makes of undecodable bytes) cannot: ValueError naming the argument."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} cannot be encoded as UTF-8 (a lone surrogate at index {exc.start}): "
                f"{value!r}"
            ) from None
    return value


def _optional_str(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} must not be empty")
        check_text(value, name)

    return check


def _batch_size(_inst: Any, _attr: Any, value: Any) -> None:
    _positive_int("event_batch_size")(None, None, value)
    if value > 1000:
        raise ValueError(f"event_batch_size must be <= 1000 actions per request, got {value!r}")


def _store_path(_inst: Any, _attr: Any, value: Any) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"event_store must be a file path or None, not {value!r}")
    if isinstance(value, str) and not value:
        raise ValueError("event_store must not be empty (use None to turn the outbox off)")


@attrs.frozen(kw_only=True)
class PersonalizeConfig:
    """Options of a :class:`~moengage_personalize.MoEngagePersonalize` client (README table).

    ``clock`` (monotonic seconds, for cache TTLs) and ``sleep`` (retry backoff) are injectable so
    tests of code that uses the SDK never really wait.
    """

    timeout: float = _duration_field("timeout", 3.0, allow_zero=False)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, converter=_retry_policy)
    max_workers: int = attrs.field(default=None, converter=_workers)
    meta_ttl: float = _duration_field("meta_ttl", 900.0)
    cache_ttl: float = _duration_field("cache_ttl", 0.0)
    cache_size: int = attrs.field(default=10_000, validator=_positive_int("cache_size"))
    stale_if_error: float = _duration_field("stale_if_error", 0.0)
    circuit_breaker: CircuitBreakerPolicy | None = attrs.field(
        factory=CircuitBreakerPolicy, converter=_breaker_policy
    )
    on_error: Callable[[PersonalizeError], None] | None = attrs.field(
        default=None, validator=_optional_callable("on_error"), repr=False, eq=False
    )
    max_response_bytes: int = attrs.field(
        default=10 * 1024 * 1024, validator=_positive_int("max_response_bytes")
    )
    enabled: bool = attrs.field(default=True, validator=_bool("enabled"))
    allow_insecure_http: bool = attrs.field(default=False, validator=_bool("allow_insecure_http"))
    platform: str = attrs.field(default="web", validator=_optional_str("platform"))
    event_queue_size: int = attrs.field(default=10_000, validator=_positive_int("event_queue_size"))
    event_flush_interval: float = _duration_field("event_flush_interval", 1.0, allow_zero=False)
    event_batch_size: int = attrs.field(default=1000, validator=_batch_size)
    event_retry: RetryPolicy = attrs.field(
        factory=_default_event_retry, converter=_event_retry_policy
    )
    event_store: str | os.PathLike[str] | None = attrs.field(default=None, validator=_store_path)
    event_store_max_events: int = attrs.field(
        default=1_000_000, validator=_positive_int("event_store_max_events")
    )
    exit_flush_timeout: float = _duration_field("exit_flush_timeout", 2.0)
    clock: Callable[[], float] = attrs.field(
        default=time.monotonic, validator=_callable("clock"), repr=False, eq=False
    )
    sleep: Callable[[float], None] = attrs.field(
        default=time.sleep, validator=_callable("sleep"), repr=False, eq=False
    )


def _identifiers(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"user.user_identifiers must be a mapping of str to str, not {value!r}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"user.user_identifiers keys must be non-empty str, got {key!r}")
        if not isinstance(item, str):
            raise TypeError(
                f"user.user_identifiers[{key!r}] must be a str, not {type(item).__name__}"
            )
        check_text(key, "user.user_identifiers key")
        out[key] = check_text(item, f"user.user_identifiers[{key!r}]")
    return out or None


def _tz_offset(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ValueError(f"user.timezone_offset must be whole seconds, got {value!r}")
        value = int(seconds)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"user.timezone_offset must be int seconds or a timedelta, not {value!r}")
    if not -_MAX_TZ_OFFSET <= value <= _MAX_TZ_OFFSET:
        raise ValueError(
            f"user.timezone_offset must be within ±{_MAX_TZ_OFFSET} seconds, got {value!r}"
        )
    return value


@attrs.frozen
class User:
    """The user a call is made for. Omit for an anonymous visitor ("All Users" experiences only).

    ``customer_id`` is the primary identity; ``user_identifiers`` (e.g. ``{"u_em": email}``) the
    fallback identities of Identity Resolution; ``ip_address`` and ``user_agent`` are sent as
    ``USER_IP_ADDRESS`` / ``USER_AGENT``; ``timezone_offset`` is in seconds (events use it).
    """

    customer_id: str | None = attrs.field(default=None, validator=_optional_str("user.customer_id"))
    user_identifiers: dict[str, str] | None = attrs.field(
        default=None, converter=_identifiers, hash=False
    )
    ip_address: str | None = attrs.field(default=None, validator=_optional_str("user.ip_address"))
    user_agent: str | None = attrs.field(default=None, validator=_optional_str("user.user_agent"))
    timezone_offset: int | None = attrs.field(default=None, converter=_tz_offset)

    @property
    def is_anonymous(self) -> bool:
        """True when the user carries no identity (no customer id, no user identifiers)."""
        return self.customer_id is None and self.user_identifiers is None


@functools.lru_cache(maxsize=4096)
def _user_for(customer_id: str) -> User:
    return User(customer_id=customer_id)  # frozen: safe to share between calls


def coerce_user(value: User | str | None) -> User | None:
    """Turn the ``user=`` argument into a :class:`User` (a ``str`` is the customer id)."""
    if value is None or isinstance(value, User):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError("user must not be an empty string")
        return _user_for(check_text(value, "user"))
    raise TypeError(f"user must be a User, a customer id str or None, not {type(value).__name__}")
