"""Faults on the fetch path (metadata and fetch) against real misbehaving local servers.

For each fault and endpoint: the Future fails with the contract's code within the deadline
(``config.timeout`` = 0.5 s), and afterwards the same client works again and, once closed, leaves
the thread count where it was. Clients have ONE worker, so a worker that a fault keeps busy past
the deadline shows at once as a client that no longer answers.

Every fetch runs on a worker, started at once; the client's deadline thread fails its Future when
the deadline passes and shuts the socket the call is using down, which frees the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import pytest
from fault_servers import (
    ENDPOINTS,
    FAKE_HOST,
    FETCH,
    FUTURE_WAIT,
    MARGIN,
    META,
    SERVED_KEY,
    SESSIONS,
    TIMEOUT,
    WAYS,
    Behaviour,
    FakeResolver,
    FaultServer,
    ShortSleeps,
    answer,
    bound_port,
    call,
    check_healthy,
    check_session_path,
    client_side_threads,
    fault_path,
    gzip_bomb,
    hang,
    healthy_defaults,
    huge,
    make_client,
    make_session,
    not_json,
    reset,
    reset_mid_body,
    slow_headers,
    status,
    threads_back_to,
    timed_failure,
    trickle,
    trickle_headers,
    truncated,
    truncated_chunked,
)

from moengage_personalize import (
    DataSource,
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    NetworkError,
    ParseError,
    PersonalizeError,
)

from support import FakeClock, wait_for


class Fault(NamedTuple):
    name: str
    behaviour: Callable[[], Behaviour]
    code: ErrorCode
    error: type[PersonalizeError]
    attempts: int | None  # requests the failing call sends to the faulty path (None: racy)
    says: tuple[str, ...]  # the message names the cause (one of these)
    bug: str | None = None


FAULTS = [
    Fault(
        "never_answers", hang, ErrorCode.NETWORK_ERROR, DeadlineExceededError, None, ("deadline",)
    ),
    Fault(
        "headers_after_delay",
        lambda: slow_headers(30, answer({})),
        ErrorCode.NETWORK_ERROR,
        DeadlineExceededError,
        None,
        ("deadline",),
    ),
    Fault(
        "body_trickling",
        lambda: trickle(0.02),
        ErrorCode.NETWORK_ERROR,
        DeadlineExceededError,
        1,
        ("deadline",),
    ),
    Fault(
        "headers_trickling",
        trickle_headers,
        ErrorCode.NETWORK_ERROR,
        DeadlineExceededError,
        1,
        ("deadline",),
    ),
    Fault("reset_before_answer", reset, ErrorCode.NETWORK_ERROR, NetworkError, 3, ("reset",)),
    Fault(
        "reset_mid_body",
        reset_mid_body,
        ErrorCode.NETWORK_ERROR,
        NetworkError,
        3,
        ("reset", "broke"),
    ),
    Fault("truncated_body", truncated, ErrorCode.NETWORK_ERROR, NetworkError, 3, ("broke",)),
    Fault(
        "truncated_chunked_body",
        lambda: truncated_chunked({"metadata": {"experiences": []}, "experiences": {}}),
        ErrorCode.NETWORK_ERROR,
        NetworkError,
        3,
        ("broke",),
    ),
    Fault("not_json", not_json, ErrorCode.PARSE_ERROR, ParseError, 1, ("not JSON",)),
    Fault(
        "json_of_wrong_shape",
        lambda: answer({"metadata": 5, "experiences": 5}),
        ErrorCode.PARSE_ERROR,
        ParseError,
        1,
        ("shape",),
    ),
    Fault("body_50mb_declared", huge, ErrorCode.PARSE_ERROR, ParseError, 1, ("cap",)),
    Fault(
        "body_50mb_chunked",
        lambda: huge(chunked=True),
        ErrorCode.PARSE_ERROR,
        ParseError,
        1,
        ("cap",),
    ),
    Fault("body_50mb_gzip", gzip_bomb, ErrorCode.PARSE_ERROR, ParseError, 1, ("cap",)),
    Fault(
        "429_retry_after_past_deadline",
        lambda: status(429, {"Retry-After": "30"}),
        ErrorCode.HTTP_ERROR,
        HTTPStatusError,
        1,
        ("429",),
    ),
    Fault(
        "429_until_retries_run_out",
        lambda: status(429, {"Retry-After": "0"}),
        ErrorCode.HTTP_ERROR,
        HTTPStatusError,
        3,
        ("429",),
    ),
    Fault(
        "503_storm",
        lambda: status(503),
        ErrorCode.UNKNOWN_SERVER_ERROR,
        HTTPStatusError,
        3,
        ("503",),
    ),
]


def _fault_params(bug_raises: type[BaseException] | None = None) -> list[object]:
    """The faults as parameters; with ``bug_raises``, those that hit a known SDK bug are strict
    xfails that must fail with that exception."""
    params: list[object] = []
    for fault in FAULTS:
        marks = []
        if bug_raises is not None and fault.bug is not None:
            marks.append(pytest.mark.xfail(strict=True, raises=bug_raises, reason=fault.bug))
        params.append(pytest.param(fault, id=fault.name, marks=marks))
    return params


@pytest.mark.parametrize("how", WAYS)
def test_a_request_the_server_stops_reading_ends_at_the_deadline(
    how: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A fetch's send has no socket timeout of its own: with a body far past the socket buffers
    and a server that reads none of it, the send blocks until the deadline thread shuts the
    socket down. The Future fails on time, and the client (one worker) stays usable."""
    server.stop_reading(FETCH, over=1_000_000)
    baseline = client_side_threads()
    big = {"notes": "x" * (16 * 1024 * 1024)}  # past loopback's socket buffers (a few MiB)
    timeout = 2.0  # the body is encoded and its head sent long before, even on a loaded machine
    with make_client(server.base_url, short_sleeps, timeout=timeout) as client:
        client.fetch_experiences_meta().result(FUTURE_WAIT)  # metadata loaded beforehand
        future = client.fetch_experience(SERVED_KEY, attributes=big, user="u1")
        err, elapsed = timed_failure(future, time.monotonic(), how)
        assert isinstance(err, DeadlineExceededError), repr(err)
        assert err.code is ErrorCode.NETWORK_ERROR
        assert elapsed <= timeout + MARGIN
        assert [r.path for r in server.log].count(FETCH) == 1  # it went out, and stuck
        check_healthy(client, "fetch")
    assert threads_back_to(baseline)


