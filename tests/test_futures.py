"""Where a fetch runs: once, in one place (the call's claim), on the thread that waits for it in
``result()``, or on a worker as soon as anything else needs it (a callback, ``wait``,
``as_completed``, asyncio, a short timeout) or after START_AFTER when nothing waits; identical
fetches in flight share one request and hold no thread while they wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    ErrorCode,
    ExperienceCampaignsResult,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    User,
)

from support import API_KEY, APP_ID, FUTURE_TIMEOUT, requests_to, served

FETCH = "/v1/experiences/fetch"


class CountingExecutor(ThreadPoolExecutor):
    """A worker pool that counts what it is handed."""

    def __init__(self, workers: int = 2) -> None:
        super().__init__(workers, thread_name_prefix="counted")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def pool() -> Iterator[CountingExecutor]:
    with CountingExecutor() as executor:
        yield executor


@pytest.fixture
def counted(
    with_meta: HTTPServer, base_url: str, pool: CountingExecutor
) -> Iterator[MoEngagePersonalize]:
    """A client on the counting pool whose metadata is loaded, answering homepage-banner."""
    with_meta.expect_request(FETCH).respond_with_json(served("homepage-banner"))
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, executor=pool) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        pool.submitted = 0
        yield client


@pytest.fixture
def threaded() -> Iterator[HTTPServer]:
    """A server that answers requests side by side (with the metadata loaded)."""
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    server.expect_request("/v1/experiences/metadata").respond_with_json(
        {"metadata": {"count": 1, "experiences": [META_ENTRY]}}
    )
    try:
        yield server
    finally:
        server.clear()
        server.stop()


META_ENTRY = {
    "experience_key": "homepage-banner",
    "experience_name": "Homepage Banner",
    "status": "Active",
}


def fetch(client: MoEngagePersonalize, user: str = "u1") -> Future[ExperienceCampaignsResult]:
    return client.fetch_experience("homepage-banner", user=user)


def test_result_runs_the_call_on_the_waiting_thread(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """result() right after the fetch runs the call itself: nothing goes to a worker."""
    seen: list[str] = []
    future = fetch(counted)
    future.add_done_callback(lambda _f: seen.append(threading.current_thread().name))
    # add_done_callback hands the call to a worker at once
    assert future.result(FUTURE_TIMEOUT).experiences
    assert pool.submitted == 1
    plain = fetch(counted, "u2")
    assert plain.result(FUTURE_TIMEOUT).experiences
    assert pool.submitted == 1  # this one ran on the test's own thread


def test_result_with_a_short_timeout_hands_the_call_to_a_worker(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """A result(timeout) shorter than the deadline left must be able to stop waiting: the
    call goes to a worker."""
    future = fetch(counted)
    assert future.result(0.9 * counted.config.timeout).experiences
    assert pool.submitted == 1


def test_a_call_nobody_waits_for_starts_on_a_worker_by_itself(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """No result(), no callback: a worker starts it after START_AFTER."""
    future = fetch(counted)
    deadline = time.monotonic() + FUTURE_TIMEOUT
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert future.done()
    assert pool.submitted == 1


@pytest.mark.parametrize("how", ["add_done_callback", "wait", "as_completed", "wrap_future"])
def test_every_way_of_waiting_gets_the_result(counted: MoEngagePersonalize, how: str) -> None:
    """Callbacks, concurrent.futures.wait/as_completed and asyncio see the completed call."""
    future = fetch(counted)
    if how == "add_done_callback":
        seen = threading.Event()
        future.add_done_callback(lambda _f: seen.set())
        assert seen.wait(FUTURE_TIMEOUT)
    elif how == "wait":
        done, _ = concurrent.futures.wait([future], timeout=FUTURE_TIMEOUT)
        assert future in done
    elif how == "as_completed":
        assert list(concurrent.futures.as_completed([future], timeout=FUTURE_TIMEOUT)) == [future]
    else:

        async def main() -> ExperienceCampaignsResult:
            return await asyncio.wait_for(asyncio.wrap_future(future), FUTURE_TIMEOUT)

        assert asyncio.run(main()).experiences
    assert future.result(0).experiences


def test_fan_out_runs_distinct_calls_side_by_side(threaded: HTTPServer) -> None:
    """Fetches for distinct users started together overlap on the workers."""
    gate = threading.Barrier(3, timeout=FUTURE_TIMEOUT)

    def answer(_request: Request) -> Response:
        gate.wait()  # only passes when three requests are in flight at once
        return Response(json.dumps(served("homepage-banner")), content_type="application/json")

    threaded.expect_request(FETCH).respond_with_handler(answer)
    base_url = threaded.url_for("/v1")
    config = PersonalizeConfig(max_workers=3, timeout=FUTURE_TIMEOUT)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        futures = [fetch(client, f"u{i}") for i in range(3)]
        for future in futures:
            assert future.result(FUTURE_TIMEOUT).experiences


def test_identical_fetches_share_one_request_and_hold_no_thread(threaded: HTTPServer) -> None:
    """20 identical fetches from one thread against a service taking 0.5 s, two workers: one
    request, every Future done in about the service's time, and the second worker stays free
    for another user's fetch meanwhile."""

    def slow(_request: Request) -> Response:
        time.sleep(0.5)
        return Response(json.dumps(served("homepage-banner")), content_type="application/json")

    threaded.expect_request(FETCH).respond_with_handler(slow)
    base_url = threaded.url_for("/v1")
    config = PersonalizeConfig(max_workers=2, timeout=FUTURE_TIMEOUT)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        start = time.monotonic()
        same = [fetch(client) for _ in range(20)]
        other = fetch(client, "someone-else")
        results = [f.result(FUTURE_TIMEOUT) for f in same]
        other.result(FUTURE_TIMEOUT)
        elapsed = time.monotonic() - start
        assert client.stats().coalesced >= 19
    assert elapsed < 1.4  # two requests side by side, not 20 (or 10) one after another
    assert len(requests_to(threaded, FETCH)) == 2
    assert all(r.experiences[0].experience_key == "homepage-banner" for r in results)
    results[0].experiences.clear()  # each caller's result is its own to change
    assert results[1].experiences


