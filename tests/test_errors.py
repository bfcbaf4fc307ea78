"""Errors: status mapping, envelopes, retries (injected sleep), Retry-After, deadlines, faults."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    MoEngagePersonalize,
    NetworkError,
    ParseError,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
)

from support import (
    API_KEY,
    APP_ID,
    DEFAULT_META,
    FUTURE_TIMEOUT,
    SilentServer,
    Sleeps,
    requests_to,
    served,
)

META = "/v1/experiences/metadata"
FETCH = "/v1/experiences/fetch"


def failure(future: object) -> PersonalizeError:
    with pytest.raises(PersonalizeError) as info:
        future.result(FUTURE_TIMEOUT)  # type: ignore[attr-defined]
    return info.value


def test_401_is_http_error_with_envelope_and_no_retry(
    httpserver: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """A 401 fails at once with HTTP_ERROR carrying the service's envelope and request id."""
    httpserver.expect_request(META).respond_with_json(
        {
            "title": "Authentication required",
            "description": "Invalid API_KEY used in Authentication Header",
        },
        status=401,
        headers={"x-request-id": "req-123"},
    )
    err = failure(client.fetch_experiences_meta())
    assert isinstance(err, HTTPStatusError)
    assert err.code is ErrorCode.HTTP_ERROR
    assert (err.status_code, err.title, err.description, err.request_id) == (
        401,
        "Authentication required",
        "Invalid API_KEY used in Authentication Header",
        "req-123",
    )
    assert len(requests_to(httpserver, META)) == 1
    assert sleeps.calls == []


def test_400_carries_service_code(with_meta: HTTPServer, client: MoEngagePersonalize) -> None:
    """A 400 validation error exposes the envelope's opaque code as service_code."""
    with_meta.expect_request(FETCH).respond_with_json(
        {
            "title": "Invalid Field Value",
            "description": "DAY_OF_THE_WEEK - Enum doesnt allow value",
            "code": "GvHogFKc",
        },
        status=400,
    )
    err = failure(client.fetch_experience("cart-upsell"))
    assert err.code is ErrorCode.HTTP_ERROR
    assert err.service_code == "GvHogFKc"
    assert err.title == "Invalid Field Value"
    assert "Invalid Field Value" in err.message


def test_403_is_feature_disabled(httpserver: HTTPServer, client: MoEngagePersonalize) -> None:
    """A 403 means Personalize is not enabled for the workspace: FEATURE_DISABLED."""
    httpserver.expect_request(META).respond_with_json({"title": "Forbidden"}, status=403)
    err = failure(client.fetch_experiences_meta())
    assert err.code is ErrorCode.FEATURE_DISABLED
    assert err.status_code == 403


