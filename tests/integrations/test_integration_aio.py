"""AsyncMoEngagePersonalize under a real event loop (``asyncio.run``) against the local server."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
from integration_support import WAIT, run

from moengage_personalize import (
    ClientClosedError,
    DeadlineExceededError,
    ExperienceStatus,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
)
from moengage_personalize.aio import AsyncMoEngagePersonalize
from moengage_personalize.server import PersonalizeServer

from support import SilentServer

# Every public name of the sync client has its async twin under the same name, except these
# (sync name -> async name); and the async class adds only the names in ASYNC_ONLY.
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
SYNC_ONLY: dict[str, str] = {}  # name -> why it has no async twin (none today)
ASYNC_ONLY = {
    "from_client": "builds a view of an existing sync client",
    "sync": "the sync client underneath",
}
# Twins that stay plain (non-coroutine) methods: they never wait for the network.
STAYS_SYNC = {
    "experiences_shown",
    "experience_shown",
    "experience_clicked",
    "offerings_shown",
    "offering_shown",
    "offering_clicked",
    "stats",
}


def members(cls: type) -> dict[str, object]:
    """What the class defines, its own bases' (the tracking calls' mixin) included."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):
        out.update(vars(klass))
    return out


def public_names(cls: type) -> set[str]:
    names = members(cls)
    return {n for n in names if not n.startswith("_")} | {
        n for n in ("__enter__", "__exit__", "__aenter__", "__aexit__") if n in names
    }


def make_async(server: PersonalizeServer, **config: Any) -> AsyncMoEngagePersonalize:
    return AsyncMoEngagePersonalize(
        server.app_id,
        api_key=server.api_key,
        base_url=server.base_url,
        config=PersonalizeConfig(**{"timeout": 5.0, **config}),
    )


# the surface --------------------------------------------------------------------------------


def test_every_sync_public_name_has_its_async_twin() -> None:
    """Each public method/property of MoEngagePersonalize exists on the async class (renamed only
    as RENAMED says, or listed in SYNC_ONLY with a reason), and nothing else is added silently."""
    sync_names = public_names(MoEngagePersonalize)
    async_names = public_names(AsyncMoEngagePersonalize)
    expected = {RENAMED.get(n, n) for n in sync_names - set(SYNC_ONLY)}
    assert expected - async_names == set(), "async twins missing"
    assert async_names - expected == set(ASYNC_ONLY), "async-only names not listed in ASYNC_ONLY"
    assert all(SYNC_ONLY.values())
    assert all(ASYNC_ONLY.values())


def test_twins_take_the_same_parameters() -> None:
    """A twin has the same parameter names, kinds and defaults as the sync method."""
    for name, sync_attr in members(MoEngagePersonalize).items():
        if name in SYNC_ONLY or not callable(sync_attr) or name.startswith("_"):
            continue
        twin = getattr(AsyncMoEngagePersonalize, RENAMED.get(name, name))
        sync_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(sync_attr).parameters.values()
        ]
        async_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(twin).parameters.values()
        ]
        assert async_params == sync_params, name


def test_waiting_methods_are_coroutines_and_queueing_ones_are_not() -> None:
    """Fetches, flush and aclose are coroutine functions; tracking calls and stats() stay plain."""
    for name in public_names(AsyncMoEngagePersonalize):
        attr = inspect.getattr_static(AsyncMoEngagePersonalize, name)
        if isinstance(attr, (property, classmethod)):
            continue
        assert inspect.iscoroutinefunction(attr) is (name not in STAYS_SYNC), name


def test_the_async_constructor_takes_the_sync_constructors_arguments() -> None:
    """AsyncMoEngagePersonalize(...) accepts exactly MoEngagePersonalize(...)'s parameters."""
    sync_sig = inspect.signature(MoEngagePersonalize.__init__)
    async_sig = inspect.signature(AsyncMoEngagePersonalize.__init__)
    assert [(p.name, p.kind, p.default) for p in sync_sig.parameters.values()] == [
        (p.name, p.kind, p.default) for p in async_sig.parameters.values()
    ]


# behaviour on a real loop ------------------------------------------------------------------


