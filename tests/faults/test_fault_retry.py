"""A service that asks for no wait at all before a retry (``Retry-After: 0``, a negative value, a
date or an ``x-ratelimit-reset`` already past) never makes the SDK retry in a tight loop: a wait
is never shorter than the exponential back-off of the attempt, for events and fetches alike.
"""

from __future__ import annotations

import email.utils
import itertools
import time
from collections.abc import Callable

import pytest
from fault_servers import (
    EVENTS,
    FETCH,
    FUTURE_WAIT,
    SERVED_KEY,
    FaultServer,
    ShortSleeps,
    client_side_threads,
    make_client,
    status,
    threads_back_to,
    timed_failure,
    track,
)

from moengage_personalize import ErrorCode, HTTPStatusError, RetryPolicy

from support import wait_for

WORKER = "moengage-personalize_"  # the client's worker threads (not its events thread)

NO_WAIT: dict[str, Callable[[], dict[str, str]]] = {
    "retry_after_0": lambda: {"Retry-After": "0"},
    "retry_after_negative": lambda: {"Retry-After": "-5"},
    "retry_after_date_past": lambda: {
        "Retry-After": email.utils.formatdate(time.time() - 3600, usegmt=True)
    },
    "ratelimit_reset_past": lambda: {"x-ratelimit-reset": str(int(time.time()) - 60)},
}


@pytest.mark.parametrize("asks", NO_WAIT.values(), ids=NO_WAIT.keys())
def test_events_429_asking_for_no_wait_still_back_off(
    asks: Callable[[], dict[str, str]], server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """One queued event, every attempt answered 429 asking for no wait; real time and the default
    event_retry (0.25 s doubling): a handful of requests in 2 s, each at least the back-off floor
    (half the first back-off, 0.125 s) after the one before; delivered once the service heals."""
    server.always(EVENTS, status(429, asks()))
    baseline = client_side_threads()
    client = make_client(server.base_url, short_sleeps, sleep=time.sleep)  # real waits
    try:
        assert client.config.event_retry == RetryPolicy(
            max_attempts=None, initial_backoff=0.25, max_backoff=60.0, max_retry_after=60.0
        )
        track(client, 1)
        assert wait_for(lambda: bool(server.requests_to(EVENTS)))
        time.sleep(2.0)
        attempts = [r.at for r in server.requests_to(EVENTS)]
        assert 2 <= len(attempts) <= 10, len(attempts)  # a tight loop makes thousands
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert min(gaps) >= 0.1, gaps
        assert client.stats().events_retried >= 1
        server.heal()
        report = client.flush(timeout=5)  # cuts the back-off short: one attempt now
        assert (report.completed, report.sent, report.dropped) == (True, 1, 0)
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


@pytest.mark.parametrize("asks", NO_WAIT.values(), ids=NO_WAIT.keys())
def test_fetch_429_asking_for_no_wait_still_backs_off(
    asks: Callable[[], dict[str, str]], server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A fetch answered 429 asking for no wait, RetryPolicy(max_attempts=5, initial_backoff=0.2):
    five requests, and each of the four waits between them (injected sleeps, recorded) is the
    attempt's exponential back-off, never below its jitter floor (half of it, so >= 0.1 s)."""
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.2)
    server.always(FETCH, status(429, asks()))
    # a deadline long enough for every back-off: the attempts, not the deadline, end the call
    with make_client(server.base_url, short_sleeps, retry=policy, timeout=5.0) as client:
        client.fetch_experiences_meta().result(FUTURE_WAIT)  # metadata loaded: no retry there
        err, _ = timed_failure(client.fetch_experience(SERVED_KEY, user="u1"), time.monotonic())
        assert isinstance(err, HTTPStatusError), repr(err)
        assert (err.code, err.status_code, err.retry_after) == (ErrorCode.HTTP_ERROR, 429, 0.0)
        assert len(server.requests_to(FETCH)) == 5
        waits = short_sleeps.on("")  # on the thread that ran the call
        assert len(waits) == 4, waits
        for n, wait in enumerate(waits):
            ceiling = min(policy.max_backoff, policy.initial_backoff * 2**n)
            assert policy.initial_backoff / 2 <= ceiling / 2 <= wait <= ceiling, (n, waits)
        assert client.stats().retries == 4
        client.close(timeout=2)