def test_5xx_retried_then_succeeds(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """A 503 then a 200: the call succeeds after one backoff sleep."""
    with_meta.expect_oneshot_request(FETCH).respond_with_json({"title": "busy"}, status=503)
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    result = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["cart-upsell"]
    assert len(requests_to(with_meta, FETCH)) == 2
    assert len(sleeps.calls) == 1
    assert 0.05 <= sleeps.calls[0] <= 0.1  # initial_backoff 0.1 with jitter


def test_5xx_exhausting_retries_is_unknown_server_error(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """5xx on every attempt: UNKNOWN_SERVER_ERROR after max_attempts, backoff growing."""
    with_meta.expect_request(FETCH).respond_with_json({"title": "Internal"}, status=500)
    err = failure(client.fetch_experience("cart-upsell"))
    assert err.code is ErrorCode.UNKNOWN_SERVER_ERROR
    assert err.status_code == 500
    assert len(requests_to(with_meta, FETCH)) == 3
    assert len(sleeps.calls) == 2
    assert 0.05 <= sleeps.calls[0] <= 0.1
    assert 0.1 <= sleeps.calls[1] <= 0.2


def test_backoff_without_jitter_is_exponential_and_capped(
    httpserver: HTTPServer, base_url: str, clock: object, sleeps: Sleeps
) -> None:
    """Without jitter the waits are initial_backoff * 2**n, capped at max_backoff."""
    httpserver.expect_request(META).respond_with_json({}, status=502)
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, jitter=False)
    config = PersonalizeConfig(retry=policy, sleep=sleeps, timeout=30)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        failure(client.fetch_experiences_meta())
    assert sleeps.calls == [0.1, 0.2, 0.3, 0.3]


def test_429_honours_retry_after(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """A 429 with Retry-After waits that long before retrying."""
    with_meta.expect_oneshot_request(FETCH).respond_with_json(
        {"title": "Too Many Requests"}, status=429, headers={"Retry-After": "2"}
    )
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert sleeps.calls == [2.0]


def test_429_honours_x_ratelimit_reset(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """Without Retry-After, x-ratelimit-reset (epoch seconds) sets the wait."""
    reset = int(time.time()) + 3
    with_meta.expect_oneshot_request(FETCH).respond_with_json(
        {}, status=429, headers={"x-ratelimit-reset": str(reset), "x-ratelimit-remaining": "0"}
    )
    with_meta.expect_request(FETCH).respond_with_json(served("cart-upsell"))
    client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert len(sleeps.calls) == 1
    assert 1.0 <= sleeps.calls[0] <= 3.0


def test_429_retry_after_past_the_deadline_fails_at_once(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """A Retry-After longer than the deadline left is not waited: HTTP_ERROR with retry_after."""
    with_meta.expect_request(FETCH).respond_with_json({}, status=429, headers={"Retry-After": "20"})
    err = failure(client.fetch_experience("cart-upsell"))
    assert err.code is ErrorCode.HTTP_ERROR
    assert err.status_code == 429
    assert err.retry_after == pytest.approx(20.0)
    assert sleeps.calls == []
    assert len(requests_to(with_meta, FETCH)) == 1


def test_other_4xx_never_retried(
    with_meta: HTTPServer, client: MoEngagePersonalize, sleeps: Sleeps
) -> None:
    """404 and 400 are not retried."""
    with_meta.expect_request(FETCH).respond_with_json({"title": "Not Found"}, status=404)
    err = failure(client.fetch_experience("cart-upsell"))
    assert (err.code, err.status_code) == (ErrorCode.HTTP_ERROR, 404)
    assert len(requests_to(with_meta, FETCH)) == 1
    assert sleeps.calls == []


def test_non_json_answer_is_parse_error(with_meta: HTTPServer, client: MoEngagePersonalize) -> None:
    """A 200 whose body is not JSON fails PARSE_ERROR, without retry."""
    with_meta.expect_request(FETCH).respond_with_data("<html>oops</html>", content_type="text/html")
    err = failure(client.fetch_experience("cart-upsell"))
    assert isinstance(err, ParseError)
    assert err.code is ErrorCode.PARSE_ERROR
    assert len(requests_to(with_meta, FETCH)) == 1


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"experiences": []},
        {"experiences": {"cart-upsell": {"payload": []}}},
        {"experiences": {"cart-upsell": {"experience_context": "x"}}},
    ],
)
def test_wrong_shape_answer_is_parse_error(
    with_meta: HTTPServer, client: MoEngagePersonalize, body: object
) -> None:
    """A JSON answer of the wrong shape fails PARSE_ERROR."""
    with_meta.expect_request(FETCH).respond_with_json(body)
    assert failure(client.fetch_experience("cart-upsell")).code is ErrorCode.PARSE_ERROR


def test_wrong_shape_metadata_is_parse_error(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """A metadata answer without the documented fields fails PARSE_ERROR naming the place."""
    httpserver.expect_request(META).respond_with_json({"metadata": {"experiences": [{"x": 1}]}})
    err = failure(client.fetch_experiences_meta())
    assert err.code is ErrorCode.PARSE_ERROR
    assert "experience_key" in err.message


def test_answer_over_the_size_cap_is_parse_error(
    httpserver: HTTPServer, base_url: str, sleeps: Sleeps
) -> None:
    """An answer larger than max_response_bytes fails PARSE_ERROR (declared or streamed)."""
    big = json.dumps({"metadata": {"experiences": [], "pad": "x" * 5000}})

    def chunked(_request: Request) -> Response:
        return Response(iter([big[:2000], big[2000:]]), content_type="application/json")

    httpserver.expect_oneshot_request(META).respond_with_data(big, content_type="application/json")
    httpserver.expect_oneshot_request(META).respond_with_handler(chunked)
    config = PersonalizeConfig(max_response_bytes=1024, sleep=sleeps)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        declared = failure(client.fetch_experiences_meta())
        streamed = failure(client.fetch_experiences_meta())
    assert declared.code is streamed.code is ErrorCode.PARSE_ERROR
    assert "1024-byte cap" in declared.message
    assert "1024-byte cap" in streamed.message


def test_connection_refused_is_network_error_after_retries(
    config: PersonalizeConfig, sleeps: Sleeps
) -> None:
    """A closed port: NETWORK_ERROR saying refused, after the retries."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", config=config
    ) as client:
        err = failure(client.fetch_experiences_meta())
    assert isinstance(err, NetworkError)
    assert "refused" in err.message
    assert len(sleeps.calls) == 2


def test_unresolvable_host_is_network_error(
    monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps
) -> None:
    """A host name that does not resolve (injected in-process, no DNS query) is NETWORK_ERROR."""
    real = socket.getaddrinfo

    def no_dns(host: object, *args: object, **kwargs: object) -> object:
        if host == "sdk-02.moengage.com":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    config = PersonalizeConfig(sleep=sleeps)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, data_center="02", config=config) as client:
        err = failure(client.fetch_experiences_meta())
    assert err.code is ErrorCode.NETWORK_ERROR
    assert "could not be resolved" in err.message


def test_deadline_completes_the_future_when_the_server_never_answers(
    silent_server: SilentServer,
) -> None:
    """A server that accepts and never answers: DeadlineExceededError at the deadline, not later."""
    config = PersonalizeConfig(timeout=0.3)
    with MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=silent_server.base_url, config=config
    ) as client:
        start = time.monotonic()
        future = client.fetch_experiences_meta()
        err = failure(future)
        elapsed = time.monotonic() - start
    assert isinstance(err, DeadlineExceededError)
    assert err.code is ErrorCode.NETWORK_ERROR
    assert "deadline of 0.3 s" in err.message
    assert elapsed < 1.0


@pytest.fixture
def trickle_server() -> Iterator[str]:
    """A server that sends headers, then one body byte every 50 ms, for a long time."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                for _ in range(100):
                    if stop.is_set():
                        break
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break
                    time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    sock.close()


def test_deadline_bounds_a_trickling_body(trickle_server: str) -> None:
    """A body that trickles forever cannot hold the Future past its deadline."""
    config = PersonalizeConfig(timeout=0.4)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=trickle_server, config=config) as c:
        start = time.monotonic()
        err = failure(c.fetch_experiences_meta())
        elapsed = time.monotonic() - start
        assert isinstance(err, DeadlineExceededError)
        assert elapsed < 1.0
        c.close(timeout=3)


def test_stuck_worker_is_freed_soon_after_the_deadline(silent_server: SilentServer) -> None:
    """With one worker, a call after a timed-out one still runs: the attempt's socket timeout
    shrank to the budget, so the worker is not held for long."""
    config = PersonalizeConfig(timeout=0.3, max_workers=1, retry=RetryPolicy(max_attempts=1))
    with MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=silent_server.base_url, config=config
    ) as client:
        failure(client.fetch_experiences_meta())
        time.sleep(0.2)
        second = client.fetch_experiences_meta()
        err = failure(second)
    # The second call ran its own attempt (queue wait was short), so it also hit the deadline
    # rather than failing before it was started.
    assert isinstance(err, DeadlineExceededError)


