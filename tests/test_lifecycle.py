"""Lifecycle and Futures: closed and disabled clients, close semantics, executors, callbacks."""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    ClientClosedError,
    ErrorCode,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    SDKDisabledError,
)

from support import (
    API_KEY,
    APP_ID,
    DEFAULT_META,
    FUTURE_TIMEOUT,
    SilentServer,
    requests_to,
    served,
    wait_for,
)

META = "/v1/experiences/metadata"


def sdk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("moengage-personalize")]


def test_closed_client_fails_new_calls_with_sdk_not_initialized(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """After close(), fetches return a Future already failed with SDK_NOT_INITIALIZED."""
    client.close()
    future = client.fetch_experience("homepage-banner")
    assert future.done()
    with pytest.raises(ClientClosedError) as info:
        future.result(0)
    assert info.value.code is ErrorCode.SDK_NOT_INITIALIZED
    assert httpserver.log == []


def test_close_is_idempotent_and_context_manager_closes(base_url: str) -> None:
    """close() may be called many times; leaving the with block closes the client."""
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url) as client:
        assert not client.closed
    assert client.closed
    client.close()
    client.close(timeout=0)
    assert "state=closed" in repr(client)


def test_disabled_client_fails_fast_with_sdk_disabled(
    httpserver: HTTPServer, base_url: str
) -> None:
    """enabled=False: every fetch fails SDK_DISABLED at once and nothing is sent."""
    config = PersonalizeConfig(enabled=False)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        for future in (client.fetch_experiences_meta(), client.fetch_experience("a")):
            with pytest.raises(SDKDisabledError) as info:
                future.result(0)
            assert info.value.code is ErrorCode.SDK_DISABLED
    assert httpserver.log == []


def test_injected_executor_is_used_and_not_shut_down(with_meta: HTTPServer, base_url: str) -> None:
    """Calls run on an injected executor, which close() leaves running."""
    with ThreadPoolExecutor(2, thread_name_prefix="app-pool") as pool:
        names: list[str] = []
        with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, executor=pool) as c:
            future = c.fetch_experiences_meta()
            future.add_done_callback(lambda _f: names.append(threading.current_thread().name))
            future.result(FUTURE_TIMEOUT)
        assert pool.submit(lambda: 42).result(FUTURE_TIMEOUT) == 42
        time.sleep(0.05)
        assert names
        assert names[0].startswith(("app-pool", "MainThread"))


def test_callbacks_run_on_a_worker_and_their_exceptions_are_contained(
    with_meta: HTTPServer, client: MoEngagePersonalize, caplog: pytest.LogCaptureFixture
) -> None:
    """add_done_callback runs on the completing worker thread; a raising callback is logged and the
    client goes on working."""
    seen: list[str] = []
    done = threading.Event()

    def boom(_future: object) -> None:
        seen.append(threading.current_thread().name)
        done.set()
        raise RuntimeError("callback bug")

    gate = threading.Event()

    def slow(_request: Request) -> Response:
        gate.wait(5)
        return Response(json.dumps(DEFAULT_META), content_type="application/json")

    with_meta.clear()
    with_meta.expect_request(META).respond_with_handler(slow)
    future = client.fetch_experiences_meta()
    future.add_done_callback(boom)
    gate.set()
    assert done.wait(FUTURE_TIMEOUT)
    assert seen[0].startswith("moengage-personalize")
    assert client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences


def test_callback_chain_like_dart_then(with_meta: HTTPServer, client: MoEngagePersonalize) -> None:
    """The Dart .then/.catchError flow: a callback reads the result or the error without blocking."""
    got: list[object] = []
    done = threading.Event()

    def then(future: object) -> None:
        try:
            got.append(len(future.result().experiences))  # type: ignore[attr-defined]
        except PersonalizeError as err:
            got.append(err.code)
        done.set()

    client.fetch_experiences_meta().add_done_callback(then)
    assert done.wait(FUTURE_TIMEOUT)
    assert got == [4]


