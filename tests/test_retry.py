"""The one retry module: the Retry-After parser and the rule for every wait (never shorter than
the back-off, never past the deadline), for fetches and events alike."""

from __future__ import annotations

import contextlib
import email.utils

import pytest

from moengage_personalize import HTTPStatusError, NetworkError, RetryPolicy
from moengage_personalize._retry import backoff, fetch_retrying, retry_after, wait_after

NOW = 1_800_000_000.0


def now() -> float:
    return NOW


def throttled(seconds: float | None) -> HTTPStatusError:
    return HTTPStatusError("throttled", status_code=429, retry_after=seconds)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"x-ratelimit-reset": str(NOW + 12)}, 12.0),
        ({"x-ratelimit-reset": str(NOW - 12)}, 0.0),
        ({"x-ratelimit-reset": "7"}, 7.0),
        ({"x-ratelimit-reset": "-7"}, 0.0),
        ({"x-ratelimit-reset": "later"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_dates_and_resets(
    headers: dict[str, str], expected: float | None
) -> None:
    """Seconds, HTTP dates and reset stamps; past and negative values are 0, junk is None."""
    got = retry_after(headers, now)
    assert got == (pytest.approx(expected, abs=1.0) if expected else expected)


@pytest.mark.parametrize("asked", [None, 0.0, -1.0])
def test_a_wait_is_never_shorter_than_the_back_off(asked: float | None) -> None:
    """Retry-After 0 or past (parsed to 0) never shortens the exponential back-off."""
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=10.0, jitter=False)
    error = throttled(None if asked is None else max(0.0, asked))
    assert [wait_after(policy, n, error) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]


def test_a_longer_retry_after_wins_up_to_max_retry_after() -> None:
    """The service may ask for more than the back-off (capped at max_retry_after)."""
    policy = RetryPolicy(initial_backoff=0.1, jitter=False, max_retry_after=5.0)
    assert wait_after(policy, 1, throttled(2.0)) == 2.0
    assert wait_after(policy, 1, throttled(50.0)) == 5.0


def test_jitter_stays_within_half_to_all_of_the_back_off() -> None:
    policy = RetryPolicy(initial_backoff=0.4, max_backoff=10.0)
    waits = [backoff(policy, 2) for _ in range(200)]
    assert min(waits) >= 0.4
    assert max(waits) <= 0.8


def test_back_off_is_capped_and_never_overflows() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=3.0, jitter=False)
    assert backoff(policy, 10_000) == 3.0


def run(policy: RetryPolicy, errors: list[Exception], remaining: float) -> list[float]:
    """Waits asked of the injected sleep while ``errors`` are raised in turn."""
    slept: list[float] = []
    retrying = fetch_retrying(policy, slept.append, lambda: remaining, lambda: None)
    pending = list(errors)

    def attempt() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    with contextlib.suppress(Exception):
        retrying(attempt)
    return slept


def test_fetch_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, jitter=False)
    assert run(policy, [NetworkError("x")] * 5, remaining=10.0) == [0.1, 0.2]


def test_fetch_never_waits_past_the_deadline() -> None:
    """A wait as long as what is left of the deadline is not waited: the call fails at once."""
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=False)
    assert run(policy, [NetworkError("x")] * 5, remaining=0.5) == []


def test_fetch_gives_up_when_the_service_asks_too_long() -> None:
    policy = RetryPolicy(max_attempts=5, jitter=False, max_retry_after=1.0)
    assert run(policy, [throttled(2.0)], remaining=10.0) == []


def test_fetch_without_an_attempt_limit_retries_until_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=None, initial_backoff=0.1, max_backoff=0.1, jitter=False)
    assert run(policy, [NetworkError("x")] * 7, remaining=10.0) == [0.1] * 7


def test_4xx_other_than_429_is_not_retried() -> None:
    policy = RetryPolicy(max_attempts=5, jitter=False)
    assert run(policy, [HTTPStatusError("bad", status_code=400)], remaining=10.0) == []
