"""The fetch path's circuit breaker under real faults, and the event pipeline beside it.

Default ``CircuitBreakerPolicy`` (5 consecutive failures, or one 401, open it for 30 s) unless a
test needs the cool-down to pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fault_servers import (
    ENDPOINTS,
    EVENTS,
    EVENTS_THREAD,
    FETCH,
    FUTURE_WAIT,
    META,
    Behaviour,
    FaultServer,
    ShortSleeps,
    assert_every_event_arrived,
    call,
    check_healthy,
    client_side_threads,
    fault_path,
    make_client,
    not_json,
    reset,
    status,
    threads_back_to,
    timed_failure,
    track,
)

from moengage_personalize import (
    CircuitBreakerPolicy,
    ErrorCode,
    HTTPStatusError,
    PersonalizeError,
)

THRESHOLD = 5  # CircuitBreakerPolicy().failure_threshold
FAST = 0.1  # a call refused by an open breaker completes within this (it is done at once)


def requests_sent(server: FaultServer) -> int:
    return len(server.requests_to(META)) + len(server.requests_to(FETCH))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_503_storm_opens_the_breaker_and_calls_fail_fast(
    endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Five calls failing with 503 open the breaker; the next call fails at once with the code
    that opened it, without a request, and stats() says the circuit is open."""
    server.always(fault_path(endpoint), status(503))
    with make_client(server.base_url, short_sleeps) as client:
        for _ in range(THRESHOLD):
            err, _ = timed_failure(call(client, endpoint), time.monotonic())
            assert err.code is ErrorCode.UNKNOWN_SERVER_ERROR
        sent = requests_sent(server)
        started = time.monotonic()
        err, elapsed = timed_failure(call(client, endpoint), started)
        stats = client.stats()
        client.close(timeout=2)
    assert isinstance(err, HTTPStatusError)
    assert (err.code, err.status_code) == (ErrorCode.UNKNOWN_SERVER_ERROR, 503)
    assert "failing fast" in err.message
    assert elapsed < FAST
    assert requests_sent(server) == sent
    assert (stats.circuit_state, stats.circuit_opened) == ("open", 1)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_401_opens_the_breaker_at_once(
    endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """One 401 (bad credentials) opens the breaker: the next call fails fast with HTTP_ERROR 401
    and sends nothing."""
    server.always(fault_path(endpoint), status(401))
    with make_client(server.base_url, short_sleeps) as client:
        first, _ = timed_failure(call(client, endpoint), time.monotonic())
        sent = requests_sent(server)
        err, elapsed = timed_failure(call(client, endpoint), time.monotonic())
        stats = client.stats()
        client.close(timeout=2)
    assert (first.code, first.status_code) == (ErrorCode.HTTP_ERROR, 401)
    assert (err.code, err.status_code) == (ErrorCode.HTTP_ERROR, 401)
    assert "failing fast" in err.message
    assert elapsed < FAST
    assert requests_sent(server) == sent
    assert stats.circuit_state == "open"


FAILURES: dict[str, Callable[[], Behaviour]] = {
    "reset": reset,
    "not_json": not_json,
    "429": lambda: status(429, {"Retry-After": "0"}),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_other_consecutive_failures_open_the_breaker(
    failure: Callable[[], Behaviour], server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Resets, unparsable answers and 429s count as failures too: five in a row open it."""
    server.always(FETCH, failure())
    with make_client(server.base_url, short_sleeps) as client:
        codes = {timed_failure(call(client, "fetch"), time.monotonic())[0].code for _ in range(5)}
        sent = requests_sent(server)
        err, elapsed = timed_failure(call(client, "fetch"), time.monotonic())
        assert client.stats().circuit_state == "open"
        client.close(timeout=2)
    assert codes == {err.code}
    assert elapsed < FAST
    assert requests_sent(server) == sent


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_breaker_closes_after_the_cool_down_once_the_service_heals(
    endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Healed during the cool-down, calls still fail fast; after it the trial call succeeds and
    closes the breaker; the client's threads end when it closes."""
    baseline = client_side_threads()
    server.always(fault_path(endpoint), status(503))
    policy = CircuitBreakerPolicy(cool_down=0.3)
    client = make_client(server.base_url, short_sleeps, circuit_breaker=policy)
    try:
        for _ in range(THRESHOLD):
            timed_failure(call(client, endpoint), time.monotonic())
        opened_at = time.monotonic()
        server.heal()
        err, _ = timed_failure(call(client, endpoint), time.monotonic())
        assert "failing fast" in err.message
        time.sleep(max(0.0, 0.35 - (time.monotonic() - opened_at)))
        assert client.stats().circuit_state == "half_open"
        check_healthy(client, endpoint)
        assert client.stats().circuit_state == "closed"
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


def test_events_keep_their_own_back_off_while_the_breaker_is_open(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Everything answers 503: the fetch path's breaker opens, while the event pipeline goes on
    retrying with its own growing back-off; after healing every event arrives though the
    breaker still refuses fetches (30 s cool-down)."""
    baseline = client_side_threads()
    for path in (META, FETCH, EVENTS):
        server.always(path, status(503))
    client = make_client(server.base_url, short_sleeps)
    try:
        for _ in range(THRESHOLD):
            timed_failure(client.fetch_experiences_meta(), time.monotonic())
        assert client.stats().circuit_state == "open"
        ids = track(client, 20)
        report = client.flush(timeout=0.3)
        assert (report.completed, report.sent, report.dropped) == (False, 0, 0)
        waits = short_sleeps.on(EVENTS_THREAD)
        assert len(waits) >= 3
        assert waits[2] > waits[0]  # 0.25 s * 2**n, jittered: the third wait is the longer
        server.heal()
        report = client.flush(timeout=5)
        assert (report.completed, report.sent, report.dropped) == (True, 20, 0)
        assert_every_event_arrived(server, ids)
        err, _ = timed_failure(client.fetch_experiences_meta(), time.monotonic())
        assert "failing fast" in err.message
        assert client.stats().circuit_state == "open"
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("unexpected", [KeyboardInterrupt, RuntimeError])
def test_a_half_open_trial_that_raises_something_unexpected_ends_the_trial(
    unexpected: type[BaseException], endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A 401 opens the breaker; after the cool-down (0.2 s) the trial call is interrupted by
    something that is no PersonalizeError (the client's own transport replaced, on the instance,
    by one that raises once). That trial said nothing of the service: it fails (UNKNOWN, caused
    by what was raised) without a request, and the next call is not failed fast as "the circuit
    breaker is open" but becomes the trial, reaches the healed server and closes the breaker."""
    baseline = client_side_threads()
    server.always(fault_path(endpoint), status(401))
    client = make_client(
        server.base_url, short_sleeps, circuit_breaker=CircuitBreakerPolicy(cool_down=0.2)
    )
    try:
        first, _ = timed_failure(call(client, endpoint), time.monotonic())
        opened_by = time.monotonic()
        assert (first.code, first.status_code) == (ErrorCode.HTTP_ERROR, 401)
        assert "failing fast" in timed_failure(call(client, endpoint), time.monotonic())[0].message
        server.heal()
        time.sleep(max(0.0, 0.25 - (time.monotonic() - opened_by)))
        assert client.stats().circuit_state == "half_open"

        transport = client._core._transport

        def interrupted(*_args: object, **_kwargs: object) -> None:
            del transport.request  # once: the class's own method again
            raise unexpected("the trial was interrupted")

        transport.request = interrupted  # type: ignore[method-assign]
        sent = requests_sent(server)
        trial = call(client, endpoint)
        if unexpected is KeyboardInterrupt:  # on the caller's own thread: the caller's to handle
            with pytest.raises(KeyboardInterrupt):
                trial.result(FUTURE_WAIT)
            err = trial.exception(0)
            assert isinstance(err, PersonalizeError)
        else:
            err, _ = timed_failure(trial, time.monotonic())
        assert err.code is ErrorCode.UNKNOWN, repr(err)
        assert isinstance(err.__cause__, unexpected)
        assert requests_sent(server) == sent
        assert client.stats().circuit_state == "half_open"

        check_healthy(client, endpoint)  # not "failing fast": the trial reaches the server
        assert requests_sent(server) > sent
        assert client.stats().circuit_state == "closed"
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)