def test_close_fails_queued_calls_and_bounds_running_ones(
    httpserver: HTTPServer, base_url: str
) -> None:
    """close(timeout) fails calls still queued at once and gives running ones `timeout` to end;
    every Future is complete when close() returns."""
    release = threading.Event()

    def hang(_request: Request) -> Response:
        release.wait(5)
        return Response(json.dumps(DEFAULT_META), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(hang)
    config = PersonalizeConfig(max_workers=1, timeout=10)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    running = client.fetch_experiences_meta()
    time.sleep(0.1)
    # distinct calls (identical ones would share the running call instead of queueing)
    queued = [client.fetch_experiences_meta([s]) for s in ("active", "paused", "scheduled")]
    start = time.monotonic()
    client.close(timeout=0.2)
    elapsed = time.monotonic() - start
    release.set()
    assert elapsed < 1.5
    assert running.done()
    assert all(f.done() for f in queued)
    for future in queued:
        with pytest.raises(ClientClosedError, match="before the call ran"):
            future.result(0)
    with pytest.raises(ClientClosedError, match="while the call ran"):
        running.result(0)


def test_close_frees_the_thread_of_a_call_whose_answer_never_comes(
    silent_server: SilentServer,
) -> None:
    """A fetch's socket waits without a timeout of its own (the deadline bounds it), so close()
    shuts down the socket of a call still running when its timeout ends: the worker is freed
    even though the call's own deadline (30 s here) is far away."""
    config = PersonalizeConfig(max_workers=1, timeout=30)
    client = MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=silent_server.base_url, config=config
    )
    future = client.fetch_experiences_meta()
    future.add_done_callback(lambda _f: None)  # runs on a worker
    assert wait_for(lambda: bool(silent_server._conns))
    start = time.monotonic()
    client.close(timeout=0.2)
    assert time.monotonic() - start < 2
    with pytest.raises(ClientClosedError, match="while the call ran"):
        future.result(0)
    assert wait_for(lambda: not sdk_threads(), 3), [t.name for t in sdk_threads()]


def test_close_waits_for_running_calls_to_finish(httpserver: HTTPServer, base_url: str) -> None:
    """A call in flight that ends within close()'s timeout completes with its real result."""

    def slowish(_request: Request) -> Response:
        time.sleep(0.1)
        return Response(json.dumps(DEFAULT_META), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(slowish)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url)
    future = client.fetch_experiences_meta()
    time.sleep(0.02)
    client.close(timeout=5)
    assert len(future.result(0).experiences) == 4


def test_queued_future_can_be_cancelled(httpserver: HTTPServer, base_url: str) -> None:
    """A Future still queued can be cancelled; its request is never sent."""
    release = threading.Event()

    def hang(_request: Request) -> Response:
        release.wait(5)
        return Response(json.dumps(DEFAULT_META), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(hang)
    config = PersonalizeConfig(max_workers=1)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        first = client.fetch_experiences_meta()
        time.sleep(0.1)
        second = client.fetch_experience("x")
        assert second.cancel()
        release.set()
        first.result(FUTURE_TIMEOUT)
        time.sleep(0.05)
    assert requests_to(httpserver, "/v1/experiences/fetch") == []


def test_unclosed_client_warns_resource_warning(base_url: str) -> None:
    """A client garbage-collected while open emits a ResourceWarning."""
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def test_no_threads_leak_across_many_clients(with_meta: HTTPServer, base_url: str) -> None:
    """Creating, using and closing clients leaves no SDK thread behind."""
    before = len(sdk_threads())
    for _ in range(20):
        with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url) as client:
            client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    deadline = time.monotonic() + 5
    while len(sdk_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sdk_threads()) == before


def test_served_helper_round_trip(with_meta: HTTPServer, client: MoEngagePersonalize) -> None:
    """result.get() finds a served campaign by key."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    result = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    campaign = result.get("cart-upsell")
    assert campaign is not None
    assert campaign.experience_key == "cart-upsell"
    assert result.get("other") is None