def test_a_cancelled_leader_does_not_cancel_the_calls_that_joined_it(
    with_meta: HTTPServer, base_url: str
) -> None:
    """Cancelling the first of identical queued fetches leaves the others to run."""
    release = threading.Event()

    def held(_request: Request) -> Response:
        release.wait(FUTURE_TIMEOUT)
        return Response(json.dumps(served("homepage-banner")), content_type="application/json")

    with_meta.expect_request(FETCH).respond_with_handler(held)
    config = PersonalizeConfig(max_workers=1, timeout=FUTURE_TIMEOUT)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        busy = fetch(client, "occupies-the-worker")
        busy.add_done_callback(lambda _f: None)  # on the only worker now
        leader = fetch(client)
        follower = fetch(client)
        assert leader.cancel()
        release.set()
        assert follower.result(FUTURE_TIMEOUT).experiences
        assert busy.result(FUTURE_TIMEOUT).experiences


def test_a_user_object_and_its_customer_id_string_are_the_same_call(
    counted: MoEngagePersonalize,
) -> None:
    """Coalescing keys on what is sent: User(customer_id="u1") and "u1" name the same user."""
    first = counted.fetch_experience("homepage-banner", user=User(customer_id="u1"))
    second = counted.fetch_experience("homepage-banner", user="u1")
    assert first.result(FUTURE_TIMEOUT).experiences
    assert second.result(FUTURE_TIMEOUT).experiences


def test_result_inside_a_callback_of_another_fetch_completes(
    counted: MoEngagePersonalize,
) -> None:
    """A callback (on the thread that completed the first Future) may wait for another fetch."""
    got: list[ExperienceCampaignsResult] = []
    done = threading.Event()

    def then(_f: Future[ExperienceCampaignsResult]) -> None:
        got.append(fetch(counted, "u2").result(FUTURE_TIMEOUT))
        done.set()

    fetch(counted).add_done_callback(then)
    assert done.wait(FUTURE_TIMEOUT)
    assert got[0].experiences


def test_ctrl_c_while_the_caller_runs_its_call_reaches_the_caller(
    counted: MoEngagePersonalize, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt inside a call run in result() is raised to the caller (not turned into
    a PersonalizeError), and the Future still completes for anyone else waiting on it."""

    def interrupted(*_args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(counted._core, "fetch", interrupted)
    future = fetch(counted)
    with pytest.raises(KeyboardInterrupt):
        future.result(FUTURE_TIMEOUT)
    error = future.exception(0)
    assert isinstance(error, PersonalizeError)
    assert error.code is ErrorCode.UNKNOWN


def test_a_caller_running_its_call_connects_even_when_every_worker_is_busy(
    with_meta: HTTPServer, base_url: str
) -> None:
    """A caller running its own call connects on a thread of its own (bounded by the deadline),
    never queued behind the workers (which may all be waiting for this very caller)."""
    with_meta.expect_request(FETCH).respond_with_json(served("homepage-banner"))
    gate = threading.Event()
    config = PersonalizeConfig(max_workers=1, timeout=2)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(gate.wait, FUTURE_TIMEOUT)  # the only worker is busy
        client = MoEngagePersonalize(
            APP_ID, api_key=API_KEY, base_url=base_url, executor=pool, config=config
        )
        try:
            result = client.fetch_experience("homepage-banner", user="u1").result(FUTURE_TIMEOUT)
            assert result.experiences[0].experience_key == "homepage-banner"
        finally:
            gate.set()
            client.close()
