"""Retries, for fetches and events alike: a :class:`RetryPolicy` becomes a ``tenacity.Retrying``.

One rule for every wait: the exponential back-off of the attempt (with jitter), or what the
service asked for (``Retry-After`` / ``x-ratelimit-reset``) when that is longer, never less
(zero, negative and past values included). A fetch fails at once instead of waiting past its
deadline or longer than ``max_retry_after``; events wait at most ``max_retry_after`` and retry
until delivered or given up (the client closing).

Imported on the first failure only: a call that succeeds never loads tenacity.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import tenacity

from ._config import RetryPolicy
from .exceptions import DeadlineExceededError, HTTPStatusError, NetworkError, PersonalizeError

log = logging.getLogger("moengage_personalize")


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the service asks to wait (``Retry-After`` in seconds or as an HTTP date, else
    ``x-ratelimit-reset`` as epoch seconds or a small delta), 0.0 for a time already past, None
    when it says nothing usable."""
    value = (headers.get("Retry-After") or "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, when.timestamp() - now())
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
    reset = (headers.get("x-ratelimit-reset") or "").strip()
    if reset:
        try:
            stamp = float(reset)
        except ValueError:
            return None
        if math.isfinite(stamp):
            # documented as epoch seconds; a small number can only be a delta
            return max(0.0, stamp - now() if stamp > 1e9 else stamp)
    return None


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """The exponential back-off after failed attempt number ``attempt`` (1-based)."""
    ceiling = min(policy.max_backoff, policy.initial_backoff * 2 ** min(attempt - 1, 62))
    return random.uniform(ceiling / 2, ceiling) if policy.jitter else ceiling  # noqa: S311


def wait_after(policy: RetryPolicy, attempt: int, error: BaseException | None) -> float:
    """How long to wait after failed attempt ``attempt``: never less than the back-off."""
    wait = backoff(policy, attempt)
    asked = error.retry_after if isinstance(error, HTTPStatusError) else None
    if asked is not None:  # a fetch never waits over max_retry_after (it stops instead)
        wait = max(wait, min(asked, policy.max_retry_after))
    return wait


def fetch_retryable(error: BaseException) -> bool:
    """Network failures (not the deadline itself), 429 and 5xx."""
    if isinstance(error, DeadlineExceededError):
        return False
    if isinstance(error, NetworkError):
        return True
    if isinstance(error, HTTPStatusError):
        return error.status_code == 429 or (error.status_code or 0) >= 500
    return False


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def fetch_retrying(
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    remaining: Callable[[], float],
    on_retry: Callable[[], None],
) -> tenacity.Retrying:
    """Retries of one fetch-path request: at most ``max_attempts``, never past the deadline
    (``remaining()`` seconds left), never for a service asking more than ``max_retry_after``."""

    def stop(state: tenacity.RetryCallState) -> bool:
        if policy.max_attempts is not None and state.attempt_number >= policy.max_attempts:
            return True
        error = _error(state)
        asked = error.retry_after if isinstance(error, HTTPStatusError) else None
        if asked is not None and asked > policy.max_retry_after:
            return True
        return state.upcoming_sleep >= remaining()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        on_retry()
        log.debug(
            "attempt %d failed (%s); retrying in %.3f s",
            state.attempt_number,
            _error(state),
            state.upcoming_sleep,
        )

    return tenacity.Retrying(
        stop=stop,
        wait=lambda state: wait_after(policy, state.attempt_number, _error(state)),
        retry=tenacity.retry_if_exception(fetch_retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def events_retrying(
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    retryable: Callable[[BaseException], bool],
    give_up: Callable[[float], bool],
    before_sleep: Callable[[Any, float, BaseException | None], None],
) -> tenacity.Retrying:
    """Retries of one events request: until delivered, ``max_attempts`` (None: no limit) or
    ``give_up(wait)`` says a wait of that long is one too many (the client closes).
    ``before_sleep(args, wait, error)`` sees each retry."""

    def stop(state: tenacity.RetryCallState) -> bool:
        if policy.max_attempts is not None and state.attempt_number >= policy.max_attempts:
            return True
        return give_up(state.upcoming_sleep)

    return tenacity.Retrying(
        stop=stop,
        wait=lambda state: wait_after(policy, state.attempt_number, _error(state)),
        retry=tenacity.retry_if_exception(retryable),
        sleep=sleep,
        before_sleep=lambda state: before_sleep(state.args, state.upcoming_sleep, _error(state)),
        reraise=True,
    )


def replaying(first: PersonalizeError, attempt: Callable[..., Any]) -> Callable[..., Any]:
    """``attempt`` whose first call raises ``first`` (a failure that already happened outside
    tenacity, so that attempt counts and back-off stay exact)."""
    pending = [first]

    def call(*args: Any) -> Any:
        if pending:
            raise pending.pop()
        return attempt(*args)

    return call