def test_fetches_await_the_same_results_as_the_sync_client(
    personalize_server: PersonalizeServer, sync_client: MoEngagePersonalize
) -> None:
    """Awaited fetches return what the sync client's Futures return for the same call."""

    async def main() -> tuple[Any, Any, Any]:
        async with make_async(personalize_server) as personalize:
            meta = await personalize.fetch_experiences_meta([ExperienceStatus.ACTIVE])
            one = await personalize.fetch_experience("homepage-banner", user="user_8821")
            many = await personalize.fetch_experiences(
                ["cart-free-delivery", "no-such-key"],
                attributes={"current_page": "cart", "cart_value": "640"},
                user="user_8821",
            )
            return meta, one, many

    meta, one, many = run(main())
    assert {m.experience_key for m in meta.experiences} == {
        m.experience_key
        for m in sync_client.fetch_experiences_meta([ExperienceStatus.ACTIVE])
        .result(WAIT)
        .experiences
    }
    expected = sync_client.fetch_experience("homepage-banner", user="user_8821").result(WAIT)
    assert one.experiences[0].payload == expected.experiences[0].payload
    assert [c.experience_key for c in many.experiences] == ["cart-free-delivery"]
    assert many.failures[0].experience_keys == ["no-such-key"]


def test_many_concurrent_fetches_agree_with_sequential_ones(
    personalize_server: PersonalizeServer, sync_client: MoEngagePersonalize
) -> None:
    """gather() of 32 fetches in flight at once returns, per user, what a lone fetch returns."""
    users = ["user_8821", "user_1002", "user_3107", "user_4401"] * 8
    keys = ["homepage-banner", "loyalty-points"]
    expected = {
        u: [
            c.experience_key
            for c in sync_client.fetch_experiences(keys, user=u).result(WAIT).experiences
        ]
        for u in set(users)
    }

    async def main() -> list[Any]:
        async with make_async(personalize_server) as personalize:
            return await asyncio.gather(
                *(personalize.fetch_experiences(keys, user=u) for u in users)
            )

    results = run(main())
    assert [[c.experience_key for c in r.experiences] for r in results] == [
        expected[u] for u in users
    ]


def test_tracking_is_plain_and_flush_delivers(personalize_server: PersonalizeServer) -> None:
    """Tracking calls queue without awaiting; await flush() delivers them to the server."""

    async def main() -> int:
        async with make_async(personalize_server) as personalize:
            result = await personalize.fetch_experience("homepage-banner", user="user_8821")
            campaign = result.experiences[0]
            assert personalize.experience_shown(campaign) is None
            personalize.experiences_shown([campaign])
            personalize.experience_clicked(campaign, b_id="Shop Now")
            report = await personalize.flush(timeout=5.0)
            return report.sent

    assert run(main()) == 3
    actions = [e["action"] for e in personalize_server.events(customer_id="user_8821")]
    assert sorted(actions) == [  # requests may arrive in any order
        "MOE_PERSONALIZATION_MESSAGE_CLICKED",
        "MOE_PERSONALIZATION_MESSAGE_SHOWN",
        "MOE_PERSONALIZATION_MESSAGE_SHOWN",
    ]


def test_flush_and_aclose_wait_off_the_loop(
    personalize_server: PersonalizeServer, silent_server: SilentServer
) -> None:
    """While flush() and aclose() wait on a service that never answers, the loop keeps running:
    a heartbeat task ticks throughout."""
    with MoEngagePersonalize(
        personalize_server.app_id,
        api_key=personalize_server.api_key,
        base_url=personalize_server.base_url,
    ) as fetcher:
        campaign = fetcher.fetch_experience("homepage-banner", user="user_8821").result(WAIT)
        campaign = campaign.experiences[0]

    async def main() -> tuple[int, float, float]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        personalize = AsyncMoEngagePersonalize(
            "WORKSPACE1",
            api_key="key",
            base_url=silent_server.base_url,
            config=PersonalizeConfig(timeout=0.5, event_flush_interval=0.05),
        )
        beat = asyncio.create_task(heartbeat())
        personalize.experience_shown(campaign)
        start = time.monotonic()
        report = await personalize.flush(timeout=0.4)
        flushed = time.monotonic() - start
        assert not report.completed
        start = time.monotonic()
        await personalize.aclose(timeout=0.4)
        closed = time.monotonic() - start
        beat.cancel()
        return ticks, flushed, closed

    ticks, flushed, closed = run(main())
    assert flushed >= 0.35
    assert closed < 5.0  # close(0.4) may add ~1 s (a known core issue: the event thread join)
    assert ticks >= 15  # ~0.75 s of waiting at 10 ms a tick, with a wide margin


