"""Faults on the events endpoint (``POST /v1/experiences/events``): no event is lost.

Each test tracks impressions for distinct users while the endpoint misbehaves, checks that
nothing was delivered or dropped meanwhile, heals the server and checks with ``flush()`` that
every event arrived, a repeat being only a resend of the same ``moe_event_uuid``. Retry sleeps
are injected (recorded, at most 5 ms each), so back-off is checked without waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fault_servers import (
    EVENTS,
    EVENTS_THREAD,
    FAKE_HOST,
    MARGIN,
    Behaviour,
    FakeResolver,
    FaultServer,
    ShortSleeps,
    assert_every_event_arrived,
    bound_port,
    client_side_threads,
    hang,
    make_client,
    reset,
    reset_mid_body,
    status,
    threads_back_to,
    track,
    trickle,
)

import moengage_personalize._event_sender as events_module
from moengage_personalize import FlushReport, RetryPolicy

from support import wait_for

N_EVENTS = 20


def assert_nothing_delivered_nor_dropped(report: FlushReport) -> None:
    assert not report.completed
    assert (report.sent, report.dropped, report.failed, report.pending) == (0, 0, 0, N_EVENTS)


def assert_all_delivered(report: FlushReport) -> None:
    assert report.completed
    assert (report.sent, report.dropped, report.failed, report.pending) == (N_EVENTS, 0, 0, 0)


EVENT_FAULTS: dict[str, Callable[[], Behaviour]] = {
    "never_answers": hang,
    "reset_before_answer": reset,
    "reset_mid_body": reset_mid_body,
    "503_storm": lambda: status(503),
    "429_retry_after": lambda: status(429, {"Retry-After": "7"}),
    "401": lambda: status(401),
}


@pytest.mark.parametrize("fault", EVENT_FAULTS.values(), ids=EVENT_FAULTS.keys())
def test_events_survive_the_fault_and_arrive_after_healing(
    fault: Callable[[], Behaviour], server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """While the endpoint misbehaves, events stay queued (none sent, none dropped); once it is
    healthy again (a hung server restarted) every event arrives, exactly once per uuid, and the
    client's threads end when it closes."""
    baseline = client_side_threads()
    server.always(EVENTS, fault())
    client = make_client(server.base_url, short_sleeps)
    try:
        ids = track(client, N_EVENTS)
        assert_nothing_delivered_nor_dropped(client.flush(timeout=0.3))
        assert server.requests_to(EVENTS)
        server.heal()
        assert_all_delivered(client.flush(timeout=5))
        assert_every_event_arrived(server, ids)
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


