"""Experience cache, single flight, circuit breaker, on_error, stats, logging hygiene, threads."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import moengage_personalize
from moengage_personalize import (
    CircuitBreakerPolicy,
    DataSource,
    ErrorCode,
    ExperienceFailureReason,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
    User,
)

from support import (
    API_KEY,
    APP_ID,
    CONTEXT,
    DEFAULT_META,
    FUTURE_TIMEOUT,
    FakeClock,
    Sleeps,
    fetch_bodies,
    requests_to,
    served,
    wait_for,
)

META = "/v1/experiences/metadata"
FETCH = "/v1/experiences/fetch"


def make(base_url: str, **options: object) -> MoEngagePersonalize:
    return MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=base_url, config=PersonalizeConfig(**options)
    )


# experience cache ---------------------------------------------------------------------------


def test_cache_hit_completes_at_once_from_memory(
    with_meta: HTTPServer, base_url: str, clock: FakeClock, sleeps: Sleeps
) -> None:
    """With cache_ttl, a repeated fetch is answered from memory: Future already done, source=CACHE,
    no request, no thread hop."""
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    with make(base_url, cache_ttl=60, clock=clock, sleep=sleeps) as client:
        first = client.fetch_experience("cart-upsell", user="u1").result(FUTURE_TIMEOUT)
        second = client.fetch_experience("cart-upsell", user="u1")
        assert second.done()
        result = second.result(0)
        stats = client.stats()
    assert first.experiences[0].source is DataSource.NETWORK
    assert result.experiences[0].source is DataSource.CACHE
    assert result.experiences[0].payload == first.experiences[0].payload
    assert len(requests_to(with_meta, FETCH)) == 1
    assert (stats.cache_hits, stats.cache_misses) == (1, 1)


def test_cache_is_keyed_by_user_and_attributes(
    with_meta: HTTPServer, base_url: str, clock: FakeClock
) -> None:
    """Another user or changed attributes miss the cache; the same ones hit."""
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    with make(base_url, cache_ttl=60, clock=clock) as client:
        for user, attrs in [
            ("u1", {"current_page": "home"}),
            ("u1", {"current_page": "home"}),
            ("u2", {"current_page": "home"}),
            ("u1", {"current_page": "cart"}),
            (User(customer_id="u1", ip_address="203.0.113.1"), {"current_page": "home"}),
        ]:
            client.fetch_experience("cart-upsell", user=user, attributes=attrs).result(
                FUTURE_TIMEOUT
            )
    assert len(requests_to(with_meta, FETCH)) == 4


def test_cache_entries_expire_after_cache_ttl(
    with_meta: HTTPServer, base_url: str, clock: FakeClock
) -> None:
    """A cached value older than cache_ttl is fetched again."""
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    with make(base_url, cache_ttl=30, clock=clock) as client:
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        clock.advance(29)
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        clock.advance(2)
        assert (
            client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT).experiences[0].source
            is DataSource.NETWORK
        )
    assert len(requests_to(with_meta, FETCH)) == 2


def test_not_served_answers_are_cached_too(
    with_meta: HTTPServer, base_url: str, clock: FakeClock
) -> None:
    """A key the service did not serve (USER_NOT_IN_SEGMENT) is remembered for cache_ttl."""
    with_meta.expect_request(FETCH).respond_with_json({"experiences": {}})
    with make(base_url, cache_ttl=60, clock=clock) as client:
        for _ in range(3):
            result = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
            assert result.failures[0].reason is ExperienceFailureReason.USER_NOT_IN_SEGMENT
    assert len(requests_to(with_meta, FETCH)) == 1


def test_partial_hit_fetches_only_the_missing_keys(
    with_meta: HTTPServer, base_url: str, clock: FakeClock
) -> None:
    """When some keys are cached, only the others are asked; the result keeps request order."""
    with_meta.expect_request(FETCH).respond_with_json(served("homepage-banner", "cart-upsell"))
    with make(base_url, cache_ttl=60, clock=clock) as client:
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        result = client.fetch_experiences(["homepage-banner", "cart-upsell"]).result(FUTURE_TIMEOUT)
    assert [b["experience_key"] for b in fetch_bodies(with_meta)] == [
        ["cart-upsell"],
        ["homepage-banner"],
    ]
    assert [(c.experience_key, c.source) for c in result.experiences] == [
        ("homepage-banner", DataSource.NETWORK),
        ("cart-upsell", DataSource.CACHE),
    ]


def test_cache_is_bounded_lru(with_meta: HTTPServer, base_url: str, clock: FakeClock) -> None:
    """cache_size bounds the cache; the least recently used entry goes first."""
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    with make(base_url, cache_ttl=60, cache_size=2, clock=clock) as client:
        for user in ["a", "b", "a", "c", "a", "b"]:
            client.fetch_experience("cart-upsell", user=user).result(FUTURE_TIMEOUT)
    # a, b miss; a hits; c miss (evicts b); a hits; b misses again
    assert len(requests_to(with_meta, FETCH)) == 4


def test_stale_if_error_serves_cached_value_when_the_network_fails(
    httpserver: HTTPServer, base_url: str, clock: FakeClock, sleeps: Sleeps
) -> None:
    """With stale_if_error, a failing fetch serves a cached value up to that age instead."""
    httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    httpserver.expect_oneshot_request(FETCH).respond_with_json(served("cart-upsell"))
    httpserver.expect_request(FETCH).respond_with_json({"title": "down"}, status=503)
    with make(base_url, cache_ttl=10, stale_if_error=300, clock=clock, sleep=sleeps) as client:
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        clock.advance(100)
        stale = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        assert stale.experiences[0].source is DataSource.CACHE
        assert client.stats().stale_served == 1
        clock.advance(250)  # now older than stale_if_error
        with pytest.raises(PersonalizeError) as info:
            client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert info.value.code is ErrorCode.UNKNOWN_SERVER_ERROR


# single flight --------------------------------------------------------------------------------


def test_identical_fetches_in_flight_share_one_request(
    with_meta: HTTPServer, base_url: str
) -> None:
    """Identical fetches made while one is in flight share its request and result."""
    gate = threading.Event()

    def slow(_request: Request) -> Response:
        gate.wait(5)
        return Response(json.dumps(served("cart-upsell")), content_type="application/json")

    with_meta.expect_request(FETCH).respond_with_handler(slow)
    with make(base_url, max_workers=8) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        futures = [client.fetch_experience("cart-upsell", user="u1") for _ in range(6)]
        other = client.fetch_experience("cart-upsell", user="u2")
        time.sleep(0.1)
        gate.set()
        results = [f.result(FUTURE_TIMEOUT) for f in [*futures, other]]
        stats = client.stats()
    assert all(r.experiences[0].experience_key == "cart-upsell" for r in results)
    assert len(requests_to(with_meta, FETCH)) == 2  # one for u1 (shared by 6), one for u2
    assert stats.coalesced == 5


# circuit breaker -------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_fails_fast(
    with_meta: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """After 5 failed calls the circuit opens: calls fail at once with the opener's code, and
    nothing is sent until the cool-down passes."""
    with_meta.expect_request(FETCH).respond_with_json({}, status=503)
    policy = CircuitBreakerPolicy(failure_threshold=5, cool_down=60)
    with make(base_url, circuit_breaker=policy, sleep=sleeps) as client:
        for _ in range(5):
            client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        sent = len(requests_to(with_meta, FETCH))
        start = time.monotonic()
        err = client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        assert time.monotonic() - start < 0.5
        stats = client.stats()
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.UNKNOWN_SERVER_ERROR
    assert "circuit breaker is open" in err.message
    assert len(requests_to(with_meta, FETCH)) == sent == 15  # 5 calls x 3 attempts
    assert (stats.circuit_state, stats.circuit_opened) == ("open", 1)


def test_breaker_opens_at_once_on_401(httpserver: HTTPServer, base_url: str) -> None:
    """A 401 opens the circuit immediately: the next call fails fast with HTTP_ERROR 401."""
    httpserver.expect_request(META).respond_with_json(
        {"title": "Authentication required"}, status=401
    )
    with make(base_url, meta_ttl=0) as client:
        first = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
        err = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
    assert isinstance(first, PersonalizeError)
    assert isinstance(err, PersonalizeError)
    assert (err.code, err.status_code) == (ErrorCode.HTTP_ERROR, 401)
    assert len(requests_to(httpserver, META)) == 1


def test_open_breaker_still_serves_memory_and_stale_values(
    httpserver: HTTPServer, base_url: str, clock: FakeClock, sleeps: Sleeps
) -> None:
    """While the circuit is open, loaded metadata keeps serving and stale_if_error values are
    still served: only calls that need the network fail fast."""
    httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    httpserver.expect_oneshot_request(FETCH).respond_with_json(served("cart-upsell"))
    httpserver.expect_request(FETCH).respond_with_json({}, status=500)
    policy = CircuitBreakerPolicy(failure_threshold=2, cool_down=600)
    with make(
        base_url,
        circuit_breaker=policy,
        cache_ttl=1,
        stale_if_error=3600,
        clock=clock,
        sleep=sleeps,
    ) as client:
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        clock.advance(5)
        for _ in range(3):  # failures open the circuit; each is answered from the stale cache
            result = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
            assert result.experiences[0].source is DataSource.CACHE
        assert client.stats().circuit_state == "open"
        sent = len(requests_to(httpserver, FETCH))
        assert client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT).experiences
        assert len(requests_to(httpserver, FETCH)) == sent  # no request while open
        meta = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        assert len(meta.experiences) == 4
        with pytest.raises(PersonalizeError):  # nothing cached for this user: fails fast
            client.fetch_experience("cart-upsell", user="new").result(FUTURE_TIMEOUT)


def test_breaker_half_open_trial_closes_it_again(
    httpserver: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """After the cool-down one trial call goes through; its success closes the circuit."""
    httpserver.expect_oneshot_request(META).respond_with_json({}, status=401)
    httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    policy = CircuitBreakerPolicy(cool_down=0.2)
    with make(base_url, circuit_breaker=policy, sleep=sleeps, meta_ttl=0) as client:
        client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
        assert client.stats().circuit_state == "open"
        time.sleep(0.25)
        assert client.stats().circuit_state == "half_open"
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
        assert client.stats().circuit_state == "closed"


def test_breaker_can_be_turned_off(httpserver: HTTPServer, base_url: str) -> None:
    """circuit_breaker=None: every call reaches the service."""
    httpserver.expect_request(META).respond_with_json({}, status=401)
    with make(base_url, circuit_breaker=None) as client:
        for _ in range(3):
            client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
        assert client.stats().circuit_state == "disabled"
    assert len(requests_to(httpserver, META)) == 3


def test_client_errors_do_not_open_the_breaker(with_meta: HTTPServer, base_url: str) -> None:
    """400s mean the service is up: they never open the circuit."""
    with_meta.expect_request(FETCH).respond_with_json({"title": "Invalid Field Value"}, status=400)
    with make(base_url) as client:
        for _ in range(8):
            client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        assert client.stats().circuit_state == "closed"
    assert len(requests_to(with_meta, FETCH)) == 8


# on_error, stats, hygiene ------------------------------------------------------------------------


def test_on_error_hook_sees_errors_and_its_exceptions_are_contained(
    httpserver: HTTPServer,
    base_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """config.on_error gets each error handed to a caller, on the thread where it surfaced; an
    exception inside the hook is logged and swallowed."""
    seen: list[tuple[str, str]] = []

    def hook(error: PersonalizeError) -> None:
        seen.append((error.code.value, threading.current_thread().name))
        raise RuntimeError("hook bug")

    httpserver.expect_request(META).respond_with_json({}, status=404)
    with make(base_url, on_error=hook) as client, caplog.at_level(logging.ERROR):
        err = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
        assert isinstance(err, PersonalizeError)
    client.fetch_experiences_meta()  # closed: fails on this thread
    assert seen[0][0] == "HTTP_ERROR"
    # exception() came before a worker started the call, so this thread ran it
    assert seen[0][1] == threading.current_thread().name
    assert seen[1] == ("SDK_NOT_INITIALIZED", threading.current_thread().name)
    assert "on_error raised" in caplog.text


def test_stats_count_requests_retries_and_failures(
    with_meta: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """stats() counts HTTP requests, retries and failures by code."""
    with_meta.expect_oneshot_request(FETCH).respond_with_json({}, status=503)
    with_meta.expect_oneshot_request(FETCH).respond_with_json(served("cart-upsell"))
    with_meta.expect_request(FETCH).respond_with_json({}, status=404)
    with make(base_url, sleep=sleeps) as client:
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
        client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        stats = client.stats()
    assert (stats.requests, stats.retries) == (4, 1)  # metadata, 503, 200, 404
    assert stats.failures == {"HTTP_ERROR": 1}


def test_library_logger_has_no_handler_and_no_level() -> None:
    """The library adds no handler (not even a NullHandler) and sets no level, so an app with no
    logging set up still sees its warnings through logging's last resort."""
    logger = logging.getLogger("moengage_personalize")
    assert logger.handlers == []
    assert logger.level == logging.NOTSET
    assert moengage_personalize is not None


