"""Where a fetch runs: on the thread that waits for it in ``result()``, or on a worker as soon as
anything else waits for it (callbacks, ``wait``/``as_completed``, asyncio, a short timeout, the
same thread's next fetch), or after a short grace period when nothing waits for it at all."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import moengage_personalize._client as client_module
from moengage_personalize import (
    ErrorCode,
    ExperienceCampaignsResult,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
)

from support import API_KEY, APP_ID, FUTURE_TIMEOUT, requests_to, served, wait_for

FETCH = "/v1/experiences/fetch"


class CountingExecutor(ThreadPoolExecutor):
    """A worker pool that counts the calls handed to it (not the other work it gets, such as
    opening a connection for a caller that runs its own call)."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="counted")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if getattr(fn, "__name__", None) == "_run":
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


@pytest.fixture(autouse=True)
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls nobody waits for are not started by the deadline thread within a test (on a loaded
    machine the few milliseconds between a fetch and its result() could otherwise pass)."""
    monkeypatch.setattr(client_module, "_GRACE", 60.0)


def fetch(client: MoEngagePersonalize) -> Future[ExperienceCampaignsResult]:
    return client.fetch_experience("homepage-banner", user="u1")


def test_result_runs_the_call_on_the_waiting_thread(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """fetch(...).result(): the caller's thread runs the call; no worker is handed it."""
    future = fetch(counted)
    result = future.result(FUTURE_TIMEOUT)
    assert result.experiences[0].experience_key == "homepage-banner"
    assert pool.submitted == 0
    assert future.exception(0) is None


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(lambda f: _callback_wait(f), id="add_done_callback"),
        pytest.param(
            lambda f: concurrent.futures.wait([f], FUTURE_TIMEOUT).done and f.result(0),
            id="wait",
        ),
        pytest.param(
            lambda f: next(concurrent.futures.as_completed([f], FUTURE_TIMEOUT)).result(0),
            id="as_completed",
        ),
        pytest.param(lambda f: asyncio.run(_await(f)), id="asyncio.wrap_future"),
    ],
)
def test_other_ways_of_waiting_start_the_call_on_a_worker_at_once(
    counted: MoEngagePersonalize,
    pool: CountingExecutor,
    wait: Callable[[Future[ExperienceCampaignsResult]], Any],
) -> None:
    """Waiting without result() hands the call to a worker at once (the grace period is a
    minute here, so only the waiting itself can have started it)."""
    future = fetch(counted)
    assert not future.done()
    wait(future)
    assert future.done()
    assert future.result(0).experiences[0].experience_key == "homepage-banner"
    assert pool.submitted == 1


def _callback_wait(future: Future[Any]) -> None:
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(FUTURE_TIMEOUT)


async def _await(future: Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(future), FUTURE_TIMEOUT)


def test_result_with_a_timeout_shorter_than_the_deadline_hands_the_call_to_a_worker(
    with_meta: HTTPServer, base_url: str, pool: CountingExecutor
) -> None:
    """result(0.01) must return within its timeout, so it does not run the call itself."""
    gate = threading.Event()

    def held(_request: Request) -> Response:
        gate.wait(FUTURE_TIMEOUT)
        return Response(json.dumps(served("homepage-banner")), content_type="application/json")

    with_meta.expect_request(FETCH).respond_with_handler(held)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, executor=pool) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        pool.submitted = 0
        future = fetch(client)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(0.01)
        assert pool.submitted == 1
        gate.set()
        assert future.result(FUTURE_TIMEOUT).experiences


def test_a_call_nobody_waits_for_still_runs(
    with_meta: HTTPServer, base_url: str, pool: CountingExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fire and forget (warming the cache, say): a worker runs it after the grace period."""
    monkeypatch.setattr(client_module, "_GRACE", 0.005)
    with_meta.expect_request(FETCH).respond_with_json(served("homepage-banner"))
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, executor=pool) as client:
        future = fetch(client)
        assert wait_for(lambda: bool(requests_to(with_meta, FETCH)))
        assert wait_for(future.done)
        assert pool.submitted >= 1
        assert future.result(0).experiences


def test_fan_out_runs_the_calls_side_by_side(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """Several fetches, then their results: each later fetch hands the earlier one to a worker
    and the first result() hands over the last, so they do not run one after another."""
    futures = [fetch(counted) for _ in range(3)]
    assert pool.submitted == 2
    results = [f.result(FUTURE_TIMEOUT) for f in futures]
    assert pool.submitted == 3
    assert all(r.experiences for r in results)


def test_callers_beyond_the_limit_hand_their_call_to_a_worker(
    counted: MoEngagePersonalize, pool: CountingExecutor
) -> None:
    """At most 3 x max_workers callers run their own call at once; the next one waits for a
    worker instead (here no slot is left)."""
    slots = counted._callers
    taken = list(slots)
    slots.clear()
    try:
        assert fetch(counted).result(FUTURE_TIMEOUT).experiences
        assert pool.submitted == 1
    finally:
        slots.extend(taken)
    assert fetch(counted).result(FUTURE_TIMEOUT).experiences
    assert pool.submitted == 1


def test_an_injected_session_keeps_calls_on_the_workers(
    with_meta: HTTPServer, base_url: str, pool: CountingExecutor
) -> None:
    """With an injected requests.Session (its connections are the caller's, not guarded), every
    call runs on a worker."""
    import requests

    with_meta.expect_request(FETCH).respond_with_json(served("homepage-banner"))
    with (
        requests.Session() as session,
        MoEngagePersonalize(
            APP_ID, api_key=API_KEY, base_url=base_url, executor=pool, session=session
        ) as client,
    ):
        assert fetch(client).result(FUTURE_TIMEOUT).experiences
        assert pool.submitted >= 1


def test_connection_pool_has_room_for_workers_callers_and_the_dispatcher(
    base_url: str,
) -> None:
    """No connection is ever discarded: the pool holds one per worker, per caller that may run
    its own call (3 per worker) and one for the event dispatcher."""
    config = PersonalizeConfig(max_workers=2)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        assert len(client._callers) == 6
        adapter = client._transport._session.get_adapter(base_url)
        assert adapter._pool_maxsize == 9  # type: ignore[attr-defined]


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
    """The caller's connect runs on a thread of its own, never queued behind the workers (which
    may all be waiting for this very caller)."""
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


def test_a_callback_waiting_on_the_deadline_thread_does_not_run_a_call_there(
    counted: MoEngagePersonalize, pool: CountingExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A done-callback run by the deadline thread (a call's deadline passed) that waits for
    another call hands that call to a worker instead of running it on the deadline thread."""
    ran_on: list[str] = []
    original = counted._core.fetch

    def recording(*args: Any) -> Any:
        ran_on.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(counted._core, "fetch", recording)
    other = fetch(counted)
    expired = client_module._Pending[Any](0.0)  # a Future whose deadline has passed
    assert counted._deadlines.add(0.0, expired, "a test call")
    got: list[Any] = []
    done = threading.Event()

    def callback(_f: Any) -> None:
        got.append(other.result(FUTURE_TIMEOUT))
        done.set()

    expired.add_done_callback(callback)
    assert done.wait(FUTURE_TIMEOUT)
    assert got[0].experiences
    assert ran_on
    assert not ran_on[0].endswith("deadline")
    assert pool.submitted == 1