def test_events_back_off_exponentially_up_to_the_cap(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A storm of 503s: the event pipeline waits 0.25 s * 2**n (jittered to half of it at least),
    capped at event_retry.max_backoff, between attempts, then delivers."""
    server.script(EVENTS, [status(503)] * 10)
    retry = RetryPolicy(
        max_attempts=None, initial_backoff=0.25, max_backoff=2.0, max_retry_after=60.0
    )
    with make_client(server.base_url, short_sleeps, event_retry=retry) as client:
        ids = track(client, N_EVENTS)
        assert_all_delivered(client.flush(timeout=5))
        waits = short_sleeps.on(EVENTS_THREAD)
        assert len(waits) == 10
        for n, wait in enumerate(waits):
            ceiling = min(2.0, 0.25 * 2**n)
            assert ceiling / 2 <= wait <= ceiling, (n, waits)
        refused = [r for r in server.requests_to(EVENTS) if r.answered == 503]
        assert client.stats().events_retried == sum(len(r.json()["elements"]) for r in refused)
        client.close(timeout=2)
    assert_every_event_arrived(server, ids)


def test_events_429_waits_what_retry_after_says(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """429 with Retry-After: 7: the pipeline waits 7 s (injected) before each retry, then
    delivers."""
    server.script(EVENTS, [status(429, {"Retry-After": "7"})] * 3)
    with make_client(server.base_url, short_sleeps) as client:
        ids = track(client, N_EVENTS)
        assert_all_delivered(client.flush(timeout=5))
        assert short_sleeps.on(EVENTS_THREAD) == [7.0, 7.0, 7.0]
        client.close(timeout=2)
    assert_every_event_arrived(server, ids)


def test_events_retry_after_is_capped_by_max_retry_after(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A 429 asking for an hour (Retry-After: 3600) does not stop delivery for an hour: the wait
    is capped at event_retry.max_retry_after (60 s by default)."""
    server.script(EVENTS, [status(429, {"Retry-After": "3600"})])
    with make_client(server.base_url, short_sleeps) as client:
        track(client, N_EVENTS)
        assert_all_delivered(client.flush(timeout=5))
        assert short_sleeps.on(EVENTS_THREAD) == [60.0]
        client.close(timeout=2)


def test_events_to_a_closed_port_arrive_once_the_service_is_up(
    short_sleeps: ShortSleeps,
) -> None:
    """Nothing listens on the port: events wait (refused attempts, none dropped); when a server
    starts on that port every event arrives."""
    baseline = client_side_threads()
    server = FaultServer(bound_port(), start=False)
    client = make_client(server.base_url, short_sleeps)
    try:
        ids = track(client, N_EVENTS)
        assert_nothing_delivered_nor_dropped(client.flush(timeout=0.3))
        assert client.stats().events_retried > 0
        server.start()
        assert_all_delivered(client.flush(timeout=5))
        assert_every_event_arrived(server, ids)
    finally:
        client.close(timeout=2)
        server.close()
    assert threads_back_to(baseline)


def test_events_to_an_unresolvable_host_arrive_once_it_resolves(
    server: FaultServer, resolver: FakeResolver, short_sleeps: ShortSleeps
) -> None:
    """The host name does not resolve (patched getaddrinfo, no DNS query): events wait; once the
    name resolves every event arrives."""
    url = f"http://{FAKE_HOST}:{server.port}/v1"
    with make_client(url, short_sleeps, allow_insecure_http=True) as client:
        ids = track(client, N_EVENTS)
        assert_nothing_delivered_nor_dropped(client.flush(timeout=0.3))
        assert server.requests_to(EVENTS) == []
        resolver.heal()
        assert_all_delivered(client.flush(timeout=5))
        client.close(timeout=2)
    assert_every_event_arrived(server, ids)


def test_hung_events_connection_is_abandoned_after_the_attempt_timeout(
    server: FaultServer, short_sleeps: ShortSleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server hangs on the connection carrying the events but answers new ones: once the
    attempt timeout passes (10 s, shortened to 0.3 s here) the events go out on a new connection."""
    monkeypatch.setattr(events_module, "ATTEMPT_TIMEOUT", 0.3)
    server.always(EVENTS, hang())
    with make_client(server.base_url, short_sleeps) as client:
        ids = track(client, N_EVENTS)
        assert wait_for(lambda: bool(server.requests_to(EVENTS)))
        server.heal(release=False)  # the first connection keeps hanging
        assert_all_delivered(client.flush(timeout=5))
        client.close(timeout=2)
    assert_every_event_arrived(server, ids)


def test_trickling_events_answer_is_abandoned_after_the_attempt_timeout(
    server: FaultServer, short_sleeps: ShortSleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An events answer whose body trickles in forever is given up at the attempt timeout
    (shortened to 0.3 s here) and the events go out again on a new connection."""
    monkeypatch.setattr(events_module, "ATTEMPT_TIMEOUT", 0.3)
    server.always(EVENTS, trickle(0.02))
    client = make_client(server.base_url, short_sleeps)
    try:
        track(client, N_EVENTS)
        assert wait_for(lambda: bool(server.requests_to(EVENTS)))
        server.heal(release=False)  # the first answer keeps trickling
        assert_all_delivered(client.flush(timeout=1))
    finally:
        client.close(timeout=0.2)


def test_close_returns_within_its_timeout_while_an_events_attempt_hangs(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """close(timeout=0.5) while the events endpoint never answers returns within 0.5 s (plus a
    small margin)."""
    server.always(EVENTS, hang())
    client = make_client(server.base_url, short_sleeps)
    track(client, N_EVENTS)
    assert wait_for(lambda: bool(server.requests_to(EVENTS)))
    started = time.monotonic()
    client.close(timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed <= 0.5 + MARGIN


def test_events_are_not_sent_twice_with_new_uuids_after_resets(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Resets in the middle of the answer (the service may have taken the batch): resends carry
    the same uuids, so the service can de-duplicate them."""
    server.script(EVENTS, [reset_mid_body()] * 3)
    with make_client(server.base_url, short_sleeps) as client:
        ids = track(client, N_EVENTS)
        assert_all_delivered(client.flush(timeout=5))
        client.close(timeout=2)
    received = server.event_actions(accepted_only=False)
    assert len(received) == 4 * N_EVENTS  # every attempt carried the whole batch
    assert len({action["moe_event_uuid"] for _, action in received}) == N_EVENTS
    assert_every_event_arrived(server, ids)