def test_errors_come_out_of_the_await(
    personalize_server: PersonalizeServer, silent_server: SilentServer
) -> None:
    """A service that never answers fails the await with DeadlineExceededError within
    config.timeout; argument errors raise TypeError/ValueError when awaited."""

    async def main() -> float:
        async with AsyncMoEngagePersonalize(
            "WORKSPACE1",
            api_key="key",
            base_url=silent_server.base_url,
            config=PersonalizeConfig(timeout=0.3, retry=RetryPolicy(max_attempts=1)),
        ) as personalize:
            with pytest.raises(TypeError, match="experience_key"):
                await personalize.fetch_experience(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="experience_keys"):
                await personalize.fetch_experiences([])
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError) as caught:
                await personalize.fetch_experience("homepage-banner")
            assert caught.value.code == "NETWORK_ERROR"
            return time.monotonic() - start

    assert run(main()) < 2.0


def test_a_closed_client_fails_fast(personalize_server: PersonalizeServer) -> None:
    """After aclose() a fetch raises ClientClosedError (SDK_NOT_INITIALIZED) at once."""

    async def main() -> None:
        personalize = make_async(personalize_server)
        await personalize.aclose()
        await personalize.aclose()  # idempotent
        assert personalize.closed
        with pytest.raises(ClientClosedError) as caught:
            await personalize.fetch_experience("homepage-banner")
        assert caught.value.code == "SDK_NOT_INITIALIZED"

    run(main())


def test_cancelling_the_awaiting_task_leaves_the_client_usable(
    personalize_server: PersonalizeServer,
) -> None:
    """A cancelled await does not hang, and the client serves the next fetch."""

    async def main() -> None:
        async with make_async(personalize_server) as personalize:
            tasks = [
                asyncio.create_task(personalize.fetch_experience("homepage-banner", user=u))
                for u in ("user_8821", "user_1002", "user_3107")
            ]
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(
                isinstance(d, (asyncio.CancelledError, PersonalizeError)) or d.experiences
                for d in done
            )
            result = await personalize.fetch_experience("homepage-banner", user="user_8821")
            assert result.experiences

    run(main())


def test_a_view_of_a_sync_client_leaves_it_open(sync_client: MoEngagePersonalize) -> None:
    """from_client() shares the client (same stats); closing the view does not close it."""

    async def main() -> None:
        async with AsyncMoEngagePersonalize.from_client(sync_client) as view:
            assert view.sync is sync_client
            assert (view.app_id, view.base_url, view.config) == (
                sync_client.app_id,
                sync_client.base_url,
                sync_client.config,
            )
            await view.fetch_experience("homepage-banner", user="user_8821")
            assert view.stats() == sync_client.stats()
        assert not view.closed

    run(main())
    assert not sync_client.closed
    assert sync_client.fetch_experience("homepage-banner", user="user_8821").result(WAIT)


def test_from_client_refuses_other_objects() -> None:
    """from_client() takes a MoEngagePersonalize only."""
    bad: Callable[..., Any] = AsyncMoEngagePersonalize.from_client
    with pytest.raises(TypeError, match="MoEngagePersonalize"):
        bad(object())


def test_cache_hits_complete_without_a_loop_hop(personalize_server: PersonalizeServer) -> None:
    """With the experience cache on, a repeated fetch is served from cache (source CACHE)."""

    async def main() -> str:
        async with make_async(personalize_server, cache_ttl=60.0) as personalize:
            await personalize.fetch_experience("homepage-banner", user="user_8821")
            again = await personalize.fetch_experience("homepage-banner", user="user_8821")
            return again.experiences[0].source.value

    assert run(main()) == "CACHE"


def test_offering_twins_queue_offering_events(personalize_server: PersonalizeServer) -> None:
    """offering_shown / offerings_shown / offering_clicked go through to the server."""

    async def main() -> int:
        async with make_async(personalize_server) as personalize:
            result = await personalize.fetch_experience("product-recommendations", user="user_8821")
            campaign = result.experiences[0]
            offers = campaign.offerings
            assert offers, "the sample's recommendations carry offerings"
            personalize.offerings_shown(offers)
            personalize.offering_shown(offers[0])
            personalize.offering_clicked(campaign, offers[0])
            return (await personalize.flush(timeout=5.0)).sent

    sent = run(main())
    events = personalize_server.events(experience_key="product-recommendations")
    assert sent == len(events) >= 3
