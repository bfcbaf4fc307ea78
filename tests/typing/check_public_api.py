"""Static checks of the public API's types: ``mypy --strict tests/typing`` (never run by pytest).

Each ``assert_type`` pins what a caller's type checker sees; a change of a public signature or
return type fails the ``type`` tox env. Nothing here imports Django or Flask.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future
from typing import Any

from moengage_personalize import (
    DataSource,
    ErrorCode,
    ExperienceCampaign,
    ExperienceCampaignFailure,
    ExperienceCampaignMeta,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceFailureReason,
    ExperienceStatus,
    FlushReport,
    MoEngagePersonalize,
    Offering,
    PersonalizeConfig,
    PersonalizeError,
    PersonalizeStats,
    User,
    __version__,
)
from moengage_personalize.aio import AsyncMoEngagePersonalize
from moengage_personalize.contrib import FetchKwargs, RequestContext, client_ip
from moengage_personalize.contrib.django import (
    PersonalizeSettings,
    get_async_client,
    get_client,
    get_settings,
    request_context,
    reset_client,
)
from moengage_personalize.contrib.wsgi import context_from_environ, request_path
from moengage_personalize.server import PersonalizeServer
from moengage_personalize.testing import personalize_server

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


def check_client(personalize: MoEngagePersonalize) -> None:
    assert_type(__version__, str)
    meta_future = personalize.fetch_experiences_meta([ExperienceStatus.ACTIVE, "paused"])
    assert_type(meta_future, Future[ExperienceCampaignsMetadata])
    meta = meta_future.result(timeout=5)
    assert_type(meta.source, DataSource)
    assert_type(meta.experiences, list[ExperienceCampaignMeta])
    assert_type(meta.experiences[0].status, ExperienceStatus)
    assert_type(meta.experiences[0].experience_name, str)

    one = personalize.fetch_experience("homepage-banner", attributes={"a": "b"}, user="u1")
    assert_type(one, Future[ExperienceCampaignsResult])
    many = personalize.fetch_experiences(["a", "b"], user=User(customer_id="u1"))
    assert_type(many, Future[ExperienceCampaignsResult])
    result = many.result(timeout=5)
    assert_type(result.experiences, list[ExperienceCampaign])
    assert_type(result.failures, list[ExperienceCampaignFailure])
    assert_type(result.failures[0].reason, ExperienceFailureReason)
    assert_type(result.failures[0].experience_keys, list[str])
    assert_type(result.get("a"), ExperienceCampaign | None)

    campaign = result.experiences[0]
    assert_type(campaign.payload, dict[str, Any])
    assert_type(campaign.experience_context, dict[str, str])
    assert_type(campaign.source, DataSource)
    assert_type(campaign.user, User | None)
    assert_type(campaign.offerings, list[Offering])
    offering = campaign.offerings[0]
    assert_type(offering.campaign, ExperienceCampaign | None)
    assert_type(offering.offering_id, str | None)

    assert_type(personalize.experiences_shown(result.experiences), None)
    assert_type(personalize.experience_shown(campaign, user="u1"), None)
    assert_type(personalize.experience_clicked(campaign, b_id="Shop Now"), None)
    assert_type(personalize.offerings_shown(campaign.offerings), None)
    assert_type(personalize.offering_shown({"dp_offering_id": "1"}, campaign=campaign), None)
    assert_type(personalize.offering_clicked(campaign, offering), None)
    report = personalize.flush(timeout=1.0)
    assert_type(report, FlushReport)
    assert_type(report.completed, bool)
    assert_type(personalize.stats(), PersonalizeStats)
    assert_type(personalize.stats().events_sent, int)
    assert_type(personalize.config, PersonalizeConfig)
    assert_type(personalize.closed, bool)
    assert_type(personalize.close(timeout=1.0), None)

    def on_done(future: Future[ExperienceCampaignsResult]) -> None:
        error = future.exception()
        if isinstance(error, PersonalizeError):
            assert_type(error.code, ErrorCode)
            assert_type(error.message, str)
            assert_type(error.status_code, int | None)
            assert_type(error.request_id, str | None)
            assert_type(error.retry_after, float | None)

    one.add_done_callback(on_done)


def check_context_manager() -> None:
    with MoEngagePersonalize("W", api_key="k", config=PersonalizeConfig(timeout=2.0)) as client:
        assert_type(client, MoEngagePersonalize)


async def check_async(personalize: AsyncMoEngagePersonalize) -> None:
    meta = await personalize.fetch_experiences_meta()
    assert_type(meta, ExperienceCampaignsMetadata)
    result = await personalize.fetch_experience("a", user="u1")
    assert_type(result, ExperienceCampaignsResult)
    assert_type(await personalize.fetch_experiences(["a"]), ExperienceCampaignsResult)
    assert_type(personalize.experience_shown(result.experiences[0]), None)
    assert_type(await personalize.flush(timeout=1.0), FlushReport)
    assert_type(personalize.stats(), PersonalizeStats)
    assert_type(personalize.sync, MoEngagePersonalize)
    assert_type(await personalize.aclose(), None)
    async with AsyncMoEngagePersonalize("W", api_key="k") as owned:
        assert_type(owned, AsyncMoEngagePersonalize)
    view = AsyncMoEngagePersonalize.from_client(personalize.sync)
    assert_type(view, AsyncMoEngagePersonalize)


def check_contrib(environ: dict[str, Any], request: Any) -> None:
    assert_type(client_ip("10.0.0.1", "203.0.113.9", 1), str | None)
    assert_type(client_ip("10.0.0.1", None, ["10.0.0.0/8"]), str | None)
    ctx = context_from_environ(environ, customer_id="u1", trusted_proxies=1)
    assert_type(ctx, RequestContext)
    assert_type(ctx.user, User)
    assert_type(ctx.attributes, dict[str, str])
    assert_type(ctx.as_kwargs(), FetchKwargs)
    assert_type(ctx.with_attributes({"current_page": "home"}), RequestContext)
    assert_type(request_path(environ), str)

    client = get_client()
    assert_type(client, MoEngagePersonalize)
    future = client.fetch_experience("a", **ctx.as_kwargs())  # the two-line view type-checks
    assert_type(future, Future[ExperienceCampaignsResult])
    assert_type(get_async_client(), AsyncMoEngagePersonalize)
    assert_type(get_settings(), PersonalizeSettings)
    assert_type(request_context(request, customer_id="u1"), RequestContext)
    assert_type(reset_client(timeout=1.0), None)


def check_testing() -> None:
    with personalize_server({"workspace_id": "W"}, rate_limit=10) as server:
        assert_type(server, PersonalizeServer)
        assert_type(server.base_url, str)
        assert_type(server.api_key, str)