@pytest.mark.parametrize("how", WAYS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", _fault_params())
def test_fault_fails_with_its_code_within_the_deadline(
    fault: Fault, endpoint: str, how: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """The Future fails with the contract's code (and error class) no later than the deadline,
    after the retries the policy allows, whether the caller blocks in ``result()`` or waits for a
    done-callback (a worker runs the call either way)."""
    server.always(fault_path(endpoint), fault.behaviour())
    with make_client(server.base_url, short_sleeps) as client:
        err, elapsed = timed_failure(call(client, endpoint), time.monotonic(), how)
        assert isinstance(err, fault.error), repr(err)
        assert err.code is fault.code
        assert any(word in err.message for word in fault.says), err.message
        assert elapsed <= TIMEOUT + MARGIN
        sent = len(server.requests_to(fault_path(endpoint)))
        assert sent == fault.attempts if fault.attempts is not None else sent >= 1
        client.close(timeout=2)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", _fault_params(DeadlineExceededError))
def test_client_works_after_the_fault_and_its_threads_end(
    fault: Fault, endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """After the failed call the same client (one worker) answers the next call from the healed
    server, while the faulty answer may still be going on; once closed, its threads are gone."""
    baseline = client_side_threads()
    server.always(fault_path(endpoint), fault.behaviour())
    client = make_client(server.base_url, short_sleeps)
    try:
        timed_failure(call(client, endpoint), time.monotonic())
        server.heal(release=False)  # a hanging or trickling answer goes on
        check_healthy(client, endpoint)
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", _fault_params(AssertionError))
def test_threads_end_once_the_stuck_call_ends(
    fault: Fault, endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Closed right after the failed call while the server goes on misbehaving, the client
    leaves the thread count where it was within one more deadline."""
    baseline = client_side_threads()
    server.always(fault_path(endpoint), fault.behaviour())
    client = make_client(server.base_url, short_sleeps)
    try:
        timed_failure(call(client, endpoint), time.monotonic())
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline, timeout=TIMEOUT + MARGIN)


class WorkerHeld(AssertionError):
    """The Future failed on time, but the worker stayed busy with the call past its deadline."""


# Through requests (an injected session with a proxy or an adapter of its own) the SDK cannot shut
# the socket down: each read is bounded by the time left, not the sum of the reads.
THROUGH_REQUESTS_HELD = {
    "headers_trickling": "known limitation of the path through requests (see _http's docstring): "
    "header bytes that keep coming each end a read before its timeout, and the SDK cannot shut "
    "requests' sockets down, so the worker stays past the deadline (the Future still fails at "
    "the deadline)",
}


def _session_params() -> list[object]:
    params: list[object] = []
    for kind in SESSIONS:
        for fault in FAULTS:
            if fault.error is not DeadlineExceededError:
                continue
            marks = []
            reason = THROUGH_REQUESTS_HELD.get(fault.name) if kind != "plain" else None
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, raises=WorkerHeld, reason=reason))
            params.append(pytest.param(kind, fault, id=f"{kind}-{fault.name}", marks=marks))
    return params


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("kind", "fault"), _session_params())
def test_with_an_injected_session_a_stuck_call_still_ends(
    kind: str, fault: Fault, endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """With an injected session the Future still fails at the deadline. A plain session (default
    adapter, no proxy) takes the SDK's own direct path, whose socket the deadline shuts down: the
    worker is freed at once and the client (one worker) answers the next call. Through requests
    (a proxy, an adapter of the session's own) each read is bounded by the time left, which
    frees the worker too unless bytes keep coming (the marks)."""
    baseline = client_side_threads()
    server.always(fault_path(endpoint), fault.behaviour())
    with make_session(kind, server) as session:
        client = make_client(server.base_url, short_sleeps, session=session)
        try:
            err, elapsed = timed_failure(call(client, endpoint), time.monotonic())
            assert isinstance(err, DeadlineExceededError), repr(err)
            assert elapsed <= TIMEOUT + MARGIN
            server.heal(release=False)  # the stuck answer goes on; new requests are answered
            try:
                check_healthy(client, endpoint)
            except DeadlineExceededError:
                raise WorkerHeld("the one worker is still held by the stuck call") from None
            check_session_path(kind, session, server)
        finally:
            client.close(timeout=2)
        if not threads_back_to(baseline, timeout=TIMEOUT + MARGIN):
            raise WorkerHeld("a worker is still busy with the call after its deadline")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_answer_slow_but_within_the_deadline_succeeds(
    endpoint: str, server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Headers 0.2 s late (deadline 0.5 s) are only slow: the call succeeds."""
    path = fault_path(endpoint)
    server.always(path, slow_headers(0.2, healthy_defaults()[path]))
    with make_client(server.base_url, short_sleeps) as client:
        check_healthy(client, endpoint)
        client.close(timeout=2)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_closed_port_is_network_error_then_the_service_comes_up(
    endpoint: str, short_sleeps: ShortSleeps
) -> None:
    """Nothing listens on the port: NETWORK_ERROR "refused" at once; when a server starts on that
    port the same client works, and closing it leaves no thread behind."""
    baseline = client_side_threads()
    sock = bound_port()  # bound, not listening: connections are refused
    server = FaultServer(sock, start=False)
    client = make_client(server.base_url, short_sleeps)
    try:
        err, elapsed = timed_failure(call(client, endpoint), time.monotonic())
        assert isinstance(err, NetworkError)
        assert err.code is ErrorCode.NETWORK_ERROR
        assert "refused" in err.message
        assert elapsed <= TIMEOUT + MARGIN
        server.start()
        check_healthy(client, endpoint)
    finally:
        client.close(timeout=2)
        server.close()
    assert threads_back_to(baseline)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unresolvable_host_is_network_error_then_resolves(
    endpoint: str, server: FaultServer, resolver: FakeResolver, short_sleeps: ShortSleeps
) -> None:
    """A host name that does not resolve (patched getaddrinfo, no DNS query): NETWORK_ERROR saying
    so, nothing sent; once the name resolves the same client works."""
    baseline = client_side_threads()
    url = f"http://{FAKE_HOST}:{server.port}/v1"
    client = make_client(url, short_sleeps, allow_insecure_http=True)
    try:
        err, elapsed = timed_failure(call(client, endpoint), time.monotonic())
        assert isinstance(err, NetworkError)
        assert err.code is ErrorCode.NETWORK_ERROR
        assert "could not be resolved" in err.message
        assert elapsed <= TIMEOUT + MARGIN
        assert resolver.asked >= 1
        assert server.requests_to(fault_path(endpoint)) == []
        resolver.heal()
        check_healthy(client, endpoint)
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_name_lookup_that_hangs_is_bounded_by_the_deadline(
    endpoint: str, server: FaultServer, resolver: FakeResolver, short_sleeps: ShortSleeps
) -> None:
    """A look-up that does not return (nothing can interrupt ``getaddrinfo``, and there is no
    socket to shut down yet): NETWORK_ERROR at the deadline all the same; once the look-up
    returns the worker is free again and the client works."""
    baseline = client_side_threads()
    resolver.mode = "hang"
    url = f"http://{FAKE_HOST}:{server.port}/v1"
    client = make_client(url, short_sleeps, allow_insecure_http=True)
    try:
        err, elapsed = timed_failure(call(client, endpoint), time.monotonic())
        assert isinstance(err, DeadlineExceededError)
        assert err.code is ErrorCode.NETWORK_ERROR
        assert TIMEOUT - 0.05 <= elapsed <= TIMEOUT + MARGIN
        resolver.heal()
        check_healthy(client, endpoint)
    finally:
        client.close(timeout=2)
    assert threads_back_to(baseline)


def test_a_late_look_up_then_a_server_that_never_answers_frees_the_worker(
    server: FaultServer, resolver: FakeResolver, short_sleeps: ShortSleeps
) -> None:
    """The look-up returns only after the deadline passed (and the Future failed), and the server
    then never answers: the worker must not send the request and wait forever on a socket
    without timeout that no deadline will shut any more; the client answers the next call."""
    resolver.mode = "hang"
    server.always(META, hang())
    url = f"http://{FAKE_HOST}:{server.port}/v1"
    with make_client(url, short_sleeps, allow_insecure_http=True) as client:
        err, _ = timed_failure(client.fetch_experiences_meta(), time.monotonic())
        assert isinstance(err, DeadlineExceededError)
        resolver.heal()  # the look-up returns now, after the deadline
        time.sleep(0.2)  # the first call connects (and, with the bug, sends and hangs)
        server.heal(release=False)  # a request still hanging goes on hanging
        check_healthy(client, "metadata")
        client.close(timeout=2)


def test_a_call_nobody_waits_for_starts_at_once_and_fails_at_its_deadline(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Every fetch starts on a worker at once: its request reaches the server before anybody
    waits for the Future, and the deadline thread fails the Future on time without anybody
    waiting either; the one worker is free for the next call at once."""
    server.always(META, hang())
    with make_client(server.base_url, short_sleeps) as client:
        started = time.monotonic()
        future = client.fetch_experiences_meta()
        assert wait_for(lambda: bool(server.requests_to(META)), TIMEOUT)
        assert not future.done()
        assert wait_for(future.done, TIMEOUT + MARGIN)
        assert time.monotonic() - started <= TIMEOUT + MARGIN
        assert isinstance(future.exception(0), DeadlineExceededError)
        server.heal(release=False)
        check_healthy(client, "metadata")
        client.close(timeout=2)


def test_metadata_fault_fails_the_fetch_with_the_metadata_error(
    server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """A fetch whose metadata load fails fails with that load's code; the fetch is never sent."""
    server.always(META, status(503))
    with make_client(server.base_url, short_sleeps) as client:
        err, _ = timed_failure(call(client, "fetch"), time.monotonic())
        assert err.code is ErrorCode.UNKNOWN_SERVER_ERROR
        assert server.requests_to(fault_path("fetch")) == []
        client.close(timeout=2)


STALE_FAULTS: dict[str, Callable[[], Behaviour]] = {
    "never_answers": hang,
    "reset_before_answer": reset,
    "503_storm": lambda: status(503),
    "not_json": not_json,
}


@pytest.mark.parametrize("fault", STALE_FAULTS.values(), ids=STALE_FAULTS.keys())
def test_stale_metadata_keeps_serving_while_its_refresh_fails(
    fault: Callable[[], Behaviour], server: FaultServer, short_sleeps: ShortSleeps
) -> None:
    """Metadata loaded once and past its TTL, whose background refresh meets the fault: fetches
    keep working from the stale list (source CACHE), none waits for the refresh."""
    clock = FakeClock()
    options = {"clock": clock, "meta_ttl": 60, "max_workers": 2}
    with make_client(server.base_url, short_sleeps, **options) as client:
        check_healthy(client, "fetch")
        server.always(META, fault())
        clock.advance(61)
        for _ in range(3):
            check_healthy(client, "fetch")
        meta = client.fetch_experiences_meta().result(FUTURE_WAIT)
        assert meta.source is DataSource.CACHE
        assert wait_for(lambda: len(server.requests_to(META)) >= 2)  # the refresh was tried
        client.close(timeout=2)