def test_200_clients_leave_no_threads_behind(with_meta: HTTPServer, base_url: str) -> None:
    """Creating, using (fetch and tracking) and closing 200 clients leaves the thread count as it
    was."""

    def sdk_threads() -> int:
        return sum(t.name.startswith("moengage-personalize") for t in threading.enumerate())

    with_meta.expect_request("/v1/experiences/events").respond_with_json({"status": "success"})
    before = sdk_threads()
    for i in range(200):
        with make(base_url, event_flush_interval=0.01) as client:
            if i % 20 == 0:
                result = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
                assert result.experiences
                client.experience_shown({"experience_context": CONTEXT}, user="u1")
    assert wait_for(lambda: sdk_threads() <= before)


def test_retry_policy_and_breaker_work_together(
    with_meta: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """One failed call with retries counts once toward the breaker."""
    with_meta.expect_request(FETCH).respond_with_json({}, status=500)
    policy = CircuitBreakerPolicy(failure_threshold=2)
    with make(
        base_url, circuit_breaker=policy, sleep=sleeps, retry=RetryPolicy(max_attempts=4)
    ) as client:
        client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        assert client.stats().circuit_state == "closed"
        client.fetch_experience("cart-upsell").exception(FUTURE_TIMEOUT)
        assert client.stats().circuit_state == "open"


def test_a_half_open_trial_ends_whatever_it_raises(
    with_meta: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """A trial call that raises something unforeseen (here a KeyboardInterrupt from inside the
    request) ends the trial: the next fetch becomes the trial and reaches the healthy service,
    instead of failing fast with "circuit breaker is open" for the client's life."""
    from moengage_personalize import CircuitBreakerPolicy

    policy = CircuitBreakerPolicy(failure_threshold=1, cool_down=0.0)
    config = PersonalizeConfig(
        circuit_breaker=policy, sleep=sleeps, retry=RetryPolicy(max_attempts=1)
    )
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        breaker = client._core.breaker
        assert breaker is not None
        from moengage_personalize.exceptions import NetworkError

        breaker.failure(NetworkError("down"))  # open; the cool-down of 0 s has passed
        assert breaker.check() is None  # this caller holds the trial ...
        breaker.inconclusive()  # ... and it raised something unforeseen
        meta = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)  # the next trial runs
        assert meta.experiences
        assert client.stats().circuit_state == "closed"