def test_deadline_counts_backoff_and_stops_retrying(with_meta: HTTPServer, base_url: str) -> None:
    """Backoff that would end past the deadline is not waited: the last error comes back early."""
    with_meta.expect_request(FETCH).respond_with_json({}, status=503)
    config = PersonalizeConfig(
        timeout=0.5, retry=RetryPolicy(max_attempts=10, initial_backoff=0.2, jitter=False)
    )
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        start = time.monotonic()
        err = failure(client.fetch_experience("cart-upsell"))
        elapsed = time.monotonic() - start
    assert err.code is ErrorCode.UNKNOWN_SERVER_ERROR
    assert elapsed < 0.5
    assert len(requests_to(with_meta, FETCH)) == 2  # waits 0.2 once; 0.4 more would overrun


def test_errors_never_contain_the_api_key(
    httpserver: HTTPServer, client: MoEngagePersonalize, caplog: pytest.LogCaptureFixture
) -> None:
    """The api key appears in no error message, repr or log line, even at debug level."""
    httpserver.expect_request(META).respond_with_json({}, status=503)
    with caplog.at_level("DEBUG"):
        err = failure(client.fetch_experiences_meta())
    for text in (str(err), repr(err), err.message, repr(client), caplog.text):
        assert API_KEY not in text


def test_error_pickles_with_its_fields() -> None:
    """A PersonalizeError survives pickling with code and HTTP fields (Celery, multiprocessing)."""
    import pickle

    err = HTTPStatusError("x", status_code=429, retry_after=2.0, service_code="abc")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is HTTPStatusError
    assert (copy.code, copy.status_code, copy.retry_after, copy.service_code) == (
        ErrorCode.HTTP_ERROR,
        429,
        2.0,
        "abc",
    )


def test_metadata_load_failure_is_shared_by_waiters(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Callers waiting on a metadata load that fails all get its error."""
    gate = threading.Event()

    def slow_fail(_request: Request) -> Response:
        gate.wait(5)
        return Response(json.dumps({"title": "nope"}), status=401, content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(slow_fail)
    futures = [client.fetch_experiences_meta() for _ in range(4)]
    time.sleep(0.05)
    gate.set()
    codes = {failure(f).code for f in futures}
    assert codes == {ErrorCode.HTTP_ERROR}
    assert len(requests_to(httpserver, META)) == 1


def test_default_meta_fixture_shape() -> None:
    """The fixture's metadata has the documented shape (guards the other tests)."""
    assert DEFAULT_META["metadata"]["count"] == 4
