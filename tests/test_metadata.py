"""Metadata: mobile status mapping, local filter, TTL cache and source, one shared load, stale use."""

from __future__ import annotations

import threading
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    DataSource,
    ExperienceCampaignMeta,
    ExperienceFailureReason,
    ExperienceStatus,
    HTTPStatusError,
    MoEngagePersonalize,
    NetworkError,
    PersonalizeConfig,
)

from support import (
    API_KEY,
    APP_ID,
    DEFAULT_META,
    FUTURE_TIMEOUT,
    FakeClock,
    meta_body,
    requests_to,
    served,
    wait_for,
)

META = "/v1/experiences/metadata"


def test_statuses_are_mapped_from_rest_spelling(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """REST's Active/Paused/Scheduled come back as the mobile ExperienceStatus members."""
    meta = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    assert meta.experiences == [
        ExperienceCampaignMeta("homepage-banner", "Homepage Banner", ExperienceStatus.ACTIVE),
        ExperienceCampaignMeta("cart-upsell", "Cart Upsell", ExperienceStatus.ACTIVE),
        ExperienceCampaignMeta("paused-one", "Paused One", ExperienceStatus.PAUSED),
        ExperienceCampaignMeta("later-one", "Later One", ExperienceStatus.SCHEDULED),
    ]
    assert meta.source is DataSource.NETWORK


def test_unknown_wire_status_falls_back_to_active(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """A status the SDK does not know is read as ACTIVE, as the mobile SDKs do."""
    httpserver.expect_request(META).respond_with_json(meta_body(("x", "Archived")))
    meta = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    assert meta.experiences[0].status is ExperienceStatus.ACTIVE


def test_status_filter_is_applied_locally_on_the_cached_list(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Filters narrow the cached full list; the service is asked once, without a status query."""
    active = client.fetch_experiences_meta([ExperienceStatus.ACTIVE]).result(FUTURE_TIMEOUT)
    inactive = client.fetch_experiences_meta(["paused", ExperienceStatus.SCHEDULED]).result(
        FUTURE_TIMEOUT
    )
    assert [m.experience_key for m in active.experiences] == ["homepage-banner", "cart-upsell"]
    assert [m.experience_key for m in inactive.experiences] == ["paused-one", "later-one"]
    assert active.source is DataSource.NETWORK
    assert inactive.source is DataSource.CACHE
    reqs = requests_to(with_meta, META)
    assert len(reqs) == 1
    assert reqs[0].query_string == b""


def test_metadata_refreshes_in_the_background_before_it_expires(
    with_meta: HTTPServer, client: MoEngagePersonalize, clock: FakeClock
) -> None:
    """From 90% of meta_ttl on, one background refresh replaces the list; no caller waits."""
    client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    clock.advance(800)
    assert client.fetch_experiences_meta().result(FUTURE_TIMEOUT).source is DataSource.CACHE
    assert len(requests_to(with_meta, META)) == 1
    clock.advance(20)  # past 90% of 900 s
    futures = [client.fetch_experiences_meta() for _ in range(5)]
    assert all(f.result(FUTURE_TIMEOUT).source is DataSource.CACHE for f in futures)
    assert wait_for(lambda: len(requests_to(with_meta, META)) == 2)
    time.sleep(0.05)
    assert len(requests_to(with_meta, META)) == 2  # one refresh for all callers


def test_fetch_loads_metadata_on_demand_once(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """A fetch before any metadata call loads it first, and later fetches reuse it."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    for _ in range(3):
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert len(requests_to(with_meta, META)) == 1


def test_concurrent_callers_share_one_metadata_request(
    httpserver: HTTPServer, base_url: str, config: PersonalizeConfig
) -> None:
    """Many callers arriving while metadata loads wait for that one request."""
    gate = threading.Event()
    arrived = threading.Event()

    def slow(_request: Request) -> Response:
        arrived.set()
        gate.wait(5)
        import json

        return Response(json.dumps(DEFAULT_META), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(slow)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        first = client.fetch_experiences_meta()
        assert arrived.wait(5)
        others = [client.fetch_experiences_meta() for _ in range(10)]
        time.sleep(0.05)  # let the others reach the wait
        gate.set()
        results = [f.result(FUTURE_TIMEOUT) for f in [first, *others]]
    assert len(requests_to(httpserver, META)) == 1
    assert all(len(r.experiences) == 4 for r in results)


def test_failed_refresh_keeps_serving_the_stale_list(
    httpserver: HTTPServer,
    client: MoEngagePersonalize,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When a refresh fails, the stale list keeps serving (CACHE), a warning is logged, and the
    refresh is tried again later, not on every call."""
    httpserver.expect_oneshot_request(META).respond_with_json(DEFAULT_META)
    httpserver.expect_request(META).respond_with_json({"title": "boom"}, status=500)
    httpserver.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    clock.advance(1000)
    with caplog.at_level("WARNING", logger="moengage_personalize"):
        meta = client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        assert meta.source is DataSource.CACHE
        assert len(meta.experiences) == 4
        assert wait_for(lambda: "serving the cached list" in caplog.text)
    result = client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["cart-upsell"]
    n = len(requests_to(httpserver, META))
    client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    time.sleep(0.05)
    assert len(requests_to(httpserver, META)) == n
    clock.advance(11)  # past the retry interval: tried again
    client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    assert wait_for(lambda: len(requests_to(httpserver, META)) > n)


def test_never_loaded_metadata_fails_the_fetch(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """With no metadata ever loaded, a fetch fails with the load's own error."""
    httpserver.expect_request(META).respond_with_json({"title": "Nope"}, status=500)
    future = client.fetch_experience("cart-upsell")
    with pytest.raises(HTTPStatusError) as info:
        future.result(FUTURE_TIMEOUT)
    assert info.value.code == "UNKNOWN_SERVER_ERROR"


def test_offline_without_cache_is_network_error(base_url: str, config: PersonalizeConfig) -> None:
    """No cache and no network: the fetch fails with NETWORK_ERROR."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with (
        MoEngagePersonalize(
            APP_ID, api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", config=config
        ) as client,
        pytest.raises(NetworkError) as info,
    ):
        client.fetch_experience("cart-upsell").result(FUTURE_TIMEOUT)
    assert info.value.code == "NETWORK_ERROR"
    assert "refused" in info.value.message


def test_key_activated_after_refresh_is_fetched(
    httpserver: HTTPServer, client: MoEngagePersonalize, clock: FakeClock
) -> None:
    """A key paused in old metadata is fetched once a refresh shows it active."""
    httpserver.expect_oneshot_request(META).respond_with_json(meta_body(("k", "Paused")))
    httpserver.expect_request(META).respond_with_json(meta_body(("k", "Active")))
    httpserver.expect_request("/v1/experiences/fetch").respond_with_json(served("k"))
    first = client.fetch_experience("k").result(FUTURE_TIMEOUT)
    assert first.failures[0].reason is ExperienceFailureReason.EXPERIENCE_NOT_ACTIVE
    clock.advance(901)
    client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    assert wait_for(lambda: len(requests_to(httpserver, META)) == 2)
    assert wait_for(lambda: client.fetch_experience("k").result(FUTURE_TIMEOUT).experiences != [])
